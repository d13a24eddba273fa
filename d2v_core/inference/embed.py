"""Features from a pretrained encoder: one layer, the mean of the top K, the run's own target
representation (``targets``), or the final output, pooled by mean over valid steps, the CLS
token, or not at all."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from d2v_core.data.bad_records import BadRecordStats
from d2v_core.data.sources import Source
from d2v_core.errors import ConfigError, DataError
from d2v_core.interfaces import SkipRecord
from d2v_core.model.data2vec import Data2Vec
from d2v_core.model.targets import build_targets


@dataclass
class Embeddings:
    keys: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # (D,) pooled, or (T, D) with pool none
    meta: list[dict] = field(default_factory=list)
    stats: BadRecordStats = field(default_factory=BadRecordStats)


#: ``--layers`` values: data2vec's target representation, normalised as in training or not.
LAYER_SETS = ("targets", "top-k")


@torch.no_grad()
def target_states(model: Data2Vec, batch: dict, normalise: bool = True) -> tuple[Tensor, Tensor | None]:
    """(B, T, D) data2vec's target representation of the unmasked input, computed by ``model``'s
    weights in eval mode: the mean of the top ``targets.top_k`` layers' ``targets.source``
    intermediates (``ffn``: the FFN output before the residual; ``block``: the layer output),
    each normalised by ``targets.per_layer_norm`` and the mean by ``targets.post_norm`` as the
    teacher builds targets in training (``normalise=False``: the plain mean of those layers).
    Prefix tokens are dropped, as in the targets; the padding mask is the embedding's."""
    enc, t = model.encoder, model.cfg.targets
    feats = enc.embed(batch)
    ctx = enc.contextualize(feats.x, feats.padding_mask)
    out = model.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias, collect=t.source,
                            collect_from=model.cfg.model.depth - t.top_k)
    layers = [h[:, enc.num_prefix_tokens:] for h in out.layers]
    if not normalise:
        return torch.stack(layers).mean(0), feats.padding_mask
    return build_targets(layers, model.layer_norm, model.post_norm, feats.padding_mask), feats.padding_mask


@torch.no_grad()
def encoder_states(model: Data2Vec, batch: dict, layer: int | None = None, top_k: int | None = None) -> tuple[Tensor, Tensor | None]:
    """(B, T, D) states without prefix tokens... plus the prefix kept at index 0 when present.

    ``layer`` N (1-based) is the output of layer N (0: the Transformer's input); ``top_k`` K the
    mean of the last K layer (block) outputs; neither: the final output (after the final norm,
    if any). The run's own target representation is :func:`target_states`."""
    enc, depth = model.encoder, model.cfg.model.depth
    if layer is not None and not 0 <= layer <= depth:
        raise ConfigError(f"--layer must be between 0 and {depth}, got {layer}")
    if top_k is not None and not 1 <= top_k <= depth:
        raise ConfigError(f"--top-k must be between 1 and {depth}, got {top_k}")
    feats = enc.embed(batch)
    ctx = enc.contextualize(feats.x, feats.padding_mask)
    if layer == 0:
        return ctx.x, ctx.padding_mask
    out = model.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias, collect="block")
    if layer is not None:
        return out.layers[layer - 1], ctx.padding_mask
    if top_k is not None:
        return torch.stack(out.layers[-top_k:]).mean(0), ctx.padding_mask
    return out.x, ctx.padding_mask


def check_layer_set(model: Data2Vec, layers: str | None, layer: int | None, top_k: int | None, pool: str) -> None:
    """A clear error for a ``--layers`` value that does not apply (see :func:`target_states`)."""
    if layers is None:
        return
    if layers not in LAYER_SETS:
        raise ConfigError(f"--layers must be one of {', '.join(LAYER_SETS)}, got {layers!r}")
    if layer is not None or top_k is not None:
        raise ConfigError(f"--layers {layers} chooses the layers itself: pass it without --layer or --top-k")
    if pool == "cls":
        raise ConfigError(f"--layers {layers} has no CLS token (data2vec's targets drop prefix tokens); use --pool mean")
    t = model.cfg.targets
    if layers == "targets" and pool == "mean" and "instance" in (t.per_layer_norm, t.post_norm):
        raise ConfigError("--layers targets with --pool mean is zero for every record: the run's targets are instance-normed "
                          "over time (targets.per_layer_norm or post_norm: instance); use --layers top-k (the same layers, not normalised)")


def pool_states(states: Tensor, padding_mask: Tensor | None, num_prefix: int, pool: str) -> list[np.ndarray]:
    """Per sample: ``mean`` over valid non-prefix steps, ``cls`` the first prefix token, ``none``
    the valid non-prefix steps (T_i, D)."""
    if pool == "cls":
        if num_prefix == 0:
            raise ConfigError("--pool cls needs a model with a CLS token (this modality has none); use --pool mean")
        return list(states[:, 0].float().cpu().numpy())
    body = states[:, num_prefix:].float()
    pad = None if padding_mask is None else padding_mask[:, num_prefix:]
    out = []
    for i in range(body.shape[0]):
        valid = body[i] if pad is None else body[i][~pad[i]]
        out.append(valid.mean(0).cpu().numpy() if pool == "mean" else valid.cpu().numpy())
    return out


def _batches(source: Source, record_decoder, batch_size: int, stats: BadRecordStats) -> Iterator[list[dict]]:
    samples: list[dict] = []
    for entry in source.entries:
        stats.seen += 1
        try:
            record = source.read(entry)
            sample = record_decoder.decode_for_inference(record)
        except SkipRecord as skip:
            stats.skip(skip.reason, entry.path, entry.key, skip.detail)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file never stops an embedding job
            stats.skip(f"error:{type(exc).__name__}", entry.path, entry.key, str(exc))
            continue
        samples.append({"sample": sample, "key": entry.key, "meta": dict(entry.meta or {})})
        if len(samples) == batch_size:
            yield samples
            samples = []
    if samples:
        yield samples


def embed_source(model: Data2Vec, record_decoder, source: Source, *, layer: int | None = None, top_k: int | None = None,
                 pool: str = "mean", batch_size: int = 16, progress: Callable[[int], Any] | None = None,
                 layers: str | None = None) -> Embeddings:
    """Embed every record of a folder or manifest source; unusable records are skipped and counted.

    ``layers``: ``targets`` (the run's target representation, :func:`target_states`) or
    ``top-k`` (the same layers, not normalised) instead of ``layer`` / ``top_k``."""
    if source.is_sharded:
        raise ConfigError("embedding from tar shards is not supported yet; pass a folder or a CSV/JSONL manifest")
    check_layer_set(model, layers, layer, top_k, pool)
    model.eval()
    result = Embeddings()
    device = next(model.parameters()).device
    for group in _batches(source, record_decoder, batch_size, result.stats):
        batch = record_decoder.collate_for_inference([g["sample"] for g in group])
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        if layers is not None:
            states, pad = target_states(model, batch, normalise=layers == "targets")
            pooled = pool_states(states, pad, 0, pool)
        else:
            states, pad = encoder_states(model, batch, layer, top_k)
            pooled = pool_states(states, pad, model.encoder.num_prefix_tokens, pool)
        if len(pooled) != len(group):  # a collate that packs or splits records cannot be embedded per record
            raise DataError(f"{type(record_decoder).__name__}.collate_for_inference made {len(pooled)} rows from "
                            f"{len(group)} records; it must make one row per record")
        result.vectors += pooled
        result.keys += [g["key"] for g in group]
        result.meta += [g["meta"] for g in group]
        if progress is not None:
            progress(len(group))
    return result


def write_embeddings(emb: Embeddings, out: str | Path, pool: str) -> list[Path]:
    """``.safetensors`` (keys in the metadata; with pool none one tensor per record) or ``.npy``
    (pooled only), plus ``OUT.keys.txt``, one key per line in row order."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        if pool == "none":
            raise ConfigError("--pool none gives one array per record: write .safetensors instead of .npy")
        np.save(out, np.stack(emb.vectors) if emb.vectors else np.zeros((0, 0), np.float32))
    elif out.suffix == ".safetensors":
        if pool == "none":
            tensors = {str(i): v for i, v in enumerate(emb.vectors)}
        else:
            tensors = {"embeddings": np.stack(emb.vectors) if emb.vectors else np.zeros((0, 0), np.float32)}
        save_file(tensors, str(out), metadata={"keys": json.dumps(emb.keys), "pool": pool})
    else:
        raise ConfigError(f"--out must end in .safetensors or .npy, got {out.name!r}")
    index = out.with_suffix(out.suffix + ".keys.txt")
    index.write_text("".join(k + "\n" for k in emb.keys), encoding="utf-8")
    return [out, index]


@dataclass
class DecodedSet:
    """A source's records decoded once and collated as model inputs (on the CPU), to embed again
    and again (the online probe): ``batches[i]`` holds the records ``keys[i]`` / ``meta[i]``."""

    batches: list[dict] = field(default_factory=list)
    keys: list[list[str]] = field(default_factory=list)
    meta: list[list[dict]] = field(default_factory=list)
    stats: BadRecordStats = field(default_factory=BadRecordStats)


def cap_records(source: Source, max_records: int | None, seed: int = 0) -> Source:
    """``source`` with at most ``max_records`` records: all of them when they fit (or with no
    cap), else a seeded random choice of ``max_records`` of them, kept in manifest order. Not the
    first ones: a manifest sorted by label would give the probe only its first classes. The
    online probe (``eval.max_records``, seed 0) and ``d2v probe --max-records`` (``--seed``)
    choose with this, so the same cap and seed give the same records."""
    if max_records is not None and max_records < 1:
        raise ConfigError(f"the record cap must be at least 1, got {max_records}")
    n = len(source.entries)
    if max_records is None or max_records >= n:
        return source
    keep = sorted(random.Random(seed).sample(range(n), max_records))
    return replace(source, entries=tuple(source.entries[i] for i in keep))


def decode_source(source: Source, record_decoder, *, batch_size: int = 16, max_records: int | None = None,
                  seed: int = 0) -> DecodedSet:
    """Decode and collate the records of a folder or manifest source (:func:`cap_records`'s
    choice of ``max_records`` of them, by ``seed``) in the groups :func:`embed_source` makes;
    unusable records are skipped and counted."""
    if source.is_sharded:
        raise ConfigError("embedding from tar shards is not supported yet; pass a folder or a CSV/JSONL manifest")
    source = cap_records(source, max_records, seed)
    out = DecodedSet()
    for group in _batches(source, record_decoder, batch_size, out.stats):
        out.batches.append(record_decoder.collate_for_inference([g["sample"] for g in group]))
        out.keys.append([g["key"] for g in group])
        out.meta.append([g["meta"] for g in group])
    return out


@torch.no_grad()
def embed_decoded(model: Data2Vec, decoded: DecodedSet, device: torch.device, *, layer: int | None = None,
                  top_k: int | None = None, pool: str = "mean") -> Embeddings:
    """:func:`embed_source`'s embeddings of records decoded by :func:`decode_source` (the model's
    mode is the caller's: put it in eval mode first)."""
    result = Embeddings(stats=decoded.stats)
    for batch, keys, meta in zip(decoded.batches, decoded.keys, decoded.meta, strict=True):
        on_device = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        states, pad = encoder_states(model, on_device, layer, top_k)
        pooled = pool_states(states, pad, model.encoder.num_prefix_tokens, pool)
        if len(pooled) != len(keys):
            raise DataError(f"collate_for_inference made {len(pooled)} rows from {len(keys)} records; it must make one row per record")
        result.vectors += pooled
        result.keys += keys
        result.meta += meta
    return result
