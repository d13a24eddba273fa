"""The safe reader of fairseq checkpoints and the declarative key maps.

A fairseq checkpoint is a ``torch.save`` pickle (``fairseq/checkpoint_utils.py``
``load_checkpoint_to_cpu`` L306-L365 reads it with ``weights_only=False``); d2v must read the
tensors and the omegaconf / argparse config without running anything from the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess

import numpy as np
import pytest
import torch

from d2v_core.errors import CheckpointError
from d2v_core.interop.fairseq_fixtures import save_fairseq_checkpoint
from d2v_core.interop.key_map import Fuse, Rename, apply_key_map, check_complete, source_names
from d2v_core.interop.layer_spec import parse_layer_spec
from d2v_core.interop.safe_pickle import load_untrusted, read_fairseq_checkpoint


class WritesAFile:
    """Unpickling this calls ``open(path, "w")``: it creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


class RunsAShell:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload, name", [(WritesAFile, "open"), (RunsAShell, "system")])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, payload, name):
    planted = tmp_path / "planted"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"model": {"_name": "data2vec_audio"}},
                "extra_state": payload(str(planted))}, ckpt)
    assert pickle_would_run(ckpt, planted)  # the payload is real: an unrestricted load runs it
    planted.unlink()
    with pytest.raises(CheckpointError, match=rf"refusing to read .*evil\.pt: its pickle names \S*{name}") as err:
        read_fairseq_checkpoint(ckpt)
    assert "\n" not in str(err.value)
    assert not planted.exists()


def pickle_would_run(ckpt, planted) -> bool:  # noqa: ANN001
    torch.load(ckpt, weights_only=False)
    return planted.exists()


def test_cli_refuses_a_planted_checkpoint_and_creates_nothing(tmp_path):
    planted, out = tmp_path / "planted", tmp_path / "run"
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": None, "cfg": WritesAFile(str(planted))}, ckpt)
    d2v = os.path.join(os.path.dirname(os.sys.executable), "d2v")
    proc = subprocess.run([d2v, "import", "--from-fairseq", str(ckpt), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to read") and "open" in lines[0]
    assert not planted.exists() and not out.exists()


def test_dictconfig_is_rebuilt_as_plain_data(tmp_path):
    pytest.importorskip("omegaconf")
    cfg = {"_name": "data2vec_audio", "encoder_layers": 2, "dropout": 0.1, "layer_norm_first": False,
           "loss_scale": None, "conv_feature_layers": "[(8, 10, 5)]", "nested": {"a": [1, 2, {"b": "c"}]},
           "ema_anneal_end_step": "${optimization.max_update}", "unset": "???"}
    p = save_fairseq_checkpoint(tmp_path / "c.pt", {"encoder.w": torch.arange(3.0)}, cfg, form="dictconfig")
    ck = read_fairseq_checkpoint(p)
    assert ck.model_name == "data2vec_audio"
    assert ck.model_cfg == {**cfg, "ema_anneal_end_step": 400000}
    assert type(ck.model_cfg["nested"]) is dict and type(ck.model_cfg["nested"]["a"]) is list
    assert torch.equal(ck.model["encoder.w"], torch.arange(3.0))
    assert ck.task_cfg == {"_name": "audio_pretraining"}


def test_args_namespace_is_rebuilt_as_plain_data(tmp_path):
    p = tmp_path / "old.pt"
    torch.save({"args": argparse.Namespace(arch="data2vec_audio", encoder_layers=3, conv_bias=False), "cfg": None,
                "model": {"w": torch.zeros(1)}}, p)
    ck = read_fairseq_checkpoint(p)
    assert ck.model_name == "data2vec_audio" and ck.model_cfg == {"arch": "data2vec_audio", "encoder_layers": 3, "conv_bias": False}


def test_ema_dict_and_numpy_extra_state(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"cfg": {"model": {"_name": "x"}}, "model": {"a": torch.ones(1), "encoder._ema": {"layers.0.w": torch.zeros(2)}},
                "extra_state": {"best": np.float64(1.5), "dtype": np.dtype("float32")}}, p)
    ck = read_fairseq_checkpoint(p)
    assert set(ck.model) == {"a", "encoder._ema.layers.0.w"}
    raw = load_untrusted(p)
    assert type(raw["extra_state"]["best"]).__name__ == "Opaque"  # kept as inert data, never rebuilt


@pytest.mark.parametrize("content, words", [
    (b"not a checkpoint", "cannot read"),
    (None, "is not a fairseq checkpoint"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, content, words):
    p = tmp_path / "c.pt"
    if content is None:
        torch.save({"weights": torch.ones(1)}, p)
    else:
        p.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as err:
        read_fairseq_checkpoint(p)
    assert "\n" not in str(err.value)


def test_layer_spec_is_read_without_eval():
    assert parse_layer_spec("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    with pytest.raises(CheckpointError, match="only lists of tuples"):
        parse_layer_spec("__import__('os').getcwd()")


RULES = [
    Fuse("enc.{i}.{part}_proj.{kind}", "t.{i}.qkv.{kind}"),
    Rename("enc.{i}.fc.{kind}", "t.{i}.fc.{kind}", transform=lambda t: 2 * t),
]


def test_key_map_fuses_renames_and_lists_unused():
    q, k, v = torch.full((2, 3), 1.0), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    src = {"enc.0.k_proj.weight": k, "enc.0.q_proj.weight": q, "enc.0.v_proj.weight": v,
           "enc.0.fc.bias": torch.ones(2), "enc.0.bias_k": torch.ones(1), "other": torch.ones(1)}
    mapped = apply_key_map(src, RULES)
    assert torch.equal(mapped.tensors["t.0.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(mapped.tensors["t.0.fc.bias"], 2 * torch.ones(2))
    assert mapped.unused == ["enc.0.bias_k", "other"]
    assert source_names("t.3.qkv.bias", RULES) == ["enc.3.q_proj.bias", "enc.3.k_proj.bias", "enc.3.v_proj.bias"]


def test_missing_and_misshapen_keys_are_named_by_their_source():
    src = {"enc.0.q_proj.weight": torch.ones(2, 3), "enc.0.v_proj.weight": torch.ones(2, 3)}
    expected = {"t.0.qkv.weight": torch.ones(6, 3)}
    with pytest.raises(CheckpointError, match=r"missing key 'enc\.0\.k_proj\.weight'"):
        check_complete(apply_key_map(src, RULES).tensors, expected, RULES, "c.pt", source=src)
    with pytest.raises(CheckpointError, match=r"enc\.0\.fc\.bias has shape \(2,\), d2v's 't\.0\.fc\.bias' needs \(4,\)"):
        check_complete({"t.0.fc.bias": torch.ones(2)}, {"t.0.fc.bias": torch.ones(4)}, RULES, "c.pt")


def test_reading_a_dictconfig_checkpoint_does_not_need_omegaconf(tmp_path):
    pytest.importorskip("omegaconf")
    p = save_fairseq_checkpoint(tmp_path / "c.pt", {"w": torch.ones(1)}, {"_name": "data2vec_audio", "encoder_layers": 2})
    code = ("import sys; sys.modules['omegaconf'] = None\n"  # any import of omegaconf now fails
            "from d2v_core.interop.safe_pickle import read_fairseq_checkpoint\n"
            f"ck = read_fairseq_checkpoint({str(p)!r})\n"
            "assert ck.model_cfg == {'_name': 'data2vec_audio', 'encoder_layers': 2}, ck.model_cfg\n"
            "assert 'omegaconf' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n")
    proc = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_misusing_an_allowed_name_is_a_one_line_error(tmp_path):
    """A pickle that calls an allow-listed type marker (``builtins.dict``) instead of naming it:
    the marker is inert, so the load fails cleanly."""
    class CallsDict:
        def __reduce__(self):  # noqa: ANN204
            return (dict, ((("a", 1),),))

    p = tmp_path / "odd.pt"
    torch.save({"model": {"w": torch.ones(1)}, "cfg": CallsDict()}, p)
    assert b"builtins" in p.read_bytes() or b"__builtin__" in p.read_bytes()  # the pickle does name dict
    with pytest.raises(CheckpointError, match="cannot read .*odd.pt as a torch checkpoint") as err:
        read_fairseq_checkpoint(p)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args", [[], ["--from-hf", "a", "--from-fairseq", "b"]])
def test_import_needs_exactly_one_source(tmp_path, cli, args):
    code, _, err = cli(["import", *args, "--out", str(tmp_path / "run")])
    assert code == 2
    assert "pass one of --from-hf DIR or --from-fairseq CKPT" in err
    assert not (tmp_path / "run").exists()
