"""The pretraining loop: micro-batches, fairseq's gradient normalisation, clipping, AdamW,
schedule, EMA step, health checks, metrics and checkpoints; DDP when launched by torchrun."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from d2v_core import __version__
from d2v_core.config import RunConfig
from d2v_core.config_resolve import config_to_yaml
from d2v_core.errors import CheckpointError, TrainingError
from d2v_core.model.data2vec import Data2Vec
from d2v_core.model.ema_teacher import EMATeacher
from d2v_core.train import checkpoint as ckpt
from d2v_core.train.distributed import DistInfo, all_reduce_sum
from d2v_core.train.metrics import MetricsLogger
from d2v_core.train.optim import build_optimizer
from d2v_core.train.schedules import lr_at


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
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
                 versions: dict[str, str] | None = None, schedule: Callable[[int], float] | None = None) -> None:
        """``schedule``: update -> learning rate (``build_schedule``); default: the core's
        schedule that ``cfg.optim.schedule`` names."""
        self.cfg, self.model, self.loader, self.device, self.dist = cfg, model.to(device), loader, device, dist
        self.run_dir = Path(cfg.runtime.out_dir)
        self.versions = {"d2v": __version__, **(versions or {})}
        self.student_scope = model.teacher_scope()  # one object, so the EMA matches parameters once
        self.teacher = EMATeacher(self.student_scope, cfg.ema)
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
        self._stop = False
        self._stop_signal: int | None = None
        self.last_checkpoint: Path | None = None

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {}, "rng": _rng_state(),
            "bad_records": self.loader.stats.state_dict(),
        }

    def restore(self, loaded: ckpt.Checkpoint) -> None:
        self.model.load_state_dict(loaded.student)
        self.teacher.load_state_dict(loaded.teacher)
        st = loaded.trainer_state
        if st is None:
            raise CheckpointError(f"{loaded.path} has no trainer state (an imported checkpoint?); start from it with --init-from")
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if self.scaler and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.teacher.tau = self.teacher.decay_at(self.step)
        self.loader.stats.load_state_dict(st["bad_records"])
        _set_rng_state(st["rng"])

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        self.last_checkpoint = ckpt.save_checkpoint(
            self.run_dir, self.step, self.model.state_dict(), self.teacher.state_dict(), self.state(),
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

    # -- one update ----------------------------------------------------------------------------
    def _autocast(self):
        p = self.cfg.runtime.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def train_step(self) -> dict[str, float]:
        cfg, accum = self.cfg, self.cfg.optim.accum_steps
        self.model.train()
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)  # loss, size, pred_var, target_var, samples, baseline, cls
        for micro in range(accum):
            batch = to_device(self._next_batch(), self.device)
            sync = micro == accum - 1 or not isinstance(self.ddp, DDP)
            with (contextlib.nullcontext() if sync else cast(DDP, self.ddp).no_sync()), self._autocast():
                out = self.ddp(batch, mask_generator(cfg.runtime.seed, self.step, micro, self.dist.rank), self.teacher.model)
            (self.scaler.scale(out.loss_sum) if self.scaler else out.loss_sum).backward()
            sums += torch.stack([out.loss_sum.detach().double(), out.sample_size.double(), out.pred_var.double(),
                                 out.target_var.double(), torch.tensor(float(len(batch["keys"])), device=self.device, dtype=torch.float64),
                                 out.baseline_sum.double(), out.cls_sum.double() if out.cls_sum is not None else sums.new_zeros(())])
        totals = all_reduce_sum(sums.clone())
        loss_sum, sample_size = totals[0].item(), max(totals[1].item(), 1.0)
        if not math.isfinite(loss_sum):
            kept = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingError(f"non-finite loss ({loss_sum}) at step {self.step}: lower optim.lr or use fp32{kept}")
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, self.dist.world_size / sample_size)  # fairseq: per-masked-step mean over all ranks
        grad_norm = None
        if cfg.optim.clip_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tau = self.teacher.update(self.student_scope, self.step)
        metrics = {"loss": loss_sum / sample_size, "lr": lr, "tau": tau, "sample_size": sample_size,
                   "pred_var": totals[2].item() / accum / self.dist.world_size, "target_var": totals[3].item() / accum / self.dist.world_size,
                   "samples": totals[4].item(), "rel_loss": (loss_sum - totals[6].item()) / max(totals[5].item(), 1e-12)}
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        if cfg.loss.cls_weight > 0:
            metrics["cls_loss"] = totals[6].item() / sample_size
        self._check_health(metrics)
        return metrics

    def _check_health(self, m: dict[str, float]) -> None:
        rt = self.cfg.runtime
        if self.step <= rt.health_after_step:
            return
        if m["target_var"] < rt.min_target_var or m["pred_var"] < rt.min_pred_var:
            raise TrainingError(
                f"representation collapse at step {self.step}: target_var={m['target_var']:.4g} (min {rt.min_target_var}), "
                f"pred_var={m['pred_var']:.4g} (min {rt.min_pred_var}); try a lower optim.lr, a higher ema.decay or more masking"
            )

    # -- the loop ------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:  # noqa: ANN001
        if self._stop:  # a second signal: give up now (a checkpoint being written is discarded)
            raise KeyboardInterrupt
        self._stop, self._stop_signal = True, signum

    def _should_stop(self) -> bool:
        """Whether any rank got a stop signal. Ranks must agree, or those that go on would wait
        forever in the next step's all-reduce for the ones that stopped."""
        if self.dist.world_size == 1:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        self._stop = bool(all_reduce_sum(flag).item() > 0)
        return self._stop

    def fit(self) -> TrainResult:
        rt = self.cfg.runtime
        logger = MetricsLogger(self.run_dir, rt.max_steps, self.step, rt.tensorboard, rt.progress) if self.dist.is_main else None
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop after the current step, with a checkpoint
            with contextlib.suppress(ValueError):  # not the main thread
                handlers[sig] = signal.signal(sig, self._request_stop)
        last_loss, t_last, samples, saved = None, time.time(), 0.0, self.step if self.step else -1
        try:
            while self.step < rt.max_steps and not self._should_stop():
                m = self.train_step()
                last_loss, samples = m["loss"], samples + m["samples"]
                if logger and (self.step % rt.log_every == 0 or self.step == rt.max_steps):
                    now = time.time()
                    m["samples_per_s"] = samples / max(now - t_last, 1e-9)
                    t_last, samples = now, 0.0
                    logger.log(self.step, m)
                if self.step % rt.save_every == 0:
                    self.save()
                    saved = self.step
            if saved != self.step:
                self.save()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if logger:
                logger.close()
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, last_loss, stopped_early=self._stop,
                           stop_signal=self._stop_signal)
