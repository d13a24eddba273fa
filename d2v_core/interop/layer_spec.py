"""fairseq's ``conv_feature_layers`` strings, read without ``eval``.

fairseq evaluates strings such as ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"``
with Python's ``eval`` (``examples/data2vec/models/data2vec_audio.py`` ``__init__``); d2v accepts
only lists, tuples, integers, ``+`` and ``*``.
"""

from __future__ import annotations

import ast
from typing import Any

from d2v_core.errors import CheckpointError


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _value(node.left), _value(node.right)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(type(node).__name__)


def parse_layer_spec(text: str) -> list[tuple[int, ...]]:
    """``"[(512, 10, 5)] * 2"`` -> ``[(512, 10, 5), (512, 10, 5)]``."""
    try:
        value = _value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot read layer spec {text!r}: only lists of tuples, + and * are read ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(t, tuple) for t in value):
        raise CheckpointError(f"layer spec {text!r} is not a list of tuples")
    return value
