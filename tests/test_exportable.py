"""The core's shared exporter pieces: key maps applied both ways, the one exportability check,
and the one-line quote of a library's message."""

from __future__ import annotations

import pytest
import torch

from d2v_core import (
    ExportError,
    Fuse,
    NotExportableError,
    Rename,
    Supports,
    apply_key_map,
    check_exportable,
    export_key_map,
    first_line,
    load_exported,
    load_imported,
)

RULES = (
    Rename("emb.mask", "encoder.mask", transform=lambda t: t.reshape(-1), inverse=lambda t: t.reshape(1, 1, -1)),
    Fuse("layer.{i}.attn.{part}_proj.{kind}", "transformer.layers.{i}.attn.qkv.{kind}"),
    Rename("layer.{i}.attn.out_proj.{kind}", "transformer.layers.{i}.attn.proj.{kind}"),
)


def test_export_key_map_splits_fused_rows_and_inverts_transforms():
    qkv = torch.arange(12.0).reshape(6, 2)  # rows [q; k; v], 2 each
    state = {"encoder.mask": torch.tensor([1.0, 2.0]), "transformer.layers.3.attn.qkv.weight": qkv,
             "transformer.layers.3.attn.proj.bias": torch.tensor([5.0]), "head.weight": torch.zeros(1)}
    out = export_key_map(state, RULES)
    assert out.unused == ["head.weight"]
    assert sorted(out.tensors) == ["emb.mask", "layer.3.attn.k_proj.weight", "layer.3.attn.out_proj.bias",
                                   "layer.3.attn.q_proj.weight", "layer.3.attn.v_proj.weight"]
    assert out.tensors["emb.mask"].shape == (1, 1, 2)
    assert out.tensors["layer.3.attn.q_proj.weight"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert out.tensors["layer.3.attn.v_proj.weight"].tolist() == [[8.0, 9.0], [10.0, 11.0]]
    back = apply_key_map(out.tensors, RULES)  # and the same table imports it again
    assert back.unused == [] and sorted(back.tensors) == sorted(k for k in state if k != "head.weight")
    assert all(torch.equal(back.tensors[k], state[k]) for k in back.tensors)


def test_a_transform_without_inverse_cannot_export():
    with pytest.raises(ValueError, match="no inverse"):
        export_key_map({"x": torch.zeros(2)}, [Rename("y", "x", transform=torch.neg)])


class Cfg:
    class model:  # noqa: N801 - a stand-in for RunConfig's sections
        layout, final_norm, layer_scale_init = "pre_ln", True, 0.1

    encoder = {"alibi": False}


SUPPORTS = (
    Supports("model.layout", ("post_ln",), "post-LN only"),
    Supports("model.final_norm", (False,), "no final norm"),
    Supports("model.layer_scale_init", (None,), "no layer scale"),
    Supports("encoder.alibi", (False,), "no ALiBi"),
)


def test_check_exportable_names_every_problem_in_one_line():
    with pytest.raises(NotExportableError) as info:
        check_exportable(Cfg, "Target", SUPPORTS, ["a 8x4 grid"])
    assert str(info.value) == ("cannot export to hf: Target cannot represent this model: model.layout=pre_ln (post-LN only); "
                               "model.final_norm=true (no final norm); model.layer_scale_init=0.1 (no layer scale); a 8x4 grid")
    assert isinstance(info.value, ExportError) and info.value.exit_code == 1
    check_exportable(Cfg, "Target", SUPPORTS[3:])  # typed sections and plain dicts alike: supported, no error


def test_strict_loads_name_the_problem_in_one_line():
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ExportError, match=r"do not fit Target: Error\(s\) in loading state_dict for Linear: Missing key"):
        load_exported(module, {"weight": torch.zeros(2, 2)}, "Target")
    with pytest.raises(ExportError, match=r"missing \['bias'\], unexpected \['extra'\]"):
        load_imported(module, {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}, "src")
    load_imported(module, {"weight": torch.ones(2, 2)}, "src", may_miss=("bias",))
    assert torch.equal(module.weight, torch.ones(2, 2))


def test_first_line_joins_a_heading_with_the_first_detail():
    assert first_line(RuntimeError("Error(s) in loading state_dict for X:\n\tMissing key(s): 'a'.\n\tmore")) == \
        "Error(s) in loading state_dict for X: Missing key(s): 'a'."
    assert first_line(ValueError("\n  bad value\nsecond line")) == "bad value"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(FileNotFoundError(2, "No such file or directory")) == "No such file or directory"
