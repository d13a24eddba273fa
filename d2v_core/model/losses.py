"""The regression loss and the collapse statistics (pure functions)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def loss_scale(scale: str | float, dim: int) -> float:
    """``inv_sqrt_dim`` -> 1/sqrt(D) (fairseq audio), ``inv_dim`` -> 1/D (a mean over features,
    data2vec_vision's ``reduction='mean'``), a number -> itself."""
    if scale == "inv_sqrt_dim":
        return 1.0 / math.sqrt(dim)
    if scale == "inv_dim":
        return 1.0 / dim
    return float(scale)


def regression_loss(pred: Tensor, target: Tensor, beta: float, scale: float) -> Tensor:
    """Per-position loss (N,): MSE (``beta`` 0) or SmoothL1(beta), summed over features, times
    ``scale``. Computed in fp32."""
    pred, target = pred.float(), target.float()
    if beta == 0:
        per = F.mse_loss(pred, target, reduction="none")
    else:
        per = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return per.sum(-1) * scale


@torch.no_grad()
def feature_std(y: Tensor) -> Tensor:
    """fairseq ``compute_var``: mean over features of sqrt(var + 1e-6), the (unbiased) variance
    taken over all positions of all ranks. Logged as ``target_var`` and ``pred_var``."""
    y = y.reshape(-1, y.size(-1)).float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        n = torch.tensor(float(y.size(0)), device=y.device)
        s, ss = y.sum(0), (y**2).sum(0)
        for t in (n, s, ss):
            dist.all_reduce(t)
        var = ss / (n - 1) - s**2 / (n * (n - 1))
    else:
        var = y.var(0)
    return torch.sqrt(var + 1e-6).mean()
