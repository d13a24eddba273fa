"""Presets of the image modality (partial RunConfig dicts; no torch).

``base`` and ``large`` follow facebookresearch/data2vec_vision (BEiT fork; spec section 1.2 and
decision 2): ViT-B/16 or ViT-L/16 at 224 px with pre-LN BEiT blocks, layer scale and a shared
relative position bias; 120/196 block masking; targets = mean of the top 6 block outputs, each
layer-normalised, then layer-normalised again; SmoothL1(beta 2) averaged over features; constant
whole-model EMA 0.9998 fed the raw (augmented) image; AdamW with warm-up and per-step cosine.
Step counts assume ImageNet-1k (1,281,167 images) and BEiT's ``len(dataset) // batch`` steps per
epoch. ``tiny`` is a small model on 32 px images that trains in minutes on a CPU.

``v2-base`` is data2vec 2.0 ViT-B/16 (fairseq ``config/v2/base_images_only_task.yaml``, spec
sections 2.1-2.5): post-LN blocks (10 + a 2-block prenet = 12 here, one stack), fixed sin-cos
positions, a LayerNorm before the blocks, 16 inverse-block masks per image (80% masked; the
``inverse-block`` masker comes from the separate ``d2v-plugin-maskers`` distribution), a sparse
student, the 2-D conv decoder, targets = mean of the top 10 FFN outputs instance-normed then
layer-normed, MSE / sqrt(D), CLS loss 0.01, EMA 0.9998 -> 0.99999. ``v2-tiny`` is the same
recipe at ``tiny``'s size.
"""

from __future__ import annotations

import copy
from typing import Any

IMAGENET_TRAIN_IMAGES = 1_281_167


def steps_per_epoch(batch_size: int, images: int = IMAGENET_TRAIN_IMAGES) -> int:
    """Optimiser steps per epoch as BEiT counts them (drop the last partial batch)."""
    return images // batch_size


_NO_DECAY = ["encoder.cls_token", "encoder.pos_embed*"]

_DATA2VEC_VISION_TARGETS = {"top_k": 6, "source": "block", "layer_norm": "layer", "post_norm": "layer"}
_DATA2VEC_VISION_LOSS = {"beta": 2.0, "scale": "inv_dim", "head": "linear"}
# data2vec_vision computes the teacher in fp32 whatever the student's autocast
_CONSTANT_EMA = {"decay": 0.9998, "end_decay": 0.9998, "anneal_end_step": 0, "teacher_input": "raw", "teacher_precision": "fp32"}
_BEIT_MASK = {"name": "block", "options": {"mask_ratio": 120 / 196, "min_num_patches": 16, "max_aspect": 1 / 0.3}}
_BEIT_AUGMENT = {"augment": True, "color_jitter": 0.4, "hflip": 0.5, "crop_scale": [0.08, 1.0], "interpolation": "bicubic"}


def _vit(dim: int, depth: int, heads: int, layer_scale: float, drop_path: float, attention_dropout: float) -> dict:
    return {
        "dim": dim, "depth": depth, "heads": heads, "ffn_dim": 4 * dim, "layout": "pre_ln",
        "dropout": 0.0, "attention_dropout": attention_dropout, "activation_dropout": 0.0,
        "drop_path": drop_path, "layerdrop": 0.0, "layer_scale_init": layer_scale, "norm_eps": 1e-6,
        "qkv_bias": "qv", "final_norm": True, "init": "beit",
    }


def _imagenet_run(model: dict, batch_size: int, lr: float, epochs: int, warmup_epochs: int) -> dict[str, Any]:
    per_epoch = steps_per_epoch(batch_size)
    return {
        "model": model,
        "encoder": {"image_size": 224, "patch_size": 16},
        "masking": copy.deepcopy(_BEIT_MASK),
        "targets": dict(_DATA2VEC_VISION_TARGETS),
        "loss": dict(_DATA2VEC_VISION_LOSS),
        "ema": dict(_CONSTANT_EMA),
        "optim": {
            "lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05, "no_decay_1d": True,
            "no_decay": list(_NO_DECAY), "clip_norm": 3.0,
            "schedule": {"name": "cosine", "warmup_steps": warmup_epochs * per_epoch, "warmup_init_lr": 0.0,
                         "min_lr": 1e-5},
        },
        "data": {"batch_size": batch_size, "num_workers": 8, "options": dict(_BEIT_AUGMENT)},
        "runtime": {"max_steps": epochs * per_epoch},
    }


#: ViT-B/16, data2vec_vision README: batch 128 x 16 GPUs, lr 2e-3, 800 epochs, 10 warm-up epochs,
#: layer scale 1e-4, drop_path 0.25, attention dropout 0.05.
BASE = _imagenet_run(_vit(768, 12, 12, 1e-4, 0.25, 0.05), batch_size=2048, lr=2e-3, epochs=800, warmup_epochs=10)

#: ViT-L/16 (first 800-epoch stage): batch 64 x 64 GPUs, lr 1e-3, 80 warm-up epochs, layer scale
#: 1e-5, drop_path 0.2, attention dropout 0.15; top 6 of 24 layers (18..23).
LARGE = _imagenet_run(_vit(1024, 24, 16, 1e-5, 0.2, 0.15), batch_size=4096, lr=1e-3, epochs=800, warmup_epochs=80)

#: 32 px images (e.g. the bundled digits) in 4 px patches (8 x 8 grid), 4 layers of 128.
#: Not from the paper: a shorter EMA horizon and milder crops so that 1,000 steps learn something.
TINY: dict[str, Any] = {
    "model": _vit(128, 4, 4, 0.1, 0.0, 0.0),
    "encoder": {"image_size": 32, "patch_size": 4},
    "masking": copy.deepcopy(_BEIT_MASK),
    "targets": {**_DATA2VEC_VISION_TARGETS, "top_k": 3},
    "loss": dict(_DATA2VEC_VISION_LOSS),
    "ema": {"decay": 0.996, "end_decay": 0.999, "anneal_end_step": 500, "teacher_input": "raw", "teacher_precision": "fp32"},
    "optim": {
        "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05, "no_decay_1d": True,
        "no_decay": list(_NO_DECAY), "clip_norm": 3.0,
        "schedule": {"name": "cosine", "warmup_steps": 100, "warmup_init_lr": 0.0, "min_lr": 1e-5},
    },
    "data": {"batch_size": 32, "options": {**_BEIT_AUGMENT, "hflip": 0.0, "crop_scale": [0.5, 1.0]}},
    "runtime": {"max_steps": 1000, "log_every": 20, "save_every": 500},
}


def _v2_vit(dim: int, depth: int, heads: int) -> dict:
    return {
        "dim": dim, "depth": depth, "heads": heads, "ffn_dim": 4 * dim, "layout": "post_ln",
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "drop_path": 0.0, "layerdrop": 0.0,
        "layer_scale_init": None, "norm_eps": 1e-6, "qkv_bias": "qkv", "final_norm": False, "init": "bert",
    }


_V2_ENCODER = {"position": "sincos", "input_norm": True, "init": "mae"}
_V2_DECODER = {"name": "conv2d", "mask_noise_std": 0.01,
               "options": {"channels": 768, "kernel": 3, "groups": 16, "layers": 6, "residual": True,
                           "projection_layers": 1, "input_dropout": 0.0}}
_V2_AUGMENT = {"augment": True, "color_jitter": 0.0, "hflip": 0.5, "crop_scale": [0.2, 1.0], "interpolation": "bicubic"}

#: data2vec 2.0 ViT-B/16: 16 x 16 GPUs x batch 16, lr 1e-3, 375,300 steps with 50,040 of warm-up.
V2_BASE: dict[str, Any] = {
    "model": _v2_vit(768, 12, 12),
    "encoder": {"image_size": 224, "patch_size": 16, **_V2_ENCODER},
    "masking": {"name": "inverse-block", "options": {"mask_prob": 0.8, "mask_length": 3, "mask_prob_adjust": 0.07},
                "clone_batch": 16},
    "decoder": copy.deepcopy(_V2_DECODER),
    "targets": {"top_k": 10, "source": "ffn", "layer_norm": "instance", "post_norm": "layer"},
    "loss": {"beta": 0.0, "scale": "inv_sqrt_dim", "head": "linear", "cls_weight": 0.01},
    "ema": {"decay": 0.9998, "end_decay": 0.99999, "anneal_end_step": 100_000, "teacher_input": "raw",
            "exclude_params": ["encoder.mask_embedding"]},
    "optim": {
        # eps: base_images_only_task.yaml sets no adam_eps, so fairseq's default 1e-8 applies
        "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05, "no_decay_1d": True, "no_decay": [],
        "clip_norm": 4.0,
        "schedule": {"name": "cosine", "warmup_steps": 50_040, "warmup_init_lr": 0.0, "min_lr": 0.0},
    },
    "data": {"batch_size": 256, "num_workers": 8, "options": dict(_V2_AUGMENT)},
    "runtime": {"max_steps": 375_300, "health_after_step": 5000, "min_target_var": 0.0, "min_pred_var": 0.0},
}

V2_TINY: dict[str, Any] = {
    **copy.deepcopy(V2_BASE),
    "model": _v2_vit(128, 4, 4),
    "encoder": {"image_size": 32, "patch_size": 4, **_V2_ENCODER},
    "decoder": {**copy.deepcopy(_V2_DECODER), "options": {**_V2_DECODER["options"], "channels": 128}},
    "targets": {"top_k": 3, "source": "ffn", "layer_norm": "instance", "post_norm": "layer"},
    "ema": {"decay": 0.996, "end_decay": 0.999, "anneal_end_step": 500, "teacher_input": "raw",
            "exclude_params": ["encoder.mask_embedding"]},
    "optim": {**copy.deepcopy(V2_BASE["optim"]),
              "schedule": {"name": "cosine", "warmup_steps": 100, "warmup_init_lr": 0.0, "min_lr": 1e-5}},
    "data": {"batch_size": 32, "options": {**_V2_AUGMENT, "hflip": 0.0, "crop_scale": [0.5, 1.0]}},
    "runtime": {"max_steps": 1000, "log_every": 20, "save_every": 500, "min_target_var": 0.0, "min_pred_var": 0.0},
}

PRESETS: dict[str, dict[str, Any]] = {"tiny": TINY, "base": BASE, "large": LARGE, "v2-base": V2_BASE, "v2-tiny": V2_TINY}
