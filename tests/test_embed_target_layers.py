"""``d2v embed/probe --layers targets|top-k``: data2vec's target representation as features,
checked against a by-hand computation from per-layer states (issue 20)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from manifest_helpers import write_labels_csv  # noqa: E402


def _vectors(folder, n: int = 12):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        T = int(rng.integers(20, 40))
        np.save(folder / f"r{i:02d}.npy", rng.standard_normal((T, 16)).astype(np.float32))
        rows.append({"path": f"r{i:02d}.npy", "label": i % 2, "group": f"g{i % 4}"})
    return write_labels_csv(folder / "labels.csv", rows)


def _pretrain(cli, tmp_path, norm: str):
    manifest = _vectors(tmp_path / "data")
    run = tmp_path / "run"
    code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(tmp_path / "data"), "--out", str(run),
                        "--max-steps", "3", "--set", "runtime.progress=false", "--set", "runtime.tensorboard=false",
                        "--set", "targets.top_k=2", "--set", "targets.source=ffn", "--set", f"targets.per_layer_norm={norm}",
                        "--set", "model.depth=3"])
    assert code == 0, err
    return run, manifest


def _by_hand(run, manifest, normalise: bool) -> np.ndarray:
    """Per record: run the layers one by one, take the FFN outputs (fc2(gelu(fc1(x))) of the
    attention block's output) of the top 2 of 3 layers, layer-norm each without affine (or
    not), average them, then average over the record's steps."""
    from d2v_core.data.sources import resolve_source
    from d2v_core.inference.pretrained import load_pretrained
    from d2v_core.plugin_loader import get_registry

    pre = load_pretrained(run, get_registry())
    model, dec = pre.model, pre.record_decoder
    out = []
    with torch.no_grad():
        src = resolve_source(str(manifest), tuple(dec.extensions))
        for entry in src.entries:
            batch = dec.collate_for_inference([dec.decode_for_inference(src.read(entry))])
            assert model.encoder.num_prefix_tokens == 0
            feats = model.encoder.embed(batch)
            x = model.encoder.contextualize(feats.x, feats.padding_mask).x
            ffn = []
            for layer in model.transformer.layers:
                assert not layer.pre_ln  # the vectors preset is post-LN: x = LN1(x + attn(x)); h = fc2(gelu(fc1(x)))
                x = layer.attn_norm(x + layer.attn(x, None))
                h = layer.fc2(F.gelu(layer.fc1(x)))
                ffn.append(h[0])
                x = layer.ffn_norm(x + h)
            top = ffn[-2:]
            if normalise:
                top = [(h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5) for h in top]
            out.append(((top[0] + top[1]) / 2).mean(0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("layers", ["targets", "top-k"])
def test_embed_layers_is_the_mean_of_the_top_k_target_layers(example_plugins, cli, tmp_path, layers):
    run, manifest = _pretrain(cli, tmp_path, "layer")
    code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "t.npy"), "--layers", layers])
    assert code == 0, err
    got = np.load(tmp_path / "t.npy")
    want = _by_hand(run, manifest, normalise=layers == "targets")
    assert got.shape == want.shape == (12, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a different representation from the final output and from the mean of the last 2 block outputs
    for other in (["--top-k", "2"], []):
        code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "o.npy"), *other])
        assert code == 0, err
        assert np.abs(np.load(tmp_path / "o.npy") - got).max() > 1e-2


def test_probe_with_layers_targets_and_its_usage_errors(example_plugins, cli, tmp_path):
    run, manifest = _pretrain(cli, tmp_path, "instance")
    code, out, err = cli(["probe", str(run), "--train", str(manifest), "--split-by", "group", "--layers", "top-k"])
    assert code == 0, err
    assert "pretrained: accuracy" in out
    # instance-normed targets average to zero over time: a clear usage error, not a probe of zeros
    code, _, err = cli(["probe", str(run), "--train", str(manifest), "--split-by", "group", "--layers", "targets"])
    assert code == 2 and "instance" in err and "--layers top-k" in err and err.count("\n") == 1
    for bad, words in ((["--layers", "top"], "must be one of targets, top-k"), (["--layers", "targets", "--layer", "1"], "without --layer"),
                       (["--layers", "top-k", "--pool", "cls"], "no CLS token")):
        code, _, err = cli(["embed", str(run), str(manifest), "--out", str(tmp_path / "x.npy"), *bad])
        assert code == 2 and words in err and err.count("\n") == 1, (bad, err)
