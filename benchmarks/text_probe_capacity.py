"""Why pretraining buys little on the text probe: how much topic information a mean-pooled
D-dimensional feature can hold at all on this data (issue 9, item 4, "find out why").

Run:  .venv/bin/python benchmarks/text_probe_capacity.py
      -> benchmarks/results/text_probe_capacity.json

On the same split as ``d2v probe --split-by doc`` of ``text/labelled.jsonl``, with the demo
tokenizer the ``tiny`` presets use, it scores logistic regression on
- TF-IDF over the tokenizer's pieces (does the tokenizer keep the topic signal?), and
- the mean of fixed random D-dimensional piece embeddings, for D = 128 (``tiny``'s width), 384,
  768 (``base``'s width) and one-hot (a bag of pieces): what a mean-pooled D-wide feature can
  carry when nothing is learned, the floor a pretrained model of that width has to beat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import SHARED, machine_info, write_result  # noqa: E402
from classical_baselines import manifest_rows  # noqa: E402
from pretrain_probe import probe_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from d2v_core.inference.embed import Embeddings
    from d2v_core.inference.probe import split_by_group

    from d2v_plugin_text.tokenizer import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=Path("runs/bench/text_probe_capacity"))
    p.add_argument("--dims", type=int, nargs="+", default=[128, 384, 768])
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    rows = manifest_rows(probe_manifest("text", a.root, a.work))
    emb = Embeddings(keys=[str(i) for i in range(len(rows))], meta=[{"label": r["label"], "doc": r["doc"]} for r in rows])
    emb.vectors = [np.array([i], dtype=np.float32) for i in range(len(rows))]
    split = split_by_group(emb, "label", "doc", 0.25, 0)
    train, test = [int(i[0]) for i in split.x_train], [int(i[0]) for i in split.x_test]
    y_train, y_test = np.array(split.y_train), np.array(split.y_test)
    tok = load_tokenizer(None)
    pieces = [tok.encode(r["text"]) for r in rows]

    def logreg(x_tr, x_te) -> float:
        clf = LogisticRegression(max_iter=3000, random_state=0).fit(x_tr, y_train)
        return float((clf.predict(x_te) == y_test).mean())

    as_words = [" ".join(f"p{i}" for i in e) for e in pieces]
    vec = TfidfVectorizer(min_df=2, token_pattern=r"\S+")
    result = {"benchmark": "text_probe_capacity", "machine": machine_info(), "tokenizer_ids": tok.vocab_size,
              "train_size": len(train), "test_size": len(test),
              "tfidf_pieces": logreg(vec.fit_transform([as_words[i] for i in train]), vec.transform([as_words[i] for i in test]))}
    result["mean_random_embeddings"] = {}
    for d in [*a.dims, "one-hot"]:
        table = np.eye(tok.vocab_size) if d == "one-hot" else np.random.default_rng(0).normal(size=(tok.vocab_size, d))
        z = np.stack([table[e].mean(0) for e in pieces])
        scale = StandardScaler().fit(z[train])
        result["mean_random_embeddings"][str(d)] = logreg(scale.transform(z[train]), scale.transform(z[test]))
    print(f"TF-IDF over the tokenizer's pieces: {result['tfidf_pieces']:.3f}")
    for d, acc in result["mean_random_embeddings"].items():
        print(f"mean of random {d} piece embeddings: {acc:.3f}")
    print(f"wrote {write_result('text_probe_capacity', result, a.out)}")


if __name__ == "__main__":
    main()
