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


def test_the_core_schedules_are_registry_components(example_plugins):
    from d2v_core.config_resolve import resolve_config
    from d2v_core.train.build import build_schedule

    reg = example_plugins.registry
    assert {"tri_stage", "cosine", "constant"} <= set(reg.names("schedule"))
    for name in ("tri_stage", "cosine", "constant"):
        cfg = resolve_config(reg, "vectors", overrides=[f"optim.schedule.name={name}", "optim.schedule.warmup_steps=10"])
        lr = build_schedule(cfg, reg)
        for step in (0, 5, 10, 500, cfg.runtime.max_steps):
            assert lr(step) == lr_at(step, cfg.optim.lr, cfg.runtime.max_steps, cfg.optim.schedule)
    with pytest.raises(Exception, match="unknown schedule 'nosuch'"):
        resolve_config(reg, "vectors", overrides=["optim.schedule.name=nosuch"])


def test_a_plugin_can_add_a_schedule_with_its_own_options():
    """A schedule registered by a plugin, validated options included, drives the run's LR."""
    import types

    from pydantic import Field

    from d2v_core import ComponentSpec, Options, hookimpl
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import plugin_context
    from d2v_core.train.build import build_schedule

    from d2v_plugin_example import plugin as example

    class StepOptions(Options):
        every: int = Field(100, gt=0)
        factor: float = 0.5

    def build_step(options, ctx):
        return lambda step: ctx.peak_lr * options.factor ** (step // options.every)

    mod = types.ModuleType("stepsched")
    mod.D2V_PLUGIN_API_VERSION = "1.0"

    @hookimpl
    def d2v_register(registry):
        registry.add_component(ComponentSpec("schedule", "step", build_step, options=StepOptions))

    mod.d2v_register = d2v_register
    with plugin_context(example, mod) as loaded:
        cfg = resolve_config(loaded.registry, "vectors", overrides=["optim.schedule.name=step", "optim.schedule.options.every=10",
                                                                    "optim.lr=0.1"])
        assert isinstance(cfg.optim.schedule.options, StepOptions) and cfg.optim.schedule.options.every == 10
        lr = build_schedule(cfg, loaded.registry)
        assert (lr(0), lr(9), lr(10), lr(25)) == (0.1, 0.1, 0.05, 0.025)
        with pytest.raises(Exception, match="optim.schedule.options.evry: unknown field"):
            resolve_config(loaded.registry, "vectors", overrides=["optim.schedule.name=step", "optim.schedule.options.evry=3"])
        with pytest.raises(Exception, match="optim.schedule.options: takes no options"):
            resolve_config(loaded.registry, "vectors", overrides=["optim.schedule.options.every=3"])
