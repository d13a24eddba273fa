"""Typed errors. Each carries a one-line, actionable message and the exit code the CLI uses."""

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


class DataError(D2VError):
    """Training or input data that cannot be used (no files match, nothing decodes, ...)."""

    exit_code = 1


class PreflightError(D2VError):
    """A check before training found a problem (unwritable output, batch not divisible, ...)."""

    exit_code = 2


class CheckpointError(D2VError):
    """A checkpoint that is missing, incomplete or cannot be written."""

    exit_code = 1


class TrainingError(D2VError):
    """Training stopped on purpose: non-finite loss, representation collapse."""

    exit_code = 1


class ExportError(D2VError):
    """A model that the requested export format cannot represent, or an export that failed."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (``strerror`` for an OSError), or its
    type name: what a one-line error quotes of a library's multi-line message."""
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
