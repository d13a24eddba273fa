"""``d2v export --format hf`` and ``d2v import --from-hf`` for text: transformers'
``Data2VecTextModel`` (the RoBERTa layout, spec §3.3) and a fast tokenizer.

The mapping is a rename, except that the fused ``qkv`` projection is split into ``query``,
``key`` and ``value`` (rows ``[q; k; v]``), and that transformers adds a token-type embedding,
which the export writes as zeros and the import folds into the position table (row 0 of it is
what transformers adds when no ``token_type_ids`` are given). The regression head is not part
of the encoder: it is not exported, and an import leaves it freshly initialised. transformers'
``pooler`` and ``lm_head`` weights in a directory are dropped on import; any other tensor that
has no place in d2v's model is an error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from d2v_core.errors import ExportError
from d2v_core.interfaces import Exporter

from d2v_plugin_text.encoder import TextFeatureEncoder
from d2v_plugin_text.hf_tokenizer import SPM_FILE, write_hf_tokenizer
from d2v_plugin_text.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

_EMBEDDINGS = {  # d2v name -> transformers name
    "encoder.embed_tokens.weight": "embeddings.word_embeddings.weight",
    "encoder.embed_positions.weight": "embeddings.position_embeddings.weight",
    "encoder.layernorm_embedding.weight": "embeddings.LayerNorm.weight",
    "encoder.layernorm_embedding.bias": "embeddings.LayerNorm.bias",
}
_LAYER = {  # transformer.layers.{i}.<d2v> -> encoder.layer.{i}.<transformers>; qkv is split apart
    "attn.proj": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_QKV = ("query", "key", "value")
_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"
#: transformers heads that may sit next to the encoder in a directory; not part of d2v's model.
DROPPED_HEADS = ("pooler.", "lm_head.")


def _pairs(depth: int) -> Iterator[tuple[str, str]]:
    """(d2v name, transformers name) of every tensor that is a plain rename."""
    yield from _EMBEDDINGS.items()
    for i in range(depth):
        for ours, theirs in _LAYER.items():
            for kind in ("weight", "bias"):
                yield f"transformer.layers.{i}.{ours}.{kind}", f"encoder.layer.{i}.{theirs}.{kind}"


def _taker(state: Mapping[str, Tensor], what: str):  # noqa: ANN202
    left = dict(state)

    def take(key: str) -> Tensor:
        if key not in left:
            raise ExportError(f"{what} has no tensor {key!r}")
        return left.pop(key)

    return take, left


def d2v_to_hf_state(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """``Data2VecTextModel`` weights from a d2v text student's ``encoder.*`` and ``transformer.*``
    tensors (the regression head ``head.*`` is not part of the encoder)."""
    take, left = _taker({k: v for k, v in state.items() if k.startswith(("encoder.", "transformer."))}, "the d2v model")
    out = {theirs: take(ours) for ours, theirs in _pairs(depth)}
    out[_TOKEN_TYPES] = torch.zeros_like(out["embeddings.LayerNorm.weight"]).unsqueeze(0)
    for i in range(depth):
        for kind in ("weight", "bias"):
            for name, part in zip(_QKV, take(f"transformer.layers.{i}.attn.qkv.{kind}").chunk(3)):
                out[f"encoder.layer.{i}.attention.self.{name}.{kind}"] = part
    if left:
        raise ExportError(f"d2v tensors with no place in Data2VecTextModel: {', '.join(sorted(left)[:4])}")
    return out


def hf_to_d2v_state(state: Mapping[str, Tensor], depth: int, pad_id: int = PAD_ID) -> dict[str, Tensor]:
    """The inverse of :func:`d2v_to_hf_state`; every tensor must be used. Token-type row 0 is added
    to every position row but the padding row (exact: transformers adds both to each token)."""
    take, left = _taker(state, "the transformers model")
    out = {ours: take(theirs) for ours, theirs in _pairs(depth)}
    token_type = take(_TOKEN_TYPES)[0]
    positions = out["encoder.embed_positions.weight"].clone()
    rows = torch.arange(positions.shape[0]) != pad_id
    positions[rows] += token_type.to(positions.dtype)
    out["encoder.embed_positions.weight"] = positions
    for i in range(depth):
        for kind in ("weight", "bias"):
            parts = [take(f"encoder.layer.{i}.attention.self.{name}.{kind}") for name in _QKV]
            out[f"transformer.layers.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    if left:
        raise ExportError(f"transformers tensors with no place in the d2v text model: {', '.join(sorted(left)[:4])}")
    return out


def check_exportable(model: nn.Module, cfg: Any) -> TextFeatureEncoder:
    """The model's text encoder, or :class:`ExportError` where ``Data2VecTextModel`` cannot
    compute what d2v computes."""
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, TextFeatureEncoder):
        raise ExportError(f"the hf text exporter needs the text plugin's encoder, got {type(enc).__name__}")
    m = cfg.model
    problems = []
    if m.layout != "post_ln":
        problems.append(f"model.layout={m.layout!r} (its layers are post-LN)")
    if m.qkv_bias != "qkv":
        problems.append(f"model.qkv_bias={m.qkv_bias!r} (it has biases on query, key and value)")
    if m.final_norm:
        problems.append("model.final_norm=true (it has no final LayerNorm)")
    if problems:
        raise ExportError("transformers' Data2VecTextModel cannot represent this model: " + "; ".join(problems))
    return enc


def hf_config(model_cfg: Any, enc: TextFeatureEncoder):  # noqa: ANN201 - Data2VecTextConfig
    """The ``Data2VecTextConfig`` of a d2v text model (spec §3.3)."""
    from transformers import Data2VecTextConfig

    return Data2VecTextConfig(
        vocab_size=enc.vocab_size, hidden_size=model_cfg.dim, num_hidden_layers=model_cfg.depth,
        num_attention_heads=model_cfg.heads, intermediate_size=model_cfg.ffn_dim, hidden_act="gelu",
        hidden_dropout_prob=model_cfg.dropout, attention_probs_dropout_prob=model_cfg.attention_dropout,
        max_position_embeddings=enc.embed_positions.num_embeddings, type_vocab_size=1,
        layer_norm_eps=model_cfg.norm_eps, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )


def _load_problem(exc: RuntimeError) -> str:
    """The first problem ``load_state_dict`` lists (its first line only names the module)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def _transformers():  # noqa: ANN202
    try:
        import transformers
    except ImportError:
        raise ExportError("the hf format needs transformers: pip install 'd2v[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Without transformers' load report and progress bars (the exporter reports problems itself)."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def find_sentencepiece(src: Path) -> Path:
    """The sentencepiece model of an exported directory: :data:`SPM_FILE`, else the one ``*.model``."""
    if (src / SPM_FILE).is_file():
        return src / SPM_FILE
    found = sorted(p for p in src.glob("*.model") if p.is_file())
    if len(found) == 1:
        return found[0]
    what = "several: " + ", ".join(p.name for p in found) if found else "none"
    raise ExportError(
        f"{src}: d2v text models need a sentencepiece tokenizer with d2v's ids ({SPM_FILE}; found {what}); "
        "directories written by `d2v export --format hf` have one, RoBERTa-style byte-level BPE tokenizers cannot be used"
    )


class TextHFExporter(Exporter):
    """Text <-> a transformers ``Data2VecTextModel`` directory (weights, config, tokenizer)."""

    format = "hf"

    def export(self, model: nn.Module, cfg: Any, extra: Mapping[str, bytes], out_dir: Any) -> None:
        """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json and the
        sentencepiece model. The tokenizer is the encoder's own (restored from ``extra``)."""
        enc = check_exportable(model, cfg)
        transformers = _transformers()
        out = Path(out_dir)
        state = d2v_to_hf_state(model.state_dict(), cfg.model.depth)
        hf = transformers.Data2VecTextModel(hf_config(cfg.model, enc), add_pooling_layer=False)
        try:
            hf.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"weights do not fit Data2VecTextModel: {_load_problem(exc)}") from None
        with _quiet_transformers():
            hf.save_pretrained(str(out))
            write_hf_tokenizer(enc.tokenizer, out, enc.max_positions)

    def _hf_config(self, src: Path):  # noqa: ANN202
        transformers = _transformers()
        if not (src / "config.json").is_file():
            raise ExportError(f"{src} has no config.json: not a transformers model directory")
        cfg = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
        if cfg.model_type != "data2vec-text":
            raise ExportError(f"{src} holds a {cfg.model_type!r} model; the text plugin imports 'data2vec-text' models")
        problems = []
        if cfg.hidden_act != "gelu":
            problems.append(f"hidden_act={cfg.hidden_act!r} (d2v uses exact gelu)")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type={cfg.position_embedding_type!r}")
        if cfg.pad_token_id != PAD_ID:
            problems.append(f"pad_token_id={cfg.pad_token_id} (d2v pads with {PAD_ID})")
        if getattr(cfg, "is_decoder", False):
            problems.append("is_decoder=true")
        if cfg.max_position_embeddings < PAD_ID + 3:
            problems.append(f"max_position_embeddings={cfg.max_position_embeddings}")
        if problems:
            raise ExportError(f"{src}: cannot import this Data2VecText model: {'; '.join(problems)}")
        return cfg

    def import_config(self, src_dir: Any) -> dict:
        """``model`` sizes and layout, ``encoder`` (the directory's sentencepiece model and
        ``max_positions``) and ``data.options.block_size`` = ``max_positions``."""
        src = Path(src_dir)
        cfg = self._hf_config(src)
        spm_path = find_sentencepiece(src).resolve()
        tokenizer = Tokenizer.from_file(spm_path)
        if tokenizer.vocab_size != cfg.vocab_size:
            raise ExportError(
                f"{src}: the tokenizer has {tokenizer.vocab_size} ids (pieces + <mask>) but the model {cfg.vocab_size}"
            )
        max_positions = cfg.max_position_embeddings - PAD_ID - 1
        return {
            "model": {
                "dim": cfg.hidden_size, "depth": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
                "ffn_dim": cfg.intermediate_size, "layout": "post_ln", "qkv_bias": "qkv", "final_norm": False,
                "layer_scale_init": None, "norm_eps": cfg.layer_norm_eps, "dropout": cfg.hidden_dropout_prob,
                "attention_dropout": cfg.attention_probs_dropout_prob,
            },
            "encoder": {"tokenizer": str(spm_path), "max_positions": max_positions},
            "data": {"options": {"block_size": max_positions}},
        }

    def import_weights(self, src_dir: Any, model: nn.Module) -> None:
        """Load the directory's encoder weights into ``model`` (built from :meth:`import_config`)."""
        src = Path(src_dir)
        if not isinstance(getattr(model, "encoder", None), TextFeatureEncoder):
            raise ExportError("the hf text importer needs a model with the text plugin's encoder")
        transformers = _transformers()
        with _quiet_transformers():
            hf, info = transformers.Data2VecTextModel.from_pretrained(
                str(src), add_pooling_layer=False, output_loading_info=True, local_files_only=True, trust_remote_code=False
            )
        extra = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(DROPPED_HEADS))
        missing = sorted(info.get("missing_keys", ()))
        if missing or extra:
            detail = f"missing {missing[:4]}" if missing else f"unused {extra[:4]}"
            raise ExportError(f"{src}: the weights are not a Data2VecTextModel's ({detail})")
        state = hf_to_d2v_state(hf.state_dict(), model.cfg.model.depth, model.encoder.pad_id)
        try:
            missing_d2v, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise ExportError(f"{src}: weights do not fit the d2v model: {_load_problem(exc)}") from None
        not_head = [k for k in missing_d2v if not k.startswith("head.")]
        if not_head or unexpected:
            raise ExportError(f"{src}: weights do not fit the d2v model (missing {not_head[:4]}, unexpected {unexpected[:4]})")
