"""The probe's fit (``d2v probe`` and the online probe): one BLAS thread on a probe-sized matrix."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

from d2v_core.inference import probe
from d2v_core.inference.probe import ProbeSplit, fit_and_score


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def _split(n: int = 120, d: int = 8) -> ProbeSplit:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, d)).astype(np.float32) + 3.0 * np.eye(d, dtype=np.float32)[y]
    labels = [str(v) for v in y]
    return ProbeSplit(x[: n // 2], labels[: n // 2], x[n // 2:], labels[n // 2:])


@pytest.fixture
def threads_seen_by_fit(monkeypatch):
    seen: list[set[int]] = []
    fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(_blas_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    return seen


def test_a_probe_sized_fit_runs_on_one_blas_thread_and_restores_the_pool(threads_seen_by_fit):
    with threadpool_limits(limits=2, user_api="blas"):  # as on a machine with cores to spare
        assert _blas_threads() == {2}
        scores = fit_and_score(_split())
        assert _blas_threads() == {2}
    assert threads_seen_by_fit == [{1}]
    assert scores["accuracy"] > 0.9 and (scores["train_size"], scores["test_size"]) == (60, 60)


def test_a_fit_above_the_size_limit_keeps_the_librarys_threads(threads_seen_by_fit, monkeypatch):
    monkeypatch.setattr(probe, "SINGLE_THREAD_FIT_MAX_ELEMENTS", 100)  # the split's 60 x 8 is above it
    with threadpool_limits(limits=2, user_api="blas"):
        fit_and_score(_split())
    assert threads_seen_by_fit == [{2}]


def test_the_thread_limit_does_not_change_the_probe(threads_seen_by_fit):
    limited = fit_and_score(_split())
    assert fit_and_score(_split(), blas_threads=2) == limited
    assert threads_seen_by_fit == [{1}, {2}]
