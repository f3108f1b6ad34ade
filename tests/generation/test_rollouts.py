"""Rollouts for GRPO: weight swaps without recompiles, one shared prefill per group, decode windows that follow
the filled slots, and the device-resident learner batch."""

import contextlib

import jax
from jax import monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.generation import RolloutBatch, Sampler, sample
from synpro_jax.generation import sampler as sampler_lib

PROMPTS = [[5, 6, 7], list(range(1, 21)), [42], [9, 8, 7, 6, 5, 4]]


@pytest.fixture(scope="module")
def tiny():
    cfg = models.get_preset("tiny")
    return cfg, models.init_params(cfg, jax.random.key(0))


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compiles (jax's own compile events) inside the block."""
    names = []

    def listen(name, _secs, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            names.append(name)

    monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        monitoring.unregister_event_duration_listener(listen)


@pytest.mark.slow
def test_update_params_three_times_does_not_recompile(tiny):
    cfg, params = tiny
    s = Sampler(cfg, params)
    kw = dict(max_new_tokens=12, eos_id=None)
    first = s.generate(PROMPTS, **kw)
    new = [models.init_params(cfg, jax.random.key(k)) for k in (1, 2, 3)]
    traces = dict(sampler_lib.TRACE_COUNTS)
    with count_compiles() as compiles:
        for p in new:
            s.update_params(p)
            out = s.generate(PROMPTS, **kw)
    assert compiles == [] and dict(sampler_lib.TRACE_COUNTS) == traces
    # Sampling after the swap uses the new weights: it equals a fresh Sampler on them, not the old output.
    fresh = Sampler(cfg, new[-1]).generate(PROMPTS, **kw)
    np.testing.assert_array_equal(out.tokens, fresh.tokens)
    np.testing.assert_allclose(out.logprobs, fresh.logprobs, atol=1e-6)
    assert (out.tokens != first.tokens).any()


def test_update_params_refuses_other_shapes(tiny):
    cfg, params = tiny
    s = Sampler(cfg, params)
    other = models.init_params(cfg.replace(d_model=cfg.d_model * 2, num_heads=cfg.num_heads * 2), jax.random.key(1))
    with pytest.raises(ValueError, match="update_params: param shapes differ"):
        s.update_params(other)
    with pytest.raises(ValueError, match="update_params: the new params have a different tree structure"):
        s.update_params({"embedding": params["embedding"]})


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_shared_prefill_equals_prompts_written_out(tiny, mesh_shape):
    cfg, params = tiny
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape), devices=jax.devices()[: int(np.prod(mesh_shape))])
    s = Sampler(cfg, params, mesh=mesh)
    g = 3
    repeated = [p for p in PROMPTS for _ in range(g)]
    greedy = dict(max_new_tokens=[5, 20, 9, 14])
    shared = s.generate(PROMPTS, num_generations=g, **greedy)
    plain = s.generate(repeated, max_new_tokens=np.repeat(greedy["max_new_tokens"], g).tolist())
    np.testing.assert_array_equal(shared.tokens, plain.tokens)
    np.testing.assert_array_equal(shared.lengths, plain.lengths)
    np.testing.assert_allclose(shared.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    # Sampled: row i*G+j has the stream it would have written out, and the rows of a group differ.
    drawn = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=4)
    shared = s.generate(PROMPTS, num_generations=g, **drawn)
    plain = s.generate(repeated, **drawn)
    np.testing.assert_array_equal(shared.tokens, plain.tokens)
    np.testing.assert_allclose(shared.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    for i in range(len(PROMPTS)):
        group = {tuple(r) for r in shared.tokens[i * g : (i + 1) * g].tolist()}
        assert len(group) == g, f"prompt {i}: generations repeat each other"


def test_shared_prefill_runs_the_prompt_once(tiny):
    """The prefill of G generations costs one prompt's FLOPs, not G."""
    cfg, params = tiny
    s = Sampler(cfg, params)
    rows, slots, g = 4, 16, 8
    ids = jax.ShapeDtypeStruct((rows, slots), jnp.int32)
    big = jax.ShapeDtypeStruct((rows * g, slots), jnp.int32)

    def lowered(x, groups):
        with jax.set_mesh(s.mesh), sharding.use_rules(s.rules):
            return s._prefill.lower(s.params, x, x, x, groups)

    def flops(x, groups):
        cost = lowered(x, groups).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    assert flops(ids, g) < 0.25 * flops(big, 1)
    # The logits go to every generation; the cache stays one row per prompt (the decode shares it).
    logits, cache = lowered(ids, g).out_info
    assert logits.shape == (rows * g, cfg.vocab_size)
    assert {x.shape for x in cache.k} == {(rows, cfg.num_kv_heads, slots, cfg.head_dim)}


def _attention_widths(jaxpr) -> set[tuple[int, int]]:
    """(rows, key length) of the attention-score products (einsum 'bkqd,bksd->bkqs') anywhere in a jaxpr."""
    widths = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, batch) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            if len(lhs) == 4 and len(rhs) == 4 and contract == ((3,), (3,)) and batch == ((0, 1), (0, 1)):
                widths.add((rhs[0], rhs[2]))
        for sub in _subjaxprs(eqn):
            widths |= _attention_widths(sub)
    return widths


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(x, jax.extend.core.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jax.extend.core.Jaxpr):
                yield x


def test_decode_windows_follow_the_filled_slots(tiny):
    """Decode attends to the prompt (one cache row per prompt, shared by its G rows) and to the completion so far
    rounded up to a window, not to a whole prompt+budget cache per row."""
    cfg, params = tiny
    assert sampler_lib.decode_windows(16) == [16]
    assert sampler_lib.decode_windows(128) == [16, 24, 32, 48, 64, 96, 128]  # half octaves
    assert sampler_lib.decode_windows(128, prompt_slots=256) == [64, 96, 128]  # long prompts: fewer phases
    assert sampler_lib.decode_windows(8, prompt_slots=1024) == [8]
    s = Sampler(cfg, params)
    prompts, g, p, n = 2, 3, 8, 64
    b = prompts * g
    cache = models.init_cache(cfg, jnp.ones((prompts, p), jnp.int32), jnp.float32)
    rows = jnp.zeros((b,), jnp.int32)
    scalar = jnp.zeros((), jnp.float32)
    jaxpr = jax.make_jaxpr(sampler_lib._decode, static_argnums=(0, 13))(
        cfg,
        s.params,
        cache,
        jnp.zeros((b, cfg.vocab_size)),
        rows + 3,
        rows + n,
        rows,
        jnp.uint32(0),
        scalar,
        jnp.int32(0),
        scalar + 1,
        jnp.full((8,), -1, jnp.int32),
        jnp.int32(0),
        n,
    )
    assert _attention_widths(jaxpr.jaxpr) == {(prompts, p), (b, 16), (b, 24), (b, 32), (b, 48), (b, 64)}


@pytest.mark.slow
def test_greedy_across_decode_windows_equals_full_recompute(tiny):
    from test_sampler import recompute_check

    cfg, params = tiny
    prompts = PROMPTS[:3]
    out = sample(cfg, params, prompts, max_new_tokens=[70, 40, 17])  # phases end at 16, 24, 32, 48, 64, 96, 128
    assert out.lengths.tolist() == [70, 40, 17]
    recompute_check(cfg, params, prompts, out)


def test_rollout_batch_is_device_resident_and_learner_ready(tiny):
    cfg, params = tiny
    s = Sampler(cfg, params)
    g, temperature = 2, 0.8
    kw = dict(max_new_tokens=10, temperature=temperature, top_p=0.9, seed=3)
    free = s.generate(PROMPTS, num_generations=g, **kw)
    eos = int(free.tokens[0, 3])  # row 0 stops after 4 tokens; others wherever it appears
    with jax.transfer_guard_device_to_host("disallow"):
        batch = s.rollout(PROMPTS, num_generations=g, eos_id=eos, **kw)
    assert isinstance(batch, RolloutBatch)
    assert all(isinstance(x, jax.Array) for x in batch)
    b, c = len(PROMPTS) * g, 10
    p = batch.prompt_slots
    assert batch.tokens.shape == (b, p + c) and batch.logprobs.shape == (b, c) and p == 32
    ref = s.generate(PROMPTS, num_generations=g, eos_id=eos, **kw)
    assert batch.completions() == ref.completions()
    np.testing.assert_array_equal(np.asarray(batch.completion_mask), ref.mask())
    np.testing.assert_array_equal(np.asarray(batch.finished), ref.finished)
    assert int(batch.lengths[0]) == 4 and bool(batch.finished[0])
    # The learner recomputes the sampler's log-probs from the batch alone.
    logits = models.forward(cfg, params, batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids)
    logp = jax.nn.log_softmax(logits[:, p - 1 : -1] / temperature, axis=-1)
    recomputed = jnp.take_along_axis(logp, batch.tokens[:, p:, None], axis=-1)[..., 0]
    mask = np.asarray(batch.completion_mask)
    np.testing.assert_allclose(np.where(mask, recomputed, 0.0), batch.logprobs, atol=1e-4, rtol=0)
    assert (np.asarray(batch.logprobs)[~mask] == 0).all()
    # Prompt rows: left padding has segment 0, real tokens count positions from 0.
    seg, pos = np.asarray(batch.segment_ids), np.asarray(batch.positions)
    for i, prompt in enumerate(PROMPTS):
        for j in range(g):
            r = i * g + j
            assert np.asarray(batch.tokens)[r, p - len(prompt) : p].tolist() == prompt
            assert seg[r, :p].sum() == len(prompt) and pos[r, p - 1] == len(prompt) - 1 and pos[r, p] == len(prompt)
            assert seg[r, p:].sum() == ref.lengths[r]
    assert batch.texts(lambda ids: " ".join(map(str, ids)))[0] == " ".join(map(str, ref.completions()[0]))
