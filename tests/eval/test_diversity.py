"""The diversity measures against plain computations: distinct-n counted by hand, the compression ratio from zlib
directly, and the near-duplicate share against a brute-force O(n^2) Jaccard search."""

import json
import random
import re
import zlib

import pytest

from synpro_jax.eval.diversity import compare, diversity

TOL = 1e-12


def random_texts(n: int, length: int, seed: int, vocab: int = 5000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab)}" for _ in range(length)) for _ in range(n)]


def brute_force_share(texts: list[str], k: int = 5, t: float = 0.8) -> float:
    sets = []
    for text in texts:
        w = [x.lower() for x in re.findall(r"\w+", text)]
        sets.append({tuple(w)} if len(w) < k else {tuple(w[i : i + k]) for i in range(len(w) - k + 1)})
    hit = [any(len(a & b) / len(a | b) >= t for j, b in enumerate(sets) if j != i) for i, a in enumerate(sets)]
    return sum(hit) / len(sets)


def test_distinct_n_counted_by_hand():
    texts = ["The cat sat.", "the cat ran", "A dog"]
    # words: [the cat sat] [the cat ran] [a dog]
    # 1-grams: 8 in all, distinct {the, cat, sat, ran, a, dog} = 6
    # 2-grams: (the cat) (cat sat) (the cat) (cat ran) (a dog) = 5, distinct 4
    # 3-grams: (the cat sat) (the cat ran) = 2, distinct 2; 4-grams: none
    d = diversity(texts)
    assert d["records"] == 3 and d["tokens"] == 8
    assert d["distinct"]["1"] == pytest.approx(6 / 8, abs=TOL)
    assert d["distinct"]["2"] == pytest.approx(4 / 5, abs=TOL)
    assert d["distinct"]["3"] == pytest.approx(1.0, abs=TOL)
    assert d["distinct"]["4"] is None
    assert d["sampled"] is False
    assert json.loads(json.dumps(d)) == d  # JSON-able


def test_compression_ratio_is_zlib_directly():
    texts = random_texts(20, 30, seed=1, vocab=50) + ["héllo wörld ✓"]
    raw = "\n".join(texts).encode("utf-8")
    assert diversity(texts)["compression_ratio"] == pytest.approx(len(zlib.compress(raw, 9)) / len(raw), abs=TOL)


def test_identical_copies_are_all_near_duplicates():
    assert diversity(["one two three four five six seven"] * 5)["near_duplicate_share"] == 1.0
    assert diversity(["a b"] * 3)["near_duplicate_share"] == 1.0  # shorter than a shingle: one whole-tuple shingle


def test_disjoint_random_texts_have_none():
    assert diversity(random_texts(50, 40, seed=2, vocab=100_000))["near_duplicate_share"] == 0.0


def test_one_near_copy_pair_among_distinct_texts():
    texts = random_texts(30, 40, seed=3, vocab=100_000)
    words = texts[7].split()
    words[0] = "changed"  # one word changed at the edge: 35 of 36 shingles kept, Jaccard 35/37 >= 0.8
    texts.append(" ".join(words))
    d = diversity(texts)
    assert d["near_duplicate_share"] == pytest.approx(2 / len(texts), abs=TOL)
    assert brute_force_share(texts) == pytest.approx(2 / len(texts), abs=TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_equals_brute_force_with_planted_near_duplicates(seed):
    rng = random.Random(seed)
    texts = random_texts(80, rng.randrange(5, 50), seed=seed, vocab=300)
    texts += ["w1 w2", "w1 w2", "w3"]  # shorter than a shingle
    for _ in range(20):  # near-copies at several distances around the threshold
        w = rng.choice(texts).split()
        for _ in range(rng.randrange(0, 4)):
            w[rng.randrange(len(w))] = f"x{rng.randrange(10)}"
        texts.append(" ".join(w))
    rng.shuffle(texts)
    for k, t in ((5, 0.8), (3, 0.5), (2, 0.9)):
        fast = diversity(texts, shingle=k, near_duplicate=t)["near_duplicate_share"]
        assert fast == pytest.approx(brute_force_share(texts, k, t), abs=TOL), (k, t)
    assert 0 < diversity(texts)["near_duplicate_share"] < 1


def test_empty_input():
    d = diversity([])
    assert d["records"] == 0 and d["tokens"] == 0 and not d["sampled"]
    assert d["distinct"] == {"1": None, "2": None, "3": None, "4": None}
    assert d["compression_ratio"] is None and d["near_duplicate_share"] is None
    one = diversity([""])
    assert one["records"] == 1 and one["compression_ratio"] is None and one["near_duplicate_share"] == 0.0


def test_sampling_flag_and_seeded_sample():
    texts = random_texts(60, 20, seed=4, vocab=100_000)
    texts += texts[:30]  # 30 pairs of copies: 60 of 90 records are duplicates
    full = diversity(texts)
    assert not full["sampled"] and full["near_duplicate_share"] == pytest.approx(60 / 90, abs=TOL)
    a, b = diversity(texts, max_records=40, seed=1), diversity(texts, max_records=40, seed=1)
    assert a["sampled"] and a == b and a["records"] == 90
    assert a["distinct"] == full["distinct"] and a["compression_ratio"] == full["compression_ratio"]
    assert diversity(texts, max_records=90)["sampled"] is False
    assert diversity(texts, max_records=None)["near_duplicate_share"] == full["near_duplicate_share"]


def test_two_thousand_records_with_planted_copies():
    texts = random_texts(2000, 60, seed=5, vocab=2000)
    texts[100:200] = texts[:100]
    d = diversity(texts)
    assert d["near_duplicate_share"] == pytest.approx(200 / 2000, abs=TOL)


def test_compare_against_the_reference():
    organic = random_texts(20, 30, seed=6, vocab=1000)
    synthetic = organic[:10] * 2
    out = compare({"organic": organic, "synthetic": synthetic})
    assert "vs_reference" not in out["organic"]
    org, syn = out["organic"], out["synthetic"]
    vs = syn["vs_reference"]
    for n in ("1", "2", "3", "4"):
        assert vs["distinct"][n] == pytest.approx(syn["distinct"][n] / org["distinct"][n], abs=TOL)
    assert vs["compression_ratio"] == pytest.approx(syn["compression_ratio"] / org["compression_ratio"], abs=TOL)
    assert vs["near_duplicate_share_diff"] == pytest.approx(1.0 - 0.0, abs=TOL)
    assert compare({"organic": [], "x": ["a b"]})["x"]["vs_reference"]["compression_ratio"] is None
    with pytest.raises(KeyError):
        compare({"x": ["a"]})
