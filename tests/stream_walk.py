"""What a packed stream's rows hold, walked position by position in the tests (not by the library)."""


def distinct_tokens_by_hand(stream, start_row: int, end_row: int) -> int:
    """The (document, offset) pairs that rows [start_row, end_row) hold, walked position by position through
    each epoch's document order (EOS left out)."""
    c, seen = stream.corpus, set()
    a, b = start_row * stream.row_len, end_row * stream.row_len
    for epoch in range(a // stream.epoch_tokens, max(b - 1, 0) // stream.epoch_tokens + 1):
        pos = epoch * stream.epoch_tokens
        for doc_id in stream.epoch_doc_order(epoch):
            n = len(c.doc(c.doc_ids.index(doc_id)))
            seen.update((doc_id, j) for j in range(n) if a <= pos + j < b)
            pos += n + 1
    return len(seen)
