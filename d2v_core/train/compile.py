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

Threads: every part is compiled with Inductor's ``cpp.threads`` set to the thread count at
build time (``runtime.threads``), which keys the on-disk graph cache on it (see
:func:`inductor_options`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from d2v_core.model.transformer import Transformer


def inductor_options() -> dict[str, Any]:
    """Inductor options for every compiled part: the CPU thread count made explicit.

    Inductor writes the thread count of the moment (``torch.get_num_threads()``) into its CPU
    kernels (``#pragma omp parallel num_threads(N)``), but torch 2.11's FX graph cache does not
    key on it (pytorch/pytorch#160812, #167463): a run with one thread would load the kernels a
    two-thread run compiled earlier from the on-disk cache (``/tmp/torchinductor_<user>``), and
    run them on two OpenMP threads next to its one-thread ATen ops. ``cpp.threads`` is an
    Inductor option, hence part of the cache key."""
    return {"cpp.threads": torch.get_num_threads()}


def compile_encoder_and_transformer(scope: nn.ModuleDict, dynamic: bool | None) -> None:
    """Compile ``scope["encoder"]``'s ``embed`` / ``contextualize`` and ``scope["transformer"]``
    in place (parameter names and state dicts do not change). Call it after the EMA teacher was
    copied from the student: the compiled methods are bound to the module they were taken from."""
    encoder, transformer = scope["encoder"], cast(Transformer, scope["transformer"])
    options = inductor_options()
    for name in ("embed", "contextualize"):
        setattr(encoder, name, torch.compile(getattr(encoder, name), dynamic=dynamic, options=options))
    if transformer.cfg.layerdrop > 0:
        # LayerDrop's per-layer coin (a CPU random number) is a graph break inside the loop over
        # the layers, after which the rest of the Transformer would run eagerly: compile each
        # layer instead, with the loop and its draws left eager (the same draws as the eager step)
        for layer in transformer.layers:
            layer.compile(dynamic=dynamic, options=options)
    else:
        transformer.compile(dynamic=dynamic, options=options)
