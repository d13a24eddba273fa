"""End to end through the installed ``d2v`` CLI (slow: a few training steps on the demo corpus)."""

import subprocess
import sys
from pathlib import Path

import pytest

from d2v_plugin_text.tokenizer import Tokenizer, load_tokenizer


@pytest.mark.slow
def test_pretrain_tiny_on_demo_data_writes_the_tokenizer_into_the_checkpoint(tmp_path):
    d2v = Path(sys.executable).parent / "d2v"
    if not d2v.exists():
        pytest.skip("the d2v console script is not installed next to this Python")
    out = tmp_path / "run"
    args = [str(d2v), "pretrain", "-m", "text", "--max-steps", "3", "-o", str(out),
            "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
            "--set", "runtime.save_every=3", "--set", "data.batch_size=8", "--set", "model.depth=2",
            "--set", "targets.top_k=2", "--set", "data.options.block_size=64"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = sorted(out.glob("checkpoints/*/extra/tokenizer.model"))
    assert saved, "no tokenizer in the checkpoint"
    assert Tokenizer.from_bytes(saved[-1].read_bytes()).model_bytes == load_tokenizer(None).model_bytes
