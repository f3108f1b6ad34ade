"""The generators' teaching rows: the release's chat prompt over a teacher's biography, a perfect rewrite as the
answer, the loss on the answer and EOS only."""

import numpy as np
import pytest

from synpro_jax.data.vocab import PassthroughVocabulary, load_vocabulary, train_sentencepiece
from synpro_jax.demo import sft
from synpro_jax.demo import world as W
from synpro_jax.generation import prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    world = W.make_world(people=20, teachers=30, seed=1)
    rng = np.random.default_rng(0)
    texts = [d["text"] for d in world.organic()] + [W.answer("reformat", W.rewrite_reformat(p, rng))
                                                    for p in world.teachers]
    parts = [x for op in prompts.OPERATIONS for x in prompts.prompt_parts(op)]
    path = train_sentencepiece(texts + parts * 5, tmp_path_factory.mktemp("sft") / "sp.model", 600,
                               keep_newlines=True)
    return world, load_vocabulary(str(path))


def test_rows_are_the_chat_prompt_and_a_faithful_answer_of_a_teacher(setup):
    world, vocab = setup
    stream = sft.TeachingStream(world.teachers, vocab, seed=0)
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(20):
        prompt, answer, op = stream.row(rng)
        seen.add(op)
        text = vocab.decode(prompt)
        assert text.startswith(prompts.prompt_parts(op)[0].strip()[:40])
        teacher = next(p for p in world.teachers if p.name in text)
        assert all(p.name not in text for p in world.people)
        assert answer[-1] == vocab.eos_id
        body = prompts.parse_answer(vocab.decode(answer[:-1]), op)
        assert body.headings == 1 and W.fact_check(teacher, body.text).score == 1.0
    assert seen == set(prompts.OPERATIONS)


def test_batches_mask_the_prompt_and_are_seeded_by_step(setup):
    world, vocab = setup
    stream = sft.TeachingStream(world.teachers, vocab, seed=0)
    a, b = stream.batch(3, 4, 700), stream.batch(3, 4, 700)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["inputs"], stream.batch(4, 4, 700)["inputs"])
    rows = [([5, 6, 7], [8, 9, 1]), ([5, 6], [8, 1])]
    batch = sft.sft_batch(rows, 8)
    # targets are tokens 1..7; the loss is on the answer tokens (incl. EOS) only
    np.testing.assert_array_equal(batch["targets"][0], [6, 7, 8, 9, 1, 0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][0], [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["loss_mask"][1], [0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["segment_ids"][1], [1, 1, 1, 1, 0, 0, 0])


def test_an_empty_teaching_population_is_refused():
    with pytest.raises(ValueError, match="no teaching population"):
        sft.TeachingStream([], PassthroughVocabulary(8))
