"""d2v's sentencepiece tokenizer as a Hugging Face fast tokenizer (``tokenizer.json``).

The ``tokenizers`` pipeline reproduces sentencepiece: the model's precompiled normalisation
(``nmt_nfkc`` by default), whitespace clean-up (``remove_extra_whitespaces``), ``▁`` for spaces
with a leading ``▁`` (``add_dummy_prefix``), then the same BPE merges (every split of a piece
ranked by the piece's score: sentencepiece merges the adjacent pair whose concatenation scores
highest) or the same unigram pieces and scores. ``<s> ... </s>`` is added around each text, as
d2v's record decoder does, and ``<mask>`` is the id after the last piece.

Special-token strings in the text (``"<mask>"``, ``"<s>"``) are *not* read as special tokens
(``split_special_tokens``): d2v's tokenizer spells them out as characters too, and no text can
encode to ``<mask>``.

Exactness: BPE models (``d2v train-tokenizer``'s default) give the same ids as sentencepiece on
every text tested, byte fallback included. Unigram models differ where two segmentations have
exactly the same score (e.g. ``"ll" + "l"`` vs ``"l" + "ll"``: the two Viterbi implementations
break ties differently) and on literal control strings such as ``"<s>"``, which the
``tokenizers`` unigram model can match as a piece.
"""

from __future__ import annotations

import json
from pathlib import Path

from d2v_core import ExportError

from d2v_plugin_text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

#: The sentencepiece model's name inside an exported directory (read back by ``d2v import``).
SPM_FILE = "sentencepiece.model"

# sentencepiece ModelProto piece types and model types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_UNIGRAM, _BPE = 1, 2


def _model_proto(model_bytes: bytes):  # noqa: ANN202 - protobuf message
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise ExportError(f"reading the sentencepiece model needs protobuf ({exc}); pip install protobuf") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def _bpe_merges(pieces: list) -> list[tuple[str, str]]:
    """Every split ``(l, r)`` of every normal piece into two normal pieces, best piece first.

    sentencepiece ranks a pair by the score of the merged piece, so all splits of one piece share
    a rank there; here they are ordered by the length of ``l`` (only two overlapping splits of
    one piece, which no tested text produced, could tell the orders apart)."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, index) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def sentencepiece_to_tokenizers(tokenizer: Tokenizer):  # noqa: ANN201 - tokenizers.Tokenizer
    """A ``tokenizers.Tokenizer`` giving d2v's ids: ``<s>`` + sentencepiece ids + ``</s>``."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Unigram

    proto = _model_proto(tokenizer.model_bytes)
    pieces = list(proto.pieces)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = BPE(vocab=vocab, merges=_bpe_merges(pieces), unk_token=pieces[UNK_ID].piece, fuse_unk=True,
                    byte_fallback=spec.byte_fallback)
    elif spec.model_type == _UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in pieces], unk_id=UNK_ID, byte_fallback=spec.byte_fallback)
    else:
        raise ExportError(f"sentencepiece model type {spec.model_type} is not supported (only bpe and unigram)")
    hf = HFTokenizer(model)
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:  # sentencepiece: strip both ends, collapse runs of spaces
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    hf.normalizer = normalizers.Sequence(steps)
    prepend = "always" if norm.add_dummy_prefix else "never"
    # split=False: one symbol sequence per text, as sentencepiece merges it
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), metaspace]) if spec.byte_fallback else metaspace
    user = [p.piece for p in pieces if p.type == _USER_DEFINED]
    if user:  # sentencepiece matches user-defined symbols before segmenting
        hf.add_tokens([AddedToken(p, normalized=False, special=False) for p in user])
    special = [pieces[i].piece for i in (BOS_ID, PAD_ID, EOS_ID, UNK_ID)] + ["<mask>"]
    hf.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in special])
    if hf.token_to_id("<mask>") != tokenizer.mask_id:
        raise ExportError(f"tokenizer: <mask> got id {hf.token_to_id('<mask>')}, d2v uses {tokenizer.mask_id}")
    bos, eos = pieces[BOS_ID].piece, pieces[EOS_ID].piece
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=[(bos, BOS_ID), (eos, EOS_ID)]
    )
    return hf


def write_hf_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, max_length: int) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (and what the installed transformers
    adds) and the sentencepiece model itself (:data:`SPM_FILE`) into ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    pieces = _model_proto(tokenizer.model_bytes).pieces
    names = {k: pieces[i].piece for k, i in (("bos", BOS_ID), ("pad", PAD_ID), ("eos", EOS_ID), ("unk", UNK_ID))}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=sentencepiece_to_tokenizers(tokenizer),
        bos_token=names["bos"], eos_token=names["eos"], pad_token=names["pad"], unk_token=names["unk"],
        cls_token=names["bos"], sep_token=names["eos"], mask_token="<mask>",
        model_max_length=max_length, padding_side="right", split_special_tokens=True,
        clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"],
    )
    written = [Path(p) for p in fast.save_pretrained(str(out))]
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    # transformers 5 writes its own class name ("TokenizersBackend"); 4.x knows only this alias
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / SPM_FILE).write_bytes(tokenizer.model_bytes)
    return written + [out / SPM_FILE]
