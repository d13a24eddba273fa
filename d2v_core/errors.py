"""Typed errors. Each carries a one-line, actionable message and the exit code the CLI uses.

The exit-code rule, the same for every command: 2 for usage errors (a bad option or value, an
unknown name, a config that does not validate, a path that does not exist or holds no
checkpoint), 1 for a command that started and failed (unusable data, a stopped run, an export
the model cannot take), 130/143 for a run stopped by SIGINT/SIGTERM."""

from __future__ import annotations


class D2VError(Exception):
    """Base of every error d2v raises on purpose. ``str(err)`` is one actionable line."""

    exit_code = 1


class ConfigError(D2VError):
    """A configuration that does not parse or validate (bad YAML, unknown key, wrong type)."""

    exit_code = 2


class UnknownComponentError(D2VError):
    """A modality, preset, masker or other component name that no installed plugin provides."""

    exit_code = 2


class PluginError(D2VError):
    """A plugin that failed to load or register (raised only in strict mode or when used)."""

    exit_code = 1


class DuplicateComponentError(PluginError):
    """Two distributions register the same component name."""


class UsageError(D2VError):
    """The command was called wrongly (exit code 2, like the option errors typer reports)."""

    exit_code = 2


class DataError(D2VError):
    """Training or input data that cannot be used (no files match, nothing decodes, ...)."""

    exit_code = 1


class PreflightError(D2VError):
    """A check before training found a problem (unwritable output, batch not divisible, ...)."""

    exit_code = 2


class CheckpointError(D2VError):
    """A checkpoint that is missing, incomplete or cannot be written."""

    exit_code = 1


class MissingInputError(UsageError, DataError):
    """A data path named by the user that does not exist."""


class MissingCheckpointError(UsageError, CheckpointError):
    """A checkpoint or run path named by the user that holds no complete checkpoint."""


class TrainingError(D2VError):
    """Training stopped on purpose: non-finite loss, representation collapse."""

    exit_code = 1


class ExportError(D2VError):
    """A model that the requested export format cannot represent, or an export that failed."""

    exit_code = 1


class NotExportableError(ExportError):
    """A model whose config the export format cannot represent (nothing is written); raised by
    :func:`d2v_core.interop.exportable.check_exportable` only."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (``strerror`` for an OSError), or its
    type name: what a one-line error quotes of a library's multi-line message. A first line that
    only introduces what follows (ends in ``:``, like torch's ``Error(s) in loading state_dict
    for X:``) is joined with the next one, the first that says what is wrong."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


class ProbeManifestError(UsageError):
    """An online-probe manifest (``eval.probe``, ``eval.probe_test``) that does not exist, cannot
    be read or has no label column, found before the run starts."""
