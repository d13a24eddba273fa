"""Shared fixtures: a small synthetic corpus and a tokenizer trained on it (no /work/shared)."""

from __future__ import annotations

import random

import pytest

WORDS = (
    "the a of and to in is was it for on with as by at from that this be are an or not have "
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line"
).split()


def make_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) + "." for _ in range(n_lines)]


@pytest.fixture(scope="session")
def corpus_lines() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_lines):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, corpus_file):
    from d2v_plugin_text.tokenizer import Tokenizer, train_tokenizer

    out = train_tokenizer([corpus_file], 200, "bpe", tmp_path_factory.mktemp("tok") / "small")
    return Tokenizer.from_file(out)
