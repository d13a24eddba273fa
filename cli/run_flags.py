"""The flags that change a run's config, shared by ``d2v pretrain`` and ``d2v config show`` so
that ``config show`` prints exactly the config ``pretrain`` stores.

Order: the preset, then ``--config``, then the command line as one layer: the ``--set`` values
and the typed flags below (each flag is the dotted path in :data:`FLAG_PATHS`). A flag's value
is typed by its option and never parsed as YAML. A path may be given once on the command line:
a flag given twice, or a flag and a ``--set`` of the same path, is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

import typer

from d2v_core.errors import CheckpointError, ConfigError, MissingCheckpointError

if TYPE_CHECKING:
    from d2v_core.config import RunConfig

#: flag -> the config path it sets.
FLAG_PATHS = {
    "--data": "data.train",
    "--out": "runtime.out_dir",
    "--masker": "masking.name",
    "--max-steps": "runtime.max_steps",
    "--max-bad-fraction": "data.max_bad_fraction",
    "--compile": "runtime.compile",
    "--threads": "runtime.threads",
    "--probe": "eval.probe",
}

# Shared option declarations. Flags are lists so that a flag given twice is seen (and refused).
MODALITY = typer.Option(None, "--modality", "-m", help="Modality (see d2v list-plugins).")
PRESET = typer.Option(None, "--preset", "-p", help="Preset, e.g. tiny or audio/base.")
CONFIG = typer.Option(None, "--config", "-c", help="YAML file applied over the preset.")
SET = typer.Option([], "--set", help="Override, e.g. --set optim.lr=1e-4 (repeatable; the value is read as YAML).")
DATA = typer.Option(
    [], "--data", "-d", help="Folder, CSV/JSONL manifest, or tar shards ('shards/x-{000000..000003}.tar'). Default: the plugin's demo data."
)
OUT = typer.Option([], "--out", "-o", help="Run directory (runtime.out_dir).")
MASKER = typer.Option([], "--masker", help="Masker name (masking.name).")
MAX_STEPS = typer.Option([], "--max-steps", help="Number of updates (runtime.max_steps).")
MAX_BAD_FRACTION = typer.Option(
    [], "--max-bad-fraction", help="Abort when more than this fraction of records is unusable (data.max_bad_fraction, default 0.5)."
)
COMPILE = typer.Option(False, "--compile", help="torch.compile the student and the teacher (runtime.compile=true).")
THREADS = typer.Option(
    [], "--threads", min=1, help="torch intra-op threads per process (runtime.threads); fewer than the cores is often faster on a shared machine."
)
PROBE = typer.Option(
    [], "--probe", help="Labelled CSV/JSONL manifest for the online probe (eval.probe): probe_acc every eval.every steps."
)
INIT_FROM = typer.Option(
    None, "--init-from", help="Start from the weights of this checkpoint (e.g. made by d2v import), with a fresh optimiser."
)


def config_flags(*, data: Sequence[str], out: Sequence[str], masker: Sequence[str], max_steps: Sequence[int],
                 max_bad_fraction: Sequence[float], compile_: bool, threads: Sequence[int],
                 probe: Sequence[str] = ()) -> dict[str, Sequence[Any]]:
    """The config-changing flags of ``pretrain`` and ``config show``, keyed as in :data:`FLAG_PATHS`."""
    return {"--data": data, "--out": out, "--masker": masker, "--max-steps": max_steps, "--max-bad-fraction": max_bad_fraction,
            "--compile": [True] if compile_ else [], "--threads": threads, "--probe": probe}


def flag_overrides(flags: dict[str, Sequence[Any]]) -> list[Any]:
    """Typed overrides for the flags given (flag -> the values typer collected)."""
    from d2v_core.config_resolve import Override

    out = []
    for flag, values in flags.items():
        if len(values) > 1:
            raise ConfigError(f"{flag} given {len(values)} times ({', '.join(map(str, values))}); give it once")
        if values:
            out.append(Override(FLAG_PATHS[flag], values[0], flag))
    return out


def run_config(
    *,
    modality: Optional[str],
    preset: Optional[str],
    config: Optional[str],
    set_: List[str],
    flags: dict[str, Sequence[Any]],
    init_from: Optional[str] = None,
    note: Callable[[str], None] = lambda _: None,
) -> RunConfig:
    """The config ``d2v pretrain`` stores for these arguments (demo data filled in when no data
    is given, a tokenizer or other saved file of ``--init-from`` pointed at its checkpoint copy)."""
    from d2v_core.config_resolve import parse_set, resolve_config
    from d2v_core.inference.pretrained import self_contained_config
    from d2v_core.plugin_loader import get_registry
    from d2v_core.specs import load_ref

    for flag in ("--data", "--out", "--masker", "--probe"):
        if any(isinstance(v, str) and not v.strip() for v in flags.get(flag, ())):
            raise ConfigError(f"{flag} is empty; pass a value (or leave the flag out)")
    registry = get_registry()
    overrides = [parse_set(s) for s in set_] + flag_overrides(flags)
    start = None
    file_layer: Any = config
    if init_from is not None:
        start = checkpoint_dir(init_from)
        if config is None and preset is None:  # the architecture of the weights we start from
            from d2v_core.train.checkpoint import stored_config

            file_layer = stored_config((start / "config.yaml").read_text(encoding="utf-8"))
    cfg = resolve_config(registry, modality, preset, file_layer, overrides)
    if start is not None and (start / "extra").is_dir():
        extra = {f.name: b"" for f in (start / "extra").iterdir()}
        cfg = self_contained_config(cfg, start / "extra", extra)
    if not cfg.data.train:
        spec = registry.modality(cfg.modality)
        if spec.demo_data is None:
            raise ConfigError(f"no --data given and modality {spec.name!r} ships no demo data; pass --data PATH")
        demo = str(load_ref(spec.demo_data, f"modality {spec.name!r} demo data")())
        note(f"no --data given: using the demo data shipped with {spec.distribution} ({demo})")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": demo})})
    return cfg


def checkpoint_dir(path: str) -> Path:
    """The checkpoint directory ``path`` names, or the newest complete one of a run directory."""
    from d2v_core.train.checkpoint import checkpoint_dir as find

    try:
        found = find(path)
    except MissingCheckpointError as exc:  # a usage error (exit 2)
        raise MissingCheckpointError(f"--init-from {path}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {path}: {exc}") from None
    if not (found / "config.yaml").is_file():
        raise MissingCheckpointError(f"--init-from {path}: no complete checkpoint with a config.yaml there")
    return found
