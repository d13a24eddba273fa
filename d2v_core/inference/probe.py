"""Linear probe: frozen, pooled features and a logistic-regression classifier (scikit-learn)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from d2v_core.errors import ConfigError, DataError
from d2v_core.inference.embed import Embeddings


@dataclass
class ProbeSplit:
    x_train: np.ndarray
    y_train: list[str]
    x_test: np.ndarray
    y_test: list[str]


def labels_of(emb: Embeddings, column: str) -> list[str]:
    missing = [k for k, m in zip(emb.keys, emb.meta, strict=True) if column not in m]
    if missing:
        raise DataError(f"label column {column!r} is missing for {len(missing)} record(s), e.g. {missing[0]!r}; "
                        f"pass --label-column with one of: {', '.join(sorted(emb.meta[0])) if emb.meta else 'none'}")
    return [str(m[column]) for m in emb.meta]


def split_by_group(emb: Embeddings, label_column: str, group_column: str, test_fraction: float = 0.25, seed: int = 0) -> ProbeSplit:
    """Hold out whole groups (e.g. speakers): a seeded ``test_fraction`` of the distinct values of
    ``group_column`` goes to the test set, so the probe measures generalisation to unseen groups."""
    if any(group_column not in m for m in emb.meta):
        raise DataError(f"--split-by column {group_column!r} is missing from the manifest")
    groups = sorted({str(m[group_column]) for m in emb.meta})
    if len(groups) < 2:
        raise DataError(f"--split-by {group_column!r} has {len(groups)} distinct value(s); need at least 2")
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, round(test_fraction * len(groups)))])
    is_test = np.array([str(m[group_column]) in held for m in emb.meta])
    x, y = np.stack(emb.vectors), np.array(labels_of(emb, label_column))
    return ProbeSplit(x[~is_test], list(y[~is_test]), x[is_test], list(y[is_test]))


def split_random(emb: Embeddings, label_column: str, test_fraction: float = 0.25, seed: int = 0) -> ProbeSplit:
    """Hold out a seeded random ``test_fraction`` of the records (at least one, and at least one
    kept for training): the split when neither a test manifest nor a group column is given."""
    n = len(emb.keys)
    if n < 2:
        raise DataError(f"the probe manifest has {n} usable record(s); need at least 2 to hold some out")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[: min(n - 1, max(1, round(test_fraction * n)))])
    is_test = np.array([i in held for i in range(n)])
    x, y = np.stack(emb.vectors), np.array(labels_of(emb, label_column))
    return ProbeSplit(x[~is_test], list(y[~is_test]), x[is_test], list(y[is_test]))


def make_split(train: Embeddings, test: Embeddings | None, label_column: str, split_by: str | None = None,
               test_fraction: float = 0.25, seed: int = 0) -> ProbeSplit:
    """The probe's split, by one rule for ``d2v probe`` and the online probe: the ``test``
    embeddings when given, else whole groups of ``split_by``, else a random ``test_fraction``."""
    if test is not None:
        if not train.vectors or not test.vectors:
            raise DataError(f"no usable record in the probe's {'training' if not train.vectors else 'test'} manifest")
        return ProbeSplit(np.stack(train.vectors), labels_of(train, label_column), np.stack(test.vectors), labels_of(test, label_column))
    if split_by is not None:
        return split_by_group(train, label_column, split_by, test_fraction, seed)
    return split_random(train, label_column, test_fraction, seed)


#: the largest training matrix (records x features) fitted with one BLAS thread
SINGLE_THREAD_FIT_MAX_ELEMENTS = 1 << 24


def fit_blas_threads(x_train: np.ndarray) -> int | None:
    """BLAS threads for the fit of ``x_train``: one up to :data:`SINGLE_THREAD_FIT_MAX_ELEMENTS`
    (``None``, the library's default, above). L-BFGS makes hundreds of small matrix products;
    on a probe's matrices (1,000 x 128 in the online probe) several OpenBLAS threads cost more in
    hand-offs than they gain: two threads made the fit about 20x slower on an idle 2-core machine
    and about 100x beside busy cores (docs/benchmarks.md, section 9)."""
    return 1 if x_train.size <= SINGLE_THREAD_FIT_MAX_ELEMENTS else None


def fit_and_score(split: ProbeSplit, seed: int = 0, *, blas_threads: int | None | Literal["auto"] = "auto") -> dict:
    """Standardise, fit multinomial logistic regression on train, report test accuracy.
    ``blas_threads``: the BLAS threads of the fit (``auto``: :func:`fit_blas_threads`; ``None``:
    the library's own count)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(set(split.y_train)) < 2:
        raise DataError("the probe's training split has fewer than 2 classes")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    threads = fit_blas_threads(split.x_train) if blas_threads == "auto" else blas_threads
    with threadpool_limits(limits=threads, user_api="blas"):
        clf.fit(split.x_train, split.y_train)
    accuracy = float((clf.predict(split.x_test) == np.array(split.y_test)).mean())
    return {"accuracy": accuracy, "train_size": len(split.y_train), "test_size": len(split.y_test)}


def majority_accuracy(y_train: Sequence[str], y_test: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent training label (the floor of any probe)."""
    values, counts = np.unique(np.array(y_train), return_counts=True)
    top = values[counts.argmax()]
    return float((np.array(y_test) == top).mean())


def check_probe_args(train_given: bool, test_given: bool, split_by: str | None) -> None:
    if not train_given:
        raise ConfigError("pass --train MANIFEST")
    if test_given and split_by is not None:
        raise ConfigError("pass --test MANIFEST or --split-by COLUMN, not both (neither: a seeded random quarter is held out)")
