"""Put the plugin's source tree on sys.path, so its tests import it even where it is not installed
(``make test`` installs it; the CLI tests need that installed copy and skip without it)."""

import sys
from pathlib import Path

PLUGIN_DIR = str(Path(__file__).resolve().parents[1])
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)
