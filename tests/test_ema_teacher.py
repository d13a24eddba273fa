"""EMA schedule and update, checked against the fairseq formula and a hand loop."""

import pytest
import torch
from torch import nn

from d2v_core.config import EMAConfig
from d2v_core.model.ema_teacher import EMATeacher, ema_decay_at


def fairseq_annealed_rate(start, end, curr_step, total_steps):
    # examples/data2vec/models/data2vec_audio.py get_annealed_rate
    r = end - start
    pct_remaining = 1 - curr_step / total_steps
    return end - r * pct_remaining


@pytest.mark.parametrize("step", [0, 1, 7500, 15000, 29999])
def test_decay_follows_fairseq_annealing(step):
    assert ema_decay_at(step, 0.999, 0.9999, 30000) == pytest.approx(fairseq_annealed_rate(0.999, 0.9999, step, 30000), abs=1e-12)


def test_decay_boundaries():
    assert ema_decay_at(0, 0.999, 0.9999, 30000) == pytest.approx(0.999)
    assert ema_decay_at(15000, 0.999, 0.9999, 30000) == pytest.approx(0.99945)
    assert ema_decay_at(30000, 0.999, 0.9999, 30000) == 0.9999
    assert ema_decay_at(10**6, 0.999, 0.9999, 30000) == 0.9999
    assert ema_decay_at(5, 0.9998, 0.9998, 0) == 0.9998  # constant (vision)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.pos = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(4)


def test_update_matches_hand_loop_and_copies_and_excludes():
    torch.manual_seed(0)
    student = Tiny()
    cfg = EMAConfig(decay=0.9, end_decay=0.99, anneal_end_step=10, copy_params=["pos.*"], exclude_params=["unused.*"])
    teacher = EMATeacher(student, cfg)
    expected = {n: p.detach().clone() for n, p in student.named_parameters()}
    for step in range(1, 4):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
            student.bn.running_mean.add_(1.0)
        tau = teacher.update(student, step)
        hand_tau = 0.99 - (0.99 - 0.9) * (1 - step / 10)
        assert tau == pytest.approx(hand_tau)
        for n, p in student.named_parameters():
            if n.startswith("a."):
                expected[n] = hand_tau * expected[n] + (1 - hand_tau) * p.detach()
            elif n.startswith("pos."):
                expected[n] = p.detach().clone()
    t = dict(teacher.model.named_parameters())
    for n in ("a.weight", "a.bias", "pos.weight", "pos.bias"):
        torch.testing.assert_close(t[n], expected[n], rtol=0, atol=1e-6)
    assert t["unused.weight"].numel() == 0  # the teacher never runs excluded parts
    torch.testing.assert_close(teacher.model.bn.running_mean, student.bn.running_mean)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    assert "unused.weight" not in teacher.state_dict()
