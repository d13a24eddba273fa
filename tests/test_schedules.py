"""Learning-rate schedules at their boundaries, against fairseq's formulas written out by hand."""

import math

import pytest

from d2v_core.config import ScheduleConfig
from d2v_core.train.schedules import lr_at

PEAK = 5e-4


def test_tri_stage_boundaries():
    cfg = ScheduleConfig(name="tri_stage", phase_ratio=(0.03, 0.9, 0.07), init_lr_scale=0.01, final_lr_scale=0.01)
    total = 400_000  # the audio recipe: 12k warm-up, 360k hold, 28k decay
    assert lr_at(0, PEAK, total, cfg) == pytest.approx(0.01 * PEAK)
    assert lr_at(6_000, PEAK, total, cfg) == pytest.approx(0.01 * PEAK + (PEAK - 0.01 * PEAK) * 0.5)
    assert lr_at(12_000, PEAK, total, cfg) == pytest.approx(PEAK)
    assert lr_at(371_999, PEAK, total, cfg) == pytest.approx(PEAK)
    assert lr_at(372_000 + 14_000, PEAK, total, cfg) == pytest.approx(PEAK * math.sqrt(0.01))  # halfway, exponential
    assert lr_at(400_000, PEAK, total, cfg) == pytest.approx(0.01 * PEAK)
    assert lr_at(500_000, PEAK, total, cfg) == pytest.approx(0.01 * PEAK)


def test_cosine_boundaries():
    cfg = ScheduleConfig(name="cosine", warmup_steps=100, warmup_init_lr=0.0, min_lr=1e-5)
    assert lr_at(0, PEAK, 1100, cfg) == 0.0
    assert lr_at(50, PEAK, 1100, cfg) == pytest.approx(PEAK / 2)
    assert lr_at(100, PEAK, 1100, cfg) == pytest.approx(PEAK)
    assert lr_at(600, PEAK, 1100, cfg) == pytest.approx(1e-5 + 0.5 * (PEAK - 1e-5))
    assert lr_at(1100, PEAK, 1100, cfg) == pytest.approx(1e-5)


def test_constant():
    assert lr_at(123, PEAK, 1000, ScheduleConfig(name="constant")) == PEAK


def test_phase_ratio_must_sum_to_one():
    with pytest.raises(ValueError, match="phase_ratio"):
        ScheduleConfig(phase_ratio=(0.5, 0.5, 0.5))
