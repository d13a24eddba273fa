"""AdamW with the recipes' weight-decay parameter groups."""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from d2v_core.config import OptimConfig


def no_decay(name: str, param: torch.Tensor, cfg: OptimConfig) -> bool:
    """True for parameters exempt from weight decay: 1-D ones and biases when ``no_decay_1d``
    (BEiT / data2vec 2.0), and names matching ``cfg.no_decay`` (position and CLS embeddings)."""
    if cfg.no_decay_1d and (param.ndim <= 1 or name.endswith(".bias")):
        return True
    return any(fnmatch(name, pattern) for pattern in cfg.no_decay)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_decay(name, p, cfg) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, as fairseq's ``adam`` with ``weight_decay``); the fused
    kernel where every parameter allows it (several times faster than the per-tensor path on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
