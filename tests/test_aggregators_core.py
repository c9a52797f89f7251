"""mean, median, trimmed mean, Krum / Multi-Krum against hand computations and their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import krum, mean, median, multi_krum, trimmed_mean


def agg_with_info(rule, x, weights=None):
    x = jnp.asarray(x, jnp.float32)
    ctx = fljax.AggregationContext(
        weights=jnp.ones(len(x)) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(0),
        client_ids=jnp.arange(len(x)),
        params=jnp.zeros(x.shape[1]),
        reference=jnp.zeros(x.shape[1]),
    )
    out, _, info = jax.jit(rule.update)(x, rule.init(jnp.zeros(x.shape[1])), ctx)
    return np.asarray(out), np.asarray(info["weights"])


def test_mean_weights_by_example_counts():
    out, w = agg_with_info(mean(), [[0.0, 1.0], [3.0, 5.0]], weights=[3, 1])
    np.testing.assert_allclose(out, [0.75, 2.0])
    np.testing.assert_allclose(w, [0.75, 0.25])
    out, _ = agg_with_info(mean(weighted=False), [[0.0, 1.0], [3.0, 5.0]], weights=[3, 1])
    np.testing.assert_allclose(out, [1.5, 3.0])


def test_median_hand_cases_and_shares():
    out, w = agg_with_info(median(), [[1.0, 9.0], [5.0, 2.0], [100.0, 3.0]])
    np.testing.assert_allclose(out, [5.0, 3.0])
    np.testing.assert_allclose(w, [0.0, 0.5, 0.5])  # client 1 is the median of coord 0, client 2 of coord 1
    out, w = agg_with_info(median(), [[1.0], [5.0], [100.0], [7.0]])
    np.testing.assert_allclose(out, [6.0])
    np.testing.assert_allclose(w, [0.0, 0.5, 0.0, 0.5])


def test_trimmed_mean_hand_case_with_ties():
    out, w = agg_with_info(trimmed_mean(num_byzantine=1), [[0.0], [1.0], [2.0], [9.0]])
    np.testing.assert_allclose(out, [1.5])
    np.testing.assert_allclose(w, [0, 0.5, 0.5, 0])
    # three tied values at the top: one is trimmed, the two kept slots split over three clients
    out, w = agg_with_info(trimmed_mean(num_byzantine=1), [[0.0], [4.0], [4.0], [4.0], [1.0]])
    np.testing.assert_allclose(out, [(1 + 4 + 4) / 3])
    np.testing.assert_allclose(w, [0, 2 / 9, 2 / 9, 2 / 9, 1 / 3], rtol=1e-6)
    out, _ = agg_with_info(trimmed_mean(beta=0.25), [[0.0], [1.0], [2.0], [9.0]])
    np.testing.assert_allclose(out, [1.5])


def test_trimmed_mean_zero_trim_is_the_plain_mean():
    x = np.random.default_rng(0).normal(size=(7, 5))
    np.testing.assert_allclose(agg_with_info(trimmed_mean(num_byzantine=0), x)[0], x.mean(0), rtol=1e-5)


@pytest.mark.parametrize("rule", [median(), trimmed_mean(num_byzantine=2)])
def test_coordinatewise_output_stays_in_honest_range_with_f_outliers(rule):
    rng = np.random.default_rng(1)
    honest = rng.normal(size=(7, 20))
    bad = np.stack([np.full(20, 1e9), np.full(20, -np.inf)])
    out, w = agg_with_info(rule, np.concatenate([bad, honest]))
    assert np.all(out >= honest.min(0) - 1e-6) and np.all(out <= honest.max(0) + 1e-6)
    assert w[:2].sum() == 0


@pytest.mark.parametrize("rule", [median(), trimmed_mean(num_byzantine=2), krum(num_byzantine=2)])
def test_robust_rules_survive_nan_updates(rule):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 6))
    x[0] = np.nan
    x[1, 3] = np.nan
    out, _ = agg_with_info(rule, x)
    assert np.isfinite(out).all()


def test_krum_scores_use_squared_distances_to_n_minus_f_minus_2_neighbours():
    x = np.array([[0.0], [1.0], [3.0], [7.0], [20.0]])
    # f = 1: 2 neighbours. Scores: 0 -> 1+9=10; 1 -> 1+4=5; 3 -> 4+9=13; 7 -> 16+36=52; 20 -> 169+289=458
    rule = krum(num_byzantine=1)
    out, w = agg_with_info(rule, x)
    np.testing.assert_allclose(out, [1.0])
    np.testing.assert_allclose(w, [0, 1, 0, 0, 0])
    ctx_out = rule.update(
        jnp.asarray(x, jnp.float32),
        (),
        fljax.AggregationContext(jnp.ones(5), jax.random.PRNGKey(0), jnp.arange(5), jnp.zeros(1), jnp.zeros(1)),
    )[2]["scores"]
    np.testing.assert_allclose(ctx_out, [10, 5, 13, 52, 458], rtol=1e-6)


def test_krum_distance_power_four_is_karimireddy_et_al_s_score_and_outweighs_copies():
    # Two copies at 0 (mimic), then 3, 5.2, 7.4; f = 1: two neighbours each.
    x = np.array([[0.0], [0.0], [3.0], [5.2], [7.4]])
    # p = 2: 0 -> 0 + 9 = 9 (twice); 3 -> 2.2^2 + 3^2 = 13.84; 5.2 -> 2 * 2.2^2 = 9.68; 7.4 -> 2.2^2 + 4.4^2 = 24.2
    out, w = agg_with_info(krum(num_byzantine=1), x)
    np.testing.assert_allclose(out, [0.0])
    np.testing.assert_allclose(w, [1, 0, 0, 0, 0])
    # p = 4 (the authors' code squares the squared distances): 0 -> 81 (twice); 3 -> 23.43 + 81 = 104.4;
    # 5.2 -> 2 * 23.43 = 46.85; 7.4 -> 23.43 + 374.8 = 398.2: the copies lose to 5.2.
    rule = krum(num_byzantine=1, distance_power=4)
    out, w = agg_with_info(rule, x)
    np.testing.assert_allclose(out, [5.2], rtol=1e-6)
    np.testing.assert_allclose(w, [0, 0, 0, 1, 0])
    ctx = fljax.AggregationContext(jnp.ones(5), jax.random.PRNGKey(0), jnp.arange(5), jnp.zeros(1), jnp.zeros(1))
    scores = rule.update(jnp.asarray(x, jnp.float32), (), ctx)[2]["scores"]
    np.testing.assert_allclose(scores, [81, 81, 2.2**4 + 81, 2 * 2.2**4, 2.2**4 + 4.4**4], rtol=1e-5)
    # p = 1, unsquared (FLPoison's): 0 -> 3 (twice); 5.2 -> 4.4: the copies win again.
    out, _ = agg_with_info(multi_krum(num_byzantine=1, num_selected=1, distance_power=1), x)
    np.testing.assert_allclose(out, [0.0])
    for bad in (0, -2, float("inf"), "4"):
        with pytest.raises(ValueError, match=r"krum: distance_power must be a (finite )?number > 0"):
            krum(num_byzantine=1, distance_power=bad)


def test_multi_krum_averages_the_lowest_scores():
    x = np.array([[0.0], [1.0], [3.0], [7.0], [20.0]])
    out, w = agg_with_info(multi_krum(num_byzantine=1, num_selected=2), x)
    np.testing.assert_allclose(out, [0.5])
    np.testing.assert_allclose(w, [0.5, 0.5, 0, 0, 0])
    out, _ = agg_with_info(multi_krum(num_byzantine=1), x)  # m = n - f = 4
    np.testing.assert_allclose(out, [(0 + 1 + 3 + 7) / 4])


def test_krum_never_selects_a_far_outlier():
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(8, 30)) * 0.01
    outliers = rng.normal(size=(3, 30)) * 0.01 + 5.0
    out, w = agg_with_info(krum(num_byzantine=3), np.concatenate([outliers, honest]))
    assert w[:3].sum() == 0 and np.abs(out).max() < 1


def test_pairwise_distances_survive_a_large_common_offset():
    """Updates 1e-3 apart around a common offset of 10 (d = 1000): the Gram identity must not cancel."""
    base = np.full((1, 1000), 10.0)
    x = base + np.array([[0.0], [1e-3], [2e-3], [5e-2], [6e-2]]) * np.ones((1, 1000))
    d = np.asarray(fljax.aggregators._common.pairwise_sq_distances(jnp.asarray(x, jnp.float32)))
    ref = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d[0, 1], ref[0, 1], rtol=0.05)


def test_krum_requirement_names_rule_and_bound():
    with pytest.raises(ValueError, match=r"krum: needs n > 2f \+ 2 .* got n=6, num_byzantine f=2"):
        fljax.aggregate(krum(num_byzantine=2), jnp.ones((6, 3)))
    with pytest.raises(ValueError, match="num_byzantine must be an integer >= 0"):
        krum(num_byzantine=-1)


def test_trimmed_mean_requirements():
    with pytest.raises(ValueError, match="trimmed_mean: needs n > 2"):
        fljax.aggregate(trimmed_mean(num_byzantine=2), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        trimmed_mean(beta=0.7)
    with pytest.raises(ValueError, match="exactly one of num_byzantine"):
        trimmed_mean()


def test_aggregate_accepts_stacked_pytrees():
    tree = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 60.0]]), "b": jnp.array([1.0, 2.0, 30.0])}
    out = fljax.aggregate(median(), tree)
    np.testing.assert_allclose(out["a"], [3.0, 4.0])
    np.testing.assert_allclose(out["b"], 2.0)
