"""Packing, data-bound budgets and block mixtures: exact, seeded and random-access."""

import numpy as np
import pytest

from synpro_jax.data.budget import data_bound_budget
from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.mixture import MixedStream, largest_remainder
from synpro_jax.data.packing import PackedStream

EOS = 1


def toy_corpus(n_docs=12, seed=0, base=10):
    rng = np.random.default_rng(seed)
    docs = [np.full(rng.integers(1, 9), base + i, np.int32) for i in range(n_docs)]  # doc i is all token base+i
    return TokenizedCorpus.from_token_lists(docs, [f"d{i}" for i in range(n_docs)])


def stream_tokens(stream, start_pos, n):
    rows = stream.rows(np.arange(start_pos // stream.row_len, (start_pos + n) // stream.row_len + 2))
    flat = rows.tokens.ravel()
    off = start_pos - (start_pos // stream.row_len) * stream.row_len
    return flat[off : off + n]


def test_each_document_once_per_epoch_reshuffled():
    corpus = toy_corpus()
    stream = PackedStream(corpus, row_len=7, eos_id=EOS, seed=3)
    s = stream.epoch_tokens
    assert s == corpus.num_tokens + corpus.num_docs
    orders = []
    for epoch in range(3):
        toks = stream_tokens(stream, epoch * s, s)
        expected = np.concatenate(
            [np.append(corpus.doc(i), EOS) for i in [int(d[1:]) for d in stream.epoch_doc_order(epoch)]]
        )
        np.testing.assert_array_equal(toks, expected)
        orders.append(stream.epoch_doc_order(epoch))
        assert sorted(orders[-1]) == sorted(corpus.doc_ids)  # every document exactly once
    assert orders[0] != orders[1] != orders[2]  # reshuffled each epoch
    again = PackedStream(corpus, row_len=7, eos_id=EOS, seed=3)
    np.testing.assert_array_equal(again.rows([5, 40]).tokens, stream.rows([5, 40]).tokens)


def test_packing_boundaries_segments_positions_and_mask():
    corpus = TokenizedCorpus.from_token_lists([[5, 6, 7], [8, 9], [11, 12, 13, 14]], ["a", "b", "c"])
    stream = PackedStream(corpus, row_len=6, eos_id=EOS, shuffle=False)
    rows = stream.rows([0, 1])
    np.testing.assert_array_equal(rows.tokens, [[5, 6, 7, EOS, 8, 9], [EOS, 11, 12, 13, 14, EOS]])
    np.testing.assert_array_equal(rows.segment_ids, [[1, 1, 1, 1, 2, 2], [1, 2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 3, 0, 1], [0, 0, 1, 2, 3, 4]])
    batch = rows.training_batch()
    np.testing.assert_array_equal(batch["inputs"][0], [5, 6, 7, EOS, 8])
    np.testing.assert_array_equal(batch["targets"][0], [6, 7, EOS, 8, 9])
    # EOS -> next document's first token is not trained on; everything else is, including predicting EOS
    np.testing.assert_array_equal(batch["loss_mask"][0], [1, 1, 1, 0, 1])
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(rows.epochs, [0, 0])
    np.testing.assert_array_equal(stream.rows([2]).epochs, [1])  # 12 tokens per epoch


def test_concatenated_batch_is_the_plain_row():
    """OLMo's layout: the row is the input, one segment, positions run on across documents, every next token is
    a target but the last position's (it lies in the next row)."""
    corpus = TokenizedCorpus.from_token_lists([[5, 6, 7], [8, 9], [11, 12, 13, 14]], ["a", "b", "c"])
    rows = PackedStream(corpus, row_len=6, eos_id=EOS, shuffle=False).rows([0, 1])
    batch = rows.concatenated_batch()
    np.testing.assert_array_equal(batch["inputs"], [[5, 6, 7, EOS, 8, 9], [EOS, 11, 12, 13, 14, EOS]])
    np.testing.assert_array_equal(batch["targets"][:, :-1], [[6, 7, EOS, 8, 9], [11, 12, 13, 14, EOS]])
    np.testing.assert_array_equal(batch["loss_mask"], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(batch["positions"], [list(range(6))] * 2)
    np.testing.assert_array_equal(batch["segment_ids"], np.ones((2, 6)))
    assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "loss_mask"}


def test_data_bound_budget_is_exact_and_seeded():
    corpus = toy_corpus(50, seed=1)
    budget = corpus.num_tokens // 3
    picked = data_bound_budget(corpus, budget, seed=7)
    assert picked.num_tokens == budget
    assert len(set(picked.doc_ids)) == picked.num_docs  # no document twice
    again = data_bound_budget(corpus, budget, seed=7)
    assert again.doc_ids == picked.doc_ids and np.array_equal(again.tokens, picked.tokens)
    assert data_bound_budget(corpus, budget, seed=8).doc_ids != picked.doc_ids
    for i, doc_id in enumerate(picked.doc_ids[:-1]):  # whole documents, except the last one is cut to fit
        np.testing.assert_array_equal(picked.doc(i), corpus.doc(corpus.doc_ids.index(doc_id)))
    with pytest.raises(ValueError, match="exceeds the corpus"):
        data_bound_budget(corpus, corpus.num_tokens + 1)


def test_data_bound_epochs_repeat_the_budget():
    corpus = data_bound_budget(toy_corpus(40, seed=2), 100, seed=0)
    stream = PackedStream(corpus, row_len=16, eos_id=EOS, seed=0)
    epochs = 4
    n_rows = int(np.ceil(epochs * stream.epoch_tokens / 16))
    tokens = stream.rows(np.arange(n_rows)).tokens.ravel()[: epochs * stream.epoch_tokens]
    non_eos = tokens[tokens != EOS]
    assert len(non_eos) == epochs * 100  # E epochs of exactly the unique budget
    assert np.array_equal(np.sort(non_eos), np.sort(np.tile(corpus.tokens, epochs)))


def test_largest_remainder():
    assert largest_remainder([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
    assert largest_remainder([1, 1, 1], 10).sum() == 10
    with pytest.raises(ValueError, match="positive sum"):
        largest_remainder([0, 0], 4)


def test_mixture_hits_rates_and_walks_each_stream_in_order():
    a = PackedStream(toy_corpus(10, seed=0, base=10), row_len=5, eos_id=EOS, seed=0)
    b = PackedStream(toy_corpus(10, seed=1, base=100), row_len=5, eos_id=EOS, seed=0)
    mix = MixedStream([a, b], [0.7, 0.3], names=["organic", "rephrase"], block_rows=64, seed=0)
    located = [mix.locate(g) for g in range(64 * 5)]
    which = np.array([s for s, _ in located])
    for block in range(5):
        assert (which[block * 64 : (block + 1) * 64] == 0).sum() == mix.counts[0]
    assert abs((which == 0).mean() - 0.7) < 1 / 64
    for s in (0, 1):  # each stream's rows are consumed 0, 1, 2, ... with no gap or repeat
        local = sorted(r for (st, r) in located if st == s)
        assert local == list(range(len(local)))
    rows, src = mix.rows([0, 1, 2, 3])
    for j, s in enumerate(src):
        expect = (a if s == 0 else b).rows([mix.locate(j)[1]]).tokens[0]
        np.testing.assert_array_equal(rows.tokens[j], expect)


def test_many_streams_keep_their_own_epoch_cache():
    """Six streams read in turn: each epoch order is built once per stream (a shared LRU of 4 thrashed)."""
    streams = [PackedStream(toy_corpus(30, seed=i, base=10 + 40 * i), row_len=5, eos_id=EOS, seed=i) for i in range(6)]
    mix = MixedStream(streams, [1] * 6, block_rows=60, seed=0)
    for start in range(0, 600, 12):
        mix.rows(range(start, start + 12))
    for s in streams:
        epochs_touched = int(np.ceil(100 * s.row_len / s.epoch_tokens)) + 1
        assert s.epochs_built <= epochs_touched, (s.epochs_built, epochs_touched)
