"""A masked-language-model control for the text probe (issue 20): does ANY self-supervised
objective at the old ``tiny``'s size, on the demo corpus, beat random init on the shared probe?

Run:  .venv/bin/python benchmarks/text_mlm_baseline.py --steps 750 --checkpoints 250,500,750
      -> benchmarks/results/text_mlm_baseline.json

A transformers ``RobertaForMaskedLM`` with the sizes ``tiny`` had until issue 20's sixth round
(128 wide, 4 layers, 4 heads, FFN 512, post-LN, dropout 0.1; ``tiny`` is now 256 x 2), the demo
tokenizer, BERT masking (15% of tokens, 80/10/10) and cross-entropy on the masked tokens: the
objective data2vec text replaces with its regression.
Rows of 128 tokens are cut from the concatenated corpus (``<s>`` doc ``</s>`` ...), 16 per batch,
AdamW lr 1e-3 (betas 0.9/0.98, wd 0.01), 100 warm-up steps then cosine to 0, as ``tiny``. The
probe is the one of ``text_steps.py`` (mean-pooled final layer of ``<s>`` + the record's tokens,
truncated to 128; logistic regression; the same random quarter of ``text/labelled.jsonl`` held
out, seed 0), at random init and at each checkpoint. Not data2vec: a control that separates
"data2vec text learns little topic" from "nothing learns topic at this size on this corpus".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, SHARED, machine_info  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def corpus_rows(tok, path: Path, block: int) -> list[list[int]]:
    stream: list[int] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            stream += [tok.bos_id, *tok.encode(line), tok.eos_id]
    return [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]


def bert_mask(tokens, tok, generator, prob: float = 0.15):
    """BERT's masking: ``prob`` of the non-special tokens are predicted; of those 80% become
    ``<mask>``, 10% a random piece, 10% stay."""
    import torch

    special = torch.zeros_like(tokens, dtype=torch.bool)
    for s in tok.special_ids:
        special |= tokens.eq(s)
    chosen = (torch.rand(tokens.shape, generator=generator) < prob) & ~special
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    u = torch.rand(tokens.shape, generator=generator)
    rand_ids = torch.randint(4, tok.sp_size, tokens.shape, generator=generator)
    out = torch.where(chosen & (u < 0.8), torch.full_like(tokens, tok.mask_id), tokens)
    out = torch.where(chosen & (u >= 0.8) & (u < 0.9), rand_ids, out)
    return out, labels


def probe(model, tok, records: list[dict]) -> float:
    import numpy as np
    import torch

    from d2v_core.inference.embed import Embeddings
    from d2v_core.inference.probe import fit_and_score, split_by_group

    model.eval()
    emb = Embeddings()
    with torch.no_grad():
        for i in range(0, len(records), 32):
            rows = [[tok.bos_id, *tok.encode(r["text"])][:128] for r in records[i : i + 32]]
            ids = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
            valid = ids.ne(tok.pad_id)
            h = model.roberta(input_ids=ids, attention_mask=valid.long()).last_hidden_state
            pooled = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
            emb.vectors += list(pooled.numpy().astype(np.float32))
            emb.meta += [{"label": r["label"], "doc": i + j} for j, r in enumerate(records[i : i + 32])]
            emb.keys += [str(i + j) for j in range(len(rows))]
    model.train()
    return fit_and_score(split_by_group(emb, "label", "doc", 0.25, 0), 0)["accuracy"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--checkpoints", default="250,500,750", help="steps at which to probe (comma-separated)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", type=Path, default=SHARED)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_mlm_baseline.json")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from d2v_plugin_text.tokenizer import load_tokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = load_tokenizer(None)
    rows = corpus_rows(tok, a.root / "text" / "corpus.txt", 128)
    records = [json.loads(x) for x in (a.root / "text" / "labelled.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    cfg = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=130, pad_token_id=tok.pad_id,
                        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, type_vocab_size=1)
    model = RobertaForMaskedLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    warm = 100

    def lr_at(step: int) -> float:
        if step < warm:
            return a.lr * step / warm
        return a.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm)))

    checkpoints = sorted(int(s) for s in a.checkpoints.split(","))
    result: dict = {"command": " ".join(["benchmarks/text_mlm_baseline.py", *(argv or sys.argv[1:])]),
                    "corpus_rows": len(rows), "vocab_size": tok.vocab_size, "load_average_start": os.getloadavg()}
    result["random_init"] = probe(model, tok, records)
    print(f"random init: {result['random_init']:.4f}", flush=True)
    gen, order, t0, c0 = torch.Generator().manual_seed(0), list(range(len(rows))), time.time(), cpu_seconds()
    random.Random(0).shuffle(order)
    result["checkpoints"] = []
    pos, probe_cpu = 0, 0.0
    for step in range(1, a.steps + 1):
        if pos + 16 > len(order):
            random.Random(step).shuffle(order)
            pos = 0
        batch = torch.tensor([rows[i] for i in order[pos : pos + 16]])
        pos += 16
        inputs, labels = bert_mask(batch, tok, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step in checkpoints:
            train_cpu = cpu_seconds() - c0 - probe_cpu  # probing is not training
            c1 = cpu_seconds()
            acc = probe(model, tok, records)
            probe_cpu += cpu_seconds() - c1
            mlm = loss.item()  # host sync: log steps only
            result["checkpoints"].append({"step": step, "mlm_loss": mlm, "probe": acc, "train_cpu_seconds": train_cpu})
            print(f"step {step}: mlm loss {mlm:.3f}, probe {acc:.4f}, train CPU {train_cpu:.0f} s", flush=True)
    result["wall_seconds"], result["machine"] = time.time() - t0, machine_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
