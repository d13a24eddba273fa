"""The data2vec model: a modality's FeatureEncoder, the core Transformer and a regression head,
trained against an EMA teacher's averaged top-K layer targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from d2v_core.config import RunConfig
from d2v_core.interfaces import Batch, FeatureEncoder, Features, MaskRequest, Masker, Normalizer
from d2v_core.model.losses import feature_std, loss_scale, regression_loss
from d2v_core.model.regression_head import build_regression_head
from d2v_core.model.targets import build_targets
from d2v_core.model.transformer import Transformer


@dataclass
class StepOutput:
    """``loss_sum``: summed over masked steps (fp32, differentiable); ``sample_size``: number of
    masked steps; ``pred_var`` / ``target_var``: fairseq's collapse statistics (detached);
    ``baseline_sum``: the loss of predicting the batch's mean target everywhere (detached), so
    that ``loss_sum / baseline_sum`` shows learning even while the targets' variance changes."""

    loss_sum: Tensor
    sample_size: Tensor
    pred_var: Tensor
    target_var: Tensor
    baseline_sum: Tensor


class Data2Vec(nn.Module):
    """Student = ``encoder`` + ``transformer`` + ``head``. The teacher is passed to
    :meth:`forward` (it is not a submodule, so it is neither in the student's state dict nor
    synchronised by DDP); :meth:`teacher_scope` is what the EMA teacher copies."""

    def __init__(self, encoder: FeatureEncoder, cfg: RunConfig, masker: Masker, layer_norm: Normalizer, post_norm: Normalizer) -> None:
        super().__init__()
        if encoder.dim != cfg.model.dim:
            raise ValueError(f"encoder dim {encoder.dim} != model.dim {cfg.model.dim}")
        self.cfg = cfg
        self.encoder = encoder
        self.transformer = Transformer(cfg.model)
        self.head = build_regression_head(cfg.model.dim, cfg.loss.head, cfg.loss.head_hidden_mult)
        self.masker = masker
        self.layer_norm = layer_norm
        self.post_norm = post_norm
        self.scale = loss_scale(cfg.loss.scale, cfg.model.dim)

    def teacher_scope(self) -> nn.ModuleDict:
        """The modules the teacher copies; their parameter names match the student's."""
        return nn.ModuleDict({"encoder": self.encoder, "transformer": self.transformer})

    def make_mask(self, feats: Features, generator: torch.Generator) -> Tensor:
        B, T = feats.x.shape[:2]
        pad = None if feats.padding_mask is None else feats.padding_mask.cpu()
        mask = self.masker(MaskRequest(B, T, pad, feats.grid), generator)
        return mask.to(feats.x.device, non_blocking=True)

    def encode(self, batch: Batch, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Student features (B, T, D) without prefix tokens, and the padding mask."""
        feats = self.encoder.embed(batch)
        x = feats.x if mask is None else self.encoder.apply_mask(feats.x, mask)
        ctx = self.encoder.contextualize(x, feats.padding_mask)
        out = self.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias)
        return out.x[:, self.encoder.num_prefix_tokens :], feats.padding_mask

    @torch.no_grad()
    def targets(self, teacher: nn.ModuleDict, batch: Batch, feats: Features) -> Tensor:
        """The teacher's targets (B, T, D) for the unmasked input."""
        enc = teacher["encoder"]
        if self.cfg.ema.teacher_input == "features":
            t_in, pad = feats.x.detach(), feats.padding_mask
        else:
            tf = enc.embed(batch)
            t_in, pad = tf.x, tf.padding_mask
        ctx = enc.contextualize(t_in, pad)
        k = self.cfg.targets.top_k
        out = teacher["transformer"](ctx.x, ctx.padding_mask, ctx.attn_bias, collect=self.cfg.targets.source,
                                     collect_from=self.cfg.model.depth - k)
        p = enc.num_prefix_tokens
        return build_targets([layer[:, p:] for layer in out.layers], self.layer_norm, self.post_norm, pad)

    def forward(self, batch: Batch, generator: torch.Generator, teacher: nn.ModuleDict) -> StepOutput:
        feats = self.encoder.embed(batch)
        mask = self.make_mask(feats, generator)
        x = self.encoder.apply_mask(feats.x, mask, generator)
        ctx = self.encoder.contextualize(x, feats.padding_mask)
        out = self.transformer(ctx.x, ctx.padding_mask, ctx.attn_bias)
        student = out.x[:, self.encoder.num_prefix_tokens :]
        pred = self.head(student[mask])
        y = self.targets(teacher, batch, feats)[mask]
        loss = regression_loss(pred, y, self.cfg.loss.beta, self.scale).sum()
        baseline = regression_loss(y.mean(0, keepdim=True).expand_as(y), y, self.cfg.loss.beta, self.scale).sum()
        return StepOutput(loss, mask.sum(), feature_std(pred.detach()), feature_std(y), baseline)
