"""The reference data2vec training step that ``train_step.py`` measures d2v against: what a user
would assemble from transformers' ``Data2Vec{Audio,Vision,Text}Model`` doing the same math.

Per step: the same masker and mask generator as d2v (same masks), the student forward on the
masked input (``mask_time_indices`` / ``bool_masked_pos`` / masked input ids), a deep-copied
teacher in eval mode under ``no_grad`` whose top-K intermediates are taken with forward hooks
(audio/text: the FFN output ``feed_forward.output_dense`` / ``output.dense`` before dropout and
the residual; vision: the layer outputs), the same per-layer and post-average normalisation, the
same loss (summed over features, times the scale, divided by the number of masked steps), AdamW
with the same hyper-parameters, schedule and clipping, then the EMA update. The EMA is a plain
per-parameter loop (``t.lerp_(s, 1 - tau)``, or ``copy_`` for the parameters d2v copies), as
timm's ``ModelEmaV2`` and most hand-written data2vec ports do it.

Deliberate differences, none of which changes the math: the reference does not compute d2v's
collapse statistics (``pred_var`` / ``target_var``), and transformers' audio model masks its
features in place, so the teacher's input is a clone of the student's unmasked features.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from d2v_core.config import RunConfig
from d2v_core.interfaces import MaskRequest
from d2v_core.model.ema_teacher import ema_decay_at
from d2v_core.train.schedules import lr_at
from d2v_core.train.trainer import mask_generator


def _plain(section: Any) -> dict:
    """A config's plugin section as a mapping (resolved configs hold the options object)."""
    return section if isinstance(section, dict) else section.model_dump()


def _norm(x: Tensor, kind: str) -> Tensor:
    if kind == "instance":  # per channel over time (fairseq audio)
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    return x


class ReferenceStep:
    """One modality's transformers model wrapped in a data2vec step; see the module docstring.

    Subclasses build ``self.model`` (student), ``self.teacher`` (module that the hooks sit in)
    and implement :meth:`_student`, :meth:`_teacher` and :meth:`_mask`."""

    copy_prefixes: tuple[str, ...] = ()  # teacher parameters copied (not averaged) each step

    def __init__(self, cfg: RunConfig, masker, device: torch.device) -> None:  # noqa: ANN001
        self.cfg, self.masker, self.device = cfg, masker, device
        self.step_count = 0
        self.model = self._build_student().to(device)
        self.head = self._build_head().to(device)
        self._captured: list[Tensor] = []
        self.reset_teacher()
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params += [("head." + n, p) for n, p in self.head.named_parameters()]
        self.optimizer = torch.optim.AdamW(self._groups(params), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)
        peak, total = cfg.optim.lr, cfg.runtime.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, peak, total, cfg.optim.schedule) / peak)

    def reset_teacher(self) -> None:
        """(Re)make the teacher as a copy of the student's current weights, with its hooks."""
        self.teacher = self._teacher_module()
        for module in self._target_modules():
            module.register_forward_hook(self._capture)
        self._pairs = self._ema_pairs()

    # -- pieces the modalities provide ------------------------------------------------------
    def _build_student(self) -> nn.Module:
        raise NotImplementedError

    def _teacher_module(self) -> nn.Module:
        """The deep-copied teacher (fp32, eval, no grad) as a submodule tree of the student's."""
        raise NotImplementedError

    def _target_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _mask(self, batch: dict, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _student(self, batch: dict, mask: Tensor, gen: torch.Generator) -> Tensor:
        """Student output (B, T, D) without prefix tokens."""
        raise NotImplementedError

    def _teacher(self, batch: dict) -> None:
        """Run the teacher so that the hooks capture the top-K intermediates."""
        raise NotImplementedError

    prefix = 0  # tokens to drop from the teacher's intermediates (vision: CLS)

    # -- shared ---------------------------------------------------------------------------------
    def _build_head(self) -> nn.Module:
        d, cfg = self.cfg.model.dim, self.cfg.loss
        if cfg.head == "mlp":
            return nn.Sequential(nn.Linear(d, cfg.head_hidden_mult * d), nn.GELU(), nn.Linear(cfg.head_hidden_mult * d, d))
        return nn.Linear(d, d)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():  # the teacher's pass only
            self._captured.append(output[0] if isinstance(output, tuple) else output)

    def _groups(self, params: list[tuple[str, nn.Parameter]]) -> list[dict]:
        o = self.cfg.optim
        exempt = [p for n, p in params if o.no_decay_1d and (p.ndim <= 1 or n.endswith(".bias") or "cls_token" in n)]
        ids = {id(p) for p in exempt}
        groups = [{"params": [p for _, p in params if id(p) not in ids], "weight_decay": o.weight_decay}]
        if exempt:
            groups.append({"params": exempt, "weight_decay": 0.0})
        return groups

    def _student_scope(self) -> nn.Module:
        """The student module whose parameter names match the teacher's."""
        return self.model

    def _ema_pairs(self) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        src = dict(self._student_scope().named_parameters())
        averaged, copied = [], []
        for name, t in self.teacher.named_parameters():
            (copied if name.startswith(self.copy_prefixes) else averaged).append((t, src[name]))
        return averaged, copied

    def _autocast(self):
        p = self.cfg.runtime.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def targets(self, batch: dict) -> Tensor:
        t = self.cfg.targets
        self._captured = []
        with torch.no_grad():
            self._teacher(batch)
        layers = self._captured[-t.top_k :]
        self._captured = []
        y = sum(_norm(layer[:, self.prefix :].float(), t.per_layer_norm) for layer in layers) / len(layers)
        return _norm(y, t.post_norm)

    def loss(self, batch: dict, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        mask = self._mask(batch, gen).to(self.device)
        student = self._student(batch, mask, gen)
        pred = self.head(student[mask]).float()
        y = self.targets(batch)[mask]
        c = self.cfg.loss
        if c.beta == 0:
            per = F.mse_loss(pred, y, reduction="none")
        else:
            per = F.smooth_l1_loss(pred, y, reduction="none", beta=c.beta)
        d = self.cfg.model.dim
        scale = {"inv_sqrt_dim": d**-0.5, "inv_dim": 1.0 / d}.get(c.scale, c.scale)  # type: ignore[arg-type]
        return per.sum(-1).sum() * float(scale), mask.sum()

    @torch.no_grad()
    def ema_update(self, step: int) -> None:
        e = self.cfg.ema
        tau = ema_decay_at(step, e.decay, e.end_decay, e.anneal_end_step)
        averaged, copied = self._pairs
        if tau < 1.0:
            for t, s in averaged:
                t.lerp_(s.detach(), 1.0 - tau)
        for t, s in copied:
            t.copy_(s.detach())
        t_bufs = dict(self.teacher.named_buffers())
        for n, b in self._student_scope().named_buffers():
            if n in t_bufs:
                t_bufs[n].copy_(b)

    def step(self, batch: dict) -> float:
        """One full update; returns the loss per masked step (a float)."""
        self.model.train()
        self.head.train()
        gen = mask_generator(self.cfg.runtime.seed, self.step_count, 0, 0)
        with self._autocast():
            loss_sum, size = self.loss(batch, gen)
        loss = loss_sum / size.clamp_min(1)
        loss.backward()
        if self.cfg.optim.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + list(self.head.parameters()), self.cfg.optim.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.ema_update(self.step_count)
        return float(loss.detach())

    def _frozen_copy(self, module: nn.Module) -> nn.Module:
        return copy.deepcopy(module).float().eval().requires_grad_(False)


class AudioReference(ReferenceStep):
    """``Data2VecAudioModel``; the teacher is a copy of ``model.encoder`` fed the student's
    unmasked projected features (d2v's ``teacher_input: features``); the positional conv is copied."""

    copy_prefixes = ("pos_conv_embed.",)

    def _build_student(self) -> nn.Module:
        from transformers import Data2VecAudioConfig, Data2VecAudioModel

        m, e = self.cfg.model, _plain(self.cfg.encoder)
        kernels = e.get("conv_kernels", [10, 3, 3, 3, 3, 2, 2])
        ch = e.get("conv_channels", 512)
        conf = Data2VecAudioConfig(
            hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads, intermediate_size=m.ffn_dim,
            hidden_act="gelu", hidden_dropout=m.dropout, activation_dropout=m.activation_dropout,
            attention_dropout=m.attention_dropout, feat_proj_dropout=0.0, layerdrop=m.layerdrop,
            conv_dim=ch if isinstance(ch, list) else [ch] * len(kernels), conv_kernel=kernels,
            conv_stride=e.get("conv_strides", [5, 2, 2, 2, 2, 2, 2]), conv_bias=e.get("conv_bias", False),
            num_conv_pos_embeddings=e.get("pos_conv_depth", 5), conv_pos_kernel_size=e.get("pos_conv_kernel", 19),
            num_conv_pos_embedding_groups=e.get("pos_conv_groups", 16), layer_norm_eps=m.norm_eps,
            mask_time_prob=0.05, attn_implementation="sdpa",
        )
        model = Data2VecAudioModel(conf)
        self._features: list[Tensor] = []
        # the unmasked projected features, cloned: the model then masks them in place
        model.feature_projection.register_forward_hook(lambda mod, a, out: self._features.append(out[0].detach().clone()))
        return model

    def _student_scope(self) -> nn.Module:
        return self.model.encoder

    def _teacher_module(self) -> nn.Module:
        return self._frozen_copy(self.model.encoder)

    def _target_modules(self) -> list[nn.Module]:
        return [layer.feed_forward.output_dense for layer in self.teacher.layers]

    def _frames(self, batch: dict) -> int:
        n, enc = batch["source"].shape[1], _plain(self.cfg.encoder)
        for k, s in zip(enc.get("conv_kernels", [10, 3, 3, 3, 3, 2, 2]), enc.get("conv_strides", [5, 2, 2, 2, 2, 2, 2]), strict=True):
            n = (n - k) // s + 1
        return n

    def _mask(self, batch: dict, gen: torch.Generator) -> Tensor:
        return self.masker(MaskRequest(batch["source"].shape[0], self._frames(batch), None, None), gen)

    def _student(self, batch: dict, mask: Tensor, gen: torch.Generator) -> Tensor:
        self._features = []
        return self.model(batch["source"].to(self.device), mask_time_indices=mask).last_hidden_state

    def _teacher(self, batch: dict) -> None:
        self.teacher(self._features.pop())


class VisionReference(ReferenceStep):
    """``Data2VecVisionModel`` (BEiT, shared relative position bias); the teacher is a copy of the
    whole model fed the unmasked image (d2v's ``teacher_input: raw``)."""

    prefix = 1

    def _build_student(self) -> nn.Module:
        from transformers import Data2VecVisionConfig, Data2VecVisionModel

        m, e = self.cfg.model, _plain(self.cfg.encoder)
        conf = Data2VecVisionConfig(
            hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads, intermediate_size=m.ffn_dim,
            hidden_act="gelu", hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
            image_size=e.get("image_size", 224), patch_size=e.get("patch_size", 16), use_mask_token=True,
            use_absolute_position_embeddings=False, use_relative_position_bias=False,
            use_shared_relative_position_bias=True, layer_scale_init_value=m.layer_scale_init or 0.0,
            drop_path_rate=m.drop_path, use_mean_pooling=False, layer_norm_eps=m.norm_eps, attn_implementation="sdpa",
        )
        return Data2VecVisionModel(conf, add_pooling_layer=False)

    def _teacher_module(self) -> nn.Module:
        return self._frozen_copy(self.model)

    def _target_modules(self) -> list[nn.Module]:
        return list(self.teacher.encoder.layer)

    def _mask(self, batch: dict, gen: torch.Generator) -> Tensor:
        p = _plain(self.cfg.encoder).get("patch_size", 16)
        h, w = batch["image"].shape[-2] // p, batch["image"].shape[-1] // p
        return self.masker(MaskRequest(batch["image"].shape[0], h * w, None, (h, w)), gen)

    def _student(self, batch: dict, mask: Tensor, gen: torch.Generator) -> Tensor:
        return self.model(batch["image"].to(self.device), bool_masked_pos=mask).last_hidden_state[:, 1:]

    def _teacher(self, batch: dict) -> None:
        self.teacher(batch["image"].to(self.device))


class TextReference(ReferenceStep):
    """``Data2VecTextModel`` (RoBERTa); BERT's 80/10/10 corruption of the masked ids drawn from the
    same generator as d2v's text encoder; the teacher (a copy of the whole model) sees the
    unmasked ids; the embeddings are copied."""

    copy_prefixes = ("embeddings.",)

    def __init__(self, cfg: RunConfig, masker, device: torch.device, tokenizer) -> None:  # noqa: ANN001
        self.tok = tokenizer
        special = set(tokenizer.special_ids)
        self.replacement_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])
        super().__init__(cfg, masker, device)

    def _build_student(self) -> nn.Module:
        from transformers import Data2VecTextConfig, Data2VecTextModel

        m = self.cfg.model
        conf = Data2VecTextConfig(
            vocab_size=self.tok.vocab_size, hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads,
            intermediate_size=m.ffn_dim, hidden_act="gelu", hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.attention_dropout,
            max_position_embeddings=_plain(self.cfg.encoder).get("max_positions", 512) + self.tok.pad_id + 1, type_vocab_size=1,
            layer_norm_eps=m.norm_eps, pad_token_id=self.tok.pad_id, bos_token_id=self.tok.bos_id,
            eos_token_id=self.tok.eos_id, attn_implementation="sdpa",
        )
        model = Data2VecTextModel(conf, add_pooling_layer=False)
        # d2v (like fairseq's RoBERTa) has no token types: keep RoBERTa's single row fixed
        model.embeddings.token_type_embeddings.weight.requires_grad_(False)
        return model

    def _teacher_module(self) -> nn.Module:
        return self._frozen_copy(self.model)

    def _target_modules(self) -> list[nn.Module]:
        return [layer.output.dense for layer in self.teacher.encoder.layer]

    def _mask(self, batch: dict, gen: torch.Generator) -> Tensor:
        tokens = batch["tokens"]
        return self.masker(MaskRequest(tokens.shape[0], tokens.shape[1], tokens.eq(self.tok.pad_id), None), gen)

    def masked_ids(self, tokens: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
        """BERT corruption with d2v's draw order: one uniform per step (keep / random / <mask>),
        then one random replacement index per step."""
        enc = _plain(self.cfg.encoder)
        keep_p, rand_p = enc.get("leave_unmasked_prob", 0.1), enc.get("random_token_prob", 0.1)
        m = mask.cpu()
        u = torch.rand(m.shape, generator=gen)
        pick = torch.randint(self.replacement_ids.numel(), m.shape, generator=gen)
        keep = u < keep_p
        to_random = m & ~keep & (u < keep_p + rand_p)
        to_mask = m & ~keep & ~to_random
        ids = tokens.cpu().clone()
        ids[to_mask] = self.tok.mask_id
        ids[to_random] = self.replacement_ids[pick][to_random]
        return ids

    def _student(self, batch: dict, mask: Tensor, gen: torch.Generator) -> Tensor:
        tokens = batch["tokens"]
        ids = self.masked_ids(tokens, mask, gen).to(self.device)
        attn = tokens.ne(self.tok.pad_id).long().to(self.device)
        return self.model(input_ids=ids, attention_mask=attn).last_hidden_state

    def _teacher(self, batch: dict) -> None:
        tokens = batch["tokens"].to(self.device)
        self.teacher(input_ids=tokens, attention_mask=tokens.ne(self.tok.pad_id).long())


def build_reference(cfg: RunConfig, masker, device: torch.device, tokenizer=None) -> ReferenceStep:  # noqa: ANN001
    if cfg.modality == "audio":
        return AudioReference(cfg, masker, device)
    if cfg.modality == "image":
        return VisionReference(cfg, masker, device)
    if cfg.modality == "text":
        return TextReference(cfg, masker, device, tokenizer)
    raise ValueError(f"no transformers reference for modality {cfg.modality!r}")
