import pytest

from d2v_plugin_text.packing import pack_documents, pack_rows

E = 2  # </s>
# documents as ids ending in </s>
D1 = [10, 11, E]          # 3
D2 = [20, E]              # 2
D3 = [30, 31, 32, 33, E]  # 5
LONG = [40, 41, 42, 43, 44, 45, 46, 47, 48, E]  # 10


def test_complete_doc_packs_whole_documents():
    # block 6 -> 5 ids after <s>: D1+D2 fit (5), D3 starts a new row (5)
    assert pack_documents([D1, D2, D3], 6, "complete_doc") == [
        [0, 10, 11, E, 20, E],
        [0, 30, 31, 32, 33, E],
    ]


def test_complete_doc_does_not_split_a_document_that_fits_a_row():
    # block 7 -> 6 ids: D1 (3) + D2 (2) = 5; D3 (5) would overflow -> new row, not split
    assert pack_documents([D1, D2, D3], 7, "complete_doc") == [
        [0, 10, 11, E, 20, E],
        [0, 30, 31, 32, 33, E],
    ]


def test_complete_doc_splits_long_documents_and_continues_after_them():
    # block 5 -> 4 ids: D2 alone (D2+LONG overflows), LONG in 4+4+2, D1 (3) does not fit 2+3 > 4
    assert pack_documents([D2, LONG, D1, D2], 5, "complete_doc") == [
        [0, 20, E],
        [0, 40, 41, 42, 43],
        [0, 44, 45, 46, 47],
        [0, 48, E],
        [0, 10, 11, E],
        [0, 20, E],
    ]
    # the tail of a split document is joined by a following document that fits
    assert pack_documents([LONG, D2], 5, "complete_doc") == [
        [0, 40, 41, 42, 43],
        [0, 44, 45, 46, 47],
        [0, 48, E, 20, E],
    ]


def test_none_cuts_a_continuous_stream():
    assert pack_documents([D1, D2, D3], 5, "none") == [
        [0, 10, 11, E, 20],
        [0, E, 30, 31, 32],
        [0, 33, E],
    ]
    assert pack_documents([LONG], 6, "none") == [[0, 40, 41, 42, 43, 44], [0, 45, 46, 47, 48, E]]


def test_rows_never_exceed_block_size_and_keep_every_token():
    docs = [[5] * n + [E] for n in (1, 7, 3, 30, 2, 2, 9)]
    for mode in ("complete_doc", "none"):
        rows = pack_documents(docs, 8, mode)
        assert all(len(r) <= 8 and r[0] == 0 for r in rows)
        assert [t for r in rows for t in r[1:]] == [t for d in docs for t in d]


def test_sources_and_empty_documents():
    rows = pack_rows([D1, [], D2, LONG], 6, "complete_doc")
    assert [r.sources for r in rows] == [[0, 2], [3], [3]]
    assert pack_documents([], 6) == []
    with pytest.raises(ValueError):
        pack_documents([D1], 1)
    with pytest.raises(ValueError):
        pack_documents([D1], 6, "eos")
