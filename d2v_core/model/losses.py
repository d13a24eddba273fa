"""The regression loss and the collapse statistics (pure functions)."""

from __future__ import annotations

import math

import torch
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
def feature_moments(y: Tensor) -> Tensor:
    """This process's sufficient statistics of the rows of ``y`` (..., D) for :func:`feature_std`:
    (4, D) fp64 rows ``count``, ``sum``, ``sum of squared deviations from the local mean`` and
    ``count * local mean**2``. Summed elementwise over ranks (one all-reduce at a log step),
    they give the variance over all ranks' rows; nothing here waits on other processes."""
    y = y.reshape(-1, y.size(-1)).float()
    n = y.size(0)  # a shape: known on the host
    if n == 0:
        return y.new_zeros(4, y.size(-1), dtype=torch.float64)
    var, mean = torch.var_mean(y, 0, correction=0)  # centred in fp32: as stable as y.var(0)
    mean, m2 = mean.double(), var.double() * n
    return torch.stack([torch.full_like(mean, float(n)), mean * n, m2, mean**2 * n])


def feature_std(moments: Tensor) -> Tensor:
    """fairseq ``compute_var`` from summed :func:`feature_moments` (..., 4, D) -> (...): mean over
    features of sqrt(var + 1e-6), the (unbiased) variance taken over all the rows the moments
    were summed over (fairseq all-reduces count, sum and sum of squares across ranks). Logged
    as ``target_var`` and ``pred_var``."""
    n, s, m2, q = moments.unbind(-2)
    # the pooled sum of squared deviations: within each rank's rows plus between the ranks' means
    var = (m2 + q - s**2 / n) / (n - 1)
    return torch.sqrt(var + 1e-6).mean(-1)
