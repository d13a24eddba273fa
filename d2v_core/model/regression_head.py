"""The student's regression head: Linear(D, D), or fairseq text's 2-layer MLP."""

from __future__ import annotations

from torch import nn


def build_regression_head(dim: int, kind: str = "linear", hidden_mult: int = 2) -> nn.Module:
    """``linear``: Linear(D, D). ``mlp``: Linear(D, mult*D) -> GELU -> Linear(mult*D, D)."""
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden_mult * dim), nn.GELU(), nn.Linear(hidden_mult * dim, dim))
    raise ValueError(f"unknown regression head {kind!r} (use 'linear' or 'mlp')")
