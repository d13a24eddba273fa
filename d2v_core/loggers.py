"""The ``logger`` kind: metrics sinks a plugin can add beside the core's JSONL and TensorBoard.

A ``logger`` component's factory is called as ``factory(options, ctx)`` (``options``: its
validated :class:`d2v_core.Options` from ``runtime.logger_options.<name>``, or ``None``; ``ctx``: a
:class:`LoggerContext`) and returns a :class:`MetricsLogger`. Only rank 0 builds loggers. The
trainer gives every logger the same calls: :meth:`~MetricsLogger.log_config` once, then
:meth:`~MetricsLogger.log` with one dict of scalars per log step, then :meth:`~MetricsLogger.close`.
A logger that raises is reported once and left out for the rest of the run; training goes on.
No torch here: a logger's module stays cheap to import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class LoggerContext:
    """What a logger factory may know of the run: its folder (``runtime.out_dir``), the number of
    updates, the step it starts from (a resumed run: the checkpoint's step; rows the core's JSONL
    logger keeps are those up to it) and the modality and preset, for naming a tracked run."""

    run_dir: Path
    max_steps: int
    start_step: int = 0
    modality: str = ""
    preset: str | None = None


class MetricsLogger(ABC):
    """A metrics sink (a component of kind ``logger``), used on rank 0 only."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Called once before the first step with the resolved run config as plain data (nested
        mappings, as ``config.yaml`` holds it). Default: nothing."""
        return None

    @abstractmethod
    def log(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One log step's values (``loss``, ``rel_loss``, ``lr``, ..., ``probe_acc`` where a probe
        ran): numbers, keyed by name. Called once or more per log step, in step order."""

    def close(self, status: str = "finished") -> None:
        """The run ended: flush and release files. ``status``: ``"finished"`` (the last step, or a
        stop signal after its checkpoint), ``"failed"`` (an error ended training) or ``"killed"``
        (interrupted without a checkpoint). Default: nothing."""
        return None
