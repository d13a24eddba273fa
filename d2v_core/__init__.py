"""d2v core: modality-agnostic data2vec (Transformer, EMA teacher, targets, loss, trainer).

``__all__`` is the whole plugin API: a plugin's (non-test) code imports these names from
``d2v_core`` and nothing else (``tests/test_plugin_api.py`` checks every plugin in the repo).

Importing ``d2v_core`` is cheap (no torch). Torch-backed names (``FeatureEncoder``, ``Masker``,
``Normalizer``, ...) load on first access, so plugin registration modules and fast CLI paths
never pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Version of the plugin API. A plugin declares the version it targets as the module attribute
#: ``D2V_PLUGIN_API_VERSION``; a different major version is refused.
PLUGIN_API_VERSION = "1.0"

from d2v_core.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    D2VError,
    DataError,
    DuplicateComponentError,
    ExportError,
    NotExportableError,
    PluginError,
    PreflightError,
    TrainingError,
    UnknownComponentError,
)
from d2v_core.hookspecs import hookimpl  # noqa: E402
from d2v_core.specs import ComponentSpec, ModalitySpec  # noqa: E402

# name -> module that defines it; imported lazily (these import torch).
_LAZY = {
    "FeatureEncoder": "d2v_core.interfaces",
    "Features": "d2v_core.interfaces",
    "MaskRequest": "d2v_core.interfaces",
    "Masker": "d2v_core.interfaces",
    "Normalizer": "d2v_core.interfaces",
    "RecordDecoder": "d2v_core.interfaces",
    "SkipRecord": "d2v_core.interfaces",
    "Batch": "d2v_core.interfaces",
    "Exporter": "d2v_core.interfaces",
    "Decoder": "d2v_core.interfaces",
    "BuildContext": "d2v_core.interfaces",
    "ScheduleContext": "d2v_core.interfaces",
    "MetricsLogger": "d2v_core.loggers",
    "LoggerContext": "d2v_core.loggers",
    "Options": "d2v_core.config",
    "exact_count": "d2v_core.mask_counts",
    "uniform_keys": "d2v_core.mask_counts",
    "ConvDecoderOptions": "d2v_core.decoder_options",
    "ConvDecoder": "d2v_core.model.conv_decoder",
    "ConvBlock": "d2v_core.model.conv_decoder",
    "Context": "d2v_core.interfaces",
    "Transformer": "d2v_core.model.transformer",
    "pad_sequences": "d2v_core.data.collate",
    "lengths_to_padding_mask": "d2v_core.data.collate",
    "crop_window": "d2v_core.data.collate",
    "crop_offset": "d2v_core.data.collate",
    # fairseq import (d2v import --from-fairseq): what a plugin's importer needs
    "FairseqImporter": "d2v_core.interop.fairseq_import",
    "FairseqCheckpoint": "d2v_core.interop.safe_pickle",
    "Rename": "d2v_core.interop.key_map",
    "Fuse": "d2v_core.interop.key_map",
    # hf export and import: the key map both ways and the one exportability check
    "apply_key_map": "d2v_core.interop.key_map",
    "export_key_map": "d2v_core.interop.key_map",
    "Supports": "d2v_core.interop.exportable",
    "check_exportable": "d2v_core.interop.exportable",
    "load_exported": "d2v_core.interop.exportable",
    "load_imported": "d2v_core.interop.exportable",
    "rebase": "d2v_core.interop.fairseq_import",
    "parse_layer_spec": "d2v_core.interop.layer_spec",
    "BLOCK_RULES": "d2v_core.interop.data2vec_multi",
    "block_rules": "d2v_core.interop.data2vec_multi",
    "multi_config": "d2v_core.interop.data2vec_multi",
    "multi_run_config": "d2v_core.interop.data2vec_multi",
    "supported_modality": "d2v_core.interop.data2vec_multi",
    "alibi_bias": "d2v_core.model.alibi",
    "pack_blocks": "d2v_core.data.batching",
    "RunConfig": "d2v_core.config",
    "deep_merge": "d2v_core.config_resolve",
    "transformers_module": "d2v_core.interop.optional_transformers",
    "quiet_transformers": "d2v_core.interop.optional_transformers",
    "first_line": "d2v_core.errors",
}

__all__ = [
    "__version__",
    "PLUGIN_API_VERSION",
    "hookimpl",
    "ComponentSpec",
    "ModalitySpec",
    "D2VError",
    "ConfigError",
    "UnknownComponentError",
    "PluginError",
    "DuplicateComponentError",
    "ExportError",
    "NotExportableError",
    "DataError",
    "PreflightError",
    "CheckpointError",
    "TrainingError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'd2v_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
