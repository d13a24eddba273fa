"""The one exportability check of the exporters: a table of the run-config values a target
model class supports, checked before anything is written; every problem in one line, as a
:class:`~d2v_core.errors.NotExportableError`.

An exporter declares ``SUPPORTS = (Supports("model.layout", ("post_ln",), "its layers are
post-LN"), ...)`` and calls ``check_exportable(cfg, "Data2VecTextModel", SUPPORTS)``; what a
table cannot say (a property of the built model, like a non-square patch grid) is passed as
``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from torch import Tensor, nn

from d2v_core.errors import ExportError, NotExportableError, first_line


@dataclass(frozen=True)
class Supports:
    """The target represents ``field`` (a dotted path in the run config, e.g. ``model.layout``
    or ``encoder.alibi``) only with one of ``values``; ``why`` says what it has instead."""

    field: str
    values: tuple[Any, ...]
    why: str


def config_value(cfg: Any, field: str) -> Any:
    """``cfg``'s value at the dotted ``field`` (through typed sections and plain dicts)."""
    value = cfg
    for name in field.split("."):
        value = value[name] if isinstance(value, Mapping) else getattr(value, name)
    return value


def _show(value: Any) -> str:
    """A value as ``--set`` takes it: ``true``, ``null``, ``pre_ln``, ``0.1``."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def check_exportable(cfg: Any, target: str, supports: Iterable[Supports], problems: Iterable[str] = ()) -> None:
    """Raise :class:`NotExportableError` naming every field of ``cfg`` outside what ``target``
    supports, and every one of ``problems``, in one line (``field=value (why)``)."""
    found = [f"{s.field}={_show(v)} ({s.why})" for s in supports if (v := config_value(cfg, s.field)) not in s.values]
    found += list(problems)
    if found:
        raise NotExportableError(f"cannot export to hf: {target} cannot represent this model: {'; '.join(found)}")


def load_exported(module: nn.Module, state: Mapping[str, Tensor], target: str) -> None:
    """Load the mapped ``state`` into the target model, strictly: a name or shape the key map
    got wrong is an :class:`ExportError` naming the first problem (a bug, not a user error)."""
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ExportError(f"cannot export to hf: the weights do not fit {target}: {first_line(exc)}") from None


def load_imported(module: nn.Module, state: Mapping[str, Tensor], src: Any, may_miss: Iterable[str] = ()) -> None:
    """Load imported weights into a d2v ``module``: every tensor of ``state`` must fit, and only
    ``may_miss`` (names or ``prefix.``es: a fresh regression head, a mask embedding the
    directory lacks) may stay as initialised; otherwise an :class:`ExportError` naming them."""
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise ExportError(f"{src}: weights do not fit the d2v model: {first_line(exc)}") from None
    optional = tuple(may_miss)
    missing = [k for k in missing if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in optional)]
    if missing or unexpected:
        raise ExportError(f"{src}: weights do not fit the d2v model (missing {missing[:3]}, unexpected {list(unexpected)[:3]})")
