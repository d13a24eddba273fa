"""Size limits on huge records (issue 17): what one oversized record costs before and after.

Run:  .venv/bin/python benchmarks/size_limits.py            -> benchmarks/results/size_limits.json
      .venv/bin/python benchmarks/size_limits.py --quick    (a smoke run: a smaller document)

- ``pack_rows``: one document of ``--tokens`` token ids (1.2M: about a 5 MB line of English)
  packed into rows of ``block_size`` 512, median of ``--repeat`` calls; rows must be
  ``ceil(tokens / 511)``. The loop walks the document by offset; it used to slice the rest of the
  document once per row (quadratic).
- ``text_decode``: the text plugin's demo-tokenizer decoder on one line of ``--megabytes`` MB
  with the default limit (8 rows of 511 tokens): seconds, tokens kept, rows its batch holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_info, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1_200_000)
    p.add_argument("--megabytes", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a small document, one repeat (smoke run)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    if a.quick:
        a.tokens, a.megabytes, a.repeat = 50_000, 0.2, 1

    from d2v_plugin_text.data import TextRecordDecoder
    from d2v_plugin_text.packing import pack_rows
    from d2v_plugin_text.tokenizer import load_tokenizer

    doc = list(range(4, 4 + a.tokens))
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        rows = pack_rows([doc], 512)
        times.append(time.perf_counter() - t)
    assert len(rows) == -(-a.tokens // 511)

    decoder = TextRecordDecoder(load_tokenizer(None), block_size=512)
    line = ("the quick brown fox jumps over the lazy dog " * int(a.megabytes * 1e6 / 44 + 1)).encode()
    t = time.perf_counter()
    sample = decoder.decode({"__key__": "book", "txt": line})
    decode_s = time.perf_counter() - t
    batch_rows = int(decoder.collate([sample])["tokens"].shape[0])

    result = {
        "benchmark": "size_limits", "quick": a.quick, "machine": machine_info(),
        "pack_rows": {"tokens": a.tokens, "block_size": 512, "rows": len(rows), "seconds_median": statistics.median(times),
                      "repeat": a.repeat},
        "text_decode": {"bytes": len(line), "seconds": decode_s, "tokens_kept": len(sample["tokens"]),
                        "note": sample.get("_note"), "batch_rows": batch_rows},
    }
    out = write_result("size_limits_quick" if a.quick else "size_limits", result, a.out)
    print(f"pack_rows {a.tokens} tokens: {statistics.median(times):.3f} s, {len(rows)} rows; "
          f"decode {len(line) / 1e6:.1f} MB line: {decode_s:.3f} s, {len(sample['tokens'])} tokens, {batch_rows} rows -> {out}")


if __name__ == "__main__":
    main()
