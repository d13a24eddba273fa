"""Typed configuration of a whole run (pydantic v2). Unknown keys are errors everywhere.

The plugin sections (``encoder``, ``masking.options``, ``decoder.options``, ``data.options``)
hold what the YAML gave (a dict) until :func:`d2v_core.config_resolve.resolve_options` validates
each once against the :class:`Options` model its component declares and keeps that object; a
resolved config serialises them back to plain mappings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator

Probability = Field(ge=0.0, lt=1.0)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Options(StrictModel):
    """Base of a plugin component's options (an encoder's, a masker's, ...): unknown keys and
    wrong types are errors, validated once when the run config is resolved."""


def _plugin_section(value: Any) -> Any:
    if isinstance(value, (dict, BaseModel)):
        return value
    raise ValueError(f"must be a mapping of the component's options, not {type(value).__name__}")


#: A plugin section: the raw mapping of a YAML file, or (once resolved) the component's options
#: object (serialised as the mapping of its fields).
PluginSection = Annotated[Any, BeforeValidator(_plugin_section)]


class TransformerConfig(StrictModel):
    """The core Transformer. ``post_ln``: wav2vec 2.0 / RoBERTa layers; ``pre_ln``: BEiT layers
    with layer scale."""

    dim: PositiveInt = 768
    depth: PositiveInt = 12
    heads: PositiveInt = 12
    ffn_dim: PositiveInt = 3072
    layout: Literal["post_ln", "pre_ln"] = "post_ln"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    layerdrop: float = Field(0.0, ge=0.0, lt=1.0)
    layer_scale_init: Optional[float] = Field(None, gt=0.0)
    norm_eps: float = Field(1e-5, gt=0.0)
    qkv_bias: Literal["qkv", "qv", "none"] = "qkv"
    final_norm: bool = False
    init: Literal["bert", "beit"] = "bert"
    #: recompute each student layer's activations in the backward pass (non-reentrant
    #: ``torch.utils.checkpoint``): less memory for more compute; the teacher never needs it
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "TransformerConfig":
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.layer_scale_init is not None and self.layout != "pre_ln":
            raise ValueError("model.layer_scale_init applies only to layout 'pre_ln'")
        return self


class MaskingConfig(StrictModel):
    """Which masker (``None``: the modality's default) and its options. ``clone_batch`` (M,
    data2vec 2.0): the student sees every sample M times, each with its own mask, while the
    teacher runs once per sample and its targets are repeated."""

    name: Optional[str] = None
    options: PluginSection = Field(default_factory=dict)
    clone_batch: PositiveInt = 1


class DecoderConfig(StrictModel):
    """data2vec 2.0's student. With a decoder ``name`` (a ``decoder`` component), the student
    Transformer encodes only the unmasked steps (the masker must give every row the same count),
    and the decoder predicts every step from the encoded ones, with N(0, ``mask_noise_std``)
    noise at the masked steps; the regression head is not used. ``None``: data2vec 1.0 (the
    masked steps get the mask embedding and a head predicts)."""

    name: Optional[str] = None
    options: PluginSection = Field(default_factory=dict)
    mask_noise_std: NonNegativeFloat = 0.01


class TargetsConfig(StrictModel):
    """Teacher targets: mean of the top-K layers' ``ffn`` (FFN output before the residual) or
    ``block`` (block output) intermediates, each normalised by the ``per_layer_norm`` normaliser
    (instance norm for audio, layer norm for images and text) and the mean by ``post_norm``."""

    top_k: PositiveInt = 8
    source: Literal["ffn", "block"] = "ffn"
    per_layer_norm: str = "instance"
    post_norm: str = "none"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "layer_norm" in data:
            raise ValueError("layer_norm was renamed per_layer_norm (the normaliser of each teacher layer: instance, layer or none)")
        return data


class LossConfig(StrictModel):
    """Regression loss: MSE (``beta`` 0) or SmoothL1(beta), summed over features and multiplied
    by ``scale`` (a number, ``inv_sqrt_dim`` = 1/sqrt(D), or ``inv_dim`` = 1/D, the mean over
    features); averaged over masked steps of all ranks. ``cls_weight`` > 0 (data2vec 2.0 images)
    adds the loss of the student's first prefix token (CLS) against the teacher's mean target
    over all steps, weighted per sample (fairseq's ``cls_loss * sample_size``)."""

    beta: NonNegativeFloat = 0.0
    scale: Union[Literal["inv_sqrt_dim", "inv_dim"], float] = "inv_sqrt_dim"
    head: Literal["linear", "mlp"] = "linear"
    head_hidden_mult: PositiveInt = 2
    cls_weight: NonNegativeFloat = 0.0


class EMAConfig(StrictModel):
    """EMA teacher. ``decay`` is annealed linearly to ``end_decay`` over ``anneal_end_step``
    updates, then constant. Parameter names matching ``copy`` are copied from the student, those
    matching ``exclude`` are not used by the teacher (fnmatch patterns). ``teacher_precision``:
    ``autocast`` runs the teacher under the student's ``runtime.precision`` (fairseq, fp16);
    ``fp32`` runs it in fp32 whatever the student's precision (data2vec_vision).
    ``teacher_context``: ``student`` feeds the teacher Transformer the *student's*
    ``contextualize`` output (positions, LayerNorm and, in training, dropout), as fairseq's
    ``ema_encoder_only`` (data2vec 2.0 text); ``teacher``: the teacher's own copy, evaluated."""

    decay: float = Field(0.999, ge=0.0, le=1.0)
    end_decay: float = Field(0.9999, ge=0.0, le=1.0)
    anneal_end_step: NonNegativeInt = 30000
    teacher_input: Literal["features", "raw"] = "features"
    copy_params: list[str] = Field(default_factory=list)
    exclude_params: list[str] = Field(default_factory=list)
    teacher_precision: Literal["autocast", "fp32"] = "autocast"
    teacher_context: Literal["teacher", "student"] = "teacher"


class ScheduleConfig(StrictModel):
    """Learning-rate schedule: a ``schedule`` component. The core's: ``tri_stage`` (fairseq:
    linear warm-up from ``init_lr_scale``, hold, exponential decay to ``final_lr_scale``, in
    ``phase_ratio`` of the steps); ``cosine`` (linear warm-up from ``warmup_init_lr`` over
    ``warmup_steps``, half-cosine to ``min_lr``); ``constant``. A plugin's schedule takes its
    own ``options``."""

    name: str = "tri_stage"
    options: PluginSection = Field(default_factory=dict)
    phase_ratio: tuple[float, float, float] = (0.03, 0.9, 0.07)
    init_lr_scale: float = Field(0.01, ge=0.0)
    final_lr_scale: float = Field(0.01, gt=0.0)
    warmup_steps: NonNegativeInt = 0
    warmup_init_lr: NonNegativeFloat = 0.0
    min_lr: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _ratios(self) -> "ScheduleConfig":
        if any(r < 0 for r in self.phase_ratio) or abs(sum(self.phase_ratio) - 1.0) > 1e-6:
            raise ValueError(f"optim.schedule.phase_ratio must be 3 non-negative numbers summing to 1, got {list(self.phase_ratio)}")
        return self


class OptimConfig(StrictModel):
    """AdamW (decoupled weight decay). ``no_decay_1d`` exempts biases, norms and other 1-D
    parameters from weight decay; ``no_decay`` adds name patterns (position, CLS embeddings)."""

    lr: float = Field(5e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0.0)
    weight_decay: NonNegativeFloat = 0.01
    no_decay_1d: bool = False
    no_decay: list[str] = Field(default_factory=list)
    clip_norm: NonNegativeFloat = 0.0
    accum_steps: PositiveInt = 1
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _betas(self) -> "OptimConfig":
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        return self


class DataConfig(StrictModel):
    """Training data: a folder, a CSV/JSONL manifest, or tar shards (brace patterns allowed).
    ``batch_size`` is the global batch of one optimiser step (over ranks and accumulation): records,
    or packed rows for a modality that packs its corpus into blocks (text).
    ``max_tokens``: fill each rank's micro-batch up to this many length units (audio samples)
    with records of similar length instead (fairseq ``max_tokens``, per GPU); ``batch_size`` is
    then not used. ``bucket_window``: records sorted by length together (0: the whole list;
    tar shards: 0 means 1024 records per worker)."""

    train: Optional[str] = None
    batch_size: PositiveInt = 8
    max_tokens: Optional[PositiveInt] = None
    bucket_window: NonNegativeInt = 0
    num_workers: NonNegativeInt = 0
    shuffle_buffer: NonNegativeInt = 1000
    resampled: bool = False
    max_bad_fraction: float = Field(0.5, gt=0.0, le=1.0)
    options: PluginSection = Field(default_factory=dict)


class RuntimeConfig(StrictModel):
    """How the run executes: length, precision, device, logging, checkpoints, health checks."""

    max_steps: PositiveInt = 1000
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = "runs/d2v"
    log_every: PositiveInt = 10
    save_every: PositiveInt = 1000
    keep_last: PositiveInt = 3
    tensorboard: bool = True  # the core's `tensorboard` logger
    #: more metrics loggers by name (a plugin's, e.g. ``mlflow``; ``d2v list-plugins``), after the
    #: core's ``jsonl`` (always on: resume, ``d2v report`` and the benchmarks read metrics.jsonl)
    #: and ``tensorboard``; ``logger_options``: a logger's name -> its options
    loggers: list[str] = Field(default_factory=list)
    logger_options: dict[str, PluginSection] = Field(default_factory=dict)
    progress: bool = True  # a progress bar on a terminal; plain lines (one per log_every steps) otherwise or when false
    threads: Optional[PositiveInt] = None  # torch intra-op threads (torch.set_num_threads); None: torch's default
    deterministic: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"
    #: ``torch.compile`` the student's and the teacher's encoder and Transformer (inductor; see
    #: docs/configuration.md for the shape policy); ``compile_dynamic`` is passed to torch.compile
    #: (None: static first, then dynamic lengths after the first new shape)
    compile: bool = False
    compile_dynamic: Optional[bool] = None
    health_after_step: NonNegativeInt = 5000
    min_target_var: NonNegativeFloat = 0.1
    min_pred_var: NonNegativeFloat = 0.01
    #: a warning (training goes on), once per run, the first time ``rel_loss`` falls below this:
    #: the student then predicts the teacher's targets almost exactly from what it sees, a
    #: collapse the variance floors do not see (docs/benchmarks.md: healthy tiny runs end at
    #: 0.10-0.65, the collapsed audio seed at 0.012-0.024); 0 turns it off
    warn_rel_loss: NonNegativeFloat = 0.05
    # after a stop signal, a step that does not finish within this many seconds (a hung record
    # decoder, a rank that stopped answering) ends the process without a new checkpoint
    stop_timeout_s: float = Field(60.0, gt=0.0)


class EvalConfig(StrictModel):
    """The online probe: every ``every`` updates (at the first logged step at or after each
    multiple, and at the last step) rank 0 embeds the labelled manifest ``probe`` with the
    student (and, with ``teacher``, the teacher) and fits ``d2v probe``'s logistic regression.
    Test records: the manifest ``probe_test``, or whole groups of the column ``split_by`` (a
    seeded ``test_fraction`` of them), or, given neither, a seeded random ``test_fraction`` of
    the records (``d2v probe``'s rules, seed 0). ``max_records``: at most N records of each
    manifest, a seeded (0) random choice kept in manifest order when it holds more (never the
    first N: a manifest sorted by label would lose classes); ``d2v probe --max-records N`` picks
    the same ones. ``None`` ``probe``: no online probe."""

    probe: Optional[str] = None
    probe_test: Optional[str] = None
    split_by: Optional[str] = None
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    label_column: str = "label"
    every: PositiveInt = 200
    max_records: PositiveInt = 1000
    teacher: bool = False
    batch_size: PositiveInt = 16

    @model_validator(mode="after")
    def _one_split(self) -> "EvalConfig":
        if self.probe_test is not None and self.split_by is not None:
            raise ValueError("give eval.probe_test or eval.split_by, not both")
        if self.probe is None and (self.probe_test is not None or self.split_by is not None):
            raise ValueError("eval.probe_test and eval.split_by need eval.probe (the labelled manifest to train the probe on)")
        return self


class RunConfig(StrictModel):
    """The resolved configuration of one pretraining run."""

    modality: str
    preset: Optional[str] = None
    model: TransformerConfig = Field(default_factory=TransformerConfig)
    encoder: PluginSection = Field(default_factory=dict)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _top_k(self) -> "RunConfig":
        if self.targets.top_k > self.model.depth:
            raise ValueError(f"targets.top_k ({self.targets.top_k}) cannot exceed model.depth ({self.model.depth})")
        return self
