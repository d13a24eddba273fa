"""Records: one ``.npy`` array (T, F) each; crop to ``max_len``, pad in a batch."""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch

from d2v_core import BuildContext, RecordDecoder, SkipRecord, pad_sequences

from d2v_plugin_example.options import VectorDataOptions, VectorEncoderOptions


class VectorRecordDecoder(RecordDecoder):
    extensions = ("npy",)

    def __init__(self, options: VectorDataOptions, input_dim: int) -> None:
        self.options, self.input_dim = options, input_dim

    def decode(self, record: Mapping[str, Any], generator: torch.Generator | None = None) -> dict:
        try:
            arr = np.load(io.BytesIO(record["npy"]), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable payload is one skip reason
            raise SkipRecord("unreadable", str(exc)) from None
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise SkipRecord("bad_shape", f"expected (T, {self.input_dim}), got {arr.shape}")
        x = torch.from_numpy(arr.astype(np.float32))
        if not torch.isfinite(x).all():
            raise SkipRecord("non_finite")
        if len(x) < self.options.min_len:
            raise SkipRecord("too_short")
        if len(x) > self.options.max_len:
            start = int(torch.randint(len(x) - self.options.max_len + 1, (1,), generator=generator))
            x = x[start : start + self.options.max_len]
        return {"vectors": x, "key": record.get("__key__")}

    def collate(self, samples: list[dict]) -> dict:
        vectors, padding_mask = pad_sequences([s["vectors"] for s in samples])
        return {"vectors": vectors, "padding_mask": padding_mask if padding_mask.any() else None,
                "keys": [s["key"] for s in samples]}


    # data.max_tokens: budget batches count vectors; min_len/max_len bound them as decode does
    def sample_length(self, sample: dict) -> int:
        return int(sample["vectors"].shape[0])

    def length_bounds(self) -> tuple[int, int | None]:
        return self.options.min_len, self.options.max_len


def build_record_decoder(options: VectorDataOptions, encoder: VectorEncoderOptions, ctx: BuildContext) -> VectorRecordDecoder:
    """The modality's record decoder factory: vectors must have the encoder's ``input_dim``."""
    return VectorRecordDecoder(options, encoder.input_dim)
