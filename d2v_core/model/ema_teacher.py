"""The EMA teacher: an fp32 copy of (part of) the student, updated after each optimiser step."""

from __future__ import annotations

import copy
from fnmatch import fnmatch

import torch
from torch import nn

from d2v_core.config import EMAConfig


def ema_decay_at(step: int, decay: float, end_decay: float, anneal_end_step: int) -> float:
    """tau after ``step`` updates: linear from ``decay`` to ``end_decay`` over ``anneal_end_step``,
    then constant (fairseq ``get_annealed_rate``: ``end - (end - start) * (1 - step / T)``)."""
    if decay == end_decay or step >= anneal_end_step:
        return end_decay
    return end_decay - (end_decay - decay) * (1.0 - step / anneal_end_step)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


class EMATeacher:
    """Holds ``model``, the teacher: a deep copy of the student scope, in eval mode, no grads,
    fp32. :meth:`update` averages the parameters, copies those matching ``cfg.copy_params`` and
    all buffers, and leaves ``cfg.exclude_params`` alone (the teacher never uses them)."""

    def __init__(self, student: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.model = copy.deepcopy(student).float().eval().requires_grad_(False)
        names = [n for n, _ in self.model.named_parameters()]
        self.excluded = [n for n in names if _matches(n, cfg.exclude_params)]
        self.copied = [n for n in names if n not in self.excluded and _matches(n, cfg.copy_params)]
        self.averaged = [n for n in names if n not in self.excluded and n not in self.copied]
        for n in self.excluded:  # free the memory of parts the teacher never runs
            self._param(n).data = torch.empty(0, device=self._param(n).device)
        self.tau = cfg.decay

    def _param(self, name: str) -> nn.Parameter:
        return self.model.get_parameter(name)

    def decay_at(self, step: int) -> float:
        return ema_decay_at(step, self.cfg.decay, self.cfg.end_decay, self.cfg.anneal_end_step)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One EMA step after update ``step`` (1-based): ``t = tau * t + (1 - tau) * s``. Returns tau."""
        self.tau = tau = self.decay_at(step)
        src = dict(student.named_parameters())
        if tau < 1.0 and self.averaged:
            t = [self._param(n) for n in self.averaged]
            s = [src[n].detach().to(torch.float32) for n in self.averaged]
            torch._foreach_lerp_(t, s, 1.0 - tau)
        if self.copied:
            torch._foreach_copy_([self._param(n) for n in self.copied], [src[n].detach() for n in self.copied])
        t_bufs = dict(self.model.named_buffers())
        for n, b in student.named_buffers():
            if n in t_bufs:
                t_bufs[n].copy_(b)
        return tau

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not _matches(k, self.cfg.exclude_params)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise KeyError(f"teacher state lacks {missing[:3]}")
        self.model.load_state_dict(state, strict=False)
