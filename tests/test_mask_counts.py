"""The exact-count selection the data2vec 2.0 maskers share: counts, validity, uniformity."""

import torch

from d2v_core.interfaces import MaskRequest
from d2v_core.mask_counts import exact_count


def test_trims_or_tops_up_uniformly_within_valid_steps():
    gen = torch.Generator().manual_seed(5)
    preferred = torch.zeros(2, 20, dtype=torch.bool)
    preferred[0, :10] = True  # 10 > 4: keep 4 of these
    preferred[1, :2] = True  # 2 < 4: keep both, add 2 of the 16 other valid steps
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[:, 18:] = False
    hits = torch.zeros(2, 20)
    for _ in range(3000):
        out = exact_count(preferred, valid, 4, gen)
        assert out.sum(-1).tolist() == [4, 4] and not (out & ~valid).any()
        assert not (out[0] & ~preferred[0]).any() and (out[1] | ~preferred[1]).all()
        hits += out
    freq = hits / 3000
    assert torch.allclose(freq[0, :10], torch.full((10,), 0.4), atol=0.04)  # 4 of 10
    assert torch.allclose(freq[1, 2:18], torch.full((16,), 2 / 16), atol=0.03)  # 2 of the 16 valid others


def test_without_valid_steps_every_step_may_be_chosen_and_zero_gives_nothing():
    gen = torch.Generator().manual_seed(1)
    hits = torch.zeros(20)
    for _ in range(2000):
        out = exact_count(torch.zeros(1, 20, dtype=torch.bool), None, 5, gen)
        assert int(out.sum()) == 5
        hits += out[0]
    assert torch.allclose(hits / 2000, torch.full((20,), 0.25), atol=0.04)  # MAE random masking: 5 of 20
    assert not exact_count(torch.ones(3, 4, dtype=torch.bool), None, 0, gen).any()


def test_mask_request_valid_steps():
    pad = torch.tensor([[False, False, True], [True, False, False]])
    assert torch.equal(MaskRequest(2, 3, pad).valid_steps(), ~pad)
    assert MaskRequest(2, 3).valid_steps().all()
