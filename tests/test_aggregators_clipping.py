"""Norm clipping, weak DP and centered clipping against hand computations and their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import CenteredClippingState, centered_clipping, norm_clipping, weak_dp


def ctx_for(n, d, weights=None, key=0):
    return fljax.AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(key),
        client_ids=jnp.arange(n),
        params=jnp.zeros(d),
        reference=jnp.zeros(d),
    )


def run(rule, x, weights=None, key=0, state=None):
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    state = rule.init(jnp.zeros(d)) if state is None else state
    out, state, info = jax.jit(rule.update)(x, state, ctx_for(n, d, weights, key))
    return np.asarray(out), state, info


def cc_reference(x, v, tau, iterations):
    x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
    for _ in range(iterations):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        v = v + np.mean(diff * np.minimum(1.0, tau / np.maximum(norms, 1e-300))[:, None], axis=0)
    return v


def test_norm_clipping_hand_case_and_effective_weights():
    # [3,4] has norm 5 -> [0.6, 0.8]; [0, 0.5] is inside the ball
    out, _, info = run(norm_clipping(max_norm=1.0), [[3.0, 4.0], [0.0, 0.5]])
    np.testing.assert_allclose(out, [0.3, 0.65], rtol=1e-6)
    np.testing.assert_allclose(info["weights"], [0.2 / 1.2, 1 / 1.2], rtol=1e-6)
    # example-count weights: (3 * [0.6, 0.8] + 1 * [0, 0.5]) / 4
    out, _, _ = run(norm_clipping(max_norm=1.0), [[3.0, 4.0], [0.0, 0.5]], weights=[3, 1])
    np.testing.assert_allclose(out, [0.45, 0.725], rtol=1e-6)
    out, _, _ = run(norm_clipping(max_norm=1.0, weighted=False), [[3.0, 4.0], [0.0, 0.5]], weights=[3, 1])
    np.testing.assert_allclose(out, [0.3, 0.65], rtol=1e-6)


def test_norm_clipping_bounds_the_aggregate_and_drops_non_finite_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10)) * 10
    x[0] = 1e12
    x[1, 2] = np.nan
    out, _, info = run(norm_clipping(max_norm=2.0), x)
    assert np.linalg.norm(out) <= 2.0 + 1e-5
    w = np.asarray(info["weights"])
    assert w[1] == 0 and w[0] < 1e-9
    clipped = x[2:] / np.maximum(1, np.linalg.norm(x[2:], axis=1) / 2)[:, None]
    np.testing.assert_allclose(out, (clipped.sum(0) + x[0] / np.linalg.norm(x[0]) * 2) / 5, rtol=1e-5)


def test_weak_dp_noise_is_keyed_and_has_the_requested_std():
    x = np.random.default_rng(1).normal(size=(5, 5000))
    base, _, _ = run(norm_clipping(max_norm=1.0), x)
    rule = weak_dp(max_norm=1.0, noise_std=2.0)
    a, _, _ = run(rule, x, key=3)
    b, _, _ = run(rule, x, key=3)
    c, _, _ = run(rule, x, key=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    noise = a - base  # 5000 draws: the std's standard error is 0.02, the mean's 0.03
    assert abs(noise.std() - 2.0) < 0.1 and abs(noise.mean()) < 0.15
    np.testing.assert_allclose(run(weak_dp(max_norm=1.0, noise_std=0.0), x)[0], base)


def test_centered_clipping_hand_case_one_iteration_from_zero():
    # v = 0 + (1/2) ([3,4] * 1/5 + [0,0.5] * 1)
    out, state, info = run(centered_clipping(clip_radius=1.0, num_iterations=1), [[3.0, 4.0], [0.0, 0.5]])
    np.testing.assert_allclose(out, [0.3, 0.65], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.center), out)
    np.testing.assert_allclose(info["weights"], [0.1 / 0.6, 0.5 / 0.6], rtol=1e-6)


def test_centered_clipping_matches_the_definition_and_carries_its_state():
    rng = np.random.default_rng(2)
    x1, x2 = rng.normal(size=(7, 4)) * 3, rng.normal(size=(7, 4)) * 3
    rule = centered_clipping(clip_radius=1.5, num_iterations=3)
    out1, state, _ = run(rule, x1)
    np.testing.assert_allclose(out1, cc_reference(x1, np.zeros(4), 1.5, 3), rtol=1e-5, atol=1e-6)
    out2, state2, _ = run(rule, x2, state=state)
    np.testing.assert_allclose(out2, cc_reference(x2, out1, 1.5, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state2.center), out2)
    fresh, _, _ = run(rule, x2)  # a fresh state starts from zeros: a different result
    assert not np.allclose(fresh, out2, atol=1e-3)


def test_centered_clipping_info_weights_are_the_exact_coefficients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5)) * 4
    v0 = jnp.asarray(rng.normal(size=5), jnp.float32)
    out, _, info = run(centered_clipping(clip_radius=1.0, num_iterations=4), x, state=CenteredClippingState(v0))
    coef_v = float(info["center_weight"])
    w = np.asarray(info["weights"]) * (1 - coef_v)  # un-normalize: the x-coefficients sum to 1 - a_0
    np.testing.assert_allclose(coef_v * np.asarray(v0) + w @ x, out, rtol=1e-5, atol=1e-5)


def test_centered_clipping_with_a_large_radius_is_the_mean_and_survives_nan():
    x = np.random.default_rng(4).normal(size=(5, 3))
    np.testing.assert_allclose(run(centered_clipping(clip_radius=1e6), x)[0], x.mean(0), rtol=1e-5)
    bad = np.concatenate([x, [[np.nan, 0, 0], [np.inf, 1e30, 0]]])
    out, _, info = run(centered_clipping(clip_radius=1e6), bad)
    np.testing.assert_allclose(out, x.sum(0) / 7, rtol=1e-5)  # non-finite rows count as x_i = v = 0
    assert np.asarray(info["weights"])[5:].sum() == 0


def test_clipping_rules_have_finite_gradients_at_zero_updates():
    x = jnp.zeros((4, 3)).at[0].set(jnp.array([3.0, 0, 4]))
    ctx = ctx_for(4, 3)
    for rule in (norm_clipping(max_norm=1.0), centered_clipping(clip_radius=1.0, num_iterations=2)):
        g = jax.jit(jax.grad(lambda u: jnp.sum(rule.update(u, rule.init(jnp.zeros(3)), ctx)[0])))(x)  # noqa: B023
        assert np.isfinite(np.asarray(g)).all()


def test_clipping_hyperparameters_are_validated():
    with pytest.raises(ValueError, match="norm_clipping: max_norm must be a number > 0, got 0"):
        norm_clipping(max_norm=0)
    with pytest.raises(ValueError, match="weak_dp: noise_std"):
        weak_dp(max_norm=1.0, noise_std=-1.0)
    with pytest.raises(ValueError, match="centered_clipping: clip_radius"):
        centered_clipping(clip_radius=-1.0)
    with pytest.raises(ValueError, match="centered_clipping: num_iterations"):
        centered_clipping(clip_radius=1.0, num_iterations=0)
