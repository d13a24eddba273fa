"""data2vec 2.0 for text: the v2 presets against the spec, a real training step, the packing
option the presets use (the export of a v2 model: ``test_hf_export.py``)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from d2v_core.config_resolve import resolve_config  # noqa: E402
from d2v_core.model.ema_teacher import EMATeacher  # noqa: E402
from d2v_core.plugin_loader import plugin_context  # noqa: E402
from d2v_core.train.build import build_model  # noqa: E402

from d2v_plugin_text import plugin  # noqa: E402
from d2v_plugin_text.data import TextRecordDecoder  # noqa: E402


@pytest.fixture()
def registry():
    with plugin_context(plugin) as loaded:
        yield loaded.registry


def test_v2_base_preset_is_the_spec_recipe(registry):
    cfg = resolve_config(registry, "text", "v2-base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layout, m.norm_eps) == (768, 12, 12, 3072, "post_ln", 1e-5)
    assert (m.dropout, m.attention_dropout, m.layerdrop) == (0.1, 0.1, 0.0)
    assert (cfg.masking.name, cfg.masking.options.mask_prob, cfg.masking.clone_batch) == ("text-random", 0.48, 8)
    d = cfg.decoder
    assert d.name == "conv1d" and d.mask_noise_std == 0.01
    assert {k: getattr(d.options, k) for k in ("channels", "kernel", "groups", "layers", "residual", "projection_layers", "projection_ratio")} == {
        "channels": 768, "kernel": 9, "groups": 1, "layers": 5, "residual": False, "projection_layers": 2, "projection_ratio": 2.0}
    assert (cfg.targets.top_k, cfg.targets.source, cfg.targets.per_layer_norm, cfg.targets.post_norm) == (12, "ffn", "instance", "none")
    assert (cfg.loss.beta, cfg.loss.scale, cfg.loss.cls_weight) == (0.0, 1.0, 0.0)
    e = cfg.ema
    assert (e.decay, e.end_decay, e.anneal_end_step, e.teacher_input) == (0.9999, 0.99999, 100_000, "features")
    assert e.teacher_context == "student"  # fairseq ema_encoder_only: the student's train-mode embedding output
    o = cfg.optim
    assert (o.lr, tuple(o.betas), o.eps, o.weight_decay, o.clip_norm) == (2e-4, (0.9, 0.98), 1e-6, 0.01, 1.0)
    assert (o.schedule.name, o.schedule.warmup_steps, cfg.runtime.max_steps) == ("cosine", 4000, 1_000_000)
    assert cfg.data.options.block_size == 512 and cfg.data.options.break_mode == "none"
    tiny = resolve_config(registry, "text", "v2-tiny")
    # d2v's own small 2.0 preset (not the reference's): wider and shallower than tiny, 4 masks a row
    assert (tiny.model.dim, tiny.model.depth, tiny.model.heads, tiny.model.ffn_dim) == (256, 2, 4, 1024)
    assert tiny.masking.clone_batch == 4 and tiny.targets.top_k == 2


def test_drop_partial_row_keeps_only_full_rows(small_tokenizer):
    # 50 ids in rows of <s> + 15 ids: 15, 15, 15 and a partial row of 5
    docs = [{"tokens": list(range(10, 40)), "key": "a"}, {"tokens": list(range(10, 30)), "key": "b"}]
    keep = TextRecordDecoder(small_tokenizer, block_size=16, break_mode="none").collate(docs)
    drop = TextRecordDecoder(small_tokenizer, block_size=16, break_mode="none", drop_partial_row=True).collate(docs)
    assert keep["tokens"].shape == (4, 16) and int((~keep["padding_mask"][-1]).sum()) == 6
    assert drop["tokens"].shape == (3, 16) and not drop["padding_mask"].any()
    assert torch.equal(drop["tokens"], keep["tokens"][:3])
    one = TextRecordDecoder(small_tokenizer, block_size=16, break_mode="none", drop_partial_row=True).collate(docs[1:])
    assert one["tokens"].shape[0] == 1  # 15 + 5: the partial row goes, the full one stays
    alone = [{"tokens": list(range(10, 15)), "key": "c"}]
    assert TextRecordDecoder(small_tokenizer, 16, "none", True).collate(alone)["tokens"].shape[0] == 1  # never empty


def test_v2_step_drops_masked_tokens_and_runs_the_teacher_once(registry, small_tokenizer, tmp_path):
    tok = tmp_path / "spm.model"
    tok.write_bytes(small_tokenizer.model_bytes)
    cfg = resolve_config(registry, "text", "v2-tiny", None, [
        "model.dim=32", "model.depth=3", "model.heads=4", "model.ffn_dim=64", "targets.top_k=3", f"encoder.tokenizer={tok}",
        "encoder.max_positions=48", "data.options.block_size=48", "decoder.options.channels=16"])
    model = build_model(cfg, registry).train()
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    shapes = {"t": [], "s": []}
    teacher.model["transformer"].register_forward_hook(lambda m, a, o: shapes["t"].append(tuple(a[0].shape)))
    model.transformer.register_forward_hook(lambda m, a, o: shapes["s"].append(tuple(a[0].shape)))
    tokens = torch.randint(5, small_tokenizer.vocab_size - 1, (2, 40))
    batch = {"tokens": tokens, "padding_mask": torch.zeros(2, 40, dtype=torch.bool), "keys": ["a", "b"]}
    out = model(batch, torch.Generator().manual_seed(0), teacher.model)
    masked, rows = 40 - int(40 * (1 - 0.48)), 2 * cfg.masking.clone_batch  # every row masked M times
    assert shapes["t"] == [(2, 40, 32)] and shapes["s"] == [(rows, 40 - masked, 32)]
    assert int(out.sample_size) == rows * masked
    out.loss_sum.backward()
