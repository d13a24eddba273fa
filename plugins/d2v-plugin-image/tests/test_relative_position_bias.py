"""The shared relative position bias: index by hand, and values against Hugging Face."""

from __future__ import annotations

import os

import pytest
import torch

from d2v_plugin_image.relative_position_bias import RelativePositionBias, relative_position_index

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_index_2x2_by_hand():
    # Rows/cols: CLS, (0,0), (0,1), (1,0), (1,1). Patch pairs index (dy + 1) * 3 + (dx + 1) with
    # (dy, dx) = query - key; 9 = CLS->patch, 10 = patch->CLS, 11 = CLS->CLS ((2*2-1)^2 + 3 = 12 rows).
    expected = torch.tensor([
        [11, 9, 9, 9, 9],
        [10, 4, 3, 1, 0],
        [10, 5, 4, 2, 1],
        [10, 7, 6, 4, 3],
        [10, 8, 7, 5, 4],
    ])
    assert torch.equal(relative_position_index((2, 2)), expected)


@pytest.mark.parametrize("grid", [(3, 3), (2, 5), (4, 3)])
def test_index_matches_loop_formula(grid):
    h, w = grid
    coords = [(y, x) for y in range(h) for x in range(w)]
    index = relative_position_index(grid)
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            assert index[i + 1, j + 1].item() == (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    last = (2 * h - 1) * (2 * w - 1) + 3 - 1
    assert index[0, 0].item() == last
    assert set(index[0, 1:].tolist()) == {last - 2} and set(index[1:, 0].tolist()) == {last - 1}


def test_bias_is_table_lookup_per_head():
    bias = RelativePositionBias((3, 4), num_heads=2)
    with torch.no_grad():
        bias.relative_position_bias_table.copy_(torch.randn_like(bias.relative_position_bias_table))
    out = bias()
    assert out.shape == (1, 2, 13, 13)
    table, index = bias.relative_position_bias_table, relative_position_index((3, 4))
    for head in range(2):
        assert torch.equal(out[0, head], table[:, head][index])
    assert bias.relative_position_bias_table.shape == ((2 * 3 - 1) * (2 * 4 - 1) + 3, 2)


def test_table_starts_at_zero_and_index_is_not_saved():
    bias = RelativePositionBias((14, 14), num_heads=12)
    assert bias.relative_position_bias_table.shape == (732, 12)  # spec: (2*14-1)^2 + 3 = 732
    assert not bias.relative_position_bias_table.detach().any()
    assert list(bias.state_dict()) == ["relative_position_bias_table"]


def test_matches_hugging_face_module():
    transformers = pytest.importorskip("transformers")
    from transformers.models.data2vec.modeling_data2vec_vision import Data2VecVisionRelativePositionBias

    cfg = transformers.Data2VecVisionConfig(hidden_size=24, num_attention_heads=3)
    for window in [(4, 4), (14, 14)]:
        hf = Data2VecVisionRelativePositionBias(cfg, window_size=window)
        ours = RelativePositionBias(window, 3)
        with torch.no_grad():
            ours.relative_position_bias_table.copy_(torch.randn_like(ours.relative_position_bias_table))
            hf.relative_position_bias_table.copy_(ours.relative_position_bias_table)
        expected = hf(window, interpolate_pos_encoding=False)
        assert (ours() - expected).abs().max().item() <= 1e-6
    # HF's forward resamples the table for non-square windows (it reshapes width-major), so
    # only the index is compared there; d2v images are square.
    assert torch.equal(hf.generate_relative_position_index((3, 5)), relative_position_index((3, 5)))
