"""The online probe (``eval`` section): ``d2v probe``'s linear probe, run by rank 0 during
pretraining on the current student (and, with ``eval.teacher``, the teacher).

The manifests are checked before the run starts (:func:`probe_sources`: a usage error, exit 2);
their records are decoded once, at the first probe, and kept as collated model inputs, so each
probe costs only the forward passes and the fit. A probe that fails (records that no longer
decode, a fit error) prints one line and returns no values: it never stops training. The probe
issues no collective: with DDP the other ranks go on to the next step and wait there for rank 0
in its all-reduce. With FSDP on several processes the model is sharded and a forward pass on rank
0 alone would wait for the others' shards forever, so :func:`probe_sources` refuses that.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import torch
from torch import nn

from d2v_core.config import EvalConfig, RunConfig
from d2v_core.data.sources import Source, resolve_source
from d2v_core.errors import D2VError, ProbeManifestError, first_line
from d2v_core.inference.embed import DecodedSet, Embeddings, decode_source, embed_decoded
from d2v_core.inference.probe import fit_and_score, make_split
from d2v_core.model.data2vec import Data2Vec

#: the seed of the record cap, the split and the fit: ``d2v probe``'s default, so the two agree
SEED = 0


def probe_due(cfg: EvalConfig, step: int, max_steps: int) -> bool:
    """Whether the online probe runs after update ``step``: every ``cfg.every`` steps and at the
    last one. The same on every rank (the trainer logs, and so synchronises, at these steps)."""
    return cfg.probe is not None and (step % cfg.every == 0 or step == max_steps)


@dataclass(frozen=True)
class ProbeSources:
    train: Source
    test: Source | None


def _manifest(spec: str, what: str, extensions: tuple[str, ...], label_column: str) -> Source:
    if not Path(spec).expanduser().exists():
        raise ProbeManifestError(f"{what} {spec!r} does not exist; pass a CSV/JSONL manifest with a {label_column!r} column")
    try:
        source = resolve_source(spec, extensions)
    except (D2VError, OSError) as exc:
        raise ProbeManifestError(f"{what} {spec!r} cannot be read: {first_line(exc)}") from None
    if source.is_sharded or not source.entries:
        raise ProbeManifestError(f"{what} {spec!r} holds no records; pass a CSV/JSONL manifest with a {label_column!r} column")
    if not any(e.meta and label_column in e.meta for e in source.entries):
        raise ProbeManifestError(f"{what} {spec!r} has no {label_column!r} column; pass a labelled CSV/JSONL manifest "
                                 "(or name its label column with eval.label_column)")
    return source


def probe_sources(cfg: RunConfig, extensions: tuple[str, ...], world_size: int) -> ProbeSources | None:
    """The probe's manifests, checked before anything is written (``None``: no online probe)."""
    ev = cfg.eval
    if ev.probe is None:
        return None
    if cfg.runtime.distributed == "fsdp" and world_size > 1:
        raise ProbeManifestError("eval.probe does not run with runtime.distributed=fsdp on several processes (the probe "
                                 "would run the sharded model on rank 0 alone); use ddp, or probe checkpoints with d2v probe")
    train = _manifest(ev.probe, "eval.probe (--probe)", extensions, ev.label_column)
    test = _manifest(ev.probe_test, "eval.probe_test", extensions, ev.label_column) if ev.probe_test else None
    return ProbeSources(train, test)


class _TeacherView:
    """The teacher as :func:`~d2v_core.inference.embed.encoder_states` sees a model: its
    Transformer on the unmasked input, fed as in training (``ema.teacher_input``: the student's
    local features or the teacher's own; ``ema.teacher_context``: whose ``contextualize``)."""

    class _Encoder:
        def __init__(self, student: Data2Vec, teacher: nn.ModuleDict) -> None:
            ema = student.cfg.ema
            t_enc: Any = teacher["encoder"]
            self.embed = (student.encoder if ema.teacher_input == "features" else t_enc).embed
            self.contextualize = (student.encoder if ema.teacher_context == "student" else t_enc).contextualize
            self.num_prefix_tokens = t_enc.num_prefix_tokens

    def __init__(self, student: Data2Vec, teacher: nn.ModuleDict) -> None:
        self.cfg, self.transformer = student.cfg, teacher["transformer"]
        self.encoder = self._Encoder(student, teacher)


class OnlineProbe:
    """Rank 0's probe of a run: :meth:`at_step` after every logged step."""

    def __init__(self, cfg: EvalConfig, record_decoder: Any, sources: ProbeSources, stream: TextIO | None = None) -> None:
        self.cfg, self.record_decoder, self.sources = cfg, record_decoder, sources
        self.stream = stream if stream is not None else sys.stderr
        self._sets: tuple[DecodedSet, DecodedSet | None] | None = None

    def _decoded(self) -> tuple[DecodedSet, DecodedSet | None]:
        if self._sets is None:  # once; a failed decode is tried again at the next probe
            kw = dict(batch_size=self.cfg.batch_size, max_records=self.cfg.max_records, seed=SEED)
            train = decode_source(self.sources.train, self.record_decoder, **kw)
            test = decode_source(self.sources.test, self.record_decoder, **kw) if self.sources.test else None
            self._sets = (train, test)
        return self._sets

    def _accuracy(self, model: Any, device: torch.device) -> dict[str, Any]:
        train, test = self._decoded()
        model = cast(Data2Vec, model)  # a Data2Vec or the teacher's view of one
        emb: list[Embeddings | None] = [embed_decoded(model, d, device) if d is not None else None for d in (train, test)]
        assert emb[0] is not None
        split = make_split(emb[0], emb[1], self.cfg.label_column, self.cfg.split_by, self.cfg.test_fraction, SEED)
        return fit_and_score(split, SEED)

    def run(self, step: int, student: Data2Vec, teacher: nn.ModuleDict | None = None) -> dict[str, float]:
        """``probe_acc`` (``probe_teacher_acc``), train/test sizes and seconds of a probe of
        ``student`` (in eval mode, without gradients; its mode is restored) at ``step``; ``{}``
        after one printed line when it fails."""
        t0, was_training = time.perf_counter(), student.training
        device = next(student.parameters()).device
        try:
            # the probe draws no random numbers, but training's stream must not depend on it
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                student.eval()
                scores = self._accuracy(student, device)
                out = {"probe_acc": scores["accuracy"], "probe_train_size": float(scores["train_size"]),
                       "probe_test_size": float(scores["test_size"])}
                if self.cfg.teacher and teacher is not None:
                    out["probe_teacher_acc"] = self._accuracy(_TeacherView(student, teacher), device)["accuracy"]
        except Exception as exc:  # noqa: BLE001 - a failing probe never stops training
            print(f"warning: online probe at step {step} failed ({type(exc).__name__}: {first_line(exc)}); training goes on",
                  file=self.stream, flush=True)
            return {}
        finally:
            student.train(was_training)
        out["probe_seconds"] = time.perf_counter() - t0
        return out

    def at_step(self, step: int, max_steps: int, student: Data2Vec, teacher: nn.ModuleDict | None = None) -> dict[str, float]:
        """The probe's values when :func:`probe_due` at ``step``, otherwise ``{}``."""
        return self.run(step, student, teacher) if probe_due(self.cfg, step, max_steps) else {}
