"""Run ``d2v pretrain`` with the example plugin and a deterministic masker registered in-process.

Used by the tests as ``python tests/pretrain_worker.py ARGS`` and under ``torchrun`` (gloo, CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "d2v-plugin-example"))

from d2v_core import ComponentSpec, hookimpl  # noqa: E402
from d2v_core.interfaces import Masker, MaskRequest  # noqa: E402


class StripeMasker(Masker):
    """Masks every third valid step. Per-row and independent of the batch it sits in, so that a
    2-process run sees exactly the masks of a 1-process run: the comparison then isolates what
    DDP changes (gradient averaging, loss normalisation over ranks)."""

    expected_ratio = 1 / 3

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> torch.Tensor:
        steps = torch.arange(request.length)[None, :]
        return (steps % 3 == 0) & (steps < request.valid_lengths()[:, None])


class EqualStripeMasker(StripeMasker):
    """Every third step up to the batch's shortest row: the same count in every row, as data2vec
    2.0's sparse student needs (equal-length data gives every rank the masks of one process)."""

    equal_counts = True

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> torch.Tensor:
        steps = torch.arange(request.length)[None, :]
        return ((steps % 3 == 0) & (steps < int(request.valid_lengths().min()))).expand(request.batch_size, -1)


class TestPlugin:
    D2V_PLUGIN_API_VERSION = "1.0"
    __name__ = "stripes"

    @hookimpl
    def d2v_register(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.add_component(ComponentSpec("masker", "stripes", lambda options: StripeMasker()))
        registry.add_component(ComponentSpec("masker", "equal-stripes", lambda options: EqualStripeMasker()))


def main(argv: list[str]) -> None:
    from d2v_cli.app import main as cli_main
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_example import plugin

    with plugin_context(plugin, TestPlugin()):
        cli_main(["pretrain", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
