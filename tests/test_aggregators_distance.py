"""Bulyan, geometric median and RFA against hand computations, a from-the-paper reference,
and their properties (permutation invariance, translation equivariance, bounded output)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import _common, bulyan, geometric_median, rfa
from fljax.aggregators.bulyan import closest_to_median_mean, iterated_krum
from fljax.aggregators.krum import krum_scores
from tests.helpers import aggregate_once

BULYAN1, BULYAN2, GM = bulyan(num_byzantine=1), bulyan(num_byzantine=2), geometric_median()  # shared compilations


def run(rule, x, weights=None, key=0):
    out, info = aggregate_once(rule, x, weights, key)
    return out, info["weights"], info


def bulyan_reference(x, f):
    """Bulyan straight from the paper, with Python loops (float64)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    remaining, selected = list(range(n)), []
    for _ in range(n - 2 * f):
        k = max(1, len(remaining) - f - 2)
        scores = []
        for i in remaining:
            dists = sorted(np.sum((x[i] - x[j]) ** 2) for j in remaining if j != i)
            scores.append(sum(dists[:k]))
        winner = remaining[int(np.argmin(scores))]
        selected.append(winner)
        remaining.remove(winner)
    s = x[selected]
    beta = len(selected) - 2 * f
    med = np.median(s, axis=0)
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        idx = np.argsort(np.abs(s[:, j] - med[j]), kind="stable")[:beta]
        out[j] = s[idx, j].mean()
    return out, sorted(selected)


# ---------------------------------------------------------------- Bulyan


def test_iterated_krum_shrinks_the_neighbour_count():
    # 1-D points, f = 1. Hand computation (squared distances, k = max(1, n' - f - 2)):
    # n'=7, k=4: scores 0:30 1:15 2:10 3:10 4:15 5:30 -> 2 (tie with 3, lowest index)
    # n'=6, k=3: 0:26 1:14 3:9 4:11 5:21 -> 3;  n'=5, k=2: 0:17 1:10 4:10 5:17 -> 1
    # n'=4, k=1: 0:16 4:1 5:1 -> 4;  n'=3, k=1: 0:25 5:25 (100 far) -> 0
    x = jnp.array([0.0, 1, 2, 3, 4, 5, 100])[:, None]
    sq = fljax.aggregators._common.pairwise_sq_distances(x)
    np.testing.assert_array_equal(np.asarray(jax.jit(iterated_krum, static_argnums=(1, 2))(sq, 1, 5)), [2, 3, 1, 4, 0])
    # the first step is plain Krum
    assert int(jnp.argmin(krum_scores(sq, 4))) == 2


def test_bulyan_hand_case_closest_to_median_is_not_the_trimmed_mean():
    # honest rows 0..4, outliers 5, 6 (far, and far from each other): theta = 5 selects 0..4, beta = 3.
    # coord 0: [0,1,2,3,4], median 2 -> {2,1,3} -> 2.0
    # coord 1: [0,1.5,2.5,3,3.2], median 2.5 -> {2.5,3,3.2} -> 2.9 (a trimmed mean would give 2.333)
    x = [[0, 0], [1, 1.5], [2, 2.5], [3, 3], [4, 3.2], [100, 0], [-100, 0]]
    out, w, info = run(BULYAN1, x)
    np.testing.assert_allclose(out, [2.0, 2.9], rtol=1e-6)
    np.testing.assert_allclose(w, np.array([0, 1, 2, 2, 1, 0, 0]) / 6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(info["selected"]), [1, 1, 1, 1, 1, 0, 0])


def test_closest_to_median_splits_boundary_ties_evenly():
    # column [-1, 1, 0, 0, 7], beta = 3: median 0, distances [1, 1, 0, 0, 7]; both zeros are kept
    # and the last slot is shared by -1 and +1 (the mean over both optimal subsets): 0, not -1/3.
    # column [5, 1, 2, 3, 4]: median 3, nearest {2, 3, 4} -> 3
    x = jnp.array([[-1.0, 5.0], [1.0, 1.0], [0.0, 2.0], [0.0, 3.0], [7.0, 4.0]])
    out, slots = jax.jit(closest_to_median_mean, static_argnums=1)(x, 3)
    np.testing.assert_allclose(np.asarray(out), [0.0, 3.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(slots), [0.5, 0.5, 2.0, 2.0, 1.0])
    out_rev, slots_rev = jax.jit(closest_to_median_mean, static_argnums=1)(x[::-1], 3)
    np.testing.assert_allclose(np.asarray(out_rev), np.asarray(out), atol=1e-7)
    np.testing.assert_allclose(np.asarray(slots_rev), np.asarray(slots)[::-1])


@pytest.mark.parametrize("seed,n,d,f", [(0, 7, 2, 1), (1, 11, 8, 2), (2, 11, 8, 2)])  # shapes shared with other tests
def test_bulyan_matches_the_reference(seed, n, d, f):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:f] += rng.normal(scale=5, size=(f, d))
    out, w, info = run({1: BULYAN1, 2: BULYAN2}.get(f) or bulyan(num_byzantine=f), x)
    ref, selected = bulyan_reference(x, f)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert sorted(np.flatnonzero(np.asarray(info["selected"]))) == selected
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()


def test_bulyan_without_byzantines_is_the_mean():
    x = np.random.default_rng(4).normal(size=(5, 3))
    np.testing.assert_allclose(run(bulyan(num_byzantine=0), x)[0], x.mean(0), rtol=1e-5, atol=1e-6)


def test_bulyan_permutation_invariance_and_translation_equivariance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(11, 8))
    out, w, _ = run(BULYAN2, x)
    perm = rng.permutation(11)
    out_p, w_p, _ = run(BULYAN2, x[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_p, w[perm], atol=1e-6)
    shift = rng.normal(size=8) * 100
    np.testing.assert_allclose(run(BULYAN2, x + shift)[0], out + shift, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("bad", [1e9, np.inf, -np.inf, np.nan])
def test_bulyan_output_stays_in_honest_range_with_f_outliers(bad):
    rng = np.random.default_rng(6)
    honest = rng.normal(size=(9, 8))
    x = np.concatenate([np.full((2, 8), bad), honest])
    x[1, ::2] = -1e9 if np.isfinite(bad) else 0.0  # a second, different outlier
    out, w, _ = run(BULYAN2, x)
    assert np.isfinite(out).all()
    assert np.all(out >= honest.min(0) - 1e-5) and np.all(out <= honest.max(0) + 1e-5)
    assert w[:2].sum() == 0


def test_bulyan_requirement_names_rule_n_and_f():
    with pytest.raises(ValueError, match=r"bulyan.*n >= 4f \+ 3.*n=10.*f=2"):
        bulyan(num_byzantine=2).requirement(10)
    bulyan(num_byzantine=2).requirement(11)
    with pytest.raises(ValueError, match="bulyan: num_byzantine"):
        bulyan(num_byzantine=-1)


def test_bulyan_gradient_is_finite_and_flows_to_contributing_clients():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(7, 2)), jnp.float32).at[6].set(50.0)
    rule = BULYAN1
    ctx = fljax.AggregationContext(jnp.ones(7), jax.random.PRNGKey(0), jnp.arange(7), jnp.zeros(2), jnp.zeros(2))
    g = jax.jit(jax.grad(lambda u: jnp.sum(rule.update(u, (), ctx)[0])))(x)
    _, w, _ = run(rule, x)
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(np.asarray(g).sum(1), w * 2, atol=1e-6)  # d(sum out)/dx_i = share * d


# ---------------------------------------------------------------- geometric median / RFA


def test_geometric_median_hand_cases():
    # on a line the geometric median is the median
    np.testing.assert_allclose(run(GM, [[0.0], [1.0], [10.0]])[0], [1.0], atol=1e-4)
    # weighted: weight 3 on 0 is more than half the total 5 -> the weighted median 0
    np.testing.assert_allclose(run(GM, [[0.0], [1.0], [10.0]], weights=[3, 1, 1])[0], [0.0], atol=1e-4)
    # a triangle with a >= 120 degree angle at A: the geometric median is A (the mean is not)
    out, _, _ = run(GM, [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]])
    np.testing.assert_allclose(out, [0.0, 0.0], atol=1e-4)
    # square corners -> centre
    np.testing.assert_allclose(run(GM, [[0, 0], [1, 0], [0, 1], [1, 1]])[0], [0.5, 0.5], atol=1e-5)


def test_geometric_median_satisfies_the_first_order_condition():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(9, 4))
    a = rng.integers(1, 5, size=9).astype(float)
    out, w, info = run(geometric_median(tol=1e-10, max_iter=1000), x, weights=a)
    unit = (out - x) / np.linalg.norm(out - x, axis=1, keepdims=True)
    assert np.linalg.norm(a @ unit) / a.sum() < 1e-3  # sum_i a_i (z - x_i)/||z - x_i|| = 0
    np.testing.assert_allclose(w @ x, out, atol=1e-4)  # info weights reproduce the aggregate
    assert 1 < int(info["iterations"]) <= 1000


def test_rfa_one_step_by_hand_and_many_steps_reach_the_geometric_median():
    # one Weiszfeld step from the mean 11/3: b_i = 1/|11/3 - x_i|
    b = 1 / np.array([11 / 3, 8 / 3, 19 / 3])
    expected = (b @ np.array([0.0, 1.0, 10.0])) / b.sum()
    np.testing.assert_allclose(run(rfa(num_iterations=1), [[0.0], [1.0], [10.0]])[0], [expected], rtol=1e-6)
    x = np.random.default_rng(9).normal(size=(8, 3))
    np.testing.assert_allclose(
        run(rfa(num_iterations=300), x)[0], run(geometric_median(tol=1e-9, max_iter=1000), x)[0], atol=1e-4
    )


def test_rfa_from_zero_is_karimireddy_et_al_s_start():
    # From the origin, nu = 0.5: b_i = 1/max(0.5, |x_i|) = 1/0.5, 1/1, 1/10 -> z1 = (0 + 1 + 1) / 3.1
    x = [[0.0], [1.0], [10.0]]
    z1 = 2 / 3.1
    np.testing.assert_allclose(run(rfa(num_iterations=1, nu=0.5, start="zero"), x)[0], [z1], rtol=1e-6)
    # second step from z1: b_i = 1/max(0.5, |z1 - x_i|)
    b = 1 / np.maximum(0.5, np.abs(z1 - np.array([0.0, 1.0, 10.0])))
    z2 = (b @ np.array([0.0, 1.0, 10.0])) / b.sum()
    np.testing.assert_allclose(run(rfa(num_iterations=2, nu=0.5, start="zero"), x)[0], [z2], rtol=1e-6)
    # The mean start's first step lands elsewhere; many steps from either reach the geometric median.
    assert abs(run(rfa(num_iterations=1, nu=0.5), x)[0][0] - z1) > 0.1
    far = np.random.default_rng(9).normal(size=(8, 3)) + 100.0
    gm = run(geometric_median(tol=1e-9, max_iter=1000), far)[0]
    np.testing.assert_allclose(run(rfa(num_iterations=300, start="zero"), far)[0], gm, atol=1e-3)
    with pytest.raises(ValueError, match="rfa: start must be 'mean' or 'zero', got 'median'"):
        rfa(start="median")


@pytest.mark.parametrize("rule", [geometric_median(), rfa(num_iterations=3)])
def test_weiszfeld_rules_permutation_invariant_and_translation_equivariant(rule):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(9, 5))
    a = rng.integers(1, 4, size=9)
    out, w, _ = run(rule, x, weights=a)
    perm = rng.permutation(9)
    out_p, w_p, _ = run(rule, x[perm], weights=a[perm])
    np.testing.assert_allclose(out_p, out, atol=1e-5)
    np.testing.assert_allclose(w_p, w[perm], atol=1e-5)
    shift = rng.normal(size=5) * 10
    np.testing.assert_allclose(run(rule, x + shift, weights=a)[0], out + shift, atol=1e-4)


def test_geometric_median_bounded_with_a_minority_of_outliers():
    # for a fraction alpha < 1/2 of arbitrary points: ||z - y|| <= 2(1-alpha)/(1-2 alpha) max_honest ||x_i - y||
    rng = np.random.default_rng(11)
    honest = rng.normal(size=(9, 6))
    bad = rng.normal(size=(4, 6)) * 1e6
    out, w, _ = run(GM, np.concatenate([bad, honest]))
    alpha = 4 / 13
    y = honest.mean(0)
    bound = 2 * (1 - alpha) / (1 - 2 * alpha) * np.max(np.linalg.norm(honest - y, axis=1))
    assert np.linalg.norm(out - y) <= bound
    assert w[:4].max() < 1e-5


def test_geometric_median_ignores_non_finite_rows():
    rng = np.random.default_rng(12)
    honest = rng.normal(size=(6, 3))
    x = np.concatenate([honest, [[np.nan, 0, 0], [np.inf, 1, 1]]])
    # Converged tightly: the non-finite rows change geometric_median's start, not its minimizer.
    for rule in (geometric_median(tol=1e-9, max_iter=1000), rfa()):
        out, w, _ = run(rule, x)
        np.testing.assert_allclose(out, run(rule, honest)[0], atol=1e-6)
        assert w[6:].sum() == 0


def test_geometric_median_implicit_gradient_matches_unrolled_iterations():
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
    r = jnp.asarray(rng.normal(size=3), jnp.float32)
    ctx = fljax.AggregationContext(jnp.ones(7), jax.random.PRNGKey(0), jnp.arange(7), jnp.zeros(3), jnp.zeros(3))
    gm, unrolled = geometric_median(tol=1e-9, max_iter=2000), rfa(num_iterations=400)
    g_implicit = jax.jit(jax.grad(lambda u: gm.update(u, (), ctx)[0] @ r))(x)
    g_unrolled = jax.jit(jax.grad(lambda u: unrolled.update(u, (), ctx)[0] @ r))(x)
    np.testing.assert_allclose(np.asarray(g_implicit), np.asarray(g_unrolled), atol=2e-3)
    # NaN rows: finite gradients, zero for the excluded row
    g_nan = jax.jit(jax.grad(lambda u: gm.update(u, (), ctx)[0] @ r))(x.at[0].set(jnp.nan))
    assert np.isfinite(np.asarray(g_nan)).all() and np.all(np.asarray(g_nan)[0] == 0)


def test_weiszfeld_hyperparameters_are_validated():
    with pytest.raises(ValueError, match="geometric_median: nu"):
        geometric_median(nu=0.0)
    with pytest.raises(ValueError, match="geometric_median: max_iter"):
        geometric_median(max_iter=0)
    with pytest.raises(ValueError, match="geometric_median: tol"):
        geometric_median(tol=-1.0)
    with pytest.raises(ValueError, match="rfa: num_iterations"):
        rfa(num_iterations=0)


def test_gram_is_float32_accurate():
    """Pairwise distances of close, offset updates to float32 accuracy against float64 (one
    TF32 or bf16 pass, the GPU default, is off by ~2e-4)."""
    from fljax.aggregators import _common

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(12, 3000)) * 0.01 + rng.normal(size=(1, 3000))).astype(np.float32)
    d = np.asarray(jax.jit(_common.pairwise_sq_distances)(jnp.asarray(x)), np.float64)
    x64 = x.astype(np.float64)
    ref = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    off = ~np.eye(12, dtype=bool)
    assert np.max(np.abs(d - ref)[off] / ref[off]) < 1e-5
    y = rng.normal(size=(5, 3000)).astype(np.float32)
    g = np.asarray(jax.jit(_common.gram)(jnp.asarray(x), jnp.asarray(y)), np.float64)
    np.testing.assert_allclose(g, x64 @ y.astype(np.float64).T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("d", [7, 300, 301])
def test_gram_of_centered_rows_over_column_blocks_equals_one_matmul(d, monkeypatch):
    # CPU sums the Gram matrix over column blocks (the last one shifted to end at d, its repeated
    # columns masked out); excluded rows are zero rows whatever they hold.
    monkeypatch.setattr(_common, "GRAM_BLOCK_BYTES", 4 * 5 * 128)  # 128 columns per block for n = 5
    x = jax.random.normal(jax.random.PRNGKey(0), (5, d)) + 3.0
    x = x.at[3, 0].set(jnp.nan)
    rows = _common.finite_rows(x)
    center = jnp.mean(x[:3], axis=0)
    centered = np.where(np.asarray(rows)[:, None], np.asarray(x, np.float64) - np.asarray(center), 0.0)
    got = jax.jit(_common.gram_of_centered_rows)(x, center, rows)
    np.testing.assert_allclose(got, centered @ centered.T, rtol=2e-5, atol=1e-4)
    assert not np.any(np.asarray(got)[3]) and not np.any(np.asarray(got)[:, 3])
