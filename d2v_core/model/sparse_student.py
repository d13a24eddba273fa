"""Index bookkeeping of data2vec 2.0's sparse student (MAE-style; pure functions).

The student Transformer sees only the prefix tokens and the unmasked steps; afterwards the
encoded steps are put back in order with noise at the masked steps for the decoder. Every row
must mask the same number of steps, so that the kept steps form a dense (B, K) batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from d2v_core.interfaces import Context


@dataclass
class KeepIndex:
    """``keep`` (B, K): the unmasked steps of each row in their original order; ``restore``
    (B, T): where each original step sits in ``[kept steps, masked steps]``."""

    keep: Tensor
    restore: Tensor


def keep_index(mask: Tensor) -> KeepIndex:
    """Indices for a (B, T) bool mask with the same number of masked steps in every row."""
    counts = mask.sum(-1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(
            f"the sparse student needs the same number of masked steps in every row, got {sorted(set(counts.tolist()))}; "
            "use a masker that declares equal_counts"
        )
    shuffle = mask.to(torch.int8).argsort(dim=1, stable=True)  # unmasked first, each group in order
    num_keep = mask.shape[1] - (int(counts[0]) if counts.numel() else 0)
    return KeepIndex(shuffle[:, :num_keep], shuffle.argsort(dim=1))


def gather_steps(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for x (B, T, ...) and index (B, K)."""
    idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


def keep_context(ctx: Context, keep: Tensor, num_prefix: int) -> Context:
    """The prefix tokens and the kept steps of a :class:`Context` (B, P+T, D), with the padding
    mask and the rows and columns of the attention bias that belong to them."""
    B = ctx.x.shape[0]
    prefix = torch.arange(num_prefix, device=keep.device).expand(B, num_prefix)
    index = torch.cat([prefix, keep + num_prefix], dim=1)  # (B, P+K)
    x = gather_steps(ctx.x, index)
    pad = None if ctx.padding_mask is None else gather_steps(ctx.padding_mask, index)
    bias = ctx.attn_bias
    if bias is not None:
        bias = bias.expand(B, -1, -1, -1) if bias.shape[0] != B else bias
        H, N, S = bias.shape[1], index.shape[1], bias.shape[-1]
        bias = bias.gather(2, index[:, None, :, None].expand(B, H, N, S))
        bias = bias.gather(3, index[:, None, None, :].expand(B, H, N, N))
    return Context(x, pad, bias)


def restore_order(kept: Tensor, restore: Tensor, noise_std: float) -> Tensor:
    """(B, K, D) encoded steps -> (B, T, D) in the original order, N(0, ``noise_std``) at the
    masked steps (fairseq ``decoder_input``; no learned mask token)."""
    B, K, D = kept.shape
    noise = kept.new_empty(B, restore.shape[1] - K, D).normal_(0.0, noise_std)
    return gather_steps(torch.cat([kept, noise], dim=1), restore)
