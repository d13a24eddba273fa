"""Learning-rate schedules as pure functions of the update count (fairseq semantics)."""

from __future__ import annotations

import math
from typing import Callable

from d2v_core.config import ScheduleConfig
from d2v_core.interfaces import ScheduleContext


def tri_stage_lr(step: int, peak_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """fairseq ``tri_stage``: linear warm-up from ``init_lr_scale*peak``, hold at peak, then
    exponential decay to ``final_lr_scale*peak``, in ``phase_ratio`` of ``max_steps``; constant after."""
    warmup = int(max_steps * cfg.phase_ratio[0])
    hold = int(max_steps * cfg.phase_ratio[1])
    decay = int(max_steps * cfg.phase_ratio[2])
    init_lr, final_lr = cfg.init_lr_scale * peak_lr, cfg.final_lr_scale * peak_lr
    if step < warmup:
        return init_lr + (peak_lr - init_lr) / warmup * step
    step -= warmup
    if step < hold:
        return peak_lr
    step -= hold
    if step <= decay:
        return peak_lr * math.exp(math.log(cfg.final_lr_scale) / max(decay, 1) * step)
    return final_lr


def cosine_lr(step: int, peak_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """fairseq ``cosine`` / BEiT: linear warm-up from ``warmup_init_lr`` over ``warmup_steps``,
    then a half cosine from peak to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.warmup_init_lr + (peak_lr - cfg.warmup_init_lr) * step / cfg.warmup_steps
    period = max(max_steps - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / period, 1.0)
    return cfg.min_lr + 0.5 * (peak_lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, peak_lr: float, max_steps: int, cfg: ScheduleConfig) -> float:
    """The learning rate of update ``step`` (0-based) under one of the core's schedules."""
    if cfg.name == "tri_stage":
        return tri_stage_lr(step, peak_lr, max_steps, cfg)
    if cfg.name == "cosine":
        return cosine_lr(step, peak_lr, max_steps, cfg)
    if cfg.name == "constant":
        return peak_lr
    raise ValueError(f"optim.schedule.name {cfg.name!r} is not one of the core's schedules; build it with build_schedule")


def build_core_schedule(options: None, ctx: ScheduleContext) -> Callable[[int], float]:
    """Factory of the core's ``schedule`` components (their settings are ``optim.schedule``'s
    own fields, ``ctx.schedule``): step -> learning rate."""
    return lambda step: lr_at(step, ctx.peak_lr, ctx.max_steps, ctx.schedule)
