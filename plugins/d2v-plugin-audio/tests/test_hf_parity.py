"""The encoder equals transformers' Data2VecAudioModel input side, with weights copied by a rename.

This is what a later export relies on: HF's ``feature_extractor`` + ``feature_projection`` is
``embed`` and HF's encoder up to ``encoder.layer_norm`` is ``contextualize`` (eval mode).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from d2v_plugin_audio.encoder import AudioFeatureEncoder  # noqa: E402
from d2v_plugin_audio.options import AudioEncoderOptions  # noqa: E402

CONV_DIM = (8, 8, 12, 12, 12, 16, 16)
KERNELS = (10, 3, 3, 3, 3, 2, 2)
STRIDES = (5, 2, 2, 2, 2, 2, 2)


def hf_model(pos_kernel: int) -> "transformers.Data2VecAudioModel":
    cfg = transformers.Data2VecAudioConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=CONV_DIM,
        conv_kernel=KERNELS,
        conv_stride=STRIDES,
        conv_bias=False,
        num_conv_pos_embeddings=3,
        conv_pos_kernel_size=pos_kernel,
        num_conv_pos_embedding_groups=4,
        layer_norm_eps=1e-5,
        mask_time_prob=0.05,  # so that masked_spec_embed exists
    )
    torch.manual_seed(0)
    model = transformers.Data2VecAudioModel(cfg).eval()
    with torch.no_grad():  # move every weight off its init value (unit LNs, zero biases)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def renamed(hf_state: dict) -> dict:
    """HF names -> this plugin's encoder names (the export mapping, inverted)."""
    out = {}
    for key, value in hf_state.items():
        if key.startswith(("feature_extractor.", "feature_projection.")):
            out[key] = value
        elif key.startswith(("encoder.pos_conv_embed.", "encoder.layer_norm.")):
            out[key.removeprefix("encoder.")] = value
        elif key == "masked_spec_embed":
            out["mask_embedding"] = value
    return out


@pytest.mark.parametrize("pos_kernel", [5, 4])
def test_embed_and_contextualize_match_transformers(pos_kernel):
    hf = hf_model(pos_kernel)
    opts = AudioEncoderOptions(
        conv_channels=list(CONV_DIM), conv_kernels=list(KERNELS), conv_strides=list(STRIDES),
        pos_conv_depth=3, pos_conv_kernel=pos_kernel, pos_conv_groups=4,
    )
    enc = AudioFeatureEncoder(32, opts, dropout=0.1, norm_eps=1e-5)
    enc.load_state_dict(renamed(hf.state_dict()), strict=True)  # names and shapes line up exactly
    enc.eval()

    lengths = torch.tensor([6000, 4321])
    wav = torch.randn(2, 6000)
    pad = torch.arange(6000)[None, :] >= lengths[:, None]
    wav = wav.masked_fill(pad, 0.0)

    seen = {}
    hooks = [
        hf.feature_projection.register_forward_hook(lambda m, i, o: seen.__setitem__("proj", o[0].clone())),
        hf.encoder.layer_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("ctx", o.clone())),
    ]
    with torch.no_grad():
        hf(wav, attention_mask=(~pad).long())
        feats = enc.embed({"source": wav, "padding_mask": pad})
        ctx = enc.contextualize(feats.x, feats.padding_mask)
    for h in hooks:
        h.remove()

    hf_frames = hf._get_feature_vector_attention_mask(feats.x.shape[1], (~pad).long())
    assert torch.equal(feats.padding_mask, ~hf_frames)
    assert (feats.x - seen["proj"]).abs().max() <= 1e-5
    assert ctx.x.shape == seen["ctx"].shape
    assert (ctx.x - seen["ctx"]).abs().max() <= 1e-5
    assert torch.equal(ctx.padding_mask, feats.padding_mask)


def test_unpadded_batch_matches_transformers_without_attention_mask():
    hf = hf_model(5)
    opts = AudioEncoderOptions(
        conv_channels=list(CONV_DIM), conv_kernels=list(KERNELS), conv_strides=list(STRIDES),
        pos_conv_depth=3, pos_conv_kernel=5, pos_conv_groups=4,
    )
    enc = AudioFeatureEncoder(32, opts).eval()
    enc.load_state_dict(renamed(hf.state_dict()), strict=True)
    wav = torch.randn(3, 3200)
    seen = {}
    hook = hf.encoder.layer_norm.register_forward_hook(lambda m, i, o: seen.__setitem__("ctx", o.clone()))
    with torch.no_grad():
        hf(wav)
        feats = enc.embed({"source": wav, "padding_mask": None})
        ctx = enc.contextualize(feats.x, None)
    hook.remove()
    assert feats.padding_mask is None
    assert (ctx.x - seen["ctx"]).abs().max() <= 1e-5
