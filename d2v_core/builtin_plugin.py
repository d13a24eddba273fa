"""Components the core itself provides, registered like any plugin's (as plugin ``core``): the
target normalisers, the LR schedules, data2vec 2.0's 1-D convolutional decoder and the metrics
loggers ``jsonl`` and ``tensorboard``."""

from __future__ import annotations

from d2v_core.hookspecs import hookimpl
from d2v_core.specs import ComponentSpec

D2V_PLUGIN_API_VERSION = "1.0"

_NORM = "d2v_core.model.normalizers"


@hookimpl
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    registry.add_component(ComponentSpec("normalizer", "none", f"{_NORM}:IdentityNorm", description="no normalisation"))
    registry.add_component(
        ComponentSpec("normalizer", "instance", f"{_NORM}:InstanceNorm",
                      description="each channel over time, per sample, no affine (audio targets)")
    )
    registry.add_component(
        ComponentSpec("normalizer", "layer", f"{_NORM}:LayerNormNoAffine",
                      description="each step over channels, no affine (image and text targets)")
    )
    for name, what in (("tri_stage", "fairseq tri-stage: linear warm-up, hold, exponential decay"),
                       ("cosine", "linear warm-up, then half a cosine to optim.schedule.min_lr"), ("constant", "optim.lr throughout")):
        registry.add_component(ComponentSpec("schedule", name, "d2v_core.train.schedules:build_core_schedule", description=what))
    registry.add_component(
        ComponentSpec("decoder", "conv1d", "d2v_core.model.conv_decoder:build_conv_decoder_1d",
                      options="d2v_core.decoder_options:ConvDecoderOptions",
                      description="data2vec 2.0 1-D conv decoder (audio, text): conv -> LN -> GELU blocks + projection")
    )
    registry.add_component(
        ComponentSpec("logger", "jsonl", "d2v_core.train.metrics:build_jsonl_logger",
                      description="<run>/metrics.jsonl, one row per log step (always on: resume, d2v report and the benchmarks read it)")
    )
    registry.add_component(
        ComponentSpec("logger", "tensorboard", "d2v_core.train.metrics:build_tensorboard_logger",
                      description="TensorBoard event files in <run>/tensorboard (on while runtime.tensorboard)")
    )
