"""Classical baselines for the linear probes of ``pretrain_probe.py``, on the probe's exact split.

- audio: torchaudio MFCC (40 coefficients, 25 ms windows, 10 ms hop, 40 mel bands), mean and
  standard deviation over time (80 numbers per clip);
- image: the raw grey-level pixels (32 x 32 = 1,024 numbers);
- text: TF-IDF bag of words (unigrams, words seen in at least 2 training documents).

Audio and image features go through the core's ``fit_and_score`` (standardise + logistic
regression), like the d2v probe; text's sparse TF-IDF goes straight into the same logistic
regression (standardising would densify it). The split is ``split_by_group`` of the core with
the same column, fraction and seed as ``d2v probe``, so the test items are the same.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from d2v_core.inference.embed import Embeddings
from d2v_core.inference.probe import fit_and_score, split_by_group


def manifest_rows(manifest: Path) -> list[dict]:
    if manifest.suffix == ".jsonl":
        return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    with manifest.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _path(manifest: Path, row: dict) -> Path:
    p = Path(row["path"])
    return p if p.is_absolute() else manifest.parent / p


def mfcc_features(path: Path):  # noqa: ANN201
    import soundfile as sf
    import torch
    import torchaudio

    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(wav.mean(1))
    if sr != 16000:
        x = torchaudio.functional.resample(x, sr, 16000)
    mfcc = torchaudio.transforms.MFCC(sample_rate=16000, n_mfcc=40,
                                      melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40})(x)
    return torch.cat([mfcc.mean(-1), mfcc.std(-1)]).numpy()


def pixel_features(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32).reshape(-1) / 255.0


def classical_probe(modality: str, manifest: Path, label_column: str, split_by: str, test_fraction: float = 0.25,
                    seed: int = 0) -> dict:
    """Accuracy of the modality's classical baseline on the d2v probe's split of ``manifest``."""
    rows = manifest_rows(manifest)
    meta = [{k: v for k, v in r.items() if k not in ("path", "text")} for r in rows]
    emb = Embeddings(keys=[str(i) for i in range(len(rows))], meta=meta)
    if modality == "text":
        emb.vectors = [np.array([i], dtype=np.float32) for i in range(len(rows))]  # row indices, resolved below
        split = split_by_group(emb, label_column, split_by, test_fraction, seed)
        return _bag_of_words(rows, split, seed)
    feature = {"audio": mfcc_features, "image": pixel_features}[modality]
    emb.vectors = [feature(_path(manifest, r)) for r in rows]
    split = split_by_group(emb, label_column, split_by, test_fraction, seed)
    out = fit_and_score(split, seed)
    out["features"] = {"audio": "MFCC-40 mean+std", "image": "grey pixels 32x32"}[modality]
    return out


def _bag_of_words(rows: list[dict], split, seed: int) -> dict:  # noqa: ANN001
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = [r["text"] for r in rows]
    train = [texts[int(i[0])] for i in split.x_train]
    test = [texts[int(i[0])] for i in split.x_test]
    vec = TfidfVectorizer(min_df=2)
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(vec.fit_transform(train), split.y_train)
    accuracy = float((clf.predict(vec.transform(test)) == np.array(split.y_test)).mean())
    return {"accuracy": accuracy, "train_size": len(train), "test_size": len(test), "features": "TF-IDF unigrams (min_df 2)"}
