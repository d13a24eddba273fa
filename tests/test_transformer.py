"""The core Transformer against transformers' Data2Vec layers (same weights, same outputs)."""

import os

import pytest
import torch

from d2v_core.config import TransformerConfig
from d2v_core.model.transformer import Transformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

D, H, F, L = 32, 4, 64, 3


def _first(out):  # transformers 4.x returns tuples, 5.x may return the tensor
    return out[0] if isinstance(out, tuple) else out


def _qkv_from(q, k, v, ours):
    ours.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
    return ours


@torch.no_grad()
def test_post_ln_matches_hf_data2vec_audio_layers_with_padding():
    from transformers import Data2VecAudioConfig
    from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioEncoderLayer

    hf_cfg = Data2VecAudioConfig(hidden_size=D, num_attention_heads=H, intermediate_size=F, layer_norm_eps=1e-5,
                                 hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf_layers = [Data2VecAudioEncoderLayer(hf_cfg).eval() for _ in range(L)]
    ours = Transformer(TransformerConfig(dim=D, depth=L, heads=H, ffn_dim=F, layout="post_ln", dropout=0.0, attention_dropout=0.0)).eval()
    for hf, mine in zip(hf_layers, ours.layers, strict=True):
        a = hf.attention
        _qkv_from(a.q_proj, a.k_proj, a.v_proj, mine.attn)
        mine.attn.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        mine.attn.proj.load_state_dict(a.out_proj.state_dict())
        mine.attn_norm.load_state_dict(hf.layer_norm.state_dict())
        mine.fc1.load_state_dict(hf.feed_forward.intermediate_dense.state_dict())
        mine.fc2.load_state_dict(hf.feed_forward.output_dense.state_dict())
        mine.ffn_norm.load_state_dict(hf.final_layer_norm.state_dict())

    x = torch.randn(2, 7, D)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    additive = torch.zeros(2, 1, 7, 7)
    additive.masked_fill_(pad[:, None, None, :], torch.finfo(torch.float32).min)
    h = x
    for hf in hf_layers:
        h = _first(hf(h, attention_mask=additive))
    out = ours(x, padding_mask=pad, collect="block")
    valid = ~pad
    torch.testing.assert_close(out.x[valid], h[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.layers[-1][valid], h[valid], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_pre_ln_layer_scale_matches_hf_data2vec_vision_layers_with_bias():
    from transformers import Data2VecVisionConfig
    from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionLayer

    hf_cfg = Data2VecVisionConfig(hidden_size=D, num_attention_heads=H, intermediate_size=F, layer_norm_eps=1e-6,
                                  layer_scale_init_value=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    hf_layers = [Data2VecVisionLayer(hf_cfg).eval() for _ in range(L)]
    ours = Transformer(TransformerConfig(dim=D, depth=L, heads=H, ffn_dim=F, layout="pre_ln", layer_scale_init=0.1,
                                         qkv_bias="qv", final_norm=False, norm_eps=1e-6, dropout=0.0,
                                         attention_dropout=0.0, init="beit")).eval()
    for hf, mine in zip(hf_layers, ours.layers, strict=True):
        a = hf.attention.attention
        assert a.key.bias is None
        _qkv_from(a.query, a.key, a.value, mine.attn)
        mine.attn.q_bias.copy_(a.query.bias + 0.1 * torch.randn(D))
        a.query.bias.copy_(mine.attn.q_bias)
        mine.attn.v_bias.copy_(a.value.bias)
        mine.attn.proj.load_state_dict(hf.attention.output.dense.state_dict())
        mine.attn_norm.load_state_dict(hf.layernorm_before.state_dict())
        mine.fc1.load_state_dict(hf.intermediate.dense.state_dict())
        mine.fc2.load_state_dict(hf.output.dense.state_dict())
        mine.ffn_norm.load_state_dict(hf.layernorm_after.state_dict())
        mine.gamma_1.copy_(hf.lambda_1)
        mine.gamma_2.copy_(hf.lambda_2)
    x = torch.randn(2, 5, D)
    bias = torch.randn(1, H, 5, 5)
    h = x
    for hf in hf_layers:
        h = _first(hf(h, relative_position_bias=bias[0]))
    out = ours(x, attn_bias=bias, collect="block")
    torch.testing.assert_close(out.x, h, atol=1e-5, rtol=1e-5)


def test_ffn_intermediate_is_pre_residual_fc2_output():
    torch.manual_seed(2)
    t = Transformer(TransformerConfig(dim=D, depth=2, heads=H, ffn_dim=F, dropout=0.0, attention_dropout=0.0)).eval()
    x = torch.randn(1, 4, D)
    out = t(x, collect="ffn", collect_from=1)
    assert len(out.layers) == 1
    layer0, layer1 = t.layers
    h0 = layer0(x)[0]
    a = layer1.attn_norm(h0 + layer1.attn(h0))
    expected = layer1.fc2(torch.nn.functional.gelu(layer1.fc1(a)))
    torch.testing.assert_close(out.layers[0], expected)


def test_padding_content_does_not_change_valid_outputs():
    torch.manual_seed(3)
    t = Transformer(TransformerConfig(dim=D, depth=2, heads=H, ffn_dim=F)).eval()
    x = torch.randn(1, 6, D)
    pad = torch.tensor([[False] * 4 + [True] * 2])
    y = x.clone()
    y[0, 4:] = 100.0
    torch.testing.assert_close(t(x, pad).x[0, :4], t(y, pad).x[0, :4])


def test_beit_init_rescales_output_projections():
    torch.manual_seed(4)
    t = Transformer(TransformerConfig(dim=64, depth=4, heads=4, ffn_dim=128, layout="pre_ln", init="beit"))
    import math

    # std of a standard normal truncated to [-1, 1] (BEiT truncates at one std): 1 - 2 phi(1) / (2 Phi(1) - 1)
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    trunc = math.sqrt(1 - 2 * phi1 / math.erf(1 / math.sqrt(2)))
    std1 = t.layers[0].fc2.weight.std().item()
    std4 = t.layers[3].fc2.weight.std().item()
    assert std1 == pytest.approx(0.02 * trunc / 2**0.5, rel=0.05)
    assert std4 == pytest.approx(0.02 * trunc / 8**0.5, rel=0.05)
    assert t.layers[0].fc1.weight.abs().max().item() <= 0.02


def test_layerdrop_only_in_training():
    t = Transformer(TransformerConfig(dim=D, depth=8, heads=H, ffn_dim=F, layerdrop=0.5))
    t.train()
    torch.manual_seed(0)
    n_train = len(t(torch.randn(1, 3, D), collect="block").layers)
    t.eval()
    assert len(t(torch.randn(1, 3, D), collect="block").layers) == 8
    assert n_train < 8


def test_beit_init_also_initialises_the_regression_head():
    # data2vec_vision: trunc_normal_(lm_head.weight, std=0.02) cut at one std, bias 0; a normal
    # truncated at +/-1 sigma has std 0.5396 sigma
    from d2v_core.model.regression_head import build_regression_head

    torch.manual_seed(0)
    head = build_regression_head(256, "linear", init="beit")
    w = head.weight.detach()
    assert float(w.abs().max()) <= 0.02 and bool((head.bias.detach() == 0).all())
    assert abs(float(w.std()) - 0.02 * 0.5396) < 3e-4
    default = build_regression_head(256, "linear")  # bert presets: torch's default, as fairseq
    assert float(default.bias.detach().abs().max()) > 0
