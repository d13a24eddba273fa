"""``runtime.compile``: ``torch.compile`` of the parts of a step that hold the model's math.

Compiled: the student's and the teacher's ``encoder.embed``, ``encoder.contextualize`` and
Transformer (layer by layer when ``model.layerdrop`` > 0: its per-layer draw would break the
graph). Left eager: the masker (host-side, CPU), ``apply_mask`` (a plugin may draw random
tokens on the host there), the mask indexing, the loss and the optimiser (their shapes follow
the number of masked steps, which changes every step).

Shape policy (``runtime.compile_dynamic``): ``None`` (default) lets torch start static and
recompile once with dynamic sizes when a new shape arrives, after which any batch size or length
reuses that graph; images (fixed size) and fixed-length crops stay static. ``True`` compiles
dynamic sizes from the start (variable-length audio and text: no static first graph);
``False`` keeps every shape static (one graph per distinct shape; use it with bucketed lengths,
where the number of shapes is small and static graphs are fastest).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from d2v_core.model.transformer import Transformer


def compile_encoder_and_transformer(scope: nn.ModuleDict, dynamic: bool | None) -> None:
    """Compile ``scope["encoder"]``'s ``embed`` / ``contextualize`` and ``scope["transformer"]``
    in place (parameter names and state dicts do not change). Call it after the EMA teacher was
    copied from the student: the compiled methods are bound to the module they were taken from."""
    encoder, transformer = scope["encoder"], cast(Transformer, scope["transformer"])
    for name in ("embed", "contextualize"):
        setattr(encoder, name, torch.compile(getattr(encoder, name), dynamic=dynamic))
    if transformer.cfg.layerdrop > 0:
        # LayerDrop's per-layer coin (a CPU random number) is a graph break inside the loop over
        # the layers, after which the rest of the Transformer would run eagerly: compile each
        # layer instead, with the loop and its draws left eager (the same draws as the eager step)
        for layer in transformer.layers:
            layer.compile(dynamic=dynamic)
    else:
        transformer.compile(dynamic=dynamic)
