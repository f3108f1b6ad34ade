"""``quality_local``: a small text-quality classifier standing in for DataMan, reward = score(answer) - score(source).

The classifier is an L2-regularised logistic regression on hashed word uni- and bigrams (signed hashing into
``dim`` buckets, log counts, L2-normalised rows), fitted with scipy's L-BFGS on the 0/1 quality labels of
``dclm_annotated_web.jsonl`` (DCLM's annotated pages, ``text`` and ``label`` per line). Its probability p of
"good" maps onto DataMan's 1-5 overall-score scale as ``1 + 4 p``, so the reward's range (-4..4) and weight match
the release's DataMan difference. An empty answer (no heading) scores the scale's floor, 1, rather than whatever
the bias says about no features. The source's score is computed once per prompt (the release precomputes it).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import logging
import re
import zlib

from etils.epath import Path
import numpy as np
import scipy.optimize
import scipy.sparse

from synpro_jax import atomic
from synpro_jax.rl.rewards.base import RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, call_scorer, group_sources

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
FLOOR, CEIL = 1.0, 5.0  # DataMan's overall-score scale
FORMAT_VERSION = 1


def _hashed_rows(texts: Sequence[str], dim: int, ngrams: int) -> scipy.sparse.csr_matrix:
    rows, cols, vals = [], [], []
    for r, text in enumerate(texts):
        toks = _TOKEN.findall(text.lower())
        counts: dict[int, float] = {}
        for n in range(1, ngrams + 1):
            for k in range(len(toks) - n + 1):
                h = zlib.crc32(" ".join(toks[k : k + n]).encode())  # stable across processes, unlike hash()
                j, sign = h % dim, (1.0 if h & 0x80000000 else -1.0)
                counts[j] = counts.get(j, 0.0) + sign
        if not counts:
            continue
        v = np.fromiter(counts.values(), np.float64, len(counts))
        v = np.sign(v) * np.log1p(np.abs(v))
        norm = np.linalg.norm(v)
        rows += [r] * len(counts)
        cols += list(counts)
        vals += list(v / norm if norm > 0 else v)
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), dim))


@dataclasses.dataclass(frozen=True)
class QualityClassifier:
    """Hashed n-gram logistic regression: ``prob(texts)`` is P(label 1); ``score(texts)`` maps it to 1..5."""

    weights: np.ndarray  # [dim]
    bias: float
    ngrams: int = 2

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return _hashed_rows(texts, self.dim, self.ngrams) @ self.weights + self.bias

    def prob(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts)))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        s = FLOOR + (CEIL - FLOOR) * self.prob(texts)
        return np.where([bool(t.strip()) for t in texts], s, FLOOR) if len(texts) else s

    def save(self, path: str | Path) -> None:
        """Atomic: a temp file in the same folder, then a rename (synpro_jax.atomic)."""
        atomic.write_file(
            path,
            lambda tmp: np.savez(
                tmp,
                weights=self.weights,
                bias=np.float64(self.bias),
                ngrams=np.int64(self.ngrams),
                version=np.int64(FORMAT_VERSION),
            ),
            suffix=".npz",
        )

    @classmethod
    def load(cls, path: str | Path) -> QualityClassifier:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"quality_local model={str(path)!r} does not exist")
        with atomic.load_npz(path) as z:
            if "version" not in z or int(z["version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: not a quality_local model of format {FORMAT_VERSION}")
            return cls(np.asarray(z["weights"], np.float64), float(z["bias"]), int(z["ngrams"]))


def read_labelled(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(texts, 0/1 labels) from a JSONL file of ``{"text": ..., "label": 0|1}``; a bad line is named file:line."""
    texts, labels = [], []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{n}: needs a string field 'text'")
            label = row.get("label")
            if label not in (0, 1, "0", "1") or isinstance(label, bool):
                raise ValueError(f"{path}:{n}: label {label!r} is not 0 or 1")
            texts.append(row["text"])
            labels.append(int(label))
    if not texts:
        raise ValueError(f"{path}: no labelled rows")
    return texts, np.asarray(labels, np.float64)


def fit(
    texts: Sequence[str], labels: np.ndarray, *, dim: int = 2**18, ngrams: int = 2, l2: float = 2.5e-4
) -> QualityClassifier:
    """Minimise mean logistic loss + l2/2 |w|^2 (bias unpenalised) with L-BFGS."""
    if dim < 1 or ngrams < 1 or l2 < 0:
        raise ValueError(f"quality classifier dim={dim}, ngrams={ngrams}, l2={l2}: need dim, ngrams >= 1, l2 >= 0")
    x = _hashed_rows(texts, dim, ngrams)
    y = np.asarray(labels, np.float64)
    n = len(y)

    def loss(wb):
        w, b = wb[:-1], wb[-1]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w @ w)
        grad = np.append(x.T @ (p - y) / n + l2 * w, np.mean(p - y))
        return value, grad

    res = scipy.optimize.minimize(loss, np.zeros(dim + 1), jac=True, method="L-BFGS-B")
    return QualityClassifier(res.x[:-1], float(res.x[-1]), ngrams)


def train(path: str | Path, *, heldout: float = 0.2, seed: int = 0, **fit_kwargs) -> tuple[QualityClassifier, dict]:
    """Fit on a seeded ``1 - heldout`` share of ``path``'s rows; report accuracy on the rest (and on the train
    share, and the majority-class baseline on the held-out rows)."""
    if not 0 < heldout < 1:
        raise ValueError(f"quality_local heldout={heldout}: must be in (0, 1)")
    texts, labels = read_labelled(path)
    order = np.random.default_rng(seed).permutation(len(texts))
    k = len(texts) - max(1, int(round(heldout * len(texts))))
    tr, te = order[:k], order[k:]
    clf = fit([texts[i] for i in tr], labels[tr], **fit_kwargs)

    def acc(idx):
        return float(np.mean((clf.prob([texts[i] for i in idx]) > 0.5) == (labels[idx] > 0.5)))

    majority = float(max(labels[te].mean(), 1 - labels[te].mean()))
    report = {
        "n_train": int(len(tr)),
        "n_heldout": int(len(te)),
        "train_accuracy": acc(tr),
        "heldout_accuracy": acc(te),
        "heldout_majority_baseline": majority,
    }
    log.info("quality_local classifier from %s: %s", path, report)
    return clf, report


@register_reward("quality_local")
class QualityLocalReward:
    """score(answer) - score(source) on the 1..5 scale. Give ``classifier``, or ``model`` (a saved .npz), or
    ``data`` (a labelled JSONL to fit on, with ``heldout``/``seed`` for the split and ``dim``/``ngrams``/``l2``
    for the fit)."""

    name = "quality_local"

    def __init__(
        self,
        classifier: QualityClassifier | None = None,
        model: str | None = None,
        data: str | None = None,
        heldout: float = 0.2,
        seed: int = 0,
        dim: int = 2**18,
        ngrams: int = 2,
        l2: float = 2.5e-4,
    ):
        if sum(x is not None for x in (classifier, model, data)) != 1:
            raise ValueError(
                "quality_local: set exactly one of classifier, model (a saved .npz) or data (a "
                "labelled JSONL to train on)"
            )
        if classifier is None:
            classifier = (
                QualityClassifier.load(model)
                if model is not None
                else train(data, heldout=heldout, seed=seed, dim=dim, ngrams=ngrams, l2=l2)[0]
            )
        self.classifier = classifier

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        _, sources, where = group_sources(inputs)
        values = call_scorer(self.classifier.score, sources + texts, "quality_local classifier")
        base, own = values[: len(sources)], values[len(sources) :]
        return (own - base[where]).astype(np.float32)
