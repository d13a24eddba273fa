"""Target normalisation, averaging and the loss, against explicit formulas in numpy."""

import math

import numpy as np
import pytest
import torch

from d2v_core.model.losses import feature_moments, feature_std, loss_scale, regression_loss
from d2v_core.model.normalizers import IdentityNorm, InstanceNorm, LayerNormNoAffine, instance_norm, layer_norm
from d2v_core.model.targets import build_targets


def np_instance_norm(x, eps=1e-5):  # per sample, per channel, over time
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def np_layer_norm(x, eps=1e-5):  # per step over channels, no affine
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_instance_norm_matches_formula():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 7, 5))
    got = instance_norm(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, np_instance_norm(x), atol=1e-10)


def test_instance_norm_with_padding_uses_valid_steps_only():
    x = np.random.default_rng(1).normal(size=(2, 6, 3))
    pad = np.zeros((2, 6), dtype=bool)
    pad[1, 4:] = True
    got = instance_norm(torch.tensor(x), torch.tensor(pad)).numpy()
    np.testing.assert_allclose(got[0], np_instance_norm(x[:1])[0], atol=1e-10)
    np.testing.assert_allclose(got[1, :4], np_instance_norm(x[1:2, :4])[0], atol=1e-10)
    assert np.all(got[1, 4:] == 0)


def test_layer_norm_matches_formula():
    x = np.random.default_rng(2).normal(size=(2, 4, 6))
    np.testing.assert_allclose(layer_norm(torch.tensor(x)).numpy(), np_layer_norm(x), atol=1e-10)


def test_targets_average_of_normalised_layers_then_post_norm():
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(2, 5, 4)) * (i + 1) for i in range(3)]
    t = [torch.tensor(a, dtype=torch.float32) for a in layers]
    audio = build_targets(t, InstanceNorm(), IdentityNorm())
    np.testing.assert_allclose(audio.numpy(), np.mean([np_instance_norm(a) for a in layers], axis=0), atol=1e-5)
    vision = build_targets(t, LayerNormNoAffine(), LayerNormNoAffine())
    np.testing.assert_allclose(vision.numpy(), np_layer_norm(np.mean([np_layer_norm(a) for a in layers], axis=0)), atol=1e-5)
    assert audio.dtype == torch.float32


def test_bf16_layers_give_fp32_targets():
    t = [torch.randn(1, 3, 4).bfloat16()]
    assert build_targets(t, LayerNormNoAffine(), IdentityNorm()).dtype == torch.float32


def test_mse_loss_sum_over_features_with_scale():
    pred = np.array([[1.0, 2.0], [0.0, -1.0]])
    tgt = np.array([[0.0, 0.0], [1.0, 1.0]])
    got = regression_loss(torch.tensor(pred), torch.tensor(tgt), beta=0.0, scale=1 / math.sqrt(2)).numpy()
    np.testing.assert_allclose(got, [(1 + 4) / math.sqrt(2), (1 + 4) / math.sqrt(2)])


def test_smooth_l1_loss_matches_hand_formula():
    beta = 2.0
    pred = np.array([[0.5, 3.0, -4.0]])
    tgt = np.zeros((1, 3))

    def sl1(d):
        d = abs(d)
        return 0.5 * d * d / beta if d < beta else d - 0.5 * beta

    got = regression_loss(torch.tensor(pred), torch.tensor(tgt), beta=beta, scale=1.0).numpy()
    np.testing.assert_allclose(got, [sum(sl1(v) for v in pred[0])])


def test_loss_scales():
    assert loss_scale("inv_sqrt_dim", 768) == pytest.approx(1 / math.sqrt(768))
    assert loss_scale("inv_dim", 768) == pytest.approx(1 / 768)
    assert loss_scale(1.0, 768) == 1.0


def test_feature_std_is_fairseq_compute_var():
    y = np.random.default_rng(4).normal(0, 3.0, size=(50, 8))
    expected = np.sqrt(y.var(axis=0, ddof=1) + 1e-6).mean()
    assert float(feature_std(feature_moments(torch.tensor(y)))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("splits", [(50,), (20, 30), (1, 0, 32, 17)])
def test_summed_feature_moments_give_the_std_over_all_ranks_rows(splits):
    """Each rank's moments, summed (what the trainer's all-reduce does), give the std of the
    concatenated rows, as fairseq's compute_var all-reduces count, sum and sum of squares;
    with a mean far from zero (no cancellation) and a rank with no rows."""
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1.0, size=(50, 6)) * rng.uniform(0.1, 3.0, size=6) + 40.0
    expected = np.sqrt(y.var(axis=0, ddof=1) + 1e-6).mean()
    parts = np.split(y, np.cumsum(splits)[:-1])
    summed = sum(feature_moments(torch.tensor(p, dtype=torch.float32)[None]) for p in parts)
    assert float(feature_std(summed)) == pytest.approx(expected, rel=1e-5)
    # a stack of micro-batches reduces to one value each
    both = feature_std(torch.stack([summed, feature_moments(torch.tensor(y[:10]))]))
    assert both.shape == (2,) and float(both[1]) == pytest.approx(np.sqrt(y[:10].var(axis=0, ddof=1) + 1e-6).mean(), rel=1e-6)


def test_step_reports_the_mean_target_baseline():
    """rel_loss's denominator: the loss of predicting the batch's mean target at every masked step."""
    from d2v_core.config import RunConfig
    from d2v_core.interfaces import FeatureEncoder, Features
    from d2v_core.model.data2vec import Data2Vec
    from d2v_core.model.normalizers import IdentityNorm, InstanceNorm

    class Enc(FeatureEncoder):
        def __init__(self):
            super().__init__()
            self.dim = 8
            self.proj = torch.nn.Linear(3, 8)
            self.mask_embedding = torch.nn.Parameter(torch.zeros(8))

        def embed(self, batch):
            return Features(self.proj(batch["x"]))

    class Every2nd:
        def __call__(self, request, generator):
            return (torch.arange(request.length) % 2 == 0).expand(request.batch_size, -1).clone()

    cfg = RunConfig.model_validate({"modality": "t", "model": {"dim": 8, "depth": 2, "heads": 2, "ffn_dim": 16, "dropout": 0.0, "attention_dropout": 0.0},
                                    "targets": {"top_k": 2}})
    torch.manual_seed(0)
    model = Data2Vec(Enc(), cfg, Every2nd(), InstanceNorm(), IdentityNorm())
    teacher = torch.nn.ModuleDict({"encoder": model.encoder, "transformer": model.transformer})
    batch = {"x": torch.randn(2, 6, 3), "keys": ["a", "b"]}
    out = model(batch, torch.Generator(), teacher)
    y = model.targets(teacher, batch, model.encoder.embed(batch))[:, ::2].reshape(-1, 8).numpy()
    expected = ((y - y.mean(0)) ** 2).sum() / math.sqrt(8)
    assert float(out.baseline_sum) == pytest.approx(expected, rel=1e-5)
    assert int(out.sample_size) == 6
