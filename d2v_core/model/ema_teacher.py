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


def _local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each rank's own rows of FSDP2-sharded (DTensor) parameters, as views; others unchanged."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


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

    def _pairs(self, student: nn.Module) -> tuple:
        """(teacher, student) tensor lists for averaging, copying and buffers, built once per
        student module (the lookups by name cost more than the update itself on small models)."""
        if getattr(self, "_pairs_for", None) is not student:
            src = dict(student.named_parameters())
            t_bufs = dict(self.model.named_buffers())
            bufs = [(t_bufs[n], b) for n, b in student.named_buffers() if n in t_bufs]
            self._cached_pairs = (
                [self._param(n) for n in self.averaged], [src[n] for n in self.averaged],
                [self._param(n) for n in self.copied], [src[n] for n in self.copied],
                [t for t, _ in bufs], [b for _, b in bufs],
            )
            self._pairs_for = student
        return self._cached_pairs

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """One EMA step after update ``step`` (1-based): ``t = tau * t + (1 - tau) * s``. Returns tau.
        Pass the same ``student`` module every step (parameters are matched by name once). With
        FSDP2 the teacher is sharded like the student and each rank averages its own shard."""
        self.tau = tau = self.decay_at(step)
        t_avg, s_avg, t_copy, s_copy, t_buf, s_buf = (_local(ts) for ts in self._pairs(student))
        if tau < 1.0 and t_avg:
            torch._foreach_lerp_(t_avg, [p.detach().to(torch.float32) for p in s_avg], 1.0 - tau)
        if t_copy:
            torch._foreach_copy_(t_copy, [p.detach() for p in s_copy])
        if t_buf:
            torch._foreach_copy_(t_buf, s_buf)
        return tau

    def state_dict(self, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The teacher's tensors without the excluded ones; ``full``: an already gathered state
        dict of :attr:`model` (FSDP2) to filter instead of the local one."""
        state = self.model.state_dict() if full is None else full
        return {k: v for k, v in state.items() if not _matches(k, self.cfg.exclude_params)}

    def check_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.state_dict() if k not in state]
        if missing:
            raise KeyError(f"teacher state lacks {missing[:3]}")

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_state_dict(state)
        self.model.load_state_dict(state, strict=False)
