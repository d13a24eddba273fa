"""``d2v train-tokenizer``: train a sentencepiece model with d2v's special ids.

Light at import time (typer only): the CLI imports this module whenever it starts.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer


class ModelType(str, Enum):
    bpe = "bpe"
    unigram = "unigram"


def train_tokenizer(
    corpus: List[Path] = typer.Option(  # noqa: B008 - typer's option pattern
        ..., "--corpus", help="Text file(s): one document per line, or .jsonl with a 'text' field. Repeat the flag or list more files after it."
    ),
    more_files: Optional[List[Path]] = typer.Argument(None, help="More corpus files.", show_default=False),  # noqa: B008 - typer's option pattern
    vocab_size: int = typer.Option(..., "--vocab-size", min=8, help="Sentencepiece pieces (specials included); <mask> adds one id."),
    model_type: ModelType = typer.Option(ModelType.bpe, "--model-type", help="Sentencepiece algorithm."),  # noqa: B008 - typer's option pattern
    out: str = typer.Option(..., "--out", help="Output prefix: writes PREFIX.model."),
) -> None:
    """Train a sentencepiece tokenizer for the text modality (bos 0, pad 1, eos 2, unk 3, <mask> last)."""
    from d2v_plugin_text.tokenizer import Tokenizer
    from d2v_plugin_text.tokenizer import train_tokenizer as train

    files = list(corpus) + list(more_files or [])
    path = train(files, vocab_size, model_type.value, out)
    tok = Tokenizer.from_file(path)
    typer.echo(f"wrote {path} ({tok.sp_size} pieces + <mask> = {tok.vocab_size} ids); use it with --set encoder.tokenizer={path}")
