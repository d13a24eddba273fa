import pytest
import torch

from d2v_core import testing
from d2v_core.config import RunConfig
from d2v_core.errors import ConfigError
from d2v_core.interfaces import SkipRecord
from d2v_core.train.build import build_context

from d2v_plugin_text.data import TextRecordDecoder
from d2v_plugin_text.data import build_record_decoder as build_text_decoder
from d2v_plugin_text.options import TextDataOptions, TextEncoderOptions


def build_record_decoder(cfg: RunConfig) -> TextRecordDecoder:
    """The factory, called as the core calls it for ``cfg``."""
    return build_text_decoder(TextDataOptions.model_validate(cfg.data.options), TextEncoderOptions.model_validate(cfg.encoder),
                              build_context(cfg))


@pytest.fixture()
def decoder(small_tokenizer):
    return TextRecordDecoder(small_tokenizer, block_size=16, break_mode="complete_doc")


def test_decode_tokenizes_one_document(decoder, small_tokenizer):
    sample = decoder.decode({"txt": "the day of the year.".encode(), "__key__": "k1"})
    assert sample == {"tokens": small_tokenizer.encode("the day of the year.") + [2], "key": "k1"}
    assert decoder.decode({"txt": "the day"})["tokens"][-1] == 2  # str payloads too


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"txt": b""}, "empty"),
        ({"txt": b"  \n\t "}, "empty"),
        ({"txt": b"\xff\xfe bad utf8 \xc3"}, "undecodable"),
        ({"json": b"{}"}, "missing_text"),
    ],
)
def test_bad_records_are_skipped(decoder, record, reason):
    with pytest.raises(SkipRecord) as info:
        decoder.decode(record)
    assert info.value.reason == reason


def test_collate_packs_and_pads(decoder, small_tokenizer):
    texts = ["the day.", "a man.", "the world of the people in the country is the school of life."]
    records = [{"txt": t.encode(), "__key__": f"k{i}"} for i, t in enumerate(texts)]
    batch = testing.check_record_decoder(decoder, records)
    docs = [small_tokenizer.encode(t) + [2] for t in texts]
    assert len(docs[0]) + len(docs[1]) <= 15 < len(docs[0]) + len(docs[1]) + len(docs[2])  # the setup the rows below rely on
    expected = [[0, *docs[0], *docs[1]]] + [[0, *docs[2][i : i + 15]] for i in range(0, len(docs[2]), 15)]
    tokens = batch["tokens"]
    assert tokens.dtype == torch.long and tokens.shape == (len(expected), max(map(len, expected)))
    for row, exp in zip(tokens.tolist(), expected, strict=True):
        assert row == exp + [1] * (tokens.shape[1] - len(exp))
    assert torch.equal(batch["padding_mask"], tokens.eq(1))
    assert batch["keys"][0] == "k0+k1" and all(k == "k2" for k in batch["keys"][1:])


def test_collate_none_mode(small_tokenizer):
    dec = TextRecordDecoder(small_tokenizer, block_size=8, break_mode="none")
    samples = [dec.decode({"txt": t.encode(), "__key__": str(i)}) for i, t in enumerate(["the day of the week.", "a man."])]
    batch = dec.collate(samples)
    stream = [t for s in samples for t in s["tokens"]]
    rows = [r[: 8 - int(p.sum())] for r, p in zip(batch["tokens"].tolist(), batch["padding_mask"], strict=True)]
    assert all(r[0] == 0 for r in rows) and [t for r in rows for t in r[1:]] == stream
    assert all(len(r) == 8 for r in rows[:-1])


def test_build_record_decoder_reads_encoder_and_data_options():
    cfg = RunConfig(modality="text", model={"depth": 2}, targets={"top_k": 2},
                    encoder={"max_positions": 64}, data={"options": {"block_size": 32, "break_mode": "none"}})
    dec = build_record_decoder(cfg)
    assert (dec.block_size, dec.break_mode, dec.extensions) == (32, "none", ("txt",))
    assert dec.tokenizer.vocab_size > 500  # demo tokenizer
    bad = cfg.model_copy(update={"data": cfg.data.model_copy(update={"options": {"block_size": 128}})})
    with pytest.raises(ConfigError, match="max_positions"):
        build_record_decoder(bad)


def test_decoder_pickles_for_worker_processes(decoder):
    import pickle

    clone = pickle.loads(pickle.dumps(decoder))
    assert clone.decode({"txt": b"the day"}) == decoder.decode({"txt": b"the day"})


def test_inference_collate_makes_one_row_per_document():
    from d2v_plugin_text.data import TextRecordDecoder
    from d2v_plugin_text.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    dec = TextRecordDecoder(tok, block_size=8, break_mode="complete_doc")
    docs = ["a short one", "another short one", "a much longer document " * 5]
    samples = [dec.decode_for_inference({"__key__": f"d{i}", "txt": t.encode()}) for i, t in enumerate(docs)]
    batch = dec.collate_for_inference(samples)
    assert batch["keys"] == ["d0", "d1", "d2"]
    assert batch["tokens"].shape[0] == 3 and batch["tokens"].shape[1] <= 8
    assert (batch["tokens"][:, 0] == tok.bos_id).all()
    first = [tok.bos_id, *tok.encode(docs[0]), tok.eos_id]
    assert batch["tokens"][0, : len(first)].tolist() == first
    assert batch["padding_mask"][0, len(first):].all()
