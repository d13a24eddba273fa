"""``runtime.distributed: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) for the student
and the EMA teacher.

Every parameter is split along its first dimension over the ranks (FSDP2 shards each parameter
on its own), so a teacher parameter and the student parameter of the same name have the same
rows on every rank: each rank averages its own shard (:meth:`EMATeacher.update` works on the
local shards). Each Transformer layer is one all-gather unit; the rest of the student (encoder,
head, decoder) is the root unit; the teacher's encoder and Transformer are roots of their own.
Checkpoints gather the full state on rank 0 and go through the same save path as DDP runs (the
same safetensors layout); resuming loads the full state on every rank and keeps each rank's rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

#: the encoder methods the core calls instead of ``forward``
ENCODER_METHODS = ("embed", "contextualize")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """``runtime.precision`` as an FSDP2 policy: bf16/fp16 compute on all-gathered parameters,
    gradients reduced in fp32 (the sharded fp32 parameters stay the optimiser's master copy)."""
    if precision == "fp32":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else torch.float16, reduce_dtype=torch.float32)


def shard(student: nn.Module, teacher: nn.ModuleDict, precision: str, teacher_precision: str = "autocast") -> None:
    """Shard ``student`` (a Data2Vec) and ``teacher`` (the EMA teacher's encoder + Transformer) in
    place. ``teacher_precision`` ``fp32`` (``ema.teacher_precision``) keeps the teacher's
    gathered parameters in fp32."""
    mp = mixed_precision(precision)
    for layer in student.transformer.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(student, mp_policy=mp)
    tmp = mixed_precision("fp32" if teacher_precision == "fp32" else precision)
    for layer in teacher["transformer"].layers:
        fully_shard(layer, mp_policy=tmp)
    fully_shard(teacher["transformer"], mp_policy=tmp)
    fully_shard(teacher["encoder"], mp_policy=tmp)
    for name in ENCODER_METHODS:  # the teacher's encoder is called through these, not forward
        register_fsdp_forward_method(teacher["encoder"], name)


def reshard_teacher(teacher: nn.ModuleDict) -> None:
    """Free the teacher's gathered parameters after its forward: FSDP2 keeps a root's parameters
    gathered until its backward, and the teacher has none (and its EMA update needs the shards)."""
    for name in ("encoder", "transformer"):
        teacher[name].reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place updates reach the parameter), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a DTensor: every rank must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict, on the CPU, on rank 0 (empty elsewhere); every rank must call it."""
    return get_model_state_dict(module, options=_FULL)


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=_LOAD)
