"""The log-likelihood harness: acc / acc_norm by hand, each choice's log-likelihood against transformers on an
exported model, sharded equals one device, perplexity against a full forward, and `synpro eval` end to end."""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.cli import main as cli_main
from synpro_jax.data import vocab as vocab_lib
from synpro_jax.eval import harness
from synpro_jax.eval.tasks import MCItem

CFG = models.ModelConfig(
    name="eval_tiny", vocab_size=512, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, max_seq_len=64
)
TEXTS = [
    "the cat sat on the mat and looked at the dog",
    "a bird in the hand is worth two in the bush",
    "water boils at one hundred degrees",
    "the quick brown fox jumps over the lazy dog",
    "plants make sugar",
    "Question: what do cats eat? Answer: fish and mice",
    "rain falls from clouds when they are heavy",
] * 4


def make_items():
    return [
        MCItem("Question: What do plants make?\nAnswer:", ("sugar", "iron", "a very long answer about rocks"), 0),
        MCItem("", ("the cat sat", "the dog"), 1),  # empty context: the EOS token stands in
        MCItem("Water boils at ", ("one hundred degrees", "zero"), 0),  # context ends in whitespace: no space added
        MCItem(" ".join(TEXTS[:6]), ("the mat", "the lazy dog and the quick brown fox"), 1),  # longer than 64 tokens
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random model exported with hf.save beside a byte-level BPE tokenizer.json trained here."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models

    from synpro_jax.models import hf

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    out = tmp_path_factory.mktemp("eval_model")
    params = models.init_params(CFG, jax.random.key(3))
    # Larger weights than init so the log-likelihoods differ visibly between choices.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    hf.save(CFG, jax.device_get(params), out)
    tok.save(str(out / "tokenizer.json"))
    return out, params


def test_acc_and_acc_norm_match_hand_computed_values():
    items = [MCItem("c", ("a", "bbbb"), 1), MCItem("c", ("xx", "y", "zzzzzz"), 2), MCItem("c", ("p", "q"), 0)]
    # item 1: sums -3, -8 -> acc picks 0; per char -3, -2 -> acc_norm picks 1 (the label)
    # item 2: sums -4, -1, -9 -> acc picks 1; per char -2, -1, -1.5 -> acc_norm picks 1; label 2: both wrong
    # item 3: sums -1, -2 -> both pick 0 (the label)
    ll = [-3.0, -8.0, -4.0, -1.0, -9.0, -1.0, -2.0]
    got = harness.multiple_choice(items, ll)
    assert got["acc"] == pytest.approx(1 / 3) and got["acc_norm"] == pytest.approx(2 / 3) and got["items"] == 3
    with pytest.raises(ValueError, match="6 log-likelihoods for 7 choices"):
        harness.multiple_choice(items, ll[:6])


def _transformers_loglikelihood(model, torch, context, cont) -> float:
    ids = torch.tensor([context + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return float(sum(logp[len(context) - 1 + j, t] for j, t in enumerate(cont)))


def test_each_choice_loglikelihood_equals_transformers_and_the_sharded_harness_agrees(model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, params = model_dir
    vocab = vocab_lib.load_vocabulary(str(path / "tokenizer.json"))
    requests = harness.mc_requests(make_items(), vocab, vocab.eos_id)
    assert requests[3][0] == [vocab.eos_id]  # the empty context (item 1, after item 0's 3 choices)
    one = harness.LoglikelihoodScorer(CFG, params, rows=4)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=8, fsdp=1, tensor=1))
    eight = harness.LoglikelihoodScorer(CFG, params, mesh, rows=8)
    got, got8 = one(requests), eight(requests)
    assert len({one.layout(r)[2:] for r in requests}) >= 2  # several (L, C) buckets
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    want = []
    for r in requests:
        context, cont, _, _ = one.layout(r)  # the context as kept (the long one loses its oldest tokens)
        assert len(context) + len(cont) <= CFG.max_seq_len
        want.append(_transformers_loglikelihood(model, torch, context, cont))
    assert len(one.layout(requests[-1])[0]) < len(requests[-1][0])  # truncation happened
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got8, got, atol=1e-5, rtol=0)
    assert np.ptp(got) > 1.0


def test_perplexity_equals_a_full_forward(model_dir):
    _, params = model_dir
    path = model_dir[0]
    vocab = vocab_lib.load_vocabulary(str(path / "tokenizer.json"))
    docs = [" ".join(TEXTS[:4]), TEXTS[4], ""]
    scorer = harness.LoglikelihoodScorer(CFG, params, rows=4)
    out = harness.perplexity(scorer, docs, vocab, vocab.eos_id)
    nll, count = 0.0, 0
    for doc in docs[:2]:
        ids = [vocab.eos_id] + list(vocab.encode(doc))
        assert len(ids) <= CFG.max_seq_len  # whole documents fit: the windows see all preceding tokens
        logits = np.asarray(models.forward(CFG, params, jnp.asarray([ids])), np.float64)[0]
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        nll -= sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
        count += len(ids) - 1
    assert len(vocab.encode(docs[0])) > CFG.max_seq_len // 2  # the first document spans two windows
    assert out["tokens"] == count and out["documents"] == 3
    assert out["nll"] == pytest.approx(nll / count, abs=1e-5)
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert out["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(d.encode()) for d in docs), rel=1e-5)


def test_synpro_eval_cli_writes_the_table_and_json(model_dir, tmp_path, capsys):
    path, _ = model_dir
    ckpt = tmp_path / "model"
    shutil.copytree(path, ckpt)
    task = tmp_path / "mine.jsonl"
    task.write_text(
        "".join(
            json.dumps({"context": it.context, "choices": list(it.choices), "label": it.label}) + "\n"
            for it in make_items()
        )
    )
    docs = tmp_path / "held_out.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    rc = cli_main(
        [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--tasks",
            f"{task},again={task}",
            "--ppl",
            str(docs),
            "--no_progress",
            "--rows",
            "8",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mine" in printed and "again" in printed and "held_out.jsonl" in printed
    results = json.loads((ckpt / "eval.json").read_text())
    assert results["tasks"]["mine"]["items"] == 4 and results["tasks"]["mine"] == {
        **results["tasks"]["again"],
        "seconds": results["tasks"]["mine"]["seconds"],
    }
    assert 0 <= results["tasks"]["mine"]["acc"] <= 1 and results["perplexity"]["held_out.jsonl"]["ppl"] > 1
    assert results["step"] == 0 and results["model"] == "model"  # an HF directory: step 0, named after it
    # A bad task names the file and line, and nothing is written.
    task.write_text('{"context": "c", "choices": ["a"], "label": 0}\n')
    rc = cli_main(
        ["eval", "--checkpoint", str(ckpt), "--tasks", str(task), "--out", str(tmp_path / "r.json"), "--no_progress"]
    )
    assert rc == 2 and "mine.jsonl:1" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
