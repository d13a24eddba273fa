import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d2v_core import testing
from d2v_core.config_resolve import resolve_config
from d2v_core.interfaces import MaskRequest
from d2v_core.specs import load_ref

from d2v_plugin_text import plugin


@pytest.fixture()
def registry():
    with testing.plugin_context(plugin) as loaded:
        assert loaded.errors() == []
        yield loaded.registry


def test_check_modality_and_registrations(registry):
    spec = registry.modality("text")
    testing.check_modality(spec, registry)
    assert spec.default_masker == "bert" and spec.default_preset == "tiny" and spec.extensions == ("txt",)
    assert registry.names("masker", modality="text") == ["bert", "text-random", "text-span"]
    assert registry.component("masker", "text-span").modalities == ("text",)
    assert plugin.D2V_PLUGIN_API_VERSION == "1.0"


def test_masker_specs_pass_the_conformance_kit(registry):
    for name in ("bert", "text-random", "text-span"):
        comp = registry.component("masker", name, modality="text")
        masker = comp.load_factory()(comp.load_options()())
        testing.check_masker(masker, length=200)


def test_base_preset_follows_the_spec(registry):
    cfg = resolve_config(registry, "text", "base")
    m = cfg.model
    assert (m.dim, m.depth, m.heads, m.ffn_dim, m.layout, m.dropout, m.attention_dropout) == (768, 12, 12, 3072, "post_ln", 0.1, 0.1)
    assert m.final_norm is False and m.norm_eps == 1e-5
    assert cfg.masking.name == "bert" and cfg.masking.options.model_dump() == {"mask_prob": 0.15}
    assert (cfg.encoder.random_token_prob, cfg.encoder.leave_unmasked_prob, cfg.encoder.max_positions) == (0.1, 0.1, 512)
    assert cfg.targets.model_dump() == {"top_k": 10, "source": "ffn", "per_layer_norm": "layer", "post_norm": "none"}
    assert cfg.loss.model_dump() == {"beta": 4.0, "scale": 1.0, "head": "mlp", "head_hidden_mult": 2, "cls_weight": 0.0}
    e = cfg.ema
    assert (e.decay, e.end_decay, e.anneal_end_step, e.teacher_input) == (0.999, 0.9999, 300_000, "raw")
    assert e.copy_params == ["encoder.embed_tokens.*", "encoder.embed_positions.*", "encoder.layernorm_embedding.*"]
    o = cfg.optim
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.clip_norm) == (2e-4, (0.9, 0.98), 1e-6, 0.01, 5.0)
    assert (o.schedule.name, o.schedule.warmup_steps, o.schedule.warmup_init_lr, o.schedule.min_lr) == ("cosine", 10_000, 0.0, 0.0)
    assert cfg.runtime.max_steps == 1_000_000
    assert cfg.data.options.model_dump() == {"block_size": 512, "break_mode": "complete_doc", "drop_partial_row": False, "max_doc_blocks": 8}


def test_span_presets_use_fairseq_released_masking(registry):
    for name in ("base-span", "tiny"):
        cfg = resolve_config(registry, "text", name)
        assert cfg.masking.name == "text-span" and cfg.masking.options.model_dump() == {"mask_prob": 0.35, "span_length": 4}
        assert cfg.encoder.random_token_prob == 0.0 and cfg.encoder.leave_unmasked_prob == 0.0


def test_tiny_bert_is_tiny_with_the_papers_masking(registry):
    tiny, bert = (resolve_config(registry, "text", p).model_dump() for p in ("tiny", "tiny-bert"))
    assert bert["masking"]["name"] == "bert" and bert["masking"]["options"] == {"mask_prob": 0.15}
    assert (bert["encoder"]["random_token_prob"], bert["encoder"]["leave_unmasked_prob"]) == (0.1, 0.1)
    for key in ("model", "targets", "ema", "optim", "data"):
        assert bert[key] == tiny[key], key


def test_tiny_preset_is_cpu_sized(registry):
    cfg = resolve_config(registry, "text", None)  # default preset
    assert cfg.preset == "tiny"
    assert (cfg.model.dim, cfg.model.depth, cfg.targets.top_k) == (256, 2, 2)
    # the teacher at 0.999 from the first step (docs/benchmarks.md, text, sixth round)
    assert (cfg.ema.decay, cfg.ema.end_decay) == (0.999, 0.999)
    assert 64 <= cfg.data.options.block_size <= 128 <= cfg.encoder.max_positions
    assert cfg.encoder.tokenizer is None and cfg.ema.teacher_input == "raw"


def test_one_student_step_on_the_demo_corpus(registry):
    spec = registry.modality("text")
    cfg = resolve_config(registry, "text", "tiny")
    encoder = testing.build_encoder(spec, cfg)
    decoder = testing.build_record_decoder(spec, cfg)
    path = Path(load_ref(spec.demo_data)())
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [{"txt": json.loads(line)["text"].encode(), "__key__": str(i)} for i, line in enumerate(lines[:32])]
    batch = decoder.collate([decoder.decode(r) for r in records])
    assert batch["tokens"].shape[1] <= cfg.data.options.block_size
    feats = testing.check_feature_encoder(encoder, batch)
    comp = registry.component("masker", cfg.masking.name)
    masker = comp.load_factory()(comp.load_options()(**cfg.masking.options.model_dump()))
    mask = masker(MaskRequest(*feats.x.shape[:2], feats.padding_mask, feats.grid), torch.Generator().manual_seed(0))
    ctx = encoder.contextualize(encoder.apply_mask(feats.x, mask, torch.Generator()), feats.padding_mask)
    assert ctx.x.shape == feats.x.shape and torch.isfinite(ctx.x).all()


def test_demo_data_is_a_small_jsonl_of_documents():
    path = Path(plugin.demo_data())
    assert path.suffix == ".jsonl" and path.stat().st_size < 400_000
    docs = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(docs) >= 1000 and all(d.strip() for d in docs)


def test_cli_hook_adds_train_tokenizer():
    import typer

    app = typer.Typer()
    plugin.d2v_cli_commands(app=app)
    assert [c.name for c in app.registered_commands] == ["train-tokenizer"]


def test_registration_modules_do_not_import_torch_or_sentencepiece():
    code = (
        "import sys, d2v_plugin_text.plugin, d2v_plugin_text.presets, d2v_plugin_text.options;"
        "print(sorted(m for m in ('torch', 'sentencepiece') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in md.entry_points(group="d2v")}
    assert eps.get("text") == "d2v_plugin_text.plugin"
