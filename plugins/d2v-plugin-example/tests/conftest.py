"""The example plugin is not installed by `make test`: its tests import it from the source tree,
and one test installs it for real into a temporary site directory."""

import sys
from pathlib import Path

PLUGIN_DIR = str(Path(__file__).resolve().parents[1])
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)
