"""Rebuild the demo data shipped in ``d2v_plugin_text/demo/`` (run from the repository root).

    .venv/bin/python plugins/d2v-plugin-text/scripts/make_demo.py /path/to/corpus.txt

Takes a seeded sample of 2,000 lines of a one-document-per-line corpus (the project used the
Debian 'fortunes' corpus in ``shared/datasets/text/corpus.txt``), writes them as
``corpus.jsonl`` (``{"text": ...}`` per line) and trains the demo BPE tokenizer (1,000 pieces)
on them.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from d2v_plugin_text.tokenizer import train_tokenizer

NUM_DOCS = 2000
VOCAB = 1000
SEED = 0


def main(corpus: str) -> None:
    demo = Path(__file__).resolve().parents[1] / "d2v_plugin_text" / "demo"
    lines = [ln.strip() for ln in Path(corpus).read_text(encoding="utf-8").splitlines() if ln.strip()]
    picked = sorted(random.Random(SEED).sample(range(len(lines)), NUM_DOCS))
    out = demo / "corpus.jsonl"
    with out.open("w", encoding="utf-8") as fh:
        for i in picked:
            fh.write(json.dumps({"text": lines[i]}, ensure_ascii=False) + "\n")
    model = train_tokenizer([out], VOCAB, "bpe", demo / "tokenizer")
    print(f"wrote {out} ({out.stat().st_size} bytes) and {model} ({model.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
