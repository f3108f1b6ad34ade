"""quality_local: score = 1 + 4 P(good) (DataMan's 1-5 scale), reward = score(answer) - score(source), empty
answers at the floor; the classifier fitted, saved and loaded; labelled-file errors named by file:line; the
held-out accuracy on the shared DCLM annotations."""

import json

import numpy as np
import pytest

from synpro_jax.generation.prompts import HEADINGS
from synpro_jax.rl.rewards import RewardError, RewardInputs, make_reward
from synpro_jax.rl.rewards.quality import QualityClassifier, fit, read_labelled, train

H = HEADINGS["rephrase"]
GOOD = [
    "The committee reviewed the evidence and published a detailed report on water quality in the region.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The museum's new exhibit traces the history of printing from movable type to digital presses.",
    "Researchers measured the growth of seedlings under three different soil conditions.",
]
SPAM = [
    "click here buy now cheap pills free shipping click here click here",
    "WIN WIN WIN free money click now!!! limited offer buy buy buy",
    "login | home | contact | cart | login | home | sitemap | cart",
    "cheap cheap cheap discount casino bonus click click free free",
]


def inputs(completions, sources):
    return RewardInputs("rephrase", sources, completions, np.repeat(np.arange(len(set(sources))), 2))


def test_known_values_with_a_flat_classifier():
    # No weights: P = sigmoid(bias). bias 0 -> score 3; bias log 3 -> P = 0.75 -> score 4.
    flat = QualityClassifier(np.zeros(64), 0.0)
    got = make_reward("quality_local", classifier=flat)(
        inputs([f"{H}\nanything", "no heading", f"{H}\nmore", f"{H}\n   "], ["src one"] * 2 + ["src two"] * 2)
    )
    np.testing.assert_allclose(got, [0.0, 1 - 3, 0.0, 1 - 3], atol=1e-6)  # empty answers sit at the floor, 1
    np.testing.assert_allclose(QualityClassifier(np.zeros(64), np.log(3)).score(["x", ""]), [4.0, 1.0], atol=1e-6)


def test_fitted_classifier_orders_good_above_spam_and_the_reward_follows():
    clf = fit(GOOD + SPAM, np.array([1] * 4 + [0] * 4), dim=2**12)
    s = clf.score(GOOD + SPAM)
    assert s[:4].min() > 3 > s[4:].max()
    reward = make_reward("quality_local", classifier=clf)
    got = reward(
        inputs(
            [f"{H}\n{GOOD[1]}", f"{H}\n{SPAM[0]}", f"{H}\n{GOOD[2]}", f"{H}\n{GOOD[2]}"],
            [SPAM[1], SPAM[1], GOOD[2], GOOD[2]],
        )
    )
    src = clf.score([SPAM[1], GOOD[2]])
    np.testing.assert_allclose(got, clf.score([GOOD[1], SPAM[0], GOOD[2], GOOD[2]]) - src[[0, 0, 1, 1]], atol=1e-5)
    assert got[0] > 0 > got[1] and got[2] == got[3] == 0


def test_save_load_round_trip_and_bad_files(tmp_path):
    clf = fit(GOOD + SPAM, np.array([1] * 4 + [0] * 4), dim=2**10)
    clf.save(tmp_path / "q.npz")
    back = QualityClassifier.load(tmp_path / "q.npz")
    np.testing.assert_array_equal(back.logits(GOOD), clf.logits(GOOD))
    assert [p.name for p in tmp_path.iterdir()] == ["q.npz"]  # no temp file left
    r = make_reward("quality_local", model=str(tmp_path / "q.npz"))
    np.testing.assert_array_equal(r.classifier.weights, clf.weights)
    with pytest.raises(FileNotFoundError, match="quality_local model='.*missing.npz' does not exist"):
        make_reward("quality_local", model=str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a quality_local model"):
        QualityClassifier.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="exactly one of classifier, model"):
        make_reward("quality_local")


@pytest.mark.parametrize(
    "line, match",
    [
        ("not json", r"data.jsonl:2: not JSON"),
        (json.dumps({"label": 1}), r"data.jsonl:2: needs a string field 'text'"),
        (json.dumps({"text": "t", "label": 2}), r"data.jsonl:2: label 2 is not 0 or 1"),
        (json.dumps({"text": "t", "label": True}), r"data.jsonl:2: label True is not 0 or 1"),
    ],
)
def test_labelled_file_errors_name_the_line(tmp_path, line, match):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "1"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=match):
        read_labelled(path)


def test_train_from_a_file_and_a_failing_classifier(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": int(i < 4)}) + "\n" for i, t in enumerate(GOOD + SPAM)))
    clf, report = train(path, heldout=0.25, seed=0, dim=2**10)
    assert report["n_train"] == 6 and report["n_heldout"] == 2
    r = make_reward("quality_local", data=str(path), heldout=0.25, dim=2**10)
    np.testing.assert_array_equal(r.classifier.weights, clf.weights)  # the same split and fit

    class Broken:
        def score(self, texts):
            raise MemoryError("out of memory")

    with pytest.raises(RewardError, match="quality_local classifier failed: MemoryError: out of memory"):
        make_reward("quality_local", classifier=Broken())(inputs([f"{H}\nx", f"{H}\ny"], ["s", "s"]))


@pytest.mark.slow  # three fits of 2^18 weights on 399 pages, ~8 s
def test_heldout_accuracy_on_the_dclm_annotations(shared_data):
    reports = [train(shared_data / "organic" / "dclm_annotated_web.jsonl", heldout=0.2, seed=s)[1] for s in range(3)]
    acc = [r["heldout_accuracy"] for r in reports]
    print(
        "quality_local held-out accuracy over 3 splits:",
        acc,
        "majority baselines:",
        [r["heldout_majority_baseline"] for r in reports],
    )
    assert all(r["n_heldout"] == 100 for r in reports)
    assert np.mean(acc) >= 0.75  # seeds 0, 1, 2 give 0.88, 0.71, 0.80
    assert all(r["heldout_accuracy"] >= r["heldout_majority_baseline"] + 0.15 for r in reports)
