"""Import of fairseq data2vec 1.0 text checkpoints, against a transcription of fairseq's forward,
and on to transformers' Data2VecTextModel.

The fixture holds the tensors of fairseq's ``Data2VecTextModel`` at a small size, named and
shaped as its modules create them:

- ``examples/data2vec/models/data2vec_text.py`` L280-L312 (``Data2VecTextEncoder``:
  ``sentence_encoder``, ``regression_head`` = ``Sequential(Linear(D, 2D), GELU, Linear(2D, D))``
  for ``head_layers: 2``), L373-L377 (the teacher's ``fp32_params`` under ``_ema``).
- ``fairseq/models/transformer/transformer_encoder.py`` L48-L103 (``version`` buffer,
  ``embed_tokens``, ``embed_positions`` = ``LearnedPositionalEmbedding`` with
  ``max_source_positions + padding_idx + 1`` rows (``fairseq/modules/positional_embedding.py``
  L20-L28), ``layernorm_embedding``, ``layers``); ``fairseq/modules/transformer_layer.py``
  L34-L68 (``self_attn`` with ``q/k/v/out_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
  ``final_layer_norm``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v_cli.testing import run_cli
from d2v_core.errors import ConfigError
from d2v_core.inference.embed import encoder_states
from d2v_core.inference.pretrained import load_pretrained
from d2v_core.interop.fairseq_fixtures import save_fairseq_checkpoint
from d2v_core.interop.fairseq_import import import_fairseq
from d2v_core.plugin_loader import get_registry
from d2v_core.train.checkpoint import load_checkpoint

from d2v_plugin_text.tokenizer import DEMO_TOKENIZER, load_tokenizer

D, DEPTH, HEADS, FFN, MAX_POS, PAD = 32, 3, 4, 64, 40, 1
VOCAB = load_tokenizer(None).vocab_size  # the demo tokenizer's ids; <mask> is the last

MODEL_CFG = {
    "_name": "data2vec_text", "max_positions": "${task.tokens_per_sample}", "head_layers": 2, "loss_beta": 4.0,
    "loss_scale": 1.0, "average_top_k_layers": 2, "layer_norm_target_layer": True, "instance_norm_target_layer": False,
    "ema_decay": 0.999, "ema_end_decay": 0.9999, "ema_anneal_end_step": 300000, "ema_transformer_layers_only": True,
    "transformer": {
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "layernorm_embedding": True,
        "activation_fn": "gelu", "no_scale_embedding": True, "max_source_positions": MAX_POS,
        "encoder": {"embed_dim": D, "ffn_embed_dim": FFN, "layers": DEPTH, "attention_heads": HEADS,
                    "normalize_before": False, "learned_pos": True, "layerdrop": 0.0},
    },
}
TASK_CFG = {"_name": "masked_lm", "tokens_per_sample": MAX_POS, "mask_prob": 0.35, "mask_multiple_length": 4,
            "random_token_prob": 0.0, "leave_unmasked_prob": 0.0, "include_target_tokens": True}


def sentence_encoder(r) -> dict[str, torch.Tensor]:  # noqa: ANN001
    s = {"version": torch.tensor([3.0])}
    s["embed_tokens.weight"] = r(VOCAB, D, scale=0.5)
    s["embed_tokens.weight"][PAD] = 0.0
    s["embed_positions.weight"] = r(MAX_POS + PAD + 1, D, scale=0.5)
    s["embed_positions.weight"][PAD] = 0.0
    s["layernorm_embedding.weight"], s["layernorm_embedding.bias"] = 1 + r(D), r(D)
    for i in range(DEPTH):
        p = f"layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s[p + f"self_attn.{proj}.weight"], s[p + f"self_attn.{proj}.bias"] = r(D, D), r(D)
        s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"] = 1 + r(D), r(D)
        s[p + "fc1.weight"], s[p + "fc1.bias"] = r(FFN, D), r(FFN)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = r(D, FFN), r(D)
        s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"] = 1 + r(D), r(D)
    return s


def fairseq_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    enc = sentence_encoder(r)
    s = {f"encoder.sentence_encoder.{k}": v for k, v in enc.items()}
    s.update({f"encoder._ema.{k}": v + r(*v.shape, scale=0.05) for k, v in enc.items()})
    s["encoder.regression_head.0.weight"], s["encoder.regression_head.0.bias"] = r(2 * D, D), r(2 * D)
    s["encoder.regression_head.2.weight"], s["encoder.regression_head.2.bias"] = r(D, 2 * D), r(D)
    return s


def fs_forward(s: dict, prefix: str, tokens: torch.Tensor):
    """``TransformerEncoderBase.forward_scriptable`` (transformer_encoder.py L173-L263), eval mode:
    embed_scale 1 (no_scale_embedding), + learned positions (``utils.make_positions``: cumsum of
    non-pad + pad), ``layernorm_embedding``, padded steps zeroed, then each
    ``TransformerEncoderLayerBase`` (transformer_layer.py L163-L226, post-LN) with fairseq
    ``MultiheadAttention``. Returns the output and the ``fc_results``."""
    pad = tokens.eq(PAD)
    positions = (torch.cumsum((~pad).int(), 1) * (~pad).int()).long() + PAD
    x = F.embedding(tokens, s[prefix + "embed_tokens.weight"]) + F.embedding(positions, s[prefix + "embed_positions.weight"])
    x = F.layer_norm(x, (D,), s[prefix + "layernorm_embedding.weight"], s[prefix + "layernorm_embedding.bias"])
    x = x * (1 - pad.unsqueeze(-1).type_as(x))
    fcs = []
    B, T, _ = x.shape
    hd = D // HEADS
    for i in range(DEPTH):
        p = f"{prefix}layers.{i}."

        def lin(name: str, t: torch.Tensor, p: str = p) -> torch.Tensor:  # this layer's prefix
            return F.linear(t, s[p + name + ".weight"], s[p + name + ".bias"])

        q = lin("self_attn.q_proj", x) * hd ** -0.5
        k, v = lin("self_attn.k_proj", x), lin("self_attn.v_proj", x)
        q, k, v = (t.view(B, T, HEADS, hd).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2)).masked_fill(pad[:, None, None, :], float("-inf"))
        a = (w.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        x = F.layer_norm(x + lin("self_attn.out_proj", a), (D,), s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"])
        h = lin("fc2", F.gelu(lin("fc1", x)))
        fcs.append(h)
        x = F.layer_norm(x + h, (D,), s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"])
    return x, fcs, pad


def tokens_with_padding() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    t = torch.randint(4, VOCAB - 1, (3, 17), generator=g)
    t[:, 0], t[0, -1] = 0, 2
    t[1, 11:], t[2, 5:] = PAD, PAD
    t[1, 10], t[2, 4] = 2, 2
    return t


@pytest.fixture
def registry():
    return get_registry()


SPM = ["encoder.tokenizer=" + str(DEMO_TOKENIZER)]


@pytest.mark.parametrize("form", ["dictconfig", "dict"])
def test_import_matches_fairseq_forward_with_padding(tmp_path, registry, form):
    if form == "dictconfig":
        pytest.importorskip("omegaconf")
    s = fairseq_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "nlp_base.pt", s, MODEL_CFG, form=form, task_cfg=TASK_CFG)
    result = import_fairseq(ckpt, tmp_path / "run", registry, overrides=SPM)
    assert result.family == "data2vec 1.0 text" and result.teacher_from_ema
    assert result.unused == ["encoder.sentence_encoder.version", "encoder._ema.version"]  # listed, not silently dropped

    pre = load_pretrained(tmp_path / "run", registry)
    cfg = pre.cfg
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.ffn_dim) == (D, DEPTH, HEADS, FFN)
    assert cfg.encoder.max_positions == MAX_POS and cfg.loss.head == "mlp" and cfg.loss.beta == 4.0
    assert cfg.masking.name == "text-span" and (cfg.masking.options.mask_prob, cfg.masking.options.span_length) == (0.35, 4)
    assert cfg.targets.top_k == 2 and cfg.targets.per_layer_norm == "layer"

    tokens = tokens_with_padding()
    with torch.no_grad():
        ours, pad = encoder_states(pre.model, {"tokens": tokens})
        theirs, _, pad_fs = fs_forward(s, "encoder.sentence_encoder.", tokens)
    assert torch.equal(pad, pad_fs) and pad.any()
    assert (ours - theirs)[~pad].abs().max() <= 1e-5

    # the teacher is fairseq's EMA copy: top-K FFN outputs, layer-normed, averaged (data2vec_text.py L417-L446)
    from d2v_core.model.ema_teacher import EMATeacher

    teacher = EMATeacher(pre.model.teacher_scope(), cfg.ema)
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    with torch.no_grad():
        batch = {"tokens": tokens}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        _, fcs, _ = fs_forward(s, "encoder._ema.", tokens)
        y_fs = sum(F.layer_norm(t, (D,)) for t in fcs[-2:]) / 2
    assert (y - y_fs)[~pad].abs().max() <= 1e-5
    head_in = torch.randn(5, D)
    mlp = F.linear(F.gelu(F.linear(head_in, s["encoder.regression_head.0.weight"], s["encoder.regression_head.0.bias"])),
                   s["encoder.regression_head.2.weight"], s["encoder.regression_head.2.bias"])
    assert (pre.model.head(head_in) - mlp).abs().max() <= 1e-6


def test_a_text_import_needs_a_tokenizer_that_fits(tmp_path, registry):
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", fairseq_state(), MODEL_CFG, form="dict", task_cfg=TASK_CFG)
    with pytest.raises(ConfigError, match=rf"holds no tokenizer .* {VOCAB - 1} pieces"):
        import_fairseq(ckpt, tmp_path / "run", registry)
    small = {**fairseq_state()}
    small["encoder.sentence_encoder.embed_tokens.weight"] = small["encoder.sentence_encoder.embed_tokens.weight"][:500]
    ckpt = save_fairseq_checkpoint(tmp_path / "c2.pt", small, MODEL_CFG, form="dict", task_cfg=TASK_CFG)
    with pytest.raises(ConfigError, match=rf"500 rows but encoder.tokenizer gives {VOCAB} ids"):
        import_fairseq(ckpt, tmp_path / "run", registry, overrides=SPM)
    assert not (tmp_path / "run").exists()


def test_export_to_transformers_gives_fairseq_outputs(tmp_path, registry):
    transformers = pytest.importorskip("transformers")
    from d2v_core.inference.exchange import export_checkpoint

    s = fairseq_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", s, MODEL_CFG, form="dict", task_cfg=TASK_CFG)
    import_fairseq(ckpt, tmp_path / "run", registry, overrides=SPM)
    export_checkpoint(tmp_path / "run", "hf", tmp_path / "hf", registry)
    hf = transformers.Data2VecTextModel.from_pretrained(str(tmp_path / "hf"), add_pooling_layer=False).eval()
    tokens = tokens_with_padding()
    with torch.no_grad():
        theirs = hf(input_ids=tokens, attention_mask=tokens.ne(PAD).long()).last_hidden_state
        ours, _, pad = fs_forward(s, "encoder.sentence_encoder.", tokens)
    assert (theirs - ours)[~pad].abs().max() <= 1e-5


# ---- data2vec 2.0 text (data2vec_multi) -------------------------------------------------------
#
# Tensors of Data2VecMultiModel with one TEXT modality encoder: modalities/text.py L118-L161
# (TextLocalEncoder: embed_tokens, embed_positions, layernorm_embedding), modalities/modules.py
# L123-L163 (Decoder1d: blocks.{j}.0 conv, proj = Sequential(Linear(C, 2C), GELU, Linear(2C, D))
# with projection_layers 2) and L258-L323 (AltBlock), data2vec2.py L298-L327 / L378-L383 (with
# ema_encoder_only the teacher is the blocks: _ema.{i}.*).

T = "modality_encoders.TEXT."
DEC_DIM, DEC_K, DEC_LAYERS = 16, 5, 2
V2_CFG = {
    "_name": "data2vec_multi", "loss_beta": 0.0, "loss_scale": 1.0, "depth": DEPTH, "embed_dim": D, "num_heads": HEADS,
    "mlp_ratio": FFN / D, "clone_batch": 8, "ema_decay": 0.9999, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000,
    "ema_encoder_only": True, "average_top_k_layers": 3, "instance_norm_target_layer": True, "layer_norm_target_layer": False,
    "layerdrop": 0.0, "norm_eps": 1e-5, "supported_modality": "TEXT",
    "modalities": {"text": {"type": "TEXT", "max_source_positions": MAX_POS, "learned_pos": True, "no_scale_embedding": True,
                            "layernorm_embedding": True, "mask_prob": 0.48, "mask_length": 1, "mask_noise_std": 0.01,
                            "prenet_depth": 0, "use_alibi_encoder": False,
                            "decoder": {"input_dropout": 0.1, "decoder_dim": DEC_DIM, "decoder_groups": 1,
                                        "decoder_kernel": DEC_K, "decoder_layers": DEC_LAYERS, "decoder_residual": False,
                                        "projection_layers": 2, "projection_ratio": 2.0}}},
}


def v2_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    enc = sentence_encoder(r)
    s = {T + "local_encoder." + k: enc[k] for k in ("embed_tokens.weight", "embed_positions.weight",
                                                     "layernorm_embedding.weight", "layernorm_embedding.bias")}
    blocks = {}
    for i in range(DEPTH):
        p = f"{i}."
        blocks[p + "norm1.weight"], blocks[p + "norm1.bias"] = 1 + r(D), r(D)
        blocks[p + "attn.qkv.weight"], blocks[p + "attn.qkv.bias"] = r(3 * D, D), r(3 * D)
        blocks[p + "attn.proj.weight"], blocks[p + "attn.proj.bias"] = r(D, D), r(D)
        blocks[p + "norm2.weight"], blocks[p + "norm2.bias"] = 1 + r(D), r(D)
        blocks[p + "mlp.fc1.weight"], blocks[p + "mlp.fc1.bias"] = r(FFN, D), r(FFN)
        blocks[p + "mlp.fc2.weight"], blocks[p + "mlp.fc2.bias"] = r(D, FFN), r(D)
    s.update({f"blocks.{k}": v for k, v in blocks.items()})
    s.update({f"_ema.{k}": v + r(*v.shape, scale=0.05) for k, v in blocks.items()})
    for j in range(DEC_LAYERS):
        s[T + f"decoder.blocks.{j}.0.weight"] = r(DEC_DIM, D if j == 0 else DEC_DIM, DEC_K)
        s[T + f"decoder.blocks.{j}.0.bias"] = r(DEC_DIM)
    s[T + "decoder.proj.0.weight"], s[T + "decoder.proj.0.bias"] = r(2 * DEC_DIM, DEC_DIM), r(2 * DEC_DIM)
    s[T + "decoder.proj.2.weight"], s[T + "decoder.proj.2.bias"] = r(D, 2 * DEC_DIM), r(D)
    return s


def fs_v2(s: dict, blocks: str, tokens: torch.Tensor):
    """``TextLocalEncoder.forward`` (text.py L150-L161: no pad zeroing), then the blocks with the
    padding mask (data2vec2.py L436-L463; AltAttention -inf at pads, AltBlock post-LN)."""
    pad = tokens.eq(PAD)
    positions = (torch.cumsum((~pad).int(), 1) * (~pad).int()).long() + PAD
    x = F.embedding(tokens, s[T + "local_encoder.embed_tokens.weight"]) + F.embedding(positions, s[T + "local_encoder.embed_positions.weight"])
    x = F.layer_norm(x, (D,), s[T + "local_encoder.layernorm_embedding.weight"], s[T + "local_encoder.layernorm_embedding.bias"])
    B, L, _ = x.shape
    hd = D // HEADS
    fcs = []
    for i in range(DEPTH):
        p = f"{blocks}{i}."
        qkv = F.linear(x, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(B, L, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] * hd ** -0.5) @ qkv[1].transpose(-2, -1)
        if pad.any():
            attn = attn.masked_fill(pad[:, None, None, :], float("-inf"))
        a = F.linear((attn.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(B, L, D), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        r = x = F.layer_norm(x + a, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], 1e-5)
        h = F.linear(F.gelu(F.linear(x, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        x = F.layer_norm(r + h, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], 1e-5)
        fcs.append(h)
    return x, fcs, pad


def test_v2_import_matches_fairseq_forward_with_padding(tmp_path, registry):
    s = v2_state()
    ckpt = save_fairseq_checkpoint(tmp_path / "text_base_v2.pt", s, V2_CFG, form="dict", task_cfg={"_name": "masked_lm"})
    result = import_fairseq(ckpt, tmp_path / "run", registry, overrides=SPM)
    assert result.family == "data2vec 2.0 text" and result.teacher_from_ema and result.unused == []
    pre = load_pretrained(tmp_path / "run", registry)
    assert pre.cfg.decoder.name == "conv1d" and pre.cfg.masking.name == "text-random" and pre.cfg.masking.clone_batch == 8
    tokens = tokens_with_padding()
    with torch.no_grad():
        ours, pad = encoder_states(pre.model, {"tokens": tokens})
        theirs, _, pad_fs = fs_v2(s, "blocks.", tokens)
    assert torch.equal(pad, pad_fs)
    assert (ours - theirs)[~pad].abs().max() <= 1e-5

    x = torch.randn(2, 9, D)  # Decoder1d without residual, 2-layer projection
    h = x.transpose(1, 2)
    for j in range(DEC_LAYERS):
        h = F.conv1d(h, s[T + f"decoder.blocks.{j}.0.weight"], s[T + f"decoder.blocks.{j}.0.bias"], padding=DEC_K // 2)
        h = F.gelu(F.layer_norm(h.transpose(1, 2), (DEC_DIM,)).transpose(1, 2))
    h = F.linear(F.gelu(F.linear(h.transpose(1, 2), s[T + "decoder.proj.0.weight"], s[T + "decoder.proj.0.bias"])),
                 s[T + "decoder.proj.2.weight"], s[T + "decoder.proj.2.bias"])
    with torch.no_grad():
        assert (pre.model.decoder(x, None, None) - h).abs().max() <= 1e-5

    from d2v_core.model.ema_teacher import EMATeacher

    teacher = EMATeacher(pre.model.teacher_scope(), pre.cfg.ema)  # fairseq's EMA blocks on the student's embeddings
    teacher.load_state_dict(load_checkpoint(tmp_path / "run")["teacher"])
    full = tokens[:1]
    with torch.no_grad():
        batch = {"tokens": full}
        y = pre.model.targets(teacher.model, batch, pre.model.encoder.embed(batch))
        _, fcs, _ = fs_v2({**s, **{k.replace("_ema.", "ema_blocks."): v for k, v in s.items() if k.startswith("_ema.")}},
                          "ema_blocks.", full)
        y_fs = sum(F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in fcs) / 3
    assert (y - y_fs).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("which", ["v1", "v2"])
def test_an_imported_text_run_embeds_and_continues_pretraining(tmp_path, which):
    state, cfg = (fairseq_state(), MODEL_CFG) if which == "v1" else (v2_state(), V2_CFG)
    ckpt = save_fairseq_checkpoint(tmp_path / "c.pt", state, cfg, form="dict", task_cfg=TASK_CFG)
    run = tmp_path / "run"
    code, _, err = run_cli(["import", "--from-fairseq", str(ckpt), "--out", str(run), "--set", SPM[0]])
    assert code == 0, err
    docs = tmp_path / "docs"
    docs.mkdir()
    words = "the cat sat on the mat while a dog ran in the park and the children played by the river".split()
    for i in range(8):  # enough text to pack into full rows of block_size tokens (2.0 drops partial rows)
        (docs / f"d{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(60)), encoding="utf-8")
    code, _, err = run_cli(["embed", str(run), str(docs), "--out", str(tmp_path / "e.npy")])
    assert code == 0, err
    cont = tmp_path / "continued"
    code, _, err = run_cli(["pretrain", "-m", "text", "--init-from", str(run), "--data", str(docs), "--max-steps", "2",
                            "--out", str(cont), "--set", "data.batch_size=1", "--set", "masking.clone_batch=2",
                            "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false"])
    assert code == 0, err
    start, after = load_checkpoint(run)["student"], load_checkpoint(cont)["student"]
    drift = max((after[k] - start[k]).abs().max().item() for k in start if k.startswith("transformer."))
    assert 0 < drift < 0.05
