"""The bundled demo clips: 22 short read English sentences (16 kHz mono FLAC, about 1 MB).

They come from d2v's shared speech set (espeak-ng voices in several English accents) and let
``d2v train --modality audio`` run without any data of one's own.
"""

from __future__ import annotations

from importlib import resources


def demo_data_dir() -> str:
    """Folder holding the demo ``.flac`` files."""
    return str(resources.files("d2v_plugin_audio") / "demo")
