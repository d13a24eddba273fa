"""The student's regression head: Linear(D, D), or fairseq text's 2-layer MLP."""

from __future__ import annotations

from torch import nn


def build_regression_head(dim: int, kind: str = "linear", hidden_mult: int = 2, init: str | None = None) -> nn.Module:
    """``linear``: Linear(D, D). ``mlp``: Linear(D, mult*D) -> GELU -> Linear(mult*D, D).
    ``init="beit"``: weights from a normal of std 0.02 truncated at +/-0.02 and zero biases
    (data2vec_vision ``trunc_normal_(lm_head.weight, std=init_std)``); otherwise torch's default."""
    if kind == "linear":
        head: nn.Module = nn.Linear(dim, dim)
    elif kind == "mlp":
        head = nn.Sequential(nn.Linear(dim, hidden_mult * dim), nn.GELU(), nn.Linear(hidden_mult * dim, dim))
    else:
        raise ValueError(f"unknown regression head {kind!r} (use 'linear' or 'mlp')")
    if init == "beit":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)
    return head
