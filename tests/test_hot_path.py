"""The training step's hot path: no host-device sync outside log and checkpoint steps, the
non-finite check before every checkpoint, activation checkpointing and torch.compile equal to the
plain eager step."""

from __future__ import annotations

import json
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from d2v_core.errors import TrainingError
from d2v_core.train.checkpoint import list_checkpoints
from d2v_core.train.distributed import DistInfo

aten = torch.ops.aten
#: ops that make the host wait for the device on a GPU: ``.item()`` / ``float()`` / ``bool()``
#: of a tensor (``_local_scalar_dense``), and ops whose output size depends on the values
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
BOOL_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


class SyncCounter(TorchDispatchMode):
    """Records every synchronising op that runs under it, with where it was called from."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        bool_index = func in BOOL_INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if func in SYNC_OPS or bool_index:
            self.hits.append(f"{func}\n{''.join(traceback.format_stack(limit=8)[:-2])}")
        return func(*args, **(kwargs or {}))


def outside(counter_free_fn):  # noqa: ANN001, ANN201
    """``fn`` run with the counter switched off (the parts that may sync by design)."""
    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with _disable_current_modes():
            return counter_free_fn(*args, **kwargs)
    return wrapped


class FixedBatches:
    """A stand-in loader: the same padded batch every step; ``nan_at``: the k-th batch (1-based) is NaN."""

    def __init__(self, nan_at: int | None = None) -> None:
        from d2v_core.data.bad_records import BadRecordStats

        g = torch.Generator().manual_seed(0)
        self.stats, self.nan_at, self.served = BadRecordStats(), nan_at, 0
        pad = torch.zeros(4, 20, dtype=torch.bool)
        pad[0, 15:] = True
        self.batch = {"vectors": torch.randn(4, 20, 16, generator=g), "padding_mask": pad, "keys": list("abcd")}

    def iter_epoch(self, epoch: int, skip_batches: int = 0):  # noqa: ANN201, ARG002
        while True:
            self.served += 1
            batch = dict(self.batch)
            if self.served == self.nan_at:
                batch["vectors"] = torch.full_like(batch["vectors"], float("nan"))
            yield batch


def make_trainer(tmp_path, *overrides: str, loader=None):  # noqa: ANN001, ANN201
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_model
    from d2v_core.train.trainer import Trainer

    cfg = resolve_config(get_registry(), "vectors", None, None, [
        "data.batch_size=4", f"runtime.out_dir={tmp_path / 'run'}", "runtime.progress=false",
        "runtime.tensorboard=false", "optim.clip_norm=1.0", *overrides])
    from d2v_core.train import run_folder

    run_folder.claim(tmp_path / "run")  # a d2v run folder, as pretrain() makes it
    torch.manual_seed(0)
    return Trainer(cfg, build_model(cfg, get_registry()), loader or FixedBatches(), torch.device("cpu"), DistInfo())


def test_steps_between_log_steps_make_no_host_device_sync(tmp_path, example_plugins):
    """A whole ``fit`` of 8 steps, logging every 4: with the log-step reduction, the checkpoint and
    the host-side mask planning (maskers work on the CPU by contract) left out, no op runs that
    would make the host wait for a GPU."""
    trainer = make_trainer(tmp_path, "runtime.max_steps=8", "runtime.log_every=4", "runtime.save_every=100")
    trainer.model.plan_mask = outside(trainer.model.plan_mask)
    trainer.reduce_metrics = outside(trainer.reduce_metrics)
    trainer.save = outside(trainer.save)
    with SyncCounter() as counter:
        result = trainer.fit()
    assert result.step == 8 and result.last_loss is not None
    assert counter.hits == [], "\n".join(counter.hits[:3])


def test_the_counter_sees_the_syncs_a_step_used_to_make(tmp_path, example_plugins):
    """The counter is not blind: ``.item()``, ``bool()`` and boolean indexing are caught."""
    x = torch.randn(6)
    with SyncCounter() as counter:
        x.sum().item()
        bool(x.any())
        x[x > 0]
    assert len(counter.hits) >= 3


def test_logged_metrics_are_means_over_the_log_interval(tmp_path, example_plugins):
    """With log_every=3 the logged loss is the interval's summed loss over its summed masked
    steps: the same as the per-step metrics of log_every=1, pooled by hand."""
    from d2v_core.train.metrics import read_metrics

    every = make_trainer(tmp_path / "a", "runtime.max_steps=6", "runtime.log_every=1", "runtime.save_every=100")
    every.fit()
    pooled = make_trainer(tmp_path / "b", "runtime.max_steps=6", "runtime.log_every=3", "runtime.save_every=100")
    pooled.fit()
    per_step, per_interval = read_metrics(tmp_path / "a" / "run"), read_metrics(tmp_path / "b" / "run")
    assert [m["step"] for m in per_interval] == [3, 6]
    for row, steps in zip(per_interval, (per_step[0:3], per_step[3:6]), strict=True):
        size = sum(m["sample_size"] for m in steps)
        assert row["loss"] == pytest.approx(sum(m["loss"] * m["sample_size"] for m in steps) / size, rel=1e-6)
        assert row["samples"] == sum(m["samples"] for m in steps) == 12
        assert row["lr"] == steps[-1]["lr"] and row["tau"] == steps[-1]["tau"]


def test_logged_collapse_statistics_are_fairseq_compute_var_per_micro_batch(tmp_path, example_plugins, monkeypatch):
    """pred_var / target_var at a log step: the mean over the interval's micro-batches of each
    one's std over its rows (computed here with numpy from the rows the model saw)."""
    import numpy as np

    import d2v_core.model.data2vec as data2vec
    from d2v_core.train.metrics import read_metrics

    seen: list[np.ndarray] = []
    real = data2vec.feature_moments
    monkeypatch.setattr(data2vec, "feature_moments", lambda y: seen.append(y.detach().double().numpy()) or real(y))
    make_trainer(tmp_path, "runtime.max_steps=4", "runtime.log_every=2", "runtime.save_every=100",
                 "optim.accum_steps=2").fit()

    def std(y: np.ndarray) -> float:
        y = y.reshape(-1, y.shape[-1])
        return float(np.sqrt(y.var(axis=0, ddof=1) + 1e-6).mean())

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [2, 4] and len(seen) == 2 * 8  # pred, target of 4 x 2 micro-batches
    for i, row in enumerate(rows):
        pred, target = seen[8 * i : 8 * i + 8 : 2], seen[8 * i + 1 : 8 * i + 8 : 2]  # 2 steps x 2 micro-batches
        assert row["pred_var"] == pytest.approx(np.mean([std(p) for p in pred]), rel=1e-5)
        assert row["target_var"] == pytest.approx(np.mean([std(t) for t in target]), rel=1e-5)


def test_collapse_stops_the_run_at_the_first_checked_log_step(tmp_path, example_plugins):
    """runtime.min_target_var above any std the run can reach: the log step after
    health_after_step raises, naming the statistics; before it, nothing is checked."""
    trainer = make_trainer(tmp_path, "runtime.max_steps=6", "runtime.log_every=2", "runtime.save_every=100",
                           "runtime.health_after_step=3", "runtime.min_target_var=2.5")
    with pytest.raises(TrainingError, match=r"representation collapse at step 4: target_var=\S+ \(min 2.5\)"):
        trainer.fit()
    assert trainer.step == 4
    pred = make_trainer(tmp_path / "p", "runtime.max_steps=2", "runtime.log_every=1", "runtime.save_every=100",
                        "runtime.health_after_step=0", "runtime.min_pred_var=2.5")
    with pytest.raises(TrainingError, match=r"collapse at step 1: .* pred_var=\S+ \(min 2.5\)"):
        pred.fit()


def test_a_near_zero_rel_loss_warns_once_and_training_goes_on(tmp_path, example_plugins, capsys):
    """runtime.warn_rel_loss above any rel_loss the run can reach: the first log step warns (on
    stderr, naming the figure metrics.jsonl logs there), no later one does, and the run finishes;
    at the default (0.05) a short run, whose rel_loss starts near 1, says nothing."""
    trainer = make_trainer(tmp_path / "w", "runtime.max_steps=6", "runtime.log_every=2", "runtime.save_every=100",
                           "runtime.warn_rel_loss=1000")
    assert trainer.fit().step == 6
    err = capsys.readouterr().err
    assert err.count("warning: rel_loss") == 1, err
    first = json.loads((tmp_path / "w" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 2 and f"rel_loss {first['rel_loss']:.3g} at step 2 is below runtime.warn_rel_loss (1000)" in err
    quiet = make_trainer(tmp_path / "q", "runtime.max_steps=4", "runtime.log_every=2", "runtime.save_every=100")
    quiet.fit()
    assert "rel_loss" not in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "q" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rel_loss"] > 0.05 for r in rows if "rel_loss" in r)


def test_a_non_finite_step_never_reaches_a_checkpoint(tmp_path, example_plugins):
    """Step 3 sees NaN input; logging is every 10 steps, so the check that catches it is the one
    before the step-4 checkpoint: the run stops there and step 2's checkpoint stays the latest."""
    trainer = make_trainer(tmp_path, "runtime.max_steps=8", "runtime.log_every=10", "runtime.save_every=2",
                           loader=FixedBatches(nan_at=3))
    with pytest.raises(TrainingError, match=r"non-finite loss .* steps 3-4"):
        trainer.fit()
    assert [c.step for c in list_checkpoints(tmp_path / "run")] == [2]


# -- activation checkpointing and compile -------------------------------------------------------

def _transformer(ac: bool, dropout: float):  # noqa: ANN202
    from d2v_core.config import TransformerConfig
    from d2v_core.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = TransformerConfig(dim=32, depth=3, heads=4, ffn_dim=64, dropout=dropout, attention_dropout=dropout,
                            activation_dropout=dropout, activation_checkpointing=ac)
    return Transformer(cfg).train()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_gradients_of_the_plain_run(dropout):
    """Same loss and gradients with and without recomputation (with dropout too: the RNG state
    is restored for the recomputation), and far fewer tensors kept for the backward pass."""
    x = torch.randn(2, 10, 32)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    results = {}
    for ac in (False, True):
        model = _transformer(ac, dropout)
        saved = []
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            out = model(x, pad, collect="ffn")
        loss = out.x.pow(2).mean() + sum(h.mean() for h in out.layers)
        loss.backward()
        results[ac] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(saved))
    (l0, g0, n0), (l1, g1, n1) = results[False], results[True]
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)
    assert n1 < n0 / 3, (n0, n1)  # only each layer's input is kept


def test_activation_checkpointing_is_off_for_the_teacher_and_in_eval():
    model = _transformer(True, 0.0)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        with torch.no_grad():
            model(torch.randn(1, 5, 32))
        model.eval()(torch.randn(1, 5, 32))
        assert calls == []
        model.train()(torch.randn(1, 5, 32))
        assert len(calls) == 3
    finally:
        torch.utils.checkpoint.checkpoint = real


def _loss_and_grads(trainer):  # noqa: ANN001, ANN202
    from d2v_core.train.trainer import mask_generator

    batch = trainer.loader.batch
    trainer.model.train()
    out = trainer.model(batch, mask_generator(0, 0, 0, 0), trainer.teacher.model)
    out.loss_sum.backward()
    return out.loss_sum.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_a_compiled_step_equals_the_eager_step(tmp_path, example_plugins):
    """runtime.compile (inductor on the CPU), with activation checkpointing as well: the loss and
    every gradient equal the eager step's within float tolerance (dropout off in the preset)."""
    loss0, grads0 = _loss_and_grads(make_trainer(tmp_path / "eager"))
    compiled = make_trainer(tmp_path / "compiled", "runtime.compile=true", "model.activation_checkpointing=true")
    loss1, grads1 = _loss_and_grads(compiled)
    assert hasattr(compiled.model.transformer, "_compiled_call_impl") and compiled.model.transformer._compiled_call_impl
    assert grads0.keys() == grads1.keys()
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_a_compiled_step_with_layerdrop_compiles_every_layer_without_a_graph_break(tmp_path, example_plugins):
    """LayerDrop draws a coin per layer on the host; compiled layer by layer, no graph break is
    left (the whole Transformer compiled would break at the first coin and run the rest
    eagerly), and with the same draws the step equals the eager one."""
    from torch._dynamo.utils import counters

    eager = make_trainer(tmp_path / "eager", "model.layerdrop=0.5")
    torch.manual_seed(3)
    loss0, grads0 = _loss_and_grads(eager)
    compiled = make_trainer(tmp_path / "compiled", "model.layerdrop=0.5", "runtime.compile=true")
    counters.clear()
    torch.manual_seed(3)
    loss1, grads1 = _loss_and_grads(compiled)
    assert all(layer._compiled_call_impl for layer in compiled.model.transformer.layers)
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"], dict(counters["graph_break"])
    assert grads0.keys() == grads1.keys()
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-4, atol=1e-5, msg=name)


class _PlainEncoder(torch.nn.Module):
    """The two compiled methods of a FeatureEncoder, as plain functions of the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    def contextualize(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


@pytest.mark.slow
def test_a_compile_under_one_thread_does_not_load_the_kernels_of_a_two_thread_compile(tmp_path, monkeypatch):
    """Inductor writes the thread count into its CPU kernels (``omp parallel num_threads(N)``), but
    torch 2.11's FX graph cache does not key on it: without ``cpp.threads`` in the options, a
    one-thread run loaded a two-thread run's kernels from the on-disk cache and ran them on two
    OpenMP threads (image base compiled at 0.53x of the eager reference instead of 0.91x)."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    from d2v_core.config import TransformerConfig
    from d2v_core.model.transformer import Transformer
    from d2v_core.train.compile import compile_encoder_and_transformer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = TransformerConfig(dim=64, depth=1, heads=4, ffn_dim=256, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    x = torch.randn(4, 256, 64)

    def compiled_forward(threads: int) -> tuple[str, int]:
        """The code of a fresh compile under ``threads`` and its FX graph cache hits."""
        torch._dynamo.reset()
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        scope = torch.nn.ModuleDict({"encoder": _PlainEncoder(), "transformer": Transformer(cfg).train()})
        compile_encoder_and_transformer(scope, dynamic=None)
        counters.clear()
        encoder = scope["encoder"]
        with torch.no_grad():  # the forward kernels show it; compiling the backward too would double the time
            _, code = run_and_get_code(lambda: scope["transformer"](encoder.contextualize(encoder.embed(x))))
        return "\n".join(code), counters["inductor"]["fxgraph_cache_hit"]

    before = torch.get_num_threads()
    try:
        seen = {threads: compiled_forward(threads) for threads in (2, 1)}
    finally:
        torch.set_num_threads(before)
        torch._dynamo.reset()
    assert "num_threads(2)" in seen[2][0]  # the two-thread compile wrote two-thread kernels
    assert seen[1][1] == 0 and "num_threads(2)" not in seen[1][0], seen[1][1]


def test_prefetching_a_batch_keeps_the_data_position_of_the_step(tmp_path, example_plugins):
    """With one batch prefetched (as on a GPU), the steps see the same batches and a checkpoint
    records the same data position (epoch, batch, bad-record counts) as without: 20 records in
    batches of 4 (one bad), so the run crosses epoch ends."""
    import sys
    from pathlib import Path

    import numpy as np

    from d2v_core.data.loader import TrainLoader
    from d2v_core.plugin_loader import get_registry
    from d2v_core.train.build import build_record_decoder

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_pretrain_e2e import write_vectors

    data = write_vectors(tmp_path / "data", n=20)
    np.save(data / "seq_bad.npy", np.full((50, 16), np.nan, dtype=np.float32))
    runs = {}
    for prefetch in (False, True):
        trainer = make_trainer(tmp_path / str(prefetch), "runtime.max_steps=7", "runtime.log_every=1", "runtime.save_every=100")
        trainer.loader = TrainLoader(str(data), build_record_decoder(trainer.cfg, get_registry()), batch_size=4, seed=0)
        trainer.prefetch = prefetch
        losses = []
        for _ in range(7):
            trainer.train_step()
            losses.append(trainer.reduce_metrics()["loss"])
        st = trainer.state()
        runs[prefetch] = (losses, st["epoch"], st["batch_in_epoch"], st["bad_records"])
    assert runs[True][1:3] == runs[False][1:3] == (1, 2)  # 5 batches per epoch: 7 = 5 + 2
    assert runs[True][3] == runs[False][3] and runs[False][3]["counts"] == {"non_finite": 1}  # seen once by step 7
    assert runs[True][0] == runs[False][0]


def test_the_compile_flag_switches_on_runtime_compile(tmp_path, example_plugins, cli, monkeypatch):
    import d2v_core.train.run as run

    seen = []

    def fake_pretrain(cfg, registry, **kwargs):  # noqa: ANN001, ANN003, ANN202
        from d2v_core.train.trainer import TrainResult

        seen.append(cfg)
        return TrainResult(tmp_path, 0, None, None)

    monkeypatch.setattr(run, "pretrain", fake_pretrain)
    for flags, expected in (([], False), (["--compile"], True)):
        code, _, err = cli(["pretrain", "--modality", "vectors", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
        assert code == 0, err
        assert seen[-1].runtime.compile is expected
