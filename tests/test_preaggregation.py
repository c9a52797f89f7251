"""NNM, bucketing, per-client clipping and their composition with any rule; runner plumbing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import bucketing, clip, krum, mean, median, nnm, trimmed_mean, with_preaggregation
from fljax.experiment import ExperimentConfig, build_aggregator


def ctx_for(n, d, weights=None, key=0):
    return fljax.AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(key),
        client_ids=jnp.arange(n),
        params=jnp.zeros(d),
        reference=jnp.zeros(d),
    )


def run(rule, x, weights=None, key=0):
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    out, _, info = jax.jit(rule.update)(x, rule.init(jnp.zeros(d)), ctx_for(n, d, weights, key))
    return np.asarray(out), np.asarray(info["weights"]), info


def apply(pre, x, weights=None, key=0):
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    w = jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32)
    return [np.asarray(a) for a in jax.jit(pre.apply)(x, w, jnp.arange(n), jax.random.PRNGKey(key))]


def test_nnm_hand_case():
    # f = 1: each point averages its 3 nearest (itself first).
    # 0 -> {0,1,3}; 1 -> {1,0,3}; 3 -> {3,1,0}; 10 -> {10,3,1}
    y, w, ids, mixing = apply(nnm(num_byzantine=1), [[0.0], [1.0], [3.0], [10.0]])
    np.testing.assert_allclose(y[:, 0], [4 / 3, 4 / 3, 4 / 3, 14 / 3], rtol=1e-6)
    np.testing.assert_allclose(mixing * 3, [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])
    # mean after NNM: (3 * 4/3 + 14/3) / 4; client weights = column sums of the mixing / 4
    out, weights, info = run(with_preaggregation(mean(), nnm(num_byzantine=1)), [[0.0], [1.0], [3.0], [10.0]])
    np.testing.assert_allclose(out, [26 / 12], rtol=1e-6)
    np.testing.assert_allclose(weights, [1 / 4, 1 / 3, 1 / 3, 1 / 12], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(info["inner_weights"]), [0.25] * 4)


def test_nnm_then_krum_weights_are_the_chosen_rows_mixture():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4))
    y, _, _, mixing = apply(nnm(num_byzantine=2), x)
    out, w, info = run(with_preaggregation(krum(num_byzantine=2), nnm(num_byzantine=2)), x)
    chosen = int(np.argmax(np.asarray(info["inner_weights"])))
    np.testing.assert_allclose(out, y[chosen], rtol=1e-5)
    np.testing.assert_allclose(w, mixing[chosen], rtol=1e-5)
    np.testing.assert_allclose(w @ x, out, rtol=1e-5, atol=1e-6)


def test_bucketing_averages_shuffled_groups_and_is_keyed():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3))
    counts = np.arange(1, 8)
    y, w, ids, mixing = apply(bucketing(bucket_size=3), x, weights=counts, key=5)
    assert y.shape == (3, 3)  # ceil(7/3)
    members = [np.flatnonzero(row) for row in mixing]
    assert sorted(len(m) for m in members) == [1, 3, 3] and len(members[2]) == 1  # the last bucket holds n mod s
    assert sorted(np.concatenate(members)) == list(range(7))
    for b, m in enumerate(members):
        np.testing.assert_allclose(y[b], x[m].mean(0), rtol=1e-5)
        assert w[b] == counts[m].sum()
        assert ids[b] in m
    again = apply(bucketing(bucket_size=3), x, weights=counts, key=5)
    np.testing.assert_array_equal(again[0], y)
    other = apply(bucketing(bucket_size=3), x, weights=counts, key=6)
    assert not np.array_equal(other[3], mixing)


def test_mean_after_bucketing_is_the_mean():
    x = np.random.default_rng(2).normal(size=(7, 5))
    out, w, _ = run(with_preaggregation(mean(), bucketing(bucket_size=3)), x)
    np.testing.assert_allclose(out, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, np.full(7, 1 / 7), rtol=1e-5)


def test_clip_preaggregation_hand_case():
    y, _, _, mixing = apply(clip(max_norm=1.0), [[3.0, 4.0], [0.0, 0.5], [np.nan, 0.0]])
    np.testing.assert_allclose(y[:2], [[0.6, 0.8], [0.0, 0.5]], rtol=1e-6)
    assert np.isnan(y[2, 0])  # passed through for the rule to treat as an outlier
    np.testing.assert_allclose(np.diag(mixing), [0.2, 1.0, 1.0], rtol=1e-6)
    out, w, _ = run(with_preaggregation(median(), clip(max_norm=1.0)), [[3.0, 4.0], [0.0, 0.5], [0.0, 0.4]])
    np.testing.assert_allclose(out, [0.0, 0.5], rtol=1e-6)


def test_requirements_propagate_through_the_chain():
    agg = with_preaggregation(krum(num_byzantine=2), bucketing(bucket_size=2))
    with pytest.raises(ValueError, match=r"krum: needs n > 2f \+ 2.*n=6.*bucketing\(bucket_size=2\).*12 -> 6"):
        agg.requirement(12)
    agg.requirement(14)  # ceil(14/2) = 7 > 2*2 + 2
    with pytest.raises(ValueError, match=r"nnm: needs n > 2f rows; got n=4, num_byzantine f=2"):
        with_preaggregation(mean(), bucketing(bucket_size=2), nnm(num_byzantine=2)).requirement(8)
    with pytest.raises(ValueError, match="bucketing: bucket_size must be an integer > 0, got 0"):
        bucketing(bucket_size=0)
    with pytest.raises(ValueError, match="clip: max_norm"):
        clip(max_norm=-1.0)
    assert with_preaggregation(mean()) is not None


def test_robust_chain_survives_nan_and_outliers_and_is_permutation_invariant():
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(9, 6))
    x = np.concatenate([np.full((1, 6), np.nan), np.full((1, 6), 1e9), honest])
    rule = with_preaggregation(trimmed_mean(num_byzantine=2), nnm(num_byzantine=2))
    out, w, _ = run(rule, x)
    assert np.isfinite(out).all()
    assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5)
    assert w[:2].sum() == 0 and w.sum() == pytest.approx(1.0)
    perm = rng.permutation(11)
    out_p, w_p, _ = run(rule, x[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_p, w[perm], atol=1e-6)


def test_chain_is_differentiable():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 3)), jnp.float32)
    rule = with_preaggregation(mean(), bucketing(bucket_size=2), nnm(num_byzantine=1))
    g = np.asarray(jax.jit(jax.grad(lambda u: jnp.sum(rule.update(u, (), ctx_for(8, 3))[0])))(x))
    _, w, _ = run(rule, x)
    # the aggregate is sum_i w_i x_i with w fixed by the (discrete) neighbourhoods: d(sum_j out_j)/dx_ij = w_i
    np.testing.assert_allclose(g, np.repeat(w[:, None], 3, axis=1), rtol=1e-5)


def test_runner_builds_the_pre_aggregation_chain():
    config = ExperimentConfig(
        aggregator="krum",
        num_byzantine=2,
        clients_per_round=20,
        num_clients=20,
        pre_aggregation="bucketing, nnm",
        bucket_size=2,
    )
    agg = build_aggregator(config)
    agg.requirement(14)
    with pytest.raises(ValueError, match=r"krum.*20 -> 10 -> 10"):
        build_aggregator(dataclasses.replace(config, num_byzantine=4)).requirement(20)
    with pytest.raises(ValueError, match="--pre_aggregation: unknown pre-aggregation 'shuffle'"):
        build_aggregator(dataclasses.replace(config, pre_aggregation="shuffle"))
    with pytest.raises(ValueError, match="clip has no default for max_norm: give clip\\(max_norm=...\\)"):
        build_aggregator(dataclasses.replace(config, pre_aggregation="clip", bucket_size=None))
