"""Test helper: write a checkpoint file in fairseq's layout (``fairseq/trainer.py``
``Trainer.state_dict`` / ``checkpoint_utils.save_state``), for the importers' tests.

``form``: ``"dictconfig"`` pickles the config as an omegaconf ``DictConfig`` (checkpoints of
fairseq before ``OmegaConf.to_container`` was applied on save; needs omegaconf), ``"dict"`` as
the plain dict newer fairseq writes, ``"args"`` as the flat ``argparse.Namespace`` of pre-hydra
fairseq (``cfg`` is then None).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch


def save_fairseq_checkpoint(path: str | Path, model: Mapping[str, Any], model_cfg: Mapping[str, Any], *,
                            form: str = "dictconfig", task_cfg: Mapping[str, Any] | None = None,
                            optimization: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"args", "cfg", "model", "optimizer_history", "extra_state", "last_optimizer_state"}``."""
    cfg = {
        "_name": None,
        "common": {"fp16": True, "log_format": "json"},
        "model": dict(model_cfg),
        "task": dict(task_cfg or {"_name": "audio_pretraining"}),
        "optimization": dict(optimization or {"max_update": 400000, "lr": [0.0005]}),
        "criterion": {"_name": "model"},
    }
    state: dict[str, Any] = {"model": dict(model), "optimizer_history": [{"criterion_name": "ModelCriterion",
                                                                          "optimizer_name": "FairseqAdam", "num_updates": 12}],
                             "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3, "iterations_in_epoch": 7}},
                             "last_optimizer_state": {"state": {}, "param_groups": []}}
    if form == "args":
        state["args"] = argparse.Namespace(**{**dict(model_cfg), "arch": model_cfg.get("_name")})
        state["cfg"] = None
    elif form == "dict":
        state["args"], state["cfg"] = None, cfg
    elif form == "dictconfig":
        from omegaconf import OmegaConf

        state["args"], state["cfg"] = None, OmegaConf.create(cfg)
    else:
        raise ValueError(f"unknown form {form!r}")
    p = Path(path)
    torch.save(state, p)
    return p
