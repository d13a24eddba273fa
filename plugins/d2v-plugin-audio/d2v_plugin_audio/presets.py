"""Audio presets: partial RunConfig dicts (plain data, no torch).

- ``base``: data2vec v1 audio Base on LibriSpeech as released (fairseq
  ``config/audio/pretraining/base_librispeech.yaml`` + ``data2vec_audio.py`` defaults).
- ``large``: the same recipe at the Large size of the released ``audio_large`` checkpoints
  (24 x 1024, 16 heads, FFN 4096). fairseq ships no v1 large-audio yaml, so every other value
  is Base's, the 3.8M-sample budget per GPU included.
- ``tiny`` (default): a few-minute CPU run on the bundled demo clips that shows the loss
  falling; not a recipe for useful representations.
- ``v2-base``: data2vec 2.0 audio Base (fairseq ``config/v2/base_audio_only_task.yaml``, spec
  section 2.5): 8 masks per clip, exact-count block masking, a sparse student with ALiBi and a
  1-D conv decoder, cosine schedule. ``v2-tiny``: the same recipe at ``tiny``'s encoder size,
  with 4 masks per clip and ``tiny``'s tri-stage schedule (more accuracy per CPU second than 8
  masks and the cosine in few-minute CPU runs).
"""

from __future__ import annotations

import copy
from typing import Any

# The teacher is only the Transformer side (fairseq ema_transformer_only): the conv extractor,
# the feature projection and the mask embedding are not part of it, and the positional conv is
# copied from the student every step (ema_layers_only: pos_conv in skip_keys).
_TEACHER_EXCLUDES = ["encoder.feature_extractor.*", "encoder.feature_projection.*", "encoder.mask_embedding"]
_TEACHER_COPIES = ["encoder.pos_conv_embed.*"]

BASE: dict[str, Any] = {
    "model": {
        "dim": 768,
        "depth": 12,
        "heads": 12,
        "ffn_dim": 3072,
        "layout": "post_ln",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "drop_path": 0.0,
        "layerdrop": 0.05,
        "norm_eps": 1e-5,
        "qkv_bias": "qkv",
        "final_norm": False,
        "init": "bert",
    },
    "encoder": {
        "conv_channels": 512,
        "conv_kernels": [10, 3, 3, 3, 3, 2, 2],
        "conv_strides": [5, 2, 2, 2, 2, 2, 2],
        "conv_bias": False,
        "pos_conv_depth": 5,
        "pos_conv_kernel": 19,
        "pos_conv_groups": 16,
    },
    "masking": {
        "name": "span",
        "options": {"mask_prob": 0.65, "mask_length": 10, "min_masks": 1, "require_same_masks": True, "no_overlap": False},
    },
    "targets": {"top_k": 8, "source": "ffn", "per_layer_norm": "instance", "post_norm": "none"},
    "loss": {"beta": 0.0, "scale": "inv_sqrt_dim", "head": "linear"},
    "ema": {
        "decay": 0.999,
        "end_decay": 0.9999,
        "anneal_end_step": 30000,
        "teacher_input": "features",
        "copy_params": _TEACHER_COPIES,
        "exclude_params": _TEACHER_EXCLUDES,
    },
    "optim": {
        "lr": 5e-4,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "weight_decay": 0.01,  # fairseq adam: decoupled decay on all parameters
        "no_decay_1d": False,
        "no_decay": [],
        "clip_norm": 0.0,
        "schedule": {"name": "tri_stage", "phase_ratio": [0.03, 0.9, 0.07], "init_lr_scale": 0.01, "final_lr_scale": 0.01},
    },
    "data": {
        # fairseq: utterances sorted by length fill 3.8M samples per GPU (max_tokens, about
        # 4 min of audio), 16 GPUs; batches are cropped to their shortest clip. data.batch_size
        # is not used under a token budget.
        "max_tokens": 3_800_000,
        "options": {"sample_rate": 16000, "min_sample_size": 32000, "max_sample_size": 320000, "normalize": True, "batching": "crop"},
    },
    "runtime": {"max_steps": 400000, "health_after_step": 5000, "min_target_var": 0.1, "min_pred_var": 0.01},
}


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values}
    return out


LARGE = _with(BASE, model={**BASE["model"], "dim": 1024, "depth": 24, "heads": 16, "ffn_dim": 4096})

TINY = _with(
    BASE,
    model={**BASE["model"], "dim": 128, "depth": 4, "heads": 4, "ffn_dim": 512, "layerdrop": 0.0},
    encoder={"conv_channels": 64, "pos_conv_depth": 2, "pos_conv_kernel": 19, "pos_conv_groups": 16},
    targets={"top_k": 3},
    # a 400-step run needs a teacher that moves within it
    ema={"decay": 0.99, "end_decay": 0.999, "anneal_end_step": 300},
    optim={"lr": 1e-3, "schedule": {"name": "tri_stage", "phase_ratio": [0.1, 0.6, 0.3], "init_lr_scale": 0.01, "final_lr_scale": 0.05}},
    # 8 clips counted (no token budget): a batch the 2-core demo can afford
    data={"batch_size": 8, "max_tokens": None, "options": {**BASE["data"]["options"], "min_sample_size": 16000, "max_sample_size": 32000}},
    runtime={"max_steps": 400, "log_every": 10, "save_every": 200, "health_after_step": 100000},
)

# data2vec 2.0: the teacher EMA-averages everything the student has but the local encoder (conv
# stack and projection) and the decoder; the positional conv, input LayerNorm and ALiBi scales
# are averaged, not copied (fairseq make_target_model with ema_local_encoder false).
V2_BASE = _with(
    BASE,
    encoder={"alibi": True, "alibi_scale_init": 1.0},
    masking={"name": "block-1d", "options": {"mask_prob": 0.5, "mask_length": 5, "mask_prob_adjust": 0.05}, "clone_batch": 8},
    decoder={"name": "conv1d", "options": {"channels": 384, "kernel": 7, "groups": 16, "layers": 4, "residual": True,
                                           "projection_layers": 1, "input_dropout": 0.1}, "mask_noise_std": 0.01},
    ema={"decay": 0.999, "end_decay": 0.99999, "anneal_end_step": 75000, "teacher_input": "features",
         "copy_params": [], "exclude_params": _TEACHER_EXCLUDES},
    # plain adam in base_audio_only_task.yaml: only fairseq's composite optimizer honours the
    # model's "no weight decay on 1-d / bias / alibi_scale" overrides, so every parameter decays
    optim={"lr": 7.5e-4, "no_decay_1d": False, "no_decay": [], "clip_norm": 0.0,
           "schedule": {"name": "cosine", "warmup_steps": 8000, "warmup_init_lr": 0.0, "min_lr": 0.0}},
    # fairseq: 1.0M samples per GPU (max_tokens) on 8 GPUs
    data={"max_tokens": 1_000_000},
)

# v2-tiny departs from v2-base where short CPU runs need it (issue 20, docs/benchmarks.md
# "data2vec 2.0 audio: what was tried"): 4 clones per clip instead of 8 (a step costs about 1.3x
# a tiny step on one thread instead of 2.2x), and tiny's tri-stage schedule instead of the cosine,
# which in runs of a few hundred steps lowers the learning rate before the student has learned;
# and the teacher at 0.999 from the start instead of 0.99 -> 0.999 over 300 steps: with the faster
# early teacher one seed in four fitted its targets (rel_loss 0.014) and probed 0.88 at step 480;
# at 0.999 four seeds of four probe 0.98-0.995 there (third round).
V2_TINY = _with(
    V2_BASE,
    model=TINY["model"],
    encoder={**TINY["encoder"], "alibi": True, "alibi_scale_init": 1.0},
    masking={**V2_BASE["masking"], "clone_batch": 4},
    targets=TINY["targets"],
    decoder={**V2_BASE["decoder"], "options": {**V2_BASE["decoder"]["options"], "channels": 64}},
    ema={**V2_BASE["ema"], "decay": 0.999, "end_decay": 0.999, "anneal_end_step": 300},
    optim={"lr": 1e-3, "schedule": TINY["optim"]["schedule"]},
    data=TINY["data"],
    runtime=TINY["runtime"],
)

PRESETS: dict[str, dict[str, Any]] = {"base": BASE, "large": LARGE, "tiny": TINY, "v2-base": V2_BASE, "v2-tiny": V2_TINY}
