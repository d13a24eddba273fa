"""data2vec 2.0 in the core: sparse-student bookkeeping, the 1-D decoder, multi-mask with one
teacher pass per sample, the CLS loss and the config checks, each against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2v_core.config import RunConfig
from d2v_core.decoder_options import ConvDecoderOptions
from d2v_core.errors import ConfigError
from d2v_core.interfaces import Context, FeatureEncoder, Features, Masker, MaskRequest
from d2v_core.model.conv_decoder import ConvDecoder1d
from d2v_core.model.data2vec import Data2Vec
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.model.losses import regression_loss
from d2v_core.model.normalizers import IdentityNorm, InstanceNorm
from d2v_core.model.sparse_student import keep_context, keep_index, restore_order


class ExactMasker(Masker):
    """``n`` uniformly chosen steps of every row (padding never masked)."""

    equal_counts = True

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def expected_ratio(self) -> float:
        return 0.5

    def __call__(self, request: MaskRequest, generator: torch.Generator) -> torch.Tensor:
        mask = torch.zeros(request.batch_size, request.length, dtype=torch.bool)
        valid = request.valid_lengths()
        for b in range(request.batch_size):
            mask[b, torch.randperm(int(valid[b]), generator=generator)[: self.n]] = True
        return mask


class ToyEncoder(FeatureEncoder):
    """A CLS token, learned positions and a per-head distance bias (like ALiBi)."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 16, heads: int = 2, max_len: int = 32) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.proj = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.1)
        self.mask_embedding = nn.Parameter(torch.zeros(dim))
        self.slopes = nn.Parameter(torch.tensor([0.5, 0.25]))

    def embed(self, batch):
        return Features(self.proj(batch["x"]), batch.get("padding_mask"))

    def contextualize(self, x, padding_mask):
        T = x.shape[1]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x + self.pos[:T]], dim=1)
        idx = torch.arange(T + 1)
        bias = -(idx[:, None] - idx[None, :]).abs().float() * self.slopes[:, None, None]
        pad = None if padding_mask is None else F.pad(padding_mask, (1, 0))
        return Context(x, pad, bias.unsqueeze(0))


def _cfg(**over) -> RunConfig:
    base = {
        "modality": "toy",
        "model": {"dim": 16, "depth": 3, "heads": 2, "ffn_dim": 32, "dropout": 0.0, "attention_dropout": 0.0},
        "targets": {"top_k": 2, "per_layer_norm": "instance", "post_norm": "none"},
        "masking": {"name": "exact", "clone_batch": 3},
        "decoder": {"name": "conv1d", "options": {"channels": 8, "kernel": 3, "groups": 2, "layers": 2, "input_dropout": 0.0}},
        "ema": {"teacher_input": "features"},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return RunConfig.model_validate(base)


def _model(cfg: RunConfig, n_mask: int = 5) -> Data2Vec:
    torch.manual_seed(0)
    opts = ConvDecoderOptions.model_validate(cfg.decoder.options)
    decoder = ConvDecoder1d(opts, cfg.model.dim) if cfg.decoder.name else None
    return Data2Vec(ToyEncoder(), cfg, ExactMasker(n_mask), InstanceNorm(), IdentityNorm(), decoder=decoder)


# -- bookkeeping ---------------------------------------------------------------------------------


def test_keep_index_lists_unmasked_steps_in_order_and_restores_them():
    g = torch.Generator().manual_seed(0)
    mask = ExactMasker(4)(MaskRequest(5, 10), g)
    index = keep_index(mask)
    for b in range(5):
        assert index.keep[b].tolist() == (~mask[b]).nonzero().flatten().tolist()
    x = torch.randn(5, 10, 3)
    shuffled = torch.cat([x[~mask].view(5, 6, 3), x[mask].view(5, 4, 3)], dim=1)  # kept, then masked
    restored = shuffled.gather(1, index.restore[..., None].expand(-1, -1, 3))
    assert torch.equal(restored, x)


def test_keep_index_refuses_unequal_counts():
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match="same number of masked steps"):
        keep_index(mask)


def test_keep_context_takes_prefix_kept_steps_and_their_bias_rows_and_columns():
    B, P, T, H, D = 3, 1, 8, 2, 4
    ctx = Context(torch.randn(B, P + T, D), torch.rand(B, P + T) > 0.8, torch.randn(1, H, P + T, P + T))
    mask = ExactMasker(3)(MaskRequest(B, T), torch.Generator().manual_seed(1))
    got = keep_context(ctx, keep_index(mask).keep, P)
    for b in range(B):
        sel = torch.cat([torch.ones(P, dtype=torch.bool), ~mask[b]])
        assert torch.equal(got.x[b], ctx.x[b][sel])
        assert torch.equal(got.padding_mask[b], ctx.padding_mask[b][sel])
        assert torch.equal(got.attn_bias[b], ctx.attn_bias[0][:, sel][:, :, sel])


def test_restore_order_puts_encoded_steps_back_and_noise_at_masked_steps():
    torch.manual_seed(0)
    B, T, D = 4, 50, 64
    mask = ExactMasker(30)(MaskRequest(B, T), torch.Generator().manual_seed(2))
    index = keep_index(mask)
    kept = torch.randn(B, T - 30, D) + 5.0
    out = restore_order(kept, index.restore, 0.01)
    assert torch.equal(out[~mask].view(B, T - 30, D), kept)
    noise = out[mask]
    assert noise.abs().mean() < 0.02 and abs(noise.std().item() - 0.01) < 0.001


def test_sparse_student_equals_running_each_row_on_its_unmasked_steps():
    """Order restoration against a dense computation: each row's kept tokens (boolean-indexed,
    with the sub-matrix of the bias) through the Transformer alone."""
    cfg = _cfg()
    model = _model(cfg).eval()
    x = torch.randn(2 * 3, 12, 16)
    mask = ExactMasker(5)(MaskRequest(6, 12), torch.Generator().manual_seed(3))
    states, pred = model._sparse_student(x, None, mask, None)
    ctx_full = model.encoder.contextualize(x.masked_fill(mask[..., None], 0.0), None)
    for b in range(6):
        sel = torch.cat([torch.tensor([True]), ~mask[b]])
        ref = model.transformer(ctx_full.x[b : b + 1, sel], None, ctx_full.attn_bias[:, :, sel][:, :, :, sel]).x
        torch.testing.assert_close(states[b : b + 1], ref, atol=1e-5, rtol=1e-5)
    assert pred.shape == (int(mask.sum()), 16)


# -- the decoder ---------------------------------------------------------------------------------


def _reference_decoder(dec: ConvDecoder1d, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """fairseq Decoder1d written out: conv -> LN(channels, no affine) -> GELU, residual when the
    widths agree, projection."""
    h = x.transpose(1, 2)
    for block in dec.blocks:
        c = block.conv
        y = F.conv1d(h, c.weight, c.bias, padding=c.kernel_size[0] // 2, groups=c.groups)
        if c.kernel_size[0] % 2 == 0:
            y = y[..., :-1]
        y = F.gelu(F.layer_norm(y.transpose(1, 2), (y.shape[1],)).transpose(1, 2))
        h = y + h if residual and y.shape == h.shape else y
    return dec.proj(h.transpose(1, 2))


@pytest.mark.parametrize(
    "opts, residual",
    [
        ({"channels": 384, "kernel": 7, "groups": 16, "layers": 4}, True),  # audio base
        ({"channels": 768, "kernel": 9, "groups": 1, "layers": 5, "residual": False, "projection_layers": 2}, False),  # text base
        ({"channels": 32, "kernel": 4, "groups": 4, "layers": 2}, True),  # even kernel keeps the length
    ],
)
def test_conv_decoder_1d_matches_the_written_out_reference(opts, residual):
    torch.manual_seed(0)
    dec = ConvDecoder1d(ConvDecoderOptions(**opts), 768)
    x = torch.randn(2, 21, 768)
    out = dec(x, None, None)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_decoder(dec, x, residual))


def test_conv_decoder_parameter_counts_follow_the_spec():
    audio = ConvDecoder1d(ConvDecoderOptions(channels=384, kernel=7, groups=16, layers=4), 768)
    expected = (768 // 16 * 7 * 384 + 384) + 3 * (384 // 16 * 7 * 384 + 384) + (384 * 768 + 768)
    assert sum(p.numel() for p in audio.parameters()) == expected
    text = ConvDecoder1d(ConvDecoderOptions(channels=768, kernel=9, groups=1, layers=5, residual=False, projection_layers=2), 768)
    assert [tuple(m.weight.shape) for m in text.proj if isinstance(m, nn.Linear)] == [(1536, 768), (768, 1536)]


# -- the step --------------------------------------------------------------------------------------


def _batch(B=2, T=12):
    torch.manual_seed(1)
    return {"x": torch.randn(B, T, 4), "keys": [str(i) for i in range(B)]}


def test_teacher_runs_once_per_sample_and_student_on_kept_steps_of_every_clone():
    cfg = _cfg()
    model = _model(cfg)
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    seen = {"teacher": [], "student": []}
    teacher.model["transformer"].register_forward_hook(lambda m, a, o: seen["teacher"].append(tuple(a[0].shape)))
    model.transformer.register_forward_hook(lambda m, a, o: seen["student"].append(tuple(a[0].shape)))
    out = model(_batch(), torch.Generator().manual_seed(0), teacher.model)
    assert seen["teacher"] == [(2, 1 + 12, 16)]  # B samples, all steps
    assert seen["student"] == [(2 * 3, 1 + 12 - 5, 16)]  # B*M clones, CLS + unmasked steps
    assert int(out.sample_size) == 2 * 3 * 5
    out.loss_sum.backward()
    assert model.decoder.proj.weight.grad is not None and model.encoder.mask_embedding.grad is None


def test_targets_are_repeated_for_each_clone():
    cfg = _cfg(decoder={"name": None, "options": {}})
    model = _model(cfg)
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    batch = _batch()
    y = model.targets(teacher.model, batch, model.encoder.embed(batch))
    captured = {}
    orig = regression_loss

    def spy(pred, target, beta, scale):
        captured.setdefault("target", target)
        return orig(pred, target, beta, scale)

    import d2v_core.model.data2vec as mod

    g = torch.Generator().manual_seed(5)
    mask = ExactMasker(5)(MaskRequest(6, 12), torch.Generator().manual_seed(5))
    try:
        mod.regression_loss = spy
        model(batch, g, teacher.model)
    finally:
        mod.regression_loss = orig
    torch.testing.assert_close(captured["target"], y.repeat_interleave(3, 0)[mask])


def test_cls_loss_is_weighted_by_the_masked_count():
    cfg0 = _cfg(loss={"cls_weight": 0.0, "scale": 1.0})
    cfg1 = _cfg(loss={"cls_weight": 0.01, "scale": 1.0})
    m0, m1 = _model(cfg0), _model(cfg1)
    m1.load_state_dict(m0.state_dict())
    teacher = EMATeacher(m0.teacher_scope(), cfg0.ema)
    batch = _batch()
    states = {}
    m1.transformer.register_forward_hook(lambda m, a, o: states.update(x=o.x.detach()))
    torch.manual_seed(7)
    o0 = m0(batch, torch.Generator().manual_seed(0), teacher.model)
    torch.manual_seed(7)
    o1 = m1(batch, torch.Generator().manual_seed(0), teacher.model)
    y = m0.targets(teacher.model, batch, m0.encoder.embed(batch))
    cls_target = y.mean(1).repeat_interleave(3, 0)
    expected = 0.01 * int(o1.sample_size) * ((states["x"][:, 0] - cls_target) ** 2).sum()
    torch.testing.assert_close(o1.loss_sum - o0.loss_sum, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(o1.cls_sum, expected, rtol=1e-4, atol=1e-6)


def test_decoder_with_a_masker_of_unequal_counts_is_refused():
    cfg = _cfg()

    class Uneven(ExactMasker):
        equal_counts = False

    with pytest.raises(ConfigError, match="same number of steps in every row"):
        Data2Vec(ToyEncoder(), cfg, Uneven(3), InstanceNorm(), IdentityNorm(),
                 decoder=ConvDecoder1d(ConvDecoderOptions(channels=8, groups=2), 16))


def test_v1_dense_student_with_clones_predicts_through_the_head():
    cfg = _cfg(decoder={"name": None, "options": {}})
    model = _model(cfg)
    assert model.decoder is None and model.head is not None
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    seen = []
    model.transformer.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    out = model(_batch(), torch.Generator().manual_seed(0), teacher.model)
    assert seen == [(6, 13, 16)] and int(out.sample_size) == 30
    assert math.isfinite(float(out.loss_sum.detach()))


# -- ALiBi -----------------------------------------------------------------------------------------


def test_alibi_slopes_are_the_papers_geometric_sequences():
    from d2v_core.model.alibi import alibi_slopes

    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])  # the paper's 1/2 ... 1/256
    assert alibi_slopes(4) == pytest.approx([2.0 ** -(2 * (i + 1)) for i in range(4)])
    # 12 heads: the 8 slopes of 8 heads, then slopes 1, 3, 5, 7 of 16 heads (2^-0.5 * 2^-k)
    twelve = alibi_slopes(12)
    assert twelve[:8] == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    assert twelve[8:] == pytest.approx([2.0 ** -(0.5 * (i + 1)) for i in (0, 2, 4, 6)])


def test_alibi_bias_is_minus_slope_times_distance():
    from d2v_core.model.alibi import alibi_bias, alibi_slopes

    b = alibi_bias(5, 2)
    s = alibi_slopes(2)
    for h in range(2):
        for i in range(5):
            for j in range(5):
                assert b[h, i, j].item() == pytest.approx(-s[h] * abs(i - j))


# -- configuration ---------------------------------------------------------------------------------


def test_naming_another_masker_drops_the_previous_maskers_options():
    from d2v_core.config_resolve import merge_layer

    preset = {"masking": {"name": "block", "options": {"mask_ratio": 0.6}, "clone_batch": 4}}
    assert merge_layer(preset, {"masking": {"name": "inverse-block"}})["masking"] == {"name": "inverse-block", "clone_batch": 4}
    # same name, or no name: options merge as before
    assert merge_layer(preset, {"masking": {"name": "block", "options": {"max_attempts": 3}}})["masking"]["options"] == {
        "mask_ratio": 0.6, "max_attempts": 3}
    assert merge_layer(preset, {"masking": {"options": {"max_attempts": 3}}})["masking"]["options"] == {
        "mask_ratio": 0.6, "max_attempts": 3}


def test_decoder_config_is_resolved_against_the_component(example_plugins):
    from d2v_core.config_resolve import resolve_config
    from d2v_core.errors import UnknownComponentError

    reg = example_plugins.registry
    cfg = resolve_config(reg, "vectors", "tiny", overrides=["decoder.name=conv1d", "decoder.options.channels=16"])
    assert cfg.decoder.options.channels == 16 and cfg.decoder.options.kernel == 5  # the rest: defaults
    with pytest.raises(ConfigError, match=r"decoder\.options: channels \(20\) must be divisible by groups \(16\)"):
        resolve_config(reg, "vectors", "tiny", overrides=["decoder.name=conv1d", "decoder.options.channels=20"])
    with pytest.raises(UnknownComponentError, match="unknown decoder 'conv3d'"):
        resolve_config(reg, "vectors", "tiny", overrides=["decoder.name=conv3d"])
    with pytest.raises(ConfigError, match="decoder.name is not"):
        resolve_config(reg, "vectors", "tiny", overrides=["decoder.options.channels=16"])


@pytest.mark.parametrize("teacher_input", ["features", "raw"])
def test_fp32_teacher_precision_ignores_the_students_autocast(teacher_input):
    # data2vec_vision computes the teacher in fp32; fairseq (the default) under the student's autocast
    batch = _batch()
    results = {}
    for precision in ("autocast", "fp32"):
        cfg = _cfg(decoder={"name": None, "options": {}}, ema={"teacher_input": teacher_input, "teacher_precision": precision})
        model = _model(cfg)
        teacher = EMATeacher(model.teacher_scope(), cfg.ema)
        with torch.no_grad():
            plain = model.targets(teacher.model, batch, model.encoder.embed(batch))  # no autocast at all
            with torch.autocast("cpu", dtype=torch.bfloat16):
                results[precision] = model.targets(teacher.model, batch, model.encoder.embed(batch))
        results[f"{precision}_plain"] = plain
    assert results["fp32"].dtype == torch.float32
    # the fp32 teacher sees the bf16 student's features (rounded once), then runs in fp32
    assert torch.allclose(results["fp32"], results["fp32_plain"], atol=5e-2)
    assert (results["autocast"].float() - results["autocast_plain"]).abs().max() > (results["fp32"] - results["fp32_plain"]).abs().max()


class DropoutEncoder(ToyEncoder):
    """ToyEncoder whose contextualize ends in dropout, like the text encoder's."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def contextualize(self, x, padding_mask):
        ctx = super().contextualize(x, padding_mask)
        return Context(self.drop(ctx.x), ctx.padding_mask, ctx.attn_bias)


@pytest.mark.parametrize("context", ["teacher", "student"])
def test_teacher_context_student_feeds_the_students_train_mode_contextualize(context):
    # fairseq ema_encoder_only (v2 text): the teacher blocks get the student's contextualized
    # features, computed in train mode (with dropout); otherwise the evaluated teacher copy's
    cfg = _cfg(decoder={"name": None, "options": {}}, ema={"teacher_input": "features", "teacher_context": context})
    torch.manual_seed(0)
    model = Data2Vec(DropoutEncoder(), cfg, ExactMasker(5), InstanceNorm(), IdentityNorm()).train()
    teacher = EMATeacher(model.teacher_scope(), cfg.ema)
    seen = []
    teacher.model["transformer"].register_forward_hook(lambda m, a, o: seen.append(a[0].clone()))
    batch = _batch()
    feats = model.encoder.embed(batch)
    torch.manual_seed(5)
    model.targets(teacher.model, batch, feats)
    torch.manual_seed(5)
    with torch.no_grad():
        students = model.encoder.contextualize(feats.x, feats.padding_mask).x
        own = teacher.model["encoder"].contextualize(feats.x, feats.padding_mask).x  # the evaluated copy
    assert torch.equal(seen[0], students if context == "student" else own)
    assert not torch.equal(students, own)  # dropout made them differ
