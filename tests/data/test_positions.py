"""A stage's data position: a stage continuing another reads each stream from the rows that one read (a new
stream from row 0), and counts what it read (rows, and distinct document tokens, each counted once)."""

import numpy as np
import pytest
from stream_walk import distinct_tokens_by_hand

from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.mixture import MixedStream, stream_identity, unique_tokens
from synpro_jax.data.packing import PackedStream
from synpro_jax.data.pipeline import continue_streams

EOS = 1
L = 7


def corpus(n_docs, seed, prefix="d"):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(2, 50, rng.integers(1, 20)) for _ in range(n_docs)]
    return TokenizedCorpus.from_token_lists(docs, [f"{prefix}{i}" for i in range(n_docs)])


def test_unique_tokens_count_each_document_token_once_over_epochs():
    stream = PackedStream(corpus(13, 0), L, EOS, seed=3)
    spans = [(a, b) for a in range(0, 60, 4) for b in range(a, a + 90, 7)]
    assert {unique_tokens(stream, a, b) for a, b in spans} > {0, stream.corpus.num_tokens}  # partial spans too
    for a, b in spans:
        assert unique_tokens(stream, a, b) == distinct_tokens_by_hand(stream, a, b), (a, b)


def report_by_hand(mix: MixedStream, n: int) -> dict[str, tuple[int, int]]:
    """(start row, rows) of each stream among global rows [0, n), from where each row is."""
    located = [mix.locate(g) for g in range(n)]
    out = {}
    for s, name in enumerate(mix.names):
        mine = [r for st, r in located if st == s]
        assert mine == list(range(int(mix.starts[s]), int(mix.starts[s]) + len(mine)))  # no gap, no repeat
        out[name] = (int(mix.starts[s]), len(mine))
    return out


def test_a_continuing_stage_reads_each_stream_on_from_the_previous_stages_rows():
    organic, syn1, syn2 = (
        PackedStream(corpus(n, seed, p), L, EOS, seed=0) for n, seed, p in ((9, 1, "o"), (20, 2, "a"), (20, 3, "b"))
    )
    stage1 = MixedStream([organic, syn1], [3, 1], names=["organic", "rephrase_r1"], block_rows=16, seed=0)
    n1 = 16 * 5 + 9  # a partial block at the end
    read = stage1.report(n1)
    assert {k: (r["start_row"], r["rows"]) for k, r in read.items()} == report_by_hand(stage1, n1)
    assert sum(r["rows"] for r in read.values()) == n1
    org = read["organic"]
    assert org["epochs"][1] >= 2 and org["unique_tokens"] == organic.corpus.num_tokens  # several epochs read
    assert org["position_tokens"] == org["end_row"] * L and org["stream"] == stream_identity(organic)

    # The next stage: a new mixture (other rates, a new stream), and the organic stream given as a bare position.
    position = {k: {"tokens": r["position_tokens"], "stream": r["stream"]} for k, r in read.items()}
    position["organic"] = read["organic"]["position_tokens"]
    stage2 = MixedStream(
        [organic, syn1, syn2], [2, 1, 1], names=["organic", "rephrase_r1", "rephrase_r2"], block_rows=16, seed=0
    )
    starts, how = stage2.continuing(position)
    assert starts.tolist() == [read["organic"]["end_row"], read["rephrase_r1"]["end_row"], 0]
    assert how == {"organic": "continued", "rephrase_r1": "continued", "rephrase_r2": "new"}
    continued = stage2.starting_at(starts)
    got = continued.report(40)
    assert {k: (r["start_row"], r["rows"]) for k, r in got.items()} == report_by_hand(continued, 40)
    rows, which = continued.rows(range(40))
    for s, stream in enumerate((organic, syn1, syn2)):  # stream s's rows go on from where stage 1 left it
        at = np.flatnonzero(which == s)
        want = stream.rows(int(starts[s]) + np.arange(len(at)))
        np.testing.assert_array_equal(rows.tokens[at], want.tokens)
        np.testing.assert_array_equal(rows.epochs[at], want.epochs)  # the epoch counter goes on
    assert got["organic"]["epochs"][0] == read["organic"]["epochs"][1]
    first, _ = stage2.rows(range(40))  # what today's stage 2 would read: every stream from row 0 again
    assert not np.array_equal(first.tokens[which == 0], rows.tokens[which == 0])

    # Other documents under the same name (an oracle's larger organic set) are another stream: row 0.
    bigger = MixedStream([PackedStream(corpus(12, 1, "o"), L, EOS, seed=0)], [1], names=["organic"])
    starts, how = bigger.continuing({"organic": {"tokens": org["position_tokens"], "stream": org["stream"]}})
    assert starts.tolist() == [0] and how == {"organic": "changed"}
    with pytest.raises(ValueError, match="non-negative token position"):
        stage2.continuing({"organic": -3})


def test_continue_streams_takes_a_single_packed_stream_and_rounds_a_position_up_to_a_row():
    organic = PackedStream(corpus(9, 1), L, EOS, seed=0)
    stream, counting, how = continue_streams(organic)
    assert stream is organic and how == {"train": "new"} and counting.report(10)["train"]["rows"] == 10
    stream, counting, how = continue_streams(organic, {"train": 5 * L + 1})  # mid-row: the next whole row
    assert how == {"train": "continued"} and counting.starts.tolist() == [6]
    np.testing.assert_array_equal(stream.rows([0, 1])[0].tokens, organic.rows([6, 7]).tokens)
    assert counting.streams[0] is not organic  # counts on its own packed stream (its own epoch cache)
    with pytest.raises(ValueError, match="cannot continue"):
        continue_streams(object(), {"train": 3})
