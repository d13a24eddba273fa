"""Presets: partial run configs (plain data)."""

TINY = {
    "model": {"dim": 32, "depth": 2, "heads": 4, "ffn_dim": 64, "dropout": 0.0, "attention_dropout": 0.0},
    "encoder": {"input_dim": 16, "max_positions": 256},
    "targets": {"top_k": 2, "source": "ffn", "per_layer_norm": "instance", "post_norm": "none"},
    "ema": {"decay": 0.99, "end_decay": 0.999, "anneal_end_step": 100, "teacher_input": "features",
            "exclude_params": ["encoder.proj.*", "encoder.mask_embedding"]},
    "optim": {"lr": 1e-3, "schedule": {"name": "cosine", "warmup_steps": 10}},
    "data": {"batch_size": 8, "options": {"max_len": 64}},
    "runtime": {"max_steps": 50, "log_every": 5, "save_every": 25, "health_after_step": 10_000, "progress": False},
}

PRESETS = {"tiny": TINY}
