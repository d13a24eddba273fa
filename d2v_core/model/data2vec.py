"""The data2vec model: a modality's FeatureEncoder, the core Transformer and a regression head
(1.0) or a decoder on a sparse student (2.0), trained against an EMA teacher's averaged top-K
layer targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2v_core.config import RunConfig
from d2v_core.errors import ConfigError
from d2v_core.interfaces import Batch, Decoder, FeatureEncoder, Features, Masker, MaskRequest, Normalizer
from d2v_core.model.losses import feature_moments, loss_scale, regression_loss
from d2v_core.model.regression_head import build_regression_head
from d2v_core.model.sparse_student import KeepIndex, keep_context, keep_index, restore_order
from d2v_core.model.targets import build_targets
from d2v_core.model.transformer import Transformer


@dataclass
class StepOutput:
    """``loss_sum``: summed over masked steps (fp32, differentiable; the CLS loss included);
    ``sample_size``: number of masked steps (over all clones); ``moments`` (2, 4, D): this
    process's :func:`~d2v_core.model.losses.feature_moments` of the predictions and the targets,
    from which the trainer computes fairseq's collapse statistics ``pred_var`` / ``target_var``
    over all ranks at a log step (no collective here); ``baseline_sum``: the loss of predicting the
    batch's mean target everywhere (detached), so that ``loss_sum / baseline_sum`` shows
    learning even while the targets' variance changes; ``cls_sum``: the CLS part (detached)."""

    loss_sum: Tensor
    sample_size: Tensor
    moments: Tensor
    baseline_sum: Tensor
    cls_sum: Tensor | None = None


@dataclass
class MaskPlan:
    """``mask`` (B, T) bool; ``index``: the flat (row-major) positions of its True steps, so
    ``take(t, index) == t[mask]``; ``keep``: the sparse student's indices (2.0) or None."""

    mask: Tensor
    index: Tensor
    keep: KeepIndex | None = None


def plan_from_mask(mask: Tensor, device: torch.device, sparse: bool) -> MaskPlan:
    """A :class:`MaskPlan` from a CPU mask, its tensors copied to ``device`` without waiting."""
    mask = mask.cpu()
    flat = mask.reshape(-1).nonzero().squeeze(1)
    keep = None
    if sparse:
        k = keep_index(mask)
        keep = KeepIndex(k.keep.to(device, non_blocking=True), k.restore.to(device, non_blocking=True))
    return MaskPlan(mask.to(device, non_blocking=True), flat.to(device, non_blocking=True), keep)


def take(t: Tensor, index: Tensor) -> Tensor:
    """``t[mask]`` for t (B, T, ...) given the mask's flat ``index``: an ``index_select`` of a
    known size, where boolean indexing would wait for the device to count the mask."""
    return t.reshape(-1, *t.shape[2:]).index_select(0, index)


def masked_mean(y: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over the valid steps of (B, T, D) -> (B, D)."""
    if padding_mask is None:
        return y.mean(1)
    valid = (~padding_mask).unsqueeze(-1).to(y.dtype)
    return (y * valid).sum(1) / valid.sum(1).clamp_min(1.0)


class Data2Vec(nn.Module):
    """Student = ``encoder`` + ``transformer`` + ``head`` (1.0) or ``decoder`` (2.0). The teacher
    is passed to :meth:`forward` (it is not a submodule, so it is neither in the student's state
    dict nor synchronised by DDP); :meth:`teacher_scope` is what the EMA teacher copies.

    With ``masking.clone_batch`` M > 1 the student sees every sample M times with different
    masks while the teacher runs once per sample. With a decoder, the student Transformer
    encodes only the unmasked steps and the decoder predicts the masked ones.
    """

    def __init__(self, encoder: FeatureEncoder, cfg: RunConfig, masker: Masker, layer_norm: Normalizer,
                 post_norm: Normalizer, decoder: Decoder | None = None) -> None:
        super().__init__()
        if encoder.dim != cfg.model.dim:
            raise ValueError(f"encoder dim {encoder.dim} != model.dim {cfg.model.dim}")
        if decoder is not None and not masker.equal_counts:
            raise ConfigError(
                f"decoder {cfg.decoder.name!r} needs a masker that masks the same number of steps in every row; "
                f"masker {cfg.masking.name!r} does not (choose one that declares equal counts, or unset decoder.name)"
            )
        if cfg.loss.cls_weight > 0 and encoder.num_prefix_tokens == 0:
            raise ConfigError(f"loss.cls_weight needs a CLS token, but the {cfg.modality} encoder has no prefix tokens; set it to 0")
        self.cfg = cfg
        self.encoder = encoder
        self.transformer = Transformer(cfg.model)
        self.decoder = decoder
        self.head = (build_regression_head(cfg.model.dim, cfg.loss.head, cfg.loss.head_hidden_mult, cfg.model.init)
                     if decoder is None else None)
        self.masker = masker
        self.layer_norm = layer_norm
        self.post_norm = post_norm
        self.scale = loss_scale(cfg.loss.scale, cfg.model.dim)

    def teacher_scope(self) -> nn.ModuleDict:
        """The modules the teacher copies; their parameter names match the student's."""
        return nn.ModuleDict({"encoder": self.encoder, "transformer": self.transformer})

    def make_mask(self, x: Tensor, padding_mask: Tensor | None, grid: tuple[int, ...] | None,
                  generator: torch.Generator) -> Tensor:
        B, T = x.shape[:2]
        # sync: with padding only (none without), maskers work on the CPU
        pad = None if padding_mask is None else padding_mask.cpu()
        return self.masker(MaskRequest(B, T, pad, grid), generator)

    def plan_mask(self, x: Tensor, padding_mask: Tensor | None, grid: tuple[int, ...] | None,
                  generator: torch.Generator) -> MaskPlan:
        """The mask and every index derived from it, computed on the host from the CPU mask and
        then copied to ``x``'s device (asynchronously): no device op of the step waits on a
        data-dependent size (``t[mask]`` on a GPU tensor would)."""
        return plan_from_mask(self.make_mask(x, padding_mask, grid, generator), x.device, self.decoder is not None)

    @torch.no_grad()
    def targets(self, teacher: nn.ModuleDict, batch: Batch, feats: Features) -> Tensor:
        """The teacher's targets (B, T, D) for the unmasked input (in fp32, out of any autocast,
        with ``ema.teacher_precision: fp32``)."""
        if self.cfg.ema.teacher_precision == "fp32":
            with torch.autocast(feats.x.device.type, enabled=False):
                return self._targets(teacher, batch, Features(feats.x.float(), feats.padding_mask, feats.grid))
        return self._targets(teacher, batch, feats)

    def _targets(self, teacher: nn.ModuleDict, batch: Batch, feats: Features) -> Tensor:
        enc = cast(FeatureEncoder, teacher["encoder"])
        if self.cfg.ema.teacher_input == "features":
            t_in, pad = feats.x.detach(), feats.padding_mask
        else:
            tf = enc.embed(batch)
            t_in, pad = tf.x, tf.padding_mask
        # "student": fairseq ema_encoder_only runs the student's own (train-mode) contextualize
        ctx = (self.encoder if self.cfg.ema.teacher_context == "student" else enc).contextualize(t_in, pad)
        k = self.cfg.targets.top_k
        out = teacher["transformer"](ctx.x, ctx.padding_mask, ctx.attn_bias, collect=self.cfg.targets.source,
                                     collect_from=self.cfg.model.depth - k)
        p = enc.num_prefix_tokens
        return build_targets([layer[:, p:] for layer in out.layers], self.layer_norm, self.post_norm, pad)

    def _dense_student(self, x: Tensor, pad: Tensor | None, plan: MaskPlan | Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """data2vec 1.0: mask embedding at the masked steps, all steps encoded; (states, predictions)."""
        plan = plan if isinstance(plan, MaskPlan) else plan_from_mask(plan, x.device, False)
        ctx = self.encoder.contextualize(self.encoder.apply_mask(x, plan.mask, generator), pad)
        states = self.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias).x
        assert self.head is not None  # data2vec 1.0 always has a head
        return states, self.head(take(states[:, self.encoder.num_prefix_tokens :], plan.index))

    def _sparse_student(self, x: Tensor, pad: Tensor | None, plan: MaskPlan | Tensor, grid: tuple[int, ...] | None) -> tuple[Tensor, Tensor]:
        """data2vec 2.0: only the prefix and the unmasked steps are encoded (masked steps are zero
        for positional encoders that look at neighbours); the decoder fills in the rest."""
        plan = plan if isinstance(plan, MaskPlan) else plan_from_mask(plan, x.device, True)
        index, mask = plan.keep, plan.mask
        assert index is not None  # the plan of a sparse student keeps an index
        p = self.encoder.num_prefix_tokens
        ctx = self.encoder.contextualize(x.masked_fill(mask.unsqueeze(-1), 0.0), pad)
        ctx = keep_context(ctx, index.keep, p)
        states = self.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias).x
        decoder = self.decoder
        assert decoder is not None  # the sparse student is used only with a decoder
        kept = F.dropout(states[:, p:], decoder.input_dropout, self.training)
        pred = decoder(restore_order(kept, index.restore, self.cfg.decoder.mask_noise_std), pad, grid)
        return states, take(pred, plan.index)

    def forward(self, batch: Batch, generator: torch.Generator, teacher: nn.ModuleDict) -> StepOutput:
        feats = self.encoder.embed(batch)
        y_full = self.targets(teacher, batch, feats)  # once per sample, before cloning
        x, pad, y, m = feats.x, feats.padding_mask, y_full, self.cfg.masking.clone_batch
        if m > 1:
            x, y = x.repeat_interleave(m, 0), y.repeat_interleave(m, 0)
            pad = None if pad is None else pad.repeat_interleave(m, 0)
        plan = self.plan_mask(x, pad, feats.grid, generator)
        mask = plan.mask
        if self.decoder is None:
            states, pred = self._dense_student(x, pad, plan, generator)
        else:
            states, pred = self._sparse_student(x, pad, plan, feats.grid)
        y = take(y, plan.index)
        beta = self.cfg.loss.beta
        loss = regression_loss(pred, y, beta, self.scale).sum()
        baseline = regression_loss(y.mean(0, keepdim=True).expand_as(y), y, beta, self.scale).sum()
        cls = None
        if self.cfg.loss.cls_weight > 0:
            # fairseq weights the CLS loss by the number of masked steps, so that after the
            # trainer's division by that number it counts once per sample
            cls_y = masked_mean(y_full, feats.padding_mask)
            cls_y = cls_y.repeat_interleave(m, 0) if m > 1 else cls_y
            cls = regression_loss(states[:, 0], cls_y, beta, self.scale).sum() * (self.cfg.loss.cls_weight * mask.sum())
            loss = loss + cls
        moments = torch.stack([feature_moments(pred.detach()), feature_moments(y)])
        return StepOutput(loss, mask.sum(), moments, baseline,
                          None if cls is None else cls.detach())
