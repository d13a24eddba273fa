"""``model.activation_checkpointing`` in the audio encoder: the conv feature extractor (the
student's own; the teacher gets its features) is recomputed block by block in the backward pass,
with the same loss and gradients as the plain run."""

from __future__ import annotations

import pytest
import torch

from d2v_core.config_resolve import resolve_config
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.testing import plugin_context
from d2v_core.train.build import build_model

import d2v_plugin_audio.plugin as audio_plugin

NO_DROPOUT = ["model.dropout=0.0", "model.attention_dropout=0.0", "model.activation_dropout=0.0", "model.layerdrop=0.0"]


@pytest.fixture
def registry():
    with plugin_context(audio_plugin) as loaded:
        yield loaded.registry


def _step(registry, ac: bool, preset: str):  # noqa: ANN001, ANN202
    """Loss, gradients and the number of ``checkpoint`` calls of one student forward and backward."""
    cfg = resolve_config(registry, "audio", preset, overrides=[*NO_DROPOUT, f"model.activation_checkpointing={str(ac).lower()}"])
    torch.manual_seed(0)
    model = build_model(cfg, registry).train()
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    calls = []
    real = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    try:
        out = model({"source": wav, "keys": ["a", "b"]}, torch.Generator().manual_seed(2), teacher.model)
    finally:
        torch.utils.checkpoint.checkpoint = real
    out.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss_sum.detach(), grads, calls, model


@pytest.mark.parametrize("preset", ["tiny", "v2-tiny"])
def test_checkpointing_gives_the_gradients_of_the_plain_run(registry, preset):
    loss0, grads0, calls0, _ = _step(registry, False, preset)
    loss1, grads1, calls1, model = _step(registry, True, preset)
    assert calls0 == []
    conv_blocks = list(model.encoder.feature_extractor.conv_layers)
    # every conv block and every Transformer layer of the student, none of the teacher's
    assert sum(any(c is b for b in conv_blocks) for c in calls1) == len(conv_blocks)
    assert len(calls1) == len(conv_blocks) + model.cfg.model.depth
    assert any(n.startswith("encoder.feature_extractor.") for n in grads0) and grads0.keys() == grads1.keys()
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_conv_stack_keeps_only_each_blocks_input(registry):
    """Bytes autograd keeps from the feature extractor's forward pass: with checkpointing one
    input per block (the waveform, then each block's output), a fraction of the plain run's;
    without grad or in eval nothing is recomputed."""
    kept = {}
    for ac in (False, True):
        cfg = resolve_config(registry, "audio", "tiny", overrides=[f"model.activation_checkpointing={str(ac).lower()}"])
        extractor = build_model(cfg, registry).encoder.feature_extractor.train()
        wav = torch.randn(2, 16000)
        saved = {}

        def pack(t: torch.Tensor, saved: dict = saved) -> torch.Tensor:  # this round's dict
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        params = {p.untyped_storage().data_ptr() for p in extractor.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            extractor(wav)
        kept[ac] = sum(b for ptr, b in saved.items() if ptr not in params)
    x, inputs = torch.randn(2, 16000).unsqueeze(1), 0
    for block in extractor.conv_layers:  # the block inputs, by hand
        inputs += x.numel() * x.element_size()
        x = block(x)
    assert kept[True] <= inputs < kept[False] / 2, (kept, inputs)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with torch.no_grad():
            extractor(wav)
        extractor.eval()(wav)
    finally:
        torch.utils.checkpoint.checkpoint = real
    assert calls == []
