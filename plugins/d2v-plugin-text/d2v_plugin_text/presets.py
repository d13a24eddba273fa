"""Presets of the text modality (partial RunConfig dicts; no torch here).

- ``base``: data2vec text Base as in the paper: RoBERTa-base sizes, BERT masking (15%, 80/10/10),
  fairseq's optimisation and EMA (``config/text/pretraining/base.yaml``).
- ``base-span``: fairseq's *released* config instead: 35%/4-token spans, all ``<mask>``.
- ``tiny``: a CPU-sized model on the demo corpus and tokenizer (256 wide, 2 deep), fairseq's
  released span masking and a teacher at 0.999 from the first step; learns within minutes.
- ``tiny-bert``: ``tiny`` with the paper's BERT masking.
- ``v2-base``: data2vec 2.0 text Base (fairseq ``config/v2/base_text_only_task.yaml``, spec
  section 2.5): 8 random masks (48%) per 512-token block, a sparse student (masked tokens are
  dropped, no ``<mask>``), the 1-D conv decoder with a 2-layer projection, targets = mean of all
  12 FFN outputs instance-normed, MSE, the teacher = the Transformer on the student's embeddings.
  ``v2-tiny``: the same recipe at ``tiny``'s size (256 wide, 2 deep), 4 masks a row.

Every preset lets the teacher see the raw, unmasked sequence (the paper; fairseq's code gives it
only the masked tokens, issue 4881) and copies the embeddings from the student each step
(fairseq's effective EMA skip keys).
"""

from __future__ import annotations

from typing import Any

from d2v_core import deep_merge

_EMBEDDINGS = ["encoder.embed_tokens.*", "encoder.embed_positions.*", "encoder.layernorm_embedding.*"]

_COMMON: dict[str, Any] = {
    "masking": {"name": "bert", "options": {}},
    "encoder": {"random_token_prob": 0.1, "leave_unmasked_prob": 0.1},
    "targets": {"top_k": 10, "source": "ffn", "per_layer_norm": "layer", "post_norm": "none"},
    "loss": {"beta": 4.0, "scale": 1.0, "head": "mlp", "head_hidden_mult": 2},
    "ema": {"teacher_input": "raw", "copy_params": list(_EMBEDDINGS), "exclude_params": []},
    # fairseq's data2vec_text has no collapse stop (target_var / pred_var are not even computed)
    "runtime": {"min_target_var": 0.0, "min_pred_var": 0.0},
}

BASE: dict[str, Any] = deep_merge(
    _COMMON,
    {
        "model": {
            "dim": 768, "depth": 12, "heads": 12, "ffn_dim": 3072, "layout": "post_ln",
            "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
            "norm_eps": 1e-5, "qkv_bias": "qkv", "final_norm": False, "init": "bert",
        },
        "encoder": {"max_positions": 512},
        "ema": {"decay": 0.999, "end_decay": 0.9999, "anneal_end_step": 300_000},
        "optim": {
            "lr": 2e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "no_decay_1d": False,
            "clip_norm": 5.0,
            "schedule": {"name": "cosine", "warmup_steps": 10_000, "warmup_init_lr": 0.0, "min_lr": 0.0},
        },
        # fairseq: max_tokens 8192 = 16 rows of 512 tokens per GPU x 16 GPUs; batch_size counts
        # rows packed from the whole corpus (d2v_core.data.batching.pack_blocks).
        "data": {"batch_size": 256, "options": {"block_size": 512, "break_mode": "complete_doc"}},
        "runtime": {"max_steps": 1_000_000},
    },
)

_SPAN = {
    "masking": {"name": "text-span", "options": {"mask_prob": 0.35, "span_length": 4}},
    "encoder": {"random_token_prob": 0.0, "leave_unmasked_prob": 0.0},
}

# tiny's shape and optimisation, with the paper's BERT masking (``tiny-bert``)
_TINY_BERT: dict[str, Any] = deep_merge(
    _COMMON,
    {
        # 256 wide and 2 deep (v2-tiny's shape) instead of 128 x 4: on the shared 8-category probe
        # under v1_vs_v2.py 0.537 (+8.2 over random init) against 0.412 (-3.8) for 128 x 4;
        # 0.542 / 0.545 after 2,200 fixed updates on two seeds (docs/benchmarks.md, "Text: why
        # pretraining buys little", sixth round)
        "model": {
            "dim": 256, "depth": 2, "heads": 4, "ffn_dim": 1024, "layout": "post_ln",
            "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
            "norm_eps": 1e-5, "qkv_bias": "qkv", "final_norm": False, "init": "bert",
        },
        "encoder": {"tokenizer": None, "max_positions": 128},
        "targets": {"top_k": 2},
        # a teacher at 0.999 from the first step: 0.99 -> 0.999 let the targets follow the student
        # too closely for the features to stay topical (third and fifth rounds)
        "ema": {"decay": 0.999, "end_decay": 0.999, "anneal_end_step": 1000},
        "optim": {
            "lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "no_decay_1d": False,
            "clip_norm": 5.0,
            "schedule": {"name": "cosine", "warmup_steps": 100, "warmup_init_lr": 0.0, "min_lr": 0.0},
        },
        # 16 rows of 128: what 32 demo documents packed per batch gave before rows were packed
        # from the whole corpus (about 17), so a tiny step costs what it did
        "data": {"batch_size": 16, "options": {"block_size": 128, "break_mode": "complete_doc"}},
        "runtime": {"max_steps": 1000, "log_every": 50, "save_every": 500},
    },
)

# fairseq's released span masking: at tiny size 1-2 points over BERT masking at 750 updates
TINY: dict[str, Any] = deep_merge(_TINY_BERT, _SPAN)

_V2: dict[str, Any] = {
    "masking": {"name": "text-random", "options": {"mask_prob": 0.48}, "clone_batch": 8},
    # data2vec2.py stops on collapse (min_target_var 0.1, min_pred_var 0.01) for every modality
    "runtime": {"min_target_var": 0.1, "min_pred_var": 0.01},
    "decoder": {"name": "conv1d", "mask_noise_std": 0.01,
                "options": {"channels": 768, "kernel": 9, "groups": 1, "layers": 5, "residual": False,
                            "projection_layers": 2, "projection_ratio": 2.0, "input_dropout": 0.1}},
    "targets": {"top_k": 12, "source": "ffn", "per_layer_norm": "instance", "post_norm": "none"},
    "loss": {"beta": 0.0, "scale": 1.0, "head": "linear"},
    # fairseq ema_encoder_only: the teacher is the Transformer, fed the student's embeddings
    # through the student's own positions, LayerNorm and dropout (in train mode)
    "ema": {"decay": 0.9999, "end_decay": 0.99999, "anneal_end_step": 100_000, "teacher_input": "features",
            "teacher_context": "student", "copy_params": list(_EMBEDDINGS), "exclude_params": []},
    "optim": {
        "lr": 2e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.01, "no_decay_1d": True, "clip_norm": 1.0,
        "schedule": {"name": "cosine", "warmup_steps": 4000, "warmup_init_lr": 0.0, "min_lr": 0.0},
    },
}

V2_BASE: dict[str, Any] = deep_merge(
    BASE,
    deep_merge(_V2, {
        "model": {"layerdrop": 0.0},
        # fairseq: batch_size 4 blocks of 512 tokens (sample_break_mode none) on each of 16 GPUs
        "data": {"batch_size": 64, "options": {"block_size": 512, "break_mode": "none", "drop_partial_row": True}},
    }),
)

V2_TINY: dict[str, Any] = deep_merge(
    _TINY_BERT,
    deep_merge(_V2, {
        # 256 wide and 2 deep with 4 masks a sample instead of 128 x 4 and 8: on the shared
        # 8-category probe 0.519-0.526 after 600 updates (+4.7 to +5.4 over random init, two
        # seeds) against 0.479 (+2.8) before, at 1.2 CPU s an update instead of about 2
        # (docs/benchmarks.md, "Text: why pretraining buys little", third round)
        "model": {"dim": 256, "depth": 2, "heads": 4, "ffn_dim": 1024},
        "masking": {"clone_batch": 4},
        "decoder": {"options": {"channels": 128}},
        "targets": {"top_k": 2},
        "ema": {"decay": 0.99, "end_decay": 0.999, "anneal_end_step": 1000},
        "optim": {"lr": 1e-3, "schedule": {"name": "cosine", "warmup_steps": 100, "warmup_init_lr": 0.0, "min_lr": 0.0}},
        "data": {"options": {"block_size": 128, "break_mode": "none", "drop_partial_row": True}},
    }),
)

PRESETS: dict[str, dict[str, Any]] = {
    "v2-base": V2_BASE,
    "v2-tiny": V2_TINY,
    "base": BASE,
    "base-span": deep_merge(BASE, _SPAN),
    "tiny": TINY,
    "tiny-bert": _TINY_BERT,
}
