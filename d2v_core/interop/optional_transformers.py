"""Helpers the exporters of every modality share: the optional transformers package, imported
on use, and a context in which it prints neither load reports nor progress bars."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from d2v_core.errors import ExportError


def transformers_module() -> Any:
    """The ``transformers`` package, or an :class:`ExportError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ExportError("the hf format needs the transformers package: pip install 'd2v[hf]'") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers load reports or progress bars: d2v reports every problem itself, in one
    line (as an :class:`ExportError`)."""
    logging = transformers_module().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
