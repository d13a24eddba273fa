"""``d2v export --format hf`` / ``d2v import --from-hf`` for text, checked against transformers'
own ``Data2VecTextModel`` and ``AutoTokenizer`` (offline; tiny random models, no pretraining)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from d2v_cli.testing import run_cli  # noqa: E402
from d2v_core.config_resolve import config_to_yaml, resolve_config  # noqa: E402
from d2v_core.errors import ExportError  # noqa: E402
from d2v_core.inference.embed import encoder_states  # noqa: E402
from d2v_core.inference.pretrained import load_pretrained  # noqa: E402
from d2v_core.model.ema_teacher import EMATeacher  # noqa: E402
from d2v_core.plugin_loader import plugin_context  # noqa: E402
from d2v_core.train.build import build_model  # noqa: E402
from d2v_core.train.checkpoint import save_checkpoint  # noqa: E402

from d2v_plugin_text import plugin  # noqa: E402
from d2v_plugin_text.hf_export import TextHFExporter  # noqa: E402
from d2v_plugin_text.hf_tokenizer import SPM_FILE, write_hf_tokenizer  # noqa: E402
from d2v_plugin_text.tokenizer import Tokenizer, load_tokenizer, train_tokenizer  # noqa: E402

#: Texts that exercise the tokenizer: case, punctuation, digits, extra and odd whitespace,
#: NFKC-normalised and unknown characters, and literal special-token strings.
ODD_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi.",
    "  leading and trailing spaces  ",
    "many    inner   spaces\tand a tab\nand a newline",
    "Ünïcödé, ñ, 日本語 and 😀😀 are not in the vocabulary",
    "ＦＵＬＬ　ｗｉｄｔｈ ① ﬁ ligature, non\u00a0breaking",
    "<s> </s> <pad> <unk> <mask> are plain text here",
    "Numbers 1234567 and 3.14159; symbols #@$%^&*()[]{}|\\/",
    "don't stop, can't won't...!!! ???",
]


@pytest.fixture()
def registry():
    with plugin_context(plugin) as loaded:
        yield loaded.registry


def padded_batch(tok: Tokenizer, texts: list[str]) -> dict:
    """One document per row, ``<s> ids </s>``, right-padded: what an HF user feeds the model."""
    rows = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]
    tokens = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return {"tokens": tokens, "padding_mask": tokens.eq(tok.pad_id), "keys": [str(i) for i in range(len(rows))]}


def tiny_config(registry, tokenizer_path: Path, *overrides: str):
    sets = ["model.dim=32", "model.depth=3", "model.heads=4", "model.ffn_dim=64", "targets.top_k=2",
            f"encoder.tokenizer={tokenizer_path}", "encoder.max_positions=48", "data.options.block_size=48",
            "runtime.progress=false", "runtime.tensorboard=false", *overrides]
    return resolve_config(registry, "text", "tiny", None, sets)


def random_model(registry, cfg):
    """A model with random weights (not its initialisation), in eval mode."""
    torch.manual_seed(0)
    model = build_model(cfg, registry)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def save(model, cfg, run_dir: Path) -> Path:
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    return save_checkpoint(run_dir, 0, model.state_dict(), teacher.state_dict(), {"step": 0}, config_to_yaml(cfg),
                           {"modality": "text"}, extra=model.encoder.extra_state())


def hf_states(hf_dir: Path, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer, Data2VecTextModel

    hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    hf = Data2VecTextModel.from_pretrained(str(hf_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        return enc["input_ids"], hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state


# -- tokenizer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["demo", "small"])
def test_hf_tokenizer_gives_d2v_ids(which, small_tokenizer, corpus_lines, tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(None) if which == "demo" else small_tokenizer
    write_hf_tokenizer(tok, tmp_path, max_length=64)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ODD_TEXTS + corpus_lines[:200]
    for text in texts:
        assert hf(text)["input_ids"] == [0, *tok.encode(text), 2], text
    assert (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert hf.mask_token_id == tok.mask_id == tok.vocab_size - 1 and len(hf) == tok.vocab_size
    assert hf.convert_ids_to_tokens(tok.vocab_size - 1) == "<mask>"
    batch = hf(ODD_TEXTS[:3], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], padded_batch(tok, ODD_TEXTS[:3])["tokens"])
    assert torch.equal(batch["attention_mask"].bool(), ~padded_batch(tok, ODD_TEXTS[:3])["padding_mask"])
    assert Tokenizer.from_file(tmp_path / SPM_FILE).model_bytes == tok.model_bytes


def test_unigram_tokenizer_matches_on_plain_text(corpus_file, corpus_lines, tmp_path):
    """Unigram models agree except on exact score ties between segmentations (not in this
    corpus) and literal control strings such as ``"<s>"``: see ``hf_tokenizer``."""
    from transformers import AutoTokenizer

    tok = Tokenizer.from_file(train_tokenizer([corpus_file], 100, "unigram", tmp_path / "uni"))
    write_hf_tokenizer(tok, tmp_path / "hf", max_length=64)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in corpus_lines + ODD_TEXTS[:4]:
        assert hf(text)["input_ids"] == [0, *tok.encode(text), 2], text


# -- export, import, continue ---------------------------------------------------------------------
def test_export_import_and_continue(registry, small_tokenizer, corpus_lines, tmp_path):
    tok_file = tmp_path / "tok" / "my_spm.model"
    tok_file.parent.mkdir()
    tok_file.write_bytes(small_tokenizer.model_bytes)
    cfg = tiny_config(registry, tok_file)
    model = random_model(registry, cfg)
    ckpt = save(model, cfg, tmp_path / "run")
    assert (ckpt / "extra" / "my_spm.model").is_file()
    shutil.rmtree(tmp_path / "tok")  # the checkpoint must not need the original tokenizer file

    texts = [ODD_TEXTS[0], corpus_lines[0], "Hi.", corpus_lines[1] + " " + corpus_lines[2]]
    batch = padded_batch(small_tokenizer, texts)
    assert batch["padding_mask"].any()
    ours, _ = encoder_states(model, batch)
    valid = ~batch["padding_mask"]

    hf_dir = tmp_path / "hf"
    code, out, err = run_cli(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(hf_dir)])
    assert code == 0, err
    assert err == "" and out.count("\n") == 1  # one line, no progress bars or load reports
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", SPM_FILE} <= {
        p.name for p in hf_dir.iterdir()}
    ids, theirs = hf_states(hf_dir, texts)
    assert torch.equal(ids, batch["tokens"])
    diff = (ours - theirs).abs()[valid].max().item()
    assert diff <= 1e-4, diff

    # embed also works without the original tokenizer file
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, t in enumerate(texts[:2]):
        (docs / f"d{i}.txt").write_text(t, encoding="utf-8")
    code, _, err = run_cli(["embed", str(tmp_path / "run"), str(docs), "--out", str(tmp_path / "e.npy")])
    assert code == 0, err
    assert np.load(tmp_path / "e.npy").shape == (2, 32)

    # import: the same outputs, and a checkpoint that carries the tokenizer itself
    code, _, err = run_cli(["import", "--from-hf", str(hf_dir), "--modality", "text", "--out", str(tmp_path / "run2")])
    assert code == 0, err
    (hf_dir / SPM_FILE).unlink()
    pre = load_pretrained(tmp_path / "run2", registry)
    assert pre.cfg.model.dim == 32 and pre.cfg.model.depth == 3 and pre.cfg.encoder.max_positions == 48
    again, _ = encoder_states(pre.model, batch)
    assert (again - ours).abs()[valid].max().item() <= 1e-6
    imported = pre.path

    # continue pretraining from the import (the architecture comes from its stored config)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines[:40]) + "\n", encoding="utf-8")
    code, out, err = run_cli([
        "pretrain", "-m", "text", "--config", str(imported / "config.yaml"),
        "--set", f"encoder.tokenizer={imported / 'extra' / SPM_FILE}", "--init-from", str(tmp_path / "run2"),
        "--data", str(corpus), "--out", str(tmp_path / "run3"), "--max-steps", "2",
        "--set", "data.batch_size=8", "--set", "runtime.save_every=2", "--set", "runtime.progress=false",
        "--set", "runtime.tensorboard=false",
    ])
    assert code == 0, err
    cont = load_pretrained(tmp_path / "run3", registry)
    w0 = pre.model.state_dict()["transformer.layers.0.fc1.weight"]
    w2 = cont.model.state_dict()["transformer.layers.0.fc1.weight"]
    assert (w2 - w0).abs().max().item() < 0.01 < w0.std().item()  # started from the import, then moved a little
    assert not torch.equal(w2, w0)


def random_hf_dir(out: Path, tok: Tokenizer, head: str = "pooler") -> Path:
    """A transformers-made directory: random weights everywhere (token types included), a pooler
    or an MLM head, and d2v's tokenizer files."""
    from transformers import Data2VecTextConfig, Data2VecTextForMaskedLM, Data2VecTextModel

    cfg = Data2VecTextConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                             intermediate_size=40, max_position_embeddings=34, type_vocab_size=1, layer_norm_eps=1e-5,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    hf = Data2VecTextModel(cfg) if head == "pooler" else Data2VecTextForMaskedLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(str(out))
    write_hf_tokenizer(tok, out, max_length=32)
    return out


def test_import_of_a_transformers_model(registry, small_tokenizer, corpus_lines, tmp_path):
    hf_dir = random_hf_dir(tmp_path / "hf", small_tokenizer)
    texts = [corpus_lines[3], "Hi.", ODD_TEXTS[4]]
    ids, theirs = hf_states(hf_dir, texts)
    code, _, err = run_cli(["import", "--from-hf", str(hf_dir), "-m", "text", "--out", str(tmp_path / "run")])
    assert code == 0, err
    pre = load_pretrained(tmp_path / "run", registry)
    assert (pre.cfg.model.dim, pre.cfg.model.ffn_dim, pre.cfg.encoder.max_positions) == (24, 40, 32)
    batch = padded_batch(small_tokenizer, texts)
    assert torch.equal(ids, batch["tokens"])
    ours, _ = encoder_states(pre.model, batch)
    assert (ours - theirs).abs()[~batch["padding_mask"]].max().item() <= 1e-4  # token types folded in exactly

    mlm = random_hf_dir(tmp_path / "mlm", small_tokenizer, head="mlm")  # data2vec_text.* names and lm_head.*
    code, _, err = run_cli(["import", "--from-hf", str(mlm), "-m", "text", "--out", str(tmp_path / "run2")])
    assert code == 0, err

    from safetensors.torch import load_file, save_file

    weights = load_file(str(hf_dir / "model.safetensors"))
    weights["encoder.adapter.weight"] = torch.zeros(2, 2)  # a tensor d2v has no place for
    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = run_cli(["import", "--from-hf", str(hf_dir), "-m", "text", "--out", str(tmp_path / "run3")])
    assert code == 1 and "encoder.adapter.weight" in err and err.count("\n") == 1


def test_import_refuses_what_it_cannot_use(registry, small_tokenizer, tmp_path):
    cfg = tiny_config(registry, tmp_path / "t.model")
    (tmp_path / "t.model").write_bytes(small_tokenizer.model_bytes)
    model = random_model(registry, cfg)
    exporter = TextHFExporter()
    exporter.export(model, cfg, model.encoder.extra_state(), tmp_path / "hf")
    (tmp_path / "hf" / SPM_FILE).unlink()
    code, _, err = run_cli(["import", "--from-hf", str(tmp_path / "hf"), "-m", "text", "--out", str(tmp_path / "r")])
    assert code != 0 and "sentencepiece" in err and err.count("\n") == 1
    (tmp_path / "hf" / "other.model").write_bytes(load_tokenizer(None).model_bytes)  # 1,001 ids, model has 201
    with pytest.raises(ExportError, match="1001 ids"):
        exporter.import_config(tmp_path / "hf")


@pytest.mark.parametrize("overrides, problem", [
    (["model.layout=pre_ln", "model.layer_scale_init=0.1"], "model.layout=pre_ln"),
    (["model.qkv_bias=qv"], "model.qkv_bias=qv"),
    (["model.final_norm=true"], "model.final_norm=true"),
])
def test_export_refuses_what_transformers_cannot_represent(registry, small_tokenizer, tmp_path, overrides, problem):
    (tmp_path / "t.model").write_bytes(small_tokenizer.model_bytes)
    cfg = tiny_config(registry, tmp_path / "t.model", *overrides)
    model = random_model(registry, cfg)
    with pytest.raises(ExportError, match="cannot represent") as info:
        TextHFExporter().export(model, cfg, {}, tmp_path / "hf")
    assert problem in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "hf").exists()


def test_export_refusal_through_the_cli(registry, small_tokenizer, tmp_path):
    (tmp_path / "t.model").write_bytes(small_tokenizer.model_bytes)
    cfg = tiny_config(registry, tmp_path / "t.model", "model.layout=pre_ln", "model.final_norm=true")
    save(random_model(registry, cfg), cfg, tmp_path / "run")
    code, _, err = run_cli(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 1 and "pre_ln" in err and "final_norm" in err and err.count("\n") == 1


def test_v2_model_exports_to_data2vec_text_model(registry, small_tokenizer, corpus_lines, tmp_path):
    """The decoder is training-only; the encoder of a v2 text model is RoBERTa-shaped, so the hf
    export holds it exactly."""
    tok_file = tmp_path / "spm.model"
    tok_file.write_bytes(small_tokenizer.model_bytes)
    cfg = resolve_config(registry, "text", "v2-tiny", None, [
        "model.dim=32", "model.depth=3", "model.heads=4", "model.ffn_dim=64", "targets.top_k=3",
        f"encoder.tokenizer={tok_file}", "encoder.max_positions=48", "data.options.block_size=48",
        "decoder.options.channels=16"])
    model = random_model(registry, cfg)
    assert any(k.startswith("decoder.") for k in model.state_dict())
    save(model, cfg, tmp_path / "run")
    texts = [corpus_lines[0], "Hi.", corpus_lines[1]]
    batch = padded_batch(small_tokenizer, texts)
    ours, _ = encoder_states(model, batch)
    code, _, err = run_cli(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert code == 0, err
    _, theirs = hf_states(tmp_path / "hf", texts)
    valid = ~batch["padding_mask"]
    assert (ours - theirs).abs()[valid].max().item() <= 1e-4
