"""The demo's readings: every arm on the oracle ladder (five oracle runs and repetition), by the loss fit and by QA
interpolation, with multipliers over repetition and round 0, and the check that no test sentence is in any
training text."""

import json

import numpy as np
import pytest

from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.demo import files as F
from synpro_jax.demo import report as R
from synpro_jax.demo import world as W


def curve(d):
    return 1.0 + 50.0 / np.sqrt(d)


def scores_for(arms: dict[str, float], noise: float, seed: int = 0):
    """Per arm (its true D): test NLL per document on the curve plus a shared difficulty, and QA items answered
    right with a probability rising in log D."""
    rng = np.random.default_rng(seed)
    n, items = 300, 900
    tokens = np.full(n, 40.0)
    difficulty = rng.normal(0, 0.3, n)
    u = rng.random(items)
    out = {}
    for arm, d in arms.items():
        nll = (curve(d) + difficulty + rng.normal(0, noise, n)) * tokens
        p = 0.25 + 0.1 * np.log2(d / 1000)
        out[arm] = {
            point: {"test_nll": nll, "fact_nll": nll / 4, "qa_correct": (u < p).astype(float)}
            for point in ("last", "best")
        }
    return out, {"test_nll": tokens, "fact_nll": tokens / 4}


LADDER = {"repetition": 1000, "oracle_1500": 1500, "oracle_2000": 2000, "oracle_3000": 3000, "oracle_6000": 6000}


def test_readings_recover_known_effective_tokens_with_multipliers_over_both_references():
    scores, tokens = scores_for({**LADDER, "synpro": 2500, "round 0": 800}, noise=0.0)
    out = R.readings(scores, tokens, LADDER, resamples=50)
    assert set(out) == set(R.READINGS)
    loss = out["test_loss_last"]
    assert loss["fit"]["status"] == "fitted" and loss["dof"] == 2
    assert max(abs(r) for r in loss["fit"]["residuals"].values()) < 1e-6
    synpro = loss["arms"]["synpro"]
    assert synpro["effective_tokens"]["value"] == pytest.approx(2500, rel=1e-4)
    assert synpro["multiplier"]["repetition"]["value"] == pytest.approx(2.5, rel=1e-4)
    assert synpro["multiplier"]["round 0"]["value"] == pytest.approx(2500 / 800, rel=1e-4)
    # QA: the ladder's accuracies are monotone in D, so interpolation in log D lands between the right rungs
    qa = out["qa_last"]["arms"]["synpro"]
    assert 2000 <= qa["effective_tokens"]["value"] <= 3000 and qa["status"] == "ok"
    assert out["qa_last"]["arms"]["round 0"]["status"] == "below_ladder"
    # the loss on the facts alone is its own reading on the same ladder
    assert out["fact_loss_last"]["arms"]["synpro"]["effective_tokens"]["value"] == pytest.approx(2500, rel=1e-4)


def test_noisy_readings_carry_intervals_that_cover_the_truth():
    scores, tokens = scores_for({**LADDER, "synpro": 2500, "round 0": 800}, noise=0.05, seed=1)
    out = R.readings(scores, tokens, LADDER, resamples=300)
    m = out["test_loss_last"]["arms"]["synpro"]["multiplier"]["repetition"]
    assert m["low"] < 2.5 < m["high"] and m["low"] < m["value"] < m["high"]
    assert "resampled evaluation items" in out["test_loss_last"]["interval"]


def test_a_test_sentence_in_a_synthetic_stream_is_counted(tmp_path):
    files = F.write_world(
        tmp_path / "world", people=12, teachers=4, reference_fraction=0.5, seed=0, oracle_copies=2, vocab_size=512
    )
    world = files.world()
    synth = tmp_path / "loop" / "synpro" / "r1" / "synthesize_rephrase"
    synth.mkdir(parents=True)
    test_sentence = W.split_sentences(json.loads(files.test.read_text().splitlines()[0])["text"])[1]
    records = [{"text": "A rewrite. " + test_sentence, "status": "ok"}, {"text": "Nothing here.", "status": "ok"}]
    (synth / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    clean = R.evaluation_hygiene(files, world, [])
    assert clean["test"]["verbatim"] == clean["validation"]["verbatim"] == clean["qa"]["verbatim"] == 0
    assert clean["test"]["sentences"] == 12 * 6 and clean["qa"]["sentences"] == 6 * 6
    assert R.evaluation_hygiene(files, world, [synth])["test"]["verbatim"] == 1


def test_fact_requests_score_each_value_after_the_text_before_it(tmp_path):
    files = F.write_world(
        tmp_path / "world", people=6, teachers=2, reference_fraction=0.5, seed=1, oracle_copies=2, vocab_size=512
    )
    world = files.world()
    vocab = load_vocabulary(str(files.tokenizer))
    test = [json.loads(line) for line in files.test.read_text().splitlines()]
    requests, owner = R._fact_requests(world, test, vocab, int(vocab.eos_id))
    assert len(requests) == 6 * 6 and list(owner) == [i for i in range(6) for _ in range(6)]
    for (context, value), i in zip(requests, owner):
        text = vocab.decode(context[1:]) + vocab.decode(value)
        assert (
            test[i]["text"].startswith(text.strip()) and vocab.decode(value).strip() in world.people[i].facts.values()
        )
