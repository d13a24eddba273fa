import copy
import os

import pytest
import torch

from d2v_core import testing
from d2v_core.config import RunConfig
from d2v_core.errors import CheckpointError, ConfigError, DataError
from d2v_core.train.build import build_context

from d2v_plugin_text.encoder import TextFeatureEncoder, make_positions
from d2v_plugin_text.encoder import build_encoder as build_text_encoder
from d2v_plugin_text.options import TextEncoderOptions
from d2v_plugin_text.tokenizer import Tokenizer, load_tokenizer


def build_encoder(cfg: RunConfig) -> TextFeatureEncoder:
    """The factory, called as the core calls it for ``cfg``."""
    return build_text_encoder(TextEncoderOptions.model_validate(cfg.encoder), build_context(cfg))


def tiny_encoder(tokenizer=None, dim=16, max_positions=32, **kw) -> TextFeatureEncoder:
    torch.manual_seed(0)
    return TextFeatureEncoder(tokenizer or load_tokenizer(None), dim=dim, max_positions=max_positions, **kw)


def padded_batch(tok: Tokenizer, texts: list[str]) -> dict:
    rows = [[0, *tok.encode(t), 2] for t in texts]
    length = max(map(len, rows))
    tokens = torch.full((len(rows), length), 1, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return {"tokens": tokens, "padding_mask": tokens.eq(1), "keys": [str(i) for i in range(len(rows))]}


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi.", "A critic is a bundle of biases held loosely together."]


def test_parameter_names_and_shapes():
    enc = tiny_encoder()
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    v = enc.tokenizer.vocab_size
    assert shapes == {
        "embed_tokens.weight": (v, 16),
        "embed_positions.weight": (34, 16),  # max_positions + 2
        "layernorm_embedding.weight": (16,),
        "layernorm_embedding.bias": (16,),
    }
    assert enc.embed_tokens.padding_idx == 1 and enc.embed_positions.padding_idx == 1
    assert not enc.embed_tokens.weight[1].any() and not enc.embed_positions.weight[1].any()
    assert enc.num_prefix_tokens == 0


def test_conformance_kit():
    enc = tiny_encoder()
    feats = testing.check_feature_encoder(enc, padded_batch(enc.tokenizer, TEXTS))
    assert torch.equal(feats.padding_mask, padded_batch(enc.tokenizer, TEXTS)["tokens"].eq(1))


def test_positions_equal_roberta_create_position_ids():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.models.data2vec.modeling_data2vec_text import Data2VecTextEmbeddings

    tokens = torch.tensor([[0, 7, 8, 9, 2, 1, 1], [0, 5, 2, 1, 1, 1, 1], [0, 4, 4, 4, 4, 4, 2]])
    expected = Data2VecTextEmbeddings.create_position_ids_from_input_ids(tokens, padding_idx=1)
    assert torch.equal(make_positions(tokens.eq(1), 1), expected)
    assert make_positions(tokens.eq(1), 1)[2].tolist() == [2, 3, 4, 5, 6, 7, 8]  # real tokens start at 2


def test_matches_transformers_data2vec_text_embeddings():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Data2VecTextConfig, Data2VecTextModel

    enc = tiny_encoder(dim=32, max_positions=40, norm_eps=1e-5).eval()
    with torch.no_grad():  # non-trivial LayerNorm so the test can tell it apart from an identity
        enc.layernorm_embedding.weight.uniform_(0.5, 1.5)
        enc.layernorm_embedding.bias.normal_()
    cfg = Data2VecTextConfig(
        vocab_size=enc.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=42, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5, type_vocab_size=1,
    )
    hf = Data2VecTextModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        hf.embeddings.word_embeddings.weight.copy_(enc.embed_tokens.weight)
        hf.embeddings.position_embeddings.weight.copy_(enc.embed_positions.weight)
        hf.embeddings.token_type_embeddings.weight.zero_()
        hf.embeddings.LayerNorm.weight.copy_(enc.layernorm_embedding.weight)
        hf.embeddings.LayerNorm.bias.copy_(enc.layernorm_embedding.bias)
    batch = padded_batch(enc.tokenizer, TEXTS)
    assert batch["padding_mask"].any()
    with torch.no_grad():
        feats = enc.embed(batch)
        ours = enc.contextualize(feats.x, feats.padding_mask).x
        theirs = hf.embeddings(input_ids=batch["tokens"])
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_apply_mask_splits_80_10_10():
    enc = tiny_encoder(dim=8, max_positions=64)
    special = set(enc.tokenizer.special_ids)
    weight = enc.embed_tokens.weight.detach()
    tokens = torch.randint(4, enc.tokenizer.sp_size, (50, 40), generator=torch.Generator().manual_seed(0))
    x = enc.embed({"tokens": tokens}).x.detach()
    mask = torch.rand(50, 40, generator=torch.Generator().manual_seed(1)) < 0.5
    gen = torch.Generator().manual_seed(2)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for _ in range(20):
        y = enc.apply_mask(x, mask, gen).detach()
        assert torch.equal(y[~mask], x[~mask])
        rows = y[mask]
        # which table row each masked output is (exactly one: the table rows are distinct)
        ids = (rows[:, None, :] == weight[None]).all(-1).float().argmax(-1)
        orig = tokens[mask]
        is_mask = ids == enc.mask_id
        is_kept = ids == orig
        counts["mask"] += int(is_mask.sum())
        counts["kept"] += int(is_kept.sum())
        counts["random"] += int((~is_mask & ~is_kept).sum())
        assert not any(int(i) in special for i in ids[~is_mask & ~is_kept])
    total = sum(counts.values())
    n_candidates = enc.tokenizer.vocab_size - len(special)
    # a random token equal to the original counts as kept: 0.1 / n_candidates moves over
    assert abs(counts["mask"] / total - 0.8) < 0.01
    assert abs(counts["random"] / total - 0.1 * (1 - 1 / n_candidates)) < 0.008
    assert abs(counts["kept"] / total - (0.1 + 0.1 / n_candidates)) < 0.008


def test_apply_mask_is_deterministic_and_span_presets_only_mask():
    enc = tiny_encoder(random_token_prob=0.0, leave_unmasked_prob=0.0)
    tokens = torch.randint(4, 900, (4, 30), generator=torch.Generator().manual_seed(0))
    x = enc.embed({"tokens": tokens}).x
    mask = torch.rand(4, 30, generator=torch.Generator().manual_seed(1)) < 0.4
    y = enc.apply_mask(x, mask, torch.Generator().manual_seed(3))
    assert torch.equal(y[mask], enc.embed_tokens.weight[enc.mask_id].expand(int(mask.sum()), -1))
    enc2 = tiny_encoder()
    a = enc2.apply_mask(x, mask, torch.Generator().manual_seed(5))
    b = enc2.apply_mask(x, mask, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_mask_row_gets_gradient():
    enc = tiny_encoder(random_token_prob=0.0, leave_unmasked_prob=0.0)
    tokens = torch.randint(4, 900, (2, 10), generator=torch.Generator().manual_seed(0))
    feats = enc.embed({"tokens": tokens})
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 3] = True
    enc.contextualize(enc.apply_mask(feats.x, mask), feats.padding_mask).x.sum().backward()
    assert enc.embed_tokens.weight.grad[enc.mask_id].abs().sum() > 0


def test_too_long_rows_are_refused():
    enc = tiny_encoder(max_positions=8)
    with pytest.raises(DataError, match="max_positions"):
        enc.embed({"tokens": torch.full((1, 9), 5)})


def test_extra_state_carries_the_tokenizer(small_tokenizer):
    enc = tiny_encoder(small_tokenizer)
    state = enc.extra_state()
    assert list(state) == ["small.model"]  # the file name: the core redirects encoder.tokenizer to the saved copy
    assert Tokenizer.from_bytes(state["small.model"]).encode("the day") == small_tokenizer.encode("the day")
    other = tiny_encoder(small_tokenizer)
    other.load_extra_state(state)
    assert other.tokenizer.model_bytes == small_tokenizer.model_bytes
    with pytest.raises(CheckpointError):
        tiny_encoder().load_extra_state(state)  # demo tokenizer: different vocabulary size
    assert copy.deepcopy(enc).tokenizer.vocab_size == small_tokenizer.vocab_size


def test_build_encoder_from_config(tmp_path, small_tokenizer):
    path = tmp_path / "t.model"
    path.write_bytes(small_tokenizer.model_bytes)
    cfg = RunConfig(modality="text", model={"dim": 24, "heads": 2, "depth": 2, "dropout": 0.2, "norm_eps": 1e-6},
                    targets={"top_k": 2}, encoder={"tokenizer": str(path), "max_positions": 64})
    enc = build_encoder(cfg)
    assert enc.dim == 24 and enc.embed_tokens.num_embeddings == 201 and enc.embed_positions.num_embeddings == 66
    assert enc.dropout.p == 0.2 and enc.layernorm_embedding.eps == 1e-6
    cfg2 = cfg.model_copy(update={"encoder": {"embed_dropout": 0.05}})
    assert build_encoder(cfg2).dropout.p == 0.05 and build_encoder(cfg2).tokenizer.vocab_size == load_tokenizer(None).vocab_size
    with pytest.raises(ConfigError, match="does not exist"):
        build_encoder(cfg.model_copy(update={"encoder": {"tokenizer": str(tmp_path / "missing.model")}}))


def test_demo_tokenizer_warning_only_for_user_data(tmp_path, caplog):
    from d2v_plugin_text.plugin import demo_data

    base = dict(modality="text", model={"dim": 16, "heads": 2, "depth": 2}, targets={"top_k": 2})
    with caplog.at_level("WARNING", logger="d2v_plugin_text.encoder"):
        build_encoder(RunConfig(**base, data={"train": demo_data()}))
    assert not caplog.records
    with caplog.at_level("WARNING", logger="d2v_plugin_text.encoder"):
        build_encoder(RunConfig(**base, data={"train": str(tmp_path / "mine.jsonl")}))
    assert "demo tokenizer" in caplog.text
