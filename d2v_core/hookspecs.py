"""pluggy hook specifications: the whole contract between d2v and its plugins.

A plugin is a module named by an entry point in the group ``d2v``. The module declares
``D2V_PLUGIN_API_VERSION = "1.0"`` and implements the hooks below with ``@d2v_core.hookimpl``.
Registration modules should not import torch at module level: ``d2v list-plugins`` and
``d2v --help`` load every plugin and must stay fast.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "d2v"
ENTRY_POINT_GROUP = "d2v"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def d2v_register(registry) -> None:  # type: ignore[no-untyped-def]
    """Register what this plugin provides.

    Call ``registry.add_modality(ModalitySpec(...))`` for a modality and
    ``registry.add_component(ComponentSpec(kind=..., name=...))`` for a masker, normaliser,
    exporter, importer, decoder, LR schedule or metrics logger. The hook must return ``None``. Each plugin's registrations are applied
    all-or-nothing: if the hook raises, or registers a name another distribution already
    registered, none of its registrations are kept and the error is shown by
    ``d2v list-plugins``.
    """


@hookspec
def d2v_cli_commands(app) -> None:  # type: ignore[no-untyped-def]
    """Add commands to the ``d2v`` typer app (for example ``d2v train-tokenizer``).

    Keep the module that defines the command light (no torch import at module level): the hook
    runs whenever the CLI starts. A failure here is kept with the plugin's status and does not
    stop the CLI.
    """
