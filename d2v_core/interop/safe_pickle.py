"""Read a fairseq checkpoint (a ``torch.save`` pickle) without executing code from it.

fairseq stores ``{"model": state dict, "cfg": omegaconf DictConfig or plain dict, "args":
argparse.Namespace or None, "optimizer_history": ..., "extra_state": ...}``
(``fairseq/checkpoint_utils.py`` ``load_checkpoint_to_cpu``, ``fairseq/trainer.py`` ``state_dict``).
The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only. On top
of that allow-list, the names below are mapped to inert stand-ins (they never import omegaconf or
call anything from the file) and turned into plain dicts, lists and scalars afterwards. Any other
global the pickle names is refused with an error naming it, before anything is written.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from d2v_core.errors import CheckpointError, first_line

#: omegaconf containers and nodes and argparse.Namespace: rebuilt as plain data.
_RECORDS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.EnumNode",
    "omegaconf.nodes.UnionNode",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "argparse.Namespace",
)
#: Type objects omegaconf's metadata refers to (``ref_type``, ``object_type``): inert markers.
_MARKERS = ("typing.Any", "builtins.dict", "builtins.list", "builtins.str", "builtins.int", "builtins.float",
            "builtins.bool", "builtins.bytes", "builtins.object", "builtins.tuple")
#: fairseq enums in configs (``Enum.__reduce_ex__`` calls the class with the value): their names.
FAIRSEQ_ENUMS = {"examples.data2vec.data.modality.Modality": {1: "AUDIO", 2: "IMAGE", 3: "TEXT"}}
#: Calls a fairseq pickle makes that only build data: these return plain data of their own.
_BUILDERS = ("collections.defaultdict",  # omegaconf's resolver cache: an empty dict here
             "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")  # extra_state numbers


class _Record:
    """A stand-in for an allow-listed class: keeps the pickled state, runs nothing."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state


class _Marker:
    def __init__(self, name: str) -> None:
        self.qualified_name = name

    def __repr__(self) -> str:
        return f"<{self.qualified_name}>"


@dataclass
class Opaque:
    """A value d2v does not rebuild (a numpy scalar in ``extra_state``): only its kind is kept."""

    kind: str


def _record_class(name: str) -> type:
    return type(name.rsplit(".", 1)[1], (_Record,), {"qualified_name": name})


class _OpaqueRecord(_Record):
    """What a data builder returns (numpy may later BUILD it with a state: kept, unused)."""


def _builder(name: str):  # noqa: ANN202
    if name == "collections.defaultdict":
        return lambda *args: {}
    if name in FAIRSEQ_ENUMS:
        names = FAIRSEQ_ENUMS[name]
        return lambda value=None, *args: names.get(value, f"{name}({value!r})")

    def build(*args: Any) -> _OpaqueRecord:
        out = _OpaqueRecord()
        out.qualified_name = name
        return out

    return build


def _safe_globals() -> list[Any]:
    out: list[tuple[Any, str]] = [(_record_class(n), n) for n in _RECORDS]
    out += [(_Marker(n), n) for n in _MARKERS]
    out += [(_builder(n), n) for n in (*_BUILDERS, *FAIRSEQ_ENUMS)]
    out.append((_OpaqueRecord, "<d2v opaque value>"))  # BUILD on it is allowed; no pickle can name it
    return out


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def to_plain(obj: Any) -> Any:
    """Stand-ins -> dicts, lists and scalars (DictConfig -> dict, nodes -> their values,
    Namespace -> dict); containers are converted recursively."""
    if isinstance(obj, _OpaqueRecord):
        return Opaque(obj.qualified_name)
    if isinstance(obj, _Record):
        name, state = obj.qualified_name, getattr(obj, "state", {}) or {}
        if name.endswith(("DictConfig", "ListConfig")):
            content = state.get("_content")
            if content is None or isinstance(content, str):  # None, "???" (missing) or an interpolation
                return content
            return to_plain(content)
        if name.startswith("omegaconf.nodes."):
            return to_plain(state.get("_val"))
        if name == "argparse.Namespace":
            return {k: to_plain(v) for k, v in state.items()}
        return None  # metadata
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if isinstance(obj, list) else tuple(to_plain(v) for v in obj)
    return obj


def resolve_interpolations(cfg: Any, root: Any | None = None) -> Any:
    """Replace absolute omegaconf interpolations (``"${task.tokens_per_sample}"``) by the value
    they name in ``root``; others (relative, resolvers) stay strings."""
    root = cfg if root is None else root
    if isinstance(cfg, dict):
        return {k: resolve_interpolations(v, root) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [resolve_interpolations(v, root) for v in cfg]
    if isinstance(cfg, str):
        m = _INTERPOLATION.match(cfg)
        if m:
            node: Any = root
            for part in m.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    return cfg
                node = node[part]
            return resolve_interpolations(node, root)
    return cfg


@dataclass
class FairseqCheckpoint:
    """What d2v reads from a fairseq checkpoint: the model's tensors, its config as plain data
    (``cfg["model"]``, or the flat ``args`` of older checkpoints) and the model's name."""

    path: Path
    model: dict[str, torch.Tensor]
    model_cfg: dict[str, Any]
    model_name: str
    task_cfg: dict[str, Any] = field(default_factory=dict)
    #: the fine-tuning model the pretrained one was unwrapped from (``wav2vec_ctc``), or None
    wrapper: str | None = None


#: fairseq fine-tuning models that wrap a pretrained one: name -> (prefix of its tensors, the
#: config field holding the pretraining config). ``fairseq/models/wav2vec/wav2vec2_asr.py``
#: (``Wav2VecEncoder.w2v_model``, ``w2v_args``); ``examples/data2vec/models/``
#: ``data2vec_text_classification.py`` / ``data2vec_image_classification.py`` (``self.model``,
#: ``pretrained_model_args``), ``audio_classification.py`` (``self.d2v_model``, ``d2v_args``).
WRAPPERS = {
    "wav2vec_ctc": ("w2v_encoder.w2v_model.", "w2v_args"),
    "wav2vec_seq2seq": ("encoder.w2v_model.", "w2v_args"),
    "data2vec_text_classification": ("model.", "pretrained_model_args"),
    "data2vec_image_classification": ("model.", "pretrained_model_args"),
    "audio_classification": ("d2v_model.", "d2v_args"),
}


def _unwrap(ckpt: FairseqCheckpoint) -> FairseqCheckpoint:
    """The pretrained model inside a fine-tuned checkpoint: its config (``w2v_args``) and its
    tensors without the wrapper's prefix; the fine-tuning head's tensors keep their names (and
    so are reported as unused)."""
    prefix, field_name = WRAPPERS.get(ckpt.model_name, (None, None))
    if prefix is None or field_name is None:
        return ckpt
    inner = ckpt.model_cfg.get(field_name)
    if not isinstance(inner, dict):
        return ckpt
    inner = resolve_interpolations(inner)
    model_cfg = inner["model"] if isinstance(inner.get("model"), dict) else inner  # hydra cfg or flat args
    name = model_cfg.get("_name") or model_cfg.get("arch")
    if not isinstance(name, str):
        raise CheckpointError(f"{ckpt.path}: its {ckpt.model_name} config wraps a model with no name ({field_name}.model._name)")
    tensors = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in ckpt.model.items()}
    task = inner.get("task") if isinstance(inner.get("task"), dict) else {}
    return FairseqCheckpoint(ckpt.path, tensors, model_cfg, name, task, wrapper=ckpt.model_name)


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    detail = " ".join((m.group(1) if m else text).split()) or type(exc).__name__
    found = (re.search(r"GLOBAL (\S+) was not an allowed global", detail) or re.search(r"unsupported GLOBAL (\S+)", detail)
             or re.search(r"unrecognized function (\S+)", detail) or re.search(r"but got <class '([^']+)'>", detail))
    if found is None:
        return CheckpointError(f"cannot read {path} as a torch checkpoint: {detail}")
    return CheckpointError(
        f"refusing to read {path}: its pickle names {found.group(1)}, which d2v does not rebuild (unpickling it could "
        "run code); d2v reads tensors, plain data and fairseq's omegaconf/argparse configs only"
    )


def load_untrusted(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with the fairseq allow-list; stand-ins converted to plain
    data. Raises :class:`CheckpointError` (one line) for a missing, corrupt or refused file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} is not a file")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_safe_globals()):
            warnings.simplefilter("ignore")
            raw = torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise _refusal(p, exc) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or hostile file: one line, never a traceback
        raise CheckpointError(f"cannot read {p} as a torch checkpoint: {first_line(exc)}") from None
    try:
        return to_plain(raw)
    except RecursionError:
        raise CheckpointError(f"cannot read {p}: its config nests too deeply") from None


def read_fairseq_checkpoint(path: str | Path) -> FairseqCheckpoint:
    """The model tensors and model config of a fairseq checkpoint file, read safely."""
    p = Path(path)
    raw = load_untrusted(p)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{p} is not a fairseq checkpoint (no 'model' state dict at its top level)")
    cfg, args = raw.get("cfg"), raw.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg = resolve_interpolations(cfg)
        model_cfg, task_cfg = cfg["model"], cfg.get("task") or {}
        name = model_cfg.get("_name") or model_cfg.get("arch")
    elif isinstance(args, dict):  # pre-hydra fairseq (``arch``), or BEiT-style scripts (``model``: a timm name)
        model_cfg, task_cfg = args, args
        name = args.get("arch") or args.get("_name") or args.get("model")
    else:
        raise CheckpointError(f"{p} holds neither a 'cfg' with a 'model' section nor 'args': no model config to import")
    if not isinstance(name, str):
        raise CheckpointError(f"{p}: its model config names no model (cfg.model._name / args.arch)")
    tensors = {k: v for k, v in raw["model"].items() if isinstance(v, torch.Tensor)}
    for k, v in raw["model"].items():  # the EMA teacher: a dict of tensors under "..._ema"
        if isinstance(v, dict) and k.endswith("_ema"):
            tensors.update({f"{k}.{n}": t for n, t in v.items() if isinstance(t, torch.Tensor)})
    if isinstance(raw.get("model_ema"), dict):  # data2vec_vision / BEiT scripts: timm ModelEmaV2's state dict
        tensors.update({f"model_ema.{n}": t for n, t in raw["model_ema"].items() if isinstance(t, torch.Tensor)})
    return _unwrap(FairseqCheckpoint(p, tensors, model_cfg, name, task_cfg if isinstance(task_cfg, dict) else {}))
