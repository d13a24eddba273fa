"""Declarative key maps: tables that rename another framework's tensors onto d2v's modules.

A rule pairs a source and a target name template with ``{placeholders}`` (each matches one
dotted component): ``Rename("encoder.layers.{i}.fc1.{kind}", "transformer.layers.{i}.fc1.{kind}")``.
:class:`Fuse` concatenates several source tensors along dim 0 (fairseq's separate ``q_proj``,
``k_proj``, ``v_proj`` -> d2v's fused ``qkv``). Because the templates work both ways, a tensor
the d2v model needs but the source lacks is reported under the source's own name, and one table
serves an import (:func:`apply_key_map`) and an export (:func:`export_key_map`, which splits
what :class:`Fuse` concatenates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from d2v_core.errors import CheckpointError

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _pattern(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^.]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


@dataclass(frozen=True)
class Rename:
    """One source tensor -> one target tensor, optionally through ``transform``; ``inverse``
    undoes it for :func:`export_key_map`."""

    source: str
    target: str
    transform: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)
    inverse: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fuse:
    """Source tensors whose ``{part}`` placeholder takes each of ``parts`` in turn,
    concatenated along dim 0 in that order into one target."""

    source: str
    target: str
    parts: tuple[str, ...] = ("q", "k", "v")


Rule = Rename | Fuse


@dataclass
class MappedState:
    """The renamed tensors and, in order, the source keys no rule used."""

    tensors: dict[str, Tensor]
    unused: list[str]


def apply_key_map(state: Mapping[str, Tensor], rules: Sequence[Rule]) -> MappedState:
    """Apply ``rules`` (the first that matches a key wins) to ``state``."""
    compiled = [(r, _pattern(r.source)) for r in rules]
    out: dict[str, Tensor] = {}
    pending: dict[str, tuple[Fuse, dict[str, Tensor]]] = {}
    unused = []
    for key, value in state.items():
        for rule, pat in compiled:
            m = pat.fullmatch(key)
            if m is None:
                continue
            groups = m.groupdict()
            if isinstance(rule, Fuse):
                part = groups.pop("part")
                if part not in rule.parts:
                    continue
                target = rule.target.format(**groups)
                pending.setdefault(target, (rule, {}))[1][part] = value
            else:
                out[rule.target.format(**groups)] = value if rule.transform is None else rule.transform(value)
            break
        else:
            unused.append(key)
    for target, (rule, parts) in pending.items():
        if set(parts) == set(rule.parts):
            out[target] = torch.cat([parts[p] for p in rule.parts], dim=0)
    return MappedState(out, unused)


def export_key_map(state: Mapping[str, Tensor], rules: Sequence[Rule]) -> MappedState:
    """``rules`` the other way (the first whose target matches a key wins): d2v's tensors under
    the source's names, a :class:`Fuse` target split along dim 0 into its parts (equal sizes),
    a :class:`Rename` through its ``inverse``. ``unused``: the d2v keys no rule takes."""
    compiled = [(r, _pattern(r.target)) for r in rules]
    out: dict[str, Tensor] = {}
    unused = []
    for key, value in state.items():
        for rule, pat in compiled:
            m = pat.fullmatch(key)
            if m is None:
                continue
            groups = m.groupdict()
            if isinstance(rule, Fuse):
                for part, chunk in zip(rule.parts, value.chunk(len(rule.parts), dim=0), strict=True):
                    out[rule.source.format(part=part, **groups)] = chunk
            elif rule.transform is not None and rule.inverse is None:
                raise ValueError(f"the key map's rule for {rule.target!r} has a transform but no inverse: it cannot export")
            else:
                out[rule.source.format(**groups)] = value if rule.inverse is None else rule.inverse(value)
            break
        else:
            unused.append(key)
    return MappedState(out, unused)


def source_names(target: str, rules: Sequence[Rule]) -> list[str]:
    """The source key(s) a rule would read for ``target`` (empty if no rule writes it)."""
    for rule in rules:
        m = _pattern(rule.target).fullmatch(target)
        if m is None:
            continue
        if isinstance(rule, Fuse):
            return [rule.source.format(part=p, **m.groupdict()) for p in rule.parts]
        return [rule.source.format(**m.groupdict())]
    return []


def check_complete(mapped: Mapping[str, Tensor], expected: Mapping[str, Tensor], rules: Sequence[Rule], what: str,
                   source: Mapping[str, Tensor] | None = None, optional: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` naming the first tensor ``expected`` needs that ``mapped``
    lacks (under its source name) or whose shape differs. ``optional``: targets that may stay
    as they are (e.g. a fresh regression head)."""
    skip = set(optional)
    for key, ref in expected.items():
        if key in skip:
            continue
        if key not in mapped:
            names = [n for n in source_names(key, rules) if source is None or n not in source] or source_names(key, rules)
            if not names:  # no rule writes it: the importer's table is incomplete
                raise CheckpointError(f"{what}: no rule of the key map gives d2v's {key!r}")
            named = " / ".join(repr(n) for n in names)
            raise CheckpointError(f"{what}: missing key {named} (d2v's {key!r} needs it); the checkpoint does not fit its own config")
        if tuple(mapped[key].shape) != tuple(ref.shape):
            src = " / ".join(source_names(key, rules)) or key
            raise CheckpointError(f"{what}: {src} has shape {tuple(mapped[key].shape)}, d2v's {key!r} needs {tuple(ref.shape)}")
    extra = sorted(set(mapped) - set(expected))
    if extra:  # a rule that writes a name the model lacks is a bug in the table, not in the file
        raise CheckpointError(f"{what}: the key map writes {extra[0]!r}, which this d2v model does not have")
