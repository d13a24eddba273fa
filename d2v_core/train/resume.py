"""What ``--resume`` may change: settings that keep the run meaningful are allowed and recorded;
anything else is refused unless ``--allow-config-change``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml
from d2v_core.errors import ConfigError

#: Fields a resumed run may change: when to stop, how often to log and save, how many old
#: checkpoints to keep, how data is read (not which data), how progress is shown, where the
#: folder now lives, how much bad data to tolerate, and how the same math is executed
#: (compilation, activation checkpointing), and what the online probe measures.
RESUMABLE_CHANGES = frozenset({
    "runtime.max_steps", "runtime.log_every", "runtime.save_every", "runtime.keep_last", "runtime.out_dir",
    "runtime.progress", "runtime.tensorboard", "runtime.stop_timeout_s", "data.num_workers", "data.max_bad_fraction",
    "runtime.compile", "runtime.compile_dynamic", "model.activation_checkpointing",
    "runtime.loggers", "runtime.logger_options",  # where metrics go, not what is computed
    # the online probe measures the run and never changes it
    "eval.probe", "eval.probe_test", "eval.split_by", "eval.test_fraction", "eval.label_column", "eval.every",
    "eval.max_records", "eval.teacher", "eval.batch_size",
})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _stored_tree(stored_yaml: str) -> dict[str, Any]:
    raw = yaml.safe_load(stored_yaml) or {}
    try:  # fill fields added since the checkpoint was written with their defaults
        return yaml.safe_load(config_to_yaml(RunConfig.model_validate(raw)))
    except Exception:  # noqa: BLE001 - a config of another d2v version: compare as written
        return raw if isinstance(raw, dict) else {}


def config_changes(stored_yaml: str, cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (stored, new)}`` for every field that differs."""
    old = _flatten(_stored_tree(stored_yaml))
    new = _flatten(yaml.safe_load(config_to_yaml(cfg)))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume_config(stored_yaml: str, cfg: RunConfig, allow_config_change: bool = False) -> dict[str, tuple[Any, Any]]:
    """The changes of a resumed run against its checkpoint's config; raises :class:`ConfigError`
    listing the fields when one outside :data:`RESUMABLE_CHANGES` differs (unless allowed)."""
    changes = config_changes(stored_yaml, cfg)
    refused = [k for k in changes if k not in RESUMABLE_CHANGES and not k.startswith("runtime.logger_options.")]
    if refused and not allow_config_change:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:8])
        more = f" and {len(refused) - 8} more" if len(refused) > 8 else ""
        raise ConfigError(
            f"--resume with a different config: {listed}{more}; resume with the run's own settings, start a new run "
            "with another --out, or pass --allow-config-change to continue with the new ones (recorded in run.json)"
        )
    return changes


def record_run(run_dir: Path, versions: dict[str, str], resumed_from: Path | None,
               changes: dict[str, tuple[Any, Any]]) -> None:
    """Write ``run.json``: versions, the checkpoint resumed from, and every resume event so far
    (with the config fields it changed)."""
    path = run_dir / "run.json"
    events: list = []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        events = list(old.get("events", [])) if isinstance(old, dict) else []
    except (OSError, ValueError):
        pass
    if resumed_from is not None:
        events.append({"event": "resume", "time": time.time(), "from": str(resumed_from),
                       "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    data = {"versions": versions, "resumed_from": str(resumed_from) if resumed_from else None, "events": events}
    tmp = path.with_name(".run.json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
