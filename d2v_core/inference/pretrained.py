"""Rebuild a trained model from a checkpoint (or run) directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from d2v_core.config import RunConfig
from d2v_core.errors import CheckpointError
from d2v_core.interfaces import RecordDecoder
from d2v_core.model.data2vec import Data2Vec
from d2v_core.registry import Registry
from d2v_core.train.build import build_components
from d2v_core.train.checkpoint import load_checkpoint


@dataclass
class Pretrained:
    """A checkpoint's student model, its resolved config and the record decoder of its data
    (``record_decoder``: stored records to batches; not data2vec 2.0's ``model.decoder``)."""

    model: Data2Vec
    cfg: RunConfig
    record_decoder: RecordDecoder
    path: Path
    extra: dict[str, bytes]


def self_contained_config(cfg: RunConfig, extra_dir: Path, extra: dict[str, bytes]) -> RunConfig:
    """Point encoder options that name a file saved with the checkpoint (``extra_state``, e.g. a
    tokenizer) at the checkpoint's own copy, so a checkpoint works without the original files."""
    if not extra:
        return cfg
    values = cfg.encoder if isinstance(cfg.encoder, dict) else cfg.encoder.model_dump()
    moved = {key: str(extra_dir / Path(value).name) for key, value in values.items()
             if isinstance(value, str) and Path(value).name in extra}
    if not moved:
        return cfg
    encoder = {**cfg.encoder, **moved} if isinstance(cfg.encoder, dict) else cfg.encoder.model_copy(update=moved)
    return cfg.model_copy(update={"encoder": encoder})


def load_pretrained(path: str | Path, registry: Registry, *, random_init: bool = False, seed: int = 0) -> Pretrained:
    """The student model of a checkpoint in eval mode (``random_init``: same architecture,
    untrained, for baselines), its config and a record decoder."""
    ck = load_checkpoint(path)
    cfg = ck.config(registry)
    torch.manual_seed(seed)
    parts = build_components(cfg, registry)
    model = parts.model
    model.encoder.load_extra_state(ck.extra)
    if not random_init:
        missing, unexpected = model.load_state_dict(ck.student, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{ck.path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return Pretrained(model.eval(), cfg, parts.record_decoder, ck.path, ck.extra)
