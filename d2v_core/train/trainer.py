"""The pretraining loop: micro-batches, fairseq's gradient normalisation, clipping, AdamW,
schedule, EMA step, health checks, metrics and checkpoints; DDP or FSDP2 when launched by torchrun.

The hot path does not wait on the device: metrics are summed on the device and copied to the
host every ``runtime.log_every`` steps (and before every checkpoint), where the non-finite-loss
and collapse checks and, with several processes, the agreement on a stop signal happen (the
collapse statistics' feature moments are all-reduced there too, not in the model's forward). A
checkpoint is only written after the steps since the last check were found finite, so a bad step
never overwrites a good checkpoint. Each remaining host-device sync is marked ``# sync:``."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from d2v_core import __version__
from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml
from d2v_core.errors import CheckpointError, TrainingError
from d2v_core.loggers import LoggerContext, MetricsLogger
from d2v_core.model.data2vec import Data2Vec
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.model.losses import feature_std
from d2v_core.train import checkpoint as ckpt
from d2v_core.train import fsdp
from d2v_core.train.compile import compile_encoder_and_transformer
from d2v_core.train.distributed import DistInfo, all_reduce_sum
from d2v_core.train.metrics import MetricsWriter
from d2v_core.train.online_probe import OnlineProbe, probe_due
from d2v_core.train.optim import build_optimizer
from d2v_core.train.schedules import lr_at
from d2v_core.train.watchdog import StopWatchdog


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    last_loss: float | None
    stopped_early: bool = False
    stop_signal: int | None = None  # SIGINT / SIGTERM that stopped the run (after a checkpoint)


def mask_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro-batch's masks: reproducible and independent of resumption."""
    return torch.Generator().manual_seed(hash((seed, step, micro, rank)) & 0x7FFF_FFFF_FFFF)


def to_device(batch: dict, device: torch.device) -> dict:
    """Asynchronous copies to ``device``; on a GPU from page-locked memory (the loader's workers
    pin their batches; in-process batches are pinned here), so the host does not wait."""
    def move(v: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda" and v.device.type == "cpu" and not v.is_pinned():
            v = v.pin_memory()
        return v.to(device, non_blocking=True)

    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs ``cfg.runtime.max_steps`` updates of ``model`` on ``loader`` (a
    :class:`d2v_core.data.loader.TrainLoader`); only rank 0 writes."""

    def __init__(self, cfg: RunConfig, model: Data2Vec, loader, device: torch.device, dist: DistInfo,
                 versions: dict[str, str] | None = None, schedule: Callable[[int], float] | None = None,
                 loggers: Sequence[tuple[str, Callable[[LoggerContext], MetricsLogger]]] | None = None,
                 probe: OnlineProbe | None = None) -> None:
        """``schedule``: update -> learning rate (``build_schedule``); default: the core's
        schedule that ``cfg.optim.schedule`` names. ``loggers``: the metrics loggers rank 0
        opens (``build.logger_factories``); default: those of ``cfg`` from the installed plugins.
        ``probe``: rank 0's online probe (``eval``)."""
        self.cfg, self.model, self.loader, self.device, self.dist = cfg, model.to(device), loader, device, dist
        self.run_dir, self.probe = Path(cfg.runtime.out_dir), probe
        self.versions = {"d2v": __version__, **(versions or {})}
        self.loggers = loggers
        self.student_scope = model.teacher_scope()  # one object, so the EMA matches parameters once
        self.teacher = EMATeacher(self.student_scope, cfg.ema)
        if cfg.runtime.compile:  # after the teacher's copy: compiled methods are bound to their module
            for scope in (self.student_scope, self.teacher.model):
                compile_encoder_and_transformer(scope, cfg.runtime.compile_dynamic)
        self.fsdp = cfg.runtime.distributed == "fsdp" and dist.world_size > 1
        if self.fsdp:
            fsdp.shard(model, self.teacher.model, cfg.runtime.precision, cfg.ema.teacher_precision)
            self.ddp: torch.nn.Module = model
        else:
            # LayerDrop skips layers; the sparse student (2.0) never uses the mask embedding
            unused = cfg.model.layerdrop > 0 or cfg.decoder.name is not None
            self.ddp = model if dist.world_size == 1 else DDP(model, find_unused_parameters=unused)
        self.optimizer = build_optimizer(model, cfg.optim)
        peak, total = cfg.optim.lr, cfg.runtime.max_steps
        lr = schedule or (lambda s: lr_at(s, peak, total, cfg.optim.schedule))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr(s) / peak)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.runtime.precision == "fp16" else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._batches: Iterator[dict] | None = None
        # one batch ahead on a GPU: its copy runs while the current step computes
        self.prefetch = device.type == "cuda"
        self._ahead: tuple[dict, tuple] | None = None
        self._consumed: tuple | None = None  # the data position after the batch in use (with prefetch)
        self._stop = False
        self._stop_signal: int | None = None
        self._warned_shortcut = False  # runtime.warn_rel_loss: said once per process
        self.last_checkpoint: Path | None = None
        # device sums since the last log step: loss, size, pred_var, target_var, samples, baseline, cls, grad_norm
        self._acc = torch.zeros(8, dtype=torch.float64, device=device)
        # each micro-batch's local feature moments since the last log step (pred_var and
        # target_var are filled in from them there, after one all-reduce)
        self._moments: list[torch.Tensor] = []
        self._acc_steps, self._acc_from, self._checked_to = 0, self.step + 1, 0
        self._last_values: dict[str, float] = {}

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        # with a batch prefetched, the loader is one batch ahead: save where the step's data ended
        epoch, batch_in_epoch, bad = self._consumed if self._consumed else (self.epoch, self.batch_in_epoch, None)
        return {
            "step": self.step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "optimizer": fsdp.full_optimizer_state(self.model, self.optimizer) if self.fsdp else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {}, "rng": _rng_state(),
            "bad_records": bad if bad is not None else self.loader.stats.state_dict(),
        }

    def restore(self, loaded: ckpt.Checkpoint) -> None:
        st = loaded.trainer_state
        if st is None:
            raise CheckpointError(f"{loaded.path} has no trainer state (an imported checkpoint?); start from it with --init-from")
        if self.fsdp:  # every rank read the full state; each keeps its own rows
            fsdp.load_full_state_dict(self.model, loaded.student)
            self.teacher.check_state_dict(loaded.teacher)
            fsdp.load_full_state_dict(self.teacher.model, loaded.teacher, strict=False)
            fsdp.load_full_optimizer_state(self.model, self.optimizer, st["optimizer"])
        else:
            self.model.load_state_dict(loaded.student)
            self.teacher.load_state_dict(loaded.teacher)
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.scaler and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self._batches, self._ahead, self._consumed = None, None, None
        self.teacher.tau = self.teacher.decay_at(self.step)
        self.loader.stats.load_state_dict(st["bad_records"])
        _set_rng_state(st["rng"])

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0), after checking the steps not yet
        checked: a non-finite loss raises instead of overwriting a good checkpoint."""
        self._check_finite()
        if self.fsdp:  # collectives: every rank gathers, rank 0 receives the full state
            student, state = fsdp.full_state_dict(self.model), self.state()
            teacher = self.teacher.state_dict(fsdp.full_state_dict(self.teacher.model))
        elif self.dist.is_main:
            student, teacher, state = self.model.state_dict(), self.teacher.state_dict(), self.state()
        if not self.dist.is_main:
            return None
        self.last_checkpoint = ckpt.save_checkpoint(
            self.run_dir, self.step, student, teacher, state,
            config_to_yaml(self.cfg), {"versions": self.versions, "modality": self.cfg.modality},
            extra=self.model.encoder.extra_state(), keep_last=self.cfg.runtime.keep_last,
        )
        return self.last_checkpoint

    # -- data --------------------------------------------------------------------------------
    def _next_batch(self) -> dict:
        for _ in range(2):
            if self._batches is None:
                self._batches = iter(self.loader.iter_epoch(self.epoch, skip_batches=self.batch_in_epoch))
            try:
                batch = next(self._batches)
                self.batch_in_epoch += 1
                return batch
            except StopIteration:
                self._batches, self.epoch, self.batch_in_epoch = None, self.epoch + 1, 0
        raise TrainingError(f"the data produced no batch in epoch {self.epoch}: {self.loader.stats.summary()}")

    def _fetch(self) -> tuple[dict, tuple]:
        batch = to_device(self._next_batch(), self.device)
        return batch, (self.epoch, self.batch_in_epoch, self.loader.stats.state_dict())

    def _next_device_batch(self) -> dict:
        """The next batch on the device. With :attr:`prefetch`, the one after it is fetched and
        its (asynchronous) copy started before this one is returned."""
        if not self.prefetch:
            return to_device(self._next_batch(), self.device)
        batch, self._consumed = self._ahead or self._fetch()
        self._ahead = self._fetch()
        return batch

    # -- one update ----------------------------------------------------------------------------
    def _autocast(self):
        p = self.cfg.runtime.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def train_step(self) -> None:
        """One optimiser update. Adds its metrics to the device sums; nothing waits on the device."""
        cfg, accum = self.cfg, self.cfg.optim.accum_steps
        self.model.train()
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)  # loss, size, -, -, samples, baseline, cls
        samples = 0
        for micro in range(accum):
            batch = self._next_device_batch()
            samples += len(batch["keys"])
            last = micro == accum - 1
            if self.fsdp:
                cast(Any, self.ddp).set_requires_gradient_sync(last)
            sync = last or not isinstance(self.ddp, DDP)
            with (contextlib.nullcontext() if sync else cast(DDP, self.ddp).no_sync()), self._autocast():
                out = self.ddp(batch, mask_generator(cfg.runtime.seed, self.step, micro, self.dist.rank), self.teacher.model)
            if self.fsdp:
                fsdp.reshard_teacher(self.teacher.model)
            (self.scaler.scale(out.loss_sum) if self.scaler else out.loss_sum).backward()
            zero = sums.new_zeros(())
            sums += torch.stack([out.loss_sum.detach().double(), out.sample_size.double(), zero, zero, zero,
                                 out.baseline_sum.double(), out.cls_sum.double() if out.cls_sum is not None else zero])
            self._moments.append(out.moments)
        sums[4] = samples  # a fill with a host number: no copy, no wait
        totals = all_reduce_sum(sums)  # a collective, not a host sync: the global masked-step count
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grads = [fsdp.local(p.grad) for p in self.model.parameters() if p.grad is not None]
        # fairseq: per-masked-step mean over all ranks; a device scalar, so no wait for the count
        torch._foreach_mul_(grads, (self.dist.world_size / totals[1].clamp_min(1.0)).float())
        grad_norm = totals.new_zeros(())
        if cfg.optim.clip_norm > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = fsdp.full(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            torch.nn.utils.clip_grads_with_norm_(params, cfg.optim.clip_norm, grad_norm)
        self._last_values["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scaler:  # sync: fp16 only, GradScaler reads whether any gradient overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._last_values["tau"] = self.teacher.update(self.student_scope, self.step)
        self._acc[:7] += totals
        self._acc[7] += grad_norm.double()
        self._acc_steps += 1

    def reduce_metrics(self) -> dict[str, float]:
        """The metrics of the steps since the last call (means over them; ``samples`` summed),
        then the non-finite and collapse checks. One all-reduce (the feature moments: every rank
        calls this at the same steps) and one device-to-host copy."""
        n, micro = max(self._acc_steps, 1), max(len(self._moments), 1)
        if self._moments:  # fairseq's compute_var of each micro-batch, over all ranks' rows
            stds = feature_std(all_reduce_sum(torch.stack(self._moments)))  # (micro-batches, 2)
            self._acc[2:4] = stds.sum(0)
            self._moments = []
        acc = self._acc.tolist()  # sync: once per log step (and before a checkpoint)
        first, self._acc_from = max(self._acc_from, self._checked_to + 1), self.step + 1
        self._acc.zero_()
        self._acc_steps = 0
        loss_sum, sample_size = acc[0], max(acc[1], 1.0)
        if not math.isfinite(loss_sum):
            kept = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            span = f"step {self.step}" if first >= self.step else f"steps {first}-{self.step}"
            raise TrainingError(f"non-finite loss ({loss_sum}) in {span}: lower optim.lr or use fp32{kept}")
        metrics = {"loss": loss_sum / sample_size, **self._last_values, "sample_size": sample_size / n,
                   "pred_var": acc[2] / micro, "target_var": acc[3] / micro,
                   "samples": acc[4], "rel_loss": (loss_sum - acc[6]) / max(acc[5], 1e-12)}
        if self.cfg.optim.clip_norm > 0:
            metrics["grad_norm"] = acc[7] / n
        if self.cfg.loss.cls_weight > 0:
            metrics["cls_loss"] = acc[6] / sample_size
        self._check_health(metrics)
        self._check_shortcut(metrics)
        return metrics

    def _check_finite(self) -> None:
        """Before a checkpoint: the steps not yet checked must have a finite loss."""
        if self._acc_steps:
            # sync: once per checkpoint; the sums stay for the next log step
            loss_sum = float(self._acc[0])  # already summed over ranks: every rank agrees
            if not math.isfinite(loss_sum):
                self.reduce_metrics()  # raises, naming the steps
            self._checked_to = self.step

    def _check_health(self, m: dict[str, float]) -> None:
        rt = self.cfg.runtime
        if self.step <= rt.health_after_step:
            return
        if m["target_var"] < rt.min_target_var or m["pred_var"] < rt.min_pred_var:
            raise TrainingError(
                f"representation collapse at step {self.step}: target_var={m['target_var']:.4g} (min {rt.min_target_var}), "
                f"pred_var={m['pred_var']:.4g} (min {rt.min_pred_var}); try a lower optim.lr, a higher ema.decay or more masking"
            )

    def _check_shortcut(self, m: dict[str, float]) -> None:
        """Warn once when ``rel_loss`` falls below ``runtime.warn_rel_loss`` (rank 0; training goes on)."""
        limit = self.cfg.runtime.warn_rel_loss
        if self._warned_shortcut or limit <= 0 or not m["rel_loss"] < limit or not self.dist.is_main:
            return
        self._warned_shortcut = True
        print(f"warning: rel_loss {m['rel_loss']:.3g} at step {self.step} is below runtime.warn_rel_loss ({limit:g}) while "
              f"target_var is {m['target_var']:.3g} and pred_var {m['pred_var']:.3g}: the student predicts the targets almost "
              "exactly, a collapse the variance limits do not see; try a higher ema.decay from step 0 or more masking; "
              "training goes on", file=sys.stderr, flush=True)

    # -- the loop ------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:  # noqa: ANN001
        if self._stop:  # a second signal: give up now (a checkpoint being written is discarded)
            raise KeyboardInterrupt
        self._stop, self._stop_signal = True, signum

    def _should_stop(self, at_check: bool) -> bool:
        """Whether any rank got a stop signal. Ranks must agree, or those that go on would wait
        forever in the next step's all-reduce for the ones that stopped: with several processes
        they compare flags only at check steps (log steps), where they synchronise anyway."""
        if self.dist.world_size == 1:
            return self._stop  # a host flag: free to read after every step
        if not at_check:
            return False
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        self._stop = bool(all_reduce_sum(flag).item() > 0)  # sync: at check steps only
        return self._stop

    def _metrics_writer(self) -> MetricsWriter:
        """Rank 0's one writer: every log step's values go to the run's loggers through it."""
        loggers = self.loggers
        if loggers is None:
            from d2v_core.plugin_loader import get_registry
            from d2v_core.train.build import logger_factories

            loggers = logger_factories(self.cfg, get_registry())
        ctx = LoggerContext(self.run_dir, self.cfg.runtime.max_steps, self.step, self.cfg.modality, self.cfg.preset)
        return MetricsWriter(ctx, loggers, config=self.cfg.model_dump(mode="json"), progress=self.cfg.runtime.progress)

    def fit(self) -> TrainResult:
        rt = self.cfg.runtime
        logger = self._metrics_writer() if self.dist.is_main else None
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop after the current step, with a checkpoint
            with contextlib.suppress(ValueError):  # not the main thread
                handlers[sig] = signal.signal(sig, self._request_stop)
        last_loss, t_last, saved = None, time.time(), self.step if self.step else -1
        self._acc_from = self._checked_to = self.step  # a resumed run starts from a checked step
        self._acc_from += 1
        watchdog = StopWatchdog(rt.stop_timeout_s, lambda: f"step {self.step}, last checkpoint {self.last_checkpoint}")
        try:
            watchdog.start()
            while self.step < rt.max_steps and not self._should_stop(at_check=True):
                while True:  # steps up to the next check (log step, probe step, last step or a stop signal)
                    self.train_step()
                    watchdog.beat()  # a step finished: the run is alive, it stops at the next check
                    check = self.step % rt.log_every == 0 or self.step == rt.max_steps or probe_due(self.cfg.eval, self.step, rt.max_steps)
                    if check or self._should_stop(at_check=False):
                        break
                    if self.step % rt.save_every == 0:
                        self.save()
                        saved = self.step
                m = self.reduce_metrics()
                last_loss = m["loss"]
                if logger:
                    now = time.time()
                    m["samples_per_s"] = m["samples"] / max(now - t_last, 1e-9)
                    if self.probe is not None:  # rank 0 only, no collective: the other ranks wait in the next step
                        m.update(self.probe.at_step(self.step, rt.max_steps, self.model, self.teacher.model))
                    t_last = time.time()  # after the probe: its seconds are not training throughput
                    logger.log(self.step, m)
                if self.step % rt.save_every == 0:
                    self.save()
                    saved = self.step
            if saved != self.step:
                self.save()
        finally:
            watchdog.stop()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if logger:
                logger.close()
        # a signal that arrives while the final checkpoint is written does not undo a finished run
        stopped = self._stop and self.step < rt.max_steps
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, last_loss, stopped_early=stopped,
                           stop_signal=self._stop_signal if stopped else None)
