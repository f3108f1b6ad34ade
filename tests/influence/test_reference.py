"""The reference task: FLAN CoT TSV and prompt/completion JSONL readers, answer-only loss masks, seqio task."""

import json

from flan_by_hand import examples_end_to_end
import numpy as np
import pytest

from synpro_jax.influence.reference import ReferenceSource, encode_examples, format_prompt


def test_reads_flan_tsv_and_jsonl_and_reports_bad_rows(tmp_path):
    tsv = tmp_path / "toy_train.tsv"
    tsv.write_text(
        "What is 2+2?\\nOptions:\\n- 3\\n- 4\t4\tTwo plus two is four.\nonly one field\nIs the sky blue?\tyes\n"
    )
    jl = tmp_path / "extra.jsonl"
    jl.write_text(
        json.dumps({"prompt": "Say hi", "completion": "hi"})
        + "\n{bad\n"
        + json.dumps({"prompt": "x"})
        + "\n"
        + json.dumps({"prompt": " ", "completion": "y"})
        + "\n"
    )
    src = ReferenceSource([str(tsv), str(jl)])
    examples = list(src)
    assert [e.prompt for e in examples] == ["What is 2+2?\nOptions:\n- 3\n- 4", "Is the sky blue?", "Say hi"]
    assert examples[0].completion == "Two plus two is four. So the answer is 4."
    assert examples[1].completion == "yes"
    r = src.report
    assert (r.documents, r.malformed, r.empty) == (3, 3, 1)
    assert f"{tsv}:2" in r.summary() and f"{jl}:2" in r.summary()
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="must be .tsv"):
        ReferenceSource(str(other))


class CharVocab:
    """A tiny stand-in vocabulary: one token per character."""

    pad_id, eos_id = 0, 1

    def encode(self, s):
        return [2 + (ord(c) % 200) for c in s]


def test_encode_masks_only_the_answer():
    from synpro_jax.influence.reference import ReferenceExample

    ex = [ReferenceExample("a", "2+2?", "4"), ReferenceExample("b", "a long prompt " * 10, "an answer")]
    tokens, mask = encode_examples(ex, CharVocab(), seq_len=24)
    p0 = len(format_prompt("2+2?"))
    assert tokens.shape == (2, 25) and mask[0, :p0].sum() == 0
    assert mask[0, p0 : p0 + 3].tolist() == [1, 1, 1]  # " 4" and EOS
    assert tokens[0, p0 + 2] == 1 and mask[0, p0 + 3 :].sum() == 0
    assert mask[1].sum() == len(" an answer") + 1  # long prompt cut from the front, answer kept whole
    assert tokens[1, -1] == 1


def test_real_flan_files(shared_data):
    src = ReferenceSource(str(shared_data / "reference" / "flan_v2_cot" / "qasc_train.tsv"))
    examples = list(src)
    assert len(examples) > 1000 and src.report.malformed == 0
    assert "\\n" not in examples[0].prompt and "So the answer is" in examples[0].completion


def test_seqio_reference_task_has_inputs_and_targets(tmp_path):
    seqio = pytest.importorskip("seqio")
    from synpro_jax.data.vocab import train_sentencepiece
    from synpro_jax.influence.reference import ReferenceExample, register_reference_task

    jl = tmp_path / "ref.jsonl"
    rows = [{"prompt": f"what follows {i}?", "completion": f"the number {i + 1}"} for i in range(30)]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    words = ["what", "follows", "the", "number", "river", "stone", "quiet", "market", "planet", "signal"]
    text = [f"what follows {i}? the number {i + 1} " + " ".join(rng.choice(words, size=12)) for i in range(400)]
    sp = train_sentencepiece(text, tmp_path / "sp.model", vocab_size=300)
    vocab = seqio.SentencePieceVocabulary(str(sp))
    task = register_reference_task("synpro_reference_toy", str(jl), vocab)
    ex = next(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    # SentencePiece's normalizer folds the newline before "Answer:" into a space
    assert vocab.decode(ex["inputs"].tolist()).split() == format_prompt("what follows 0?").split()
    assert ex["targets"].tolist() == vocab.encode("the number 1") + [vocab.eos_id]
    tokens, mask = encode_examples([ReferenceExample("a", "what follows 0?", "the number 1")], vocab, seq_len=40)
    answer = tokens[0][mask[0] == 1].tolist()
    assert answer[-1] == vocab.eos_id and vocab.decode(answer[:-1]).strip() == "the number 1"


def _digit_examples(n, seed=0):
    from synpro_jax.influence.reference import ReferenceExample

    rng = np.random.default_rng(seed)
    return [ReferenceExample(f"e{i}", "Q" * int(rng.integers(3, 12)), "7" * int(rng.integers(1, 9))) for i in range(n)]


def test_separate_rows_are_full_with_answer_only_loss():
    """packing="separate": rows hold examples back to back with no padding; the loss covers answer tokens (and
    each closing EOS) of the same example as the input token, never a prompt token or a prediction across
    examples."""
    from synpro_jax.influence.reference import PackedReference

    vocab = CharVocab()
    packed = PackedReference(_digit_examples(40), vocab, seq_len=48, seed=3, packing="separate")
    digit, space, eos = 2 + ord("7"), 2 + ord(" "), vocab.eos_id
    for step in (0, 1, 7):  # step 7 runs past the first epoch
        b = packed.batch(step, 4)
        assert b["inputs"].shape == (4, 48) and set(b) == {"inputs", "targets", "segment_ids", "positions", "loss_mask"}
        assert (b["inputs"] != vocab.pad_id).all() and (b["targets"] != vocab.pad_id).all()  # full rows
        on = b["loss_mask"] == 1
        assert set(np.unique(b["targets"][on])) <= {digit, space, eos}
        # input t and target t (= input t + 1) in one example: known for all but the last column
        same = b["segment_ids"][:, :-1] == b["segment_ids"][:, 1:]
        answerish = np.isin(b["targets"][:, :-1], [digit, eos])
        np.testing.assert_array_equal(on[:, :-1] & answerish, answerish & same)  # in-example answers all count
        for r in range(4):  # positions restart at each example piece
            starts = np.flatnonzero(np.diff(b["segment_ids"][r], prepend=0))
            assert (b["positions"][r, starts] == 0).all()
    assert (
        packed.batch(2, 4)["inputs"].tolist()
        == PackedReference(_digit_examples(40), vocab, seq_len=48, seed=3, packing="separate")
        .batch(2, 4)["inputs"]
        .tolist()
    )


def test_packing_gives_more_answer_tokens_per_step_than_one_example_per_row():
    from synpro_jax.influence.reference import PackedReference

    examples = _digit_examples(64, seed=1)
    _, one_per_row = encode_examples(examples[:8], CharVocab(), seq_len=96)
    for packing in ("release", "separate"):
        packed = PackedReference(examples, CharVocab(), seq_len=96, packing=packing).batch(0, 8)
        assert packed["loss_mask"].sum() > 2 * one_per_row[:, 1:].sum()  # ~3 examples per row here


def test_separate_examples_do_not_attend_to_each_other():
    """packing="separate": the loss of an example inside a packed row equals its loss alone in a row."""
    import jax

    from synpro_jax import models
    from synpro_jax.influence.reference import PackedReference

    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, jax.random.key(0))
    b = PackedReference(_digit_examples(30, seed=2), CharVocab(), seq_len=64, packing="separate").batch(0, 1)
    logits = models.forward(cfg, params, b["inputs"], positions=b["positions"], segment_ids=b["segment_ids"])
    seg = b["segment_ids"][0]
    k = seg[-1] - 1  # a segment that starts and ends inside the row
    idx = np.flatnonzero(seg == k)
    alone = models.forward(cfg, params, b["inputs"][:, idx])
    np.testing.assert_allclose(np.asarray(logits[0, idx]), np.asarray(alone[0]), atol=1e-5)


def _stream(examples, order):
    """The examples laid end to end here, not by the library (flan_by_hand)."""
    return examples_end_to_end(examples, order, CharVocab())


def test_release_rows_are_plain_slices_of_the_concatenated_examples():
    """packing="release" (the default): row r is tokens [r * L, (r + 1) * L) of the examples laid end to end,
    one segment with positions 0..L-1; target t is token t + 1, counted when it is an answer token or EOS, the
    row's last position has none. The seeded order is reshuffled each epoch, and rows run across epochs."""
    from synpro_jax.influence.reference import PackedReference

    examples, seq_len, rows = _digit_examples(40), 48, 4
    packed = PackedReference(examples, CharVocab(), seq_len=seq_len, seed=3)
    assert packed.packing == "release" and packed.row_len == seq_len
    assert packed.epoch_order(0) != packed.epoch_order(1)
    tokens, labels = _stream(examples, [packed.epoch_order(e) for e in range(3)])
    assert len(tokens) > 2 * packed.epoch_tokens
    for step in (0, 6, 9):  # step 6 holds the first epoch boundary, step 9 is in the second epoch
        b = packed.batch(step, rows)
        lo = step * rows * seq_len
        want = tokens[lo : lo + rows * seq_len].reshape(rows, seq_len)
        np.testing.assert_array_equal(b["inputs"], want)
        np.testing.assert_array_equal(b["targets"][:, :-1], want[:, 1:])
        want_mask = labels[lo : lo + rows * seq_len].reshape(rows, seq_len).copy()
        want_mask[:, :-1] = want_mask[:, 1:]
        want_mask[:, -1] = 0
        np.testing.assert_array_equal(b["loss_mask"], want_mask)
        np.testing.assert_array_equal(b["positions"], np.tile(np.arange(seq_len), (rows, 1)))
        assert (b["segment_ids"] == 1).all()
    assert 6 * rows * seq_len < packed.epoch_tokens < 7 * rows * seq_len


def test_separate_packing_reproduces_the_earlier_rows():
    """packing="separate" gives the rows synpro's probe trained on before: pretraining's PackedStream over the
    examples with rows of seq_len + 1 tokens, its training batch, and the answer mask of a second stream."""
    from synpro_jax.data.corpus import TokenizedCorpus
    from synpro_jax.data.packing import PackedStream
    from synpro_jax.influence.reference import PackedReference, format_prompt

    examples, vocab = _digit_examples(40), CharVocab()
    prompts = [vocab.encode(format_prompt(e.prompt)) for e in examples]
    answers = [vocab.encode(" " + e.completion) for e in examples]
    ids = [e.id for e in examples]
    docs = TokenizedCorpus.from_token_lists([p + a for p, a in zip(prompts, answers)], ids)
    marks = TokenizedCorpus.from_token_lists([[0] * len(p) + [1] * len(a) for p, a in zip(prompts, answers)], ids)
    tokens, answer = PackedStream(docs, 49, vocab.eos_id, seed=3), PackedStream(marks, 49, 1, seed=3)
    packed = PackedReference(examples, vocab, seq_len=48, seed=3, packing="separate")
    assert packed.row_len == 49
    for step in (0, 1, 7):
        index = np.arange(step * 4, (step + 1) * 4)
        want = tokens.rows(index).training_batch()
        want["loss_mask"] = want["loss_mask"] * answer.rows(index).tokens[:, 1:]
        got = packed.batch(step, 4)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_packing_is_checked():
    from synpro_jax.influence.reference import PackedReference

    with pytest.raises(ValueError, match="packing='plain': must be one of"):
        PackedReference(_digit_examples(4), CharVocab(), seq_len=16, packing="plain")
