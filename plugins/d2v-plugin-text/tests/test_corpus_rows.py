"""Training rows packed from the whole corpus by the core loader: every batch has exactly
``batch_size`` rows of ``<s>`` + a fairseq ``TokenBlockDataset`` block, for list sources and
streamed shards."""

from __future__ import annotations

import io
import tarfile

import pytest

from d2v_core.data.loader import TrainLoader
from d2v_core.data.sources import resolve_source

from d2v_plugin_text.data import TextRecordDecoder


@pytest.mark.parametrize("mode", ["none", "complete_doc", "eos"])
def test_list_source_batches_have_the_row_count_and_rows_are_corpus_blocks(tmp_path, corpus_file, corpus_lines, small_tokenizer, mode):
    size = 32 if mode == "none" else 96  # the complete modes: rows longer than every document
    dec = TextRecordDecoder(small_tokenizer, block_size=size, break_mode=mode, drop_partial_row=mode == "none")
    loader = TrainLoader(resolve_source(str(corpus_file), ("txt",)), dec, batch_size=6, seed=0)
    batches = list(loader.iter_epoch(0))
    assert batches and all(b["tokens"].shape[0] == 6 for b in batches)
    docs = [small_tokenizer.encode(t) + [small_tokenizer.eos_id] for t in corpus_lines]
    stream = [t for d in docs for t in d]
    rows = [r[~m].tolist() for b in batches for r, m in zip(b["tokens"], b["padding_mask"], strict=True)]
    assert all(r[0] == small_tokenizer.bos_id and 1 < len(r) <= size for r in rows)
    if mode == "none":  # every row is a full 31-token window of the concatenated corpus at a multiple of 31
        starts = {tuple(stream[s : s + 31]) for s in range(0, len(stream) - 30, 31)}
        assert all(len(r) == 32 and tuple(r[1:]) in starts for r in rows)
        assert len(batches) == (len(stream) // 31) // 6
    else:  # whole documents, never a split one
        assert max(map(len, docs)) < size - 1
        whole = {tuple(d) for d in docs}
        for r in rows:
            body, parts = r[1:], []
            while body:
                end = body.index(small_tokenizer.eos_id) + 1
                parts.append(tuple(body[:end]))
                body = body[end:]
            assert all(p in whole for p in parts)
            assert mode != "eos" or len(parts) == 1


def test_streamed_shards_give_the_same_row_count(tmp_path, corpus_lines, small_tokenizer):
    for s in range(2):
        with tarfile.open(tmp_path / f"text-{s:06d}.tar", "w") as tf:
            for i, line in enumerate(corpus_lines[s::2]):
                data = line.encode()
                info = tarfile.TarInfo(f"doc{s}_{i:04d}.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    dec = TextRecordDecoder(small_tokenizer, block_size=32, break_mode="none", drop_partial_row=True)
    src = resolve_source(str(tmp_path / "text-{000000..000001}.tar"), ("txt",))
    batches = list(TrainLoader(src, dec, batch_size=6, num_workers=2, bucket_window=24).iter_epoch(0))
    assert batches and all(b["tokens"].shape == (6, 32) and not b["padding_mask"].any() for b in batches)
    assert all(bool((b["tokens"][:, 0] == small_tokenizer.bos_id).all()) for b in batches)


@pytest.mark.parametrize("preset, rows, mode", [("base", 256, "complete_doc"), ("v2-base", 64, "none"), ("tiny", 16, "complete_doc")])
def test_presets_give_fairseqs_rows_of_512(preset, rows, mode):
    # fairseq text base.yaml: max_tokens 8192 = 16 rows x 16 GPUs; v2: batch_size 4 x 16 GPUs
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_text import plugin

    with plugin_context(plugin) as loaded:
        cfg = resolve_config(loaded.registry, "text", preset)
    assert (cfg.data.batch_size, cfg.data.options.break_mode, cfg.data.max_tokens) == (rows, mode, None)
    assert cfg.data.options.block_size == (128 if preset == "tiny" else 512)


@pytest.mark.parametrize("preset, stops", [("base", False), ("tiny", False), ("base-span", False), ("v2-base", True), ("v2-tiny", True)])
def test_collapse_stop_only_where_fairseq_has_one(preset, stops):
    # data2vec_text.py (v1) computes no target_var; data2vec2.py raises below 0.1 / 0.01
    from d2v_core.config_resolve import resolve_config
    from d2v_core.plugin_loader import plugin_context

    from d2v_plugin_text import plugin

    with plugin_context(plugin) as loaded:
        rt = resolve_config(loaded.registry, "text", preset).runtime
    assert (rt.min_target_var, rt.min_pred_var) == ((0.1, 0.01) if stops else (0.0, 0.0))
