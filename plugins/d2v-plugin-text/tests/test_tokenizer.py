import copy
import io
import pickle

import pytest
import sentencepiece as spm

from d2v_core.errors import ConfigError, DataError

from d2v_plugin_text.tokenizer import DEMO_TOKENIZER, Tokenizer, load_tokenizer, train_tokenizer


def test_special_ids_follow_roberta(small_tokenizer):
    tok = small_tokenizer
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.sp_size == 200
    assert tok.mask_id == 200 and tok.vocab_size == 201  # <mask> is the last id
    assert tok.id_to_piece(tok.mask_id) == "<mask>"
    assert set(tok.special_ids) == {0, 1, 2, 3, 200}


def test_encode_has_no_specials_and_round_trips(small_tokenizer, corpus_lines):
    for line in corpus_lines[:50]:
        ids = small_tokenizer.encode(line)
        assert ids and all(4 <= i < small_tokenizer.sp_size for i in ids)
        assert small_tokenizer.decode(ids) == line
    # specials (and <mask>, which sentencepiece does not know) are dropped when decoding
    ids = small_tokenizer.encode("the day")
    assert small_tokenizer.decode([0, *ids, small_tokenizer.mask_id, 2, 1, 1]) == "the day"


def test_unknown_characters_map_to_unk(small_tokenizer):
    assert 3 in small_tokenizer.encode("the \u2603 day")


def test_unigram_model_has_same_layout(tmp_path, corpus_file):
    tok = Tokenizer.from_file(train_tokenizer([corpus_file], 100, "unigram", tmp_path / "u"))
    assert [tok.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.vocab_size == 101


def test_from_bytes_pickle_and_deepcopy_match(small_tokenizer, corpus_lines):
    clones = [
        Tokenizer.from_bytes(small_tokenizer.model_bytes),
        pickle.loads(pickle.dumps(small_tokenizer)),
        copy.deepcopy(small_tokenizer),
    ]
    for clone in clones:
        assert clone.vocab_size == small_tokenizer.vocab_size
        assert clone.encode(corpus_lines[0]) == small_tokenizer.encode(corpus_lines[0])


def test_demo_tokenizer_is_shipped():
    tok = load_tokenizer(None)
    assert DEMO_TOKENIZER.is_file()
    assert tok.vocab_size == tok.sp_size + 1 and 500 <= tok.sp_size <= 2000
    assert tok.decode(tok.encode("Hello there, world.")) == "Hello there, world."


def test_model_with_other_special_ids_is_refused(tmp_path, corpus_lines):
    buf = io.BytesIO()  # sentencepiece's default layout: unk 0, bos 1, eos 2, no pad
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines), model_writer=buf, vocab_size=100, minloglevel=2)
    with pytest.raises(ConfigError, match="special ids"):
        Tokenizer.from_bytes(buf.getvalue())


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a sentencepiece model"):
        Tokenizer.from_file(bad)


def test_train_errors(tmp_path, corpus_file):
    with pytest.raises(DataError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], 100, "bpe", tmp_path / "m")
    with pytest.raises(DataError, match="too large for this corpus"):
        train_tokenizer([corpus_file], 50_000, "bpe", tmp_path / "m")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        train_tokenizer([empty], 100, "bpe", tmp_path / "m")
    with pytest.raises(ConfigError, match="model type"):
        train_tokenizer([corpus_file], 100, "wordpiece", tmp_path / "m")


def test_train_is_deterministic(tmp_path, corpus_file):
    a = train_tokenizer([corpus_file], 120, "bpe", tmp_path / "a").read_bytes()
    b = train_tokenizer([corpus_file], 120, "bpe", tmp_path / "b").read_bytes()
    assert a == b
