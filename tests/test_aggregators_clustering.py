"""FLAME and the two-cluster filter: HDBSCAN equivalence, hand cases, clipping, noise, invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fljax.aggregators import REGISTRY, cluster_filter, flame
from fljax.aggregators.clustering import cosine_distances, majority_cluster, single_linkage_levels
from fljax.experiment import ExperimentConfig, build_aggregator
from tests.helpers import aggregate_once


def step(rule, x, weights=None, key=0):
    """One jitted aggregation (compiled once per rule object and shape): (aggregate, info)."""
    return aggregate_once(rule, x, weights, key)


FLAME_EXACT = flame(noise_lambda=0.0)
FILTER = cluster_filter()


def line_distances(positions):
    p = np.asarray(positions, np.float32)
    return jnp.asarray(np.abs(p[:, None] - p[None, :]))


# ------------------------------------------------------------------------------ majority clustering


def test_single_linkage_levels_by_hand():
    # Points 0, 1, 2.5, 10, 10.5: merges at .5 (3,4), 1 (0,1), 1.5 (01,2), 7.5 (012,34).
    u = np.asarray(single_linkage_levels(line_distances([0.0, 1.0, 2.5, 10.0, 10.5])))
    np.testing.assert_allclose(u[0], [0.0, 1.0, 1.5, 7.5, 7.5])
    np.testing.assert_allclose(u[3], [7.5, 7.5, 7.5, 0.0, 0.5])
    np.testing.assert_allclose(u[2], [1.5, 1.5, 0.0, 7.5, 7.5])


def test_majority_cluster_by_hand():
    # min_cluster_size 3. {0,1,2,3,4} -> {0,1,2} (>= 3, continue) + {3,4} (noise);
    # {0,1,2} -> {0,1} + {2}: both < 3, the cluster ends: {0,1,2}.
    np.testing.assert_array_equal(
        majority_cluster(line_distances([0.0, 1.0, 2.5, 10.0, 10.5]), 3), [True, True, True, False, False]
    )
    # 0, 1, 2.5, 3, 10: {0..3} + {4}; {0..3} -> {0,1} + {2,3} at 1.5: both < 3 -> {0,1,2,3}.
    np.testing.assert_array_equal(
        majority_cluster(line_distances([0.0, 1.0, 2.5, 3.0, 10.0]), 3), [True, True, True, True, False]
    )
    # A chain peeling one point at a time keeps only the tightest 3: 0, 4, 6, 7, 7.5 -> {6, 7, 7.5}.
    np.testing.assert_array_equal(
        majority_cluster(line_distances([0.0, 4.0, 6.0, 7.0, 7.5]), 3), [False, False, True, True, True]
    )


def test_majority_cluster_equals_sklearn_hdbscan():
    hdbscan = pytest.importorskip("sklearn.cluster").HDBSCAN
    rng = np.random.default_rng(0)
    distances = jax.jit(cosine_distances)
    for n in (7, 10):
        find = jax.jit(lambda d, n=n: majority_cluster(d, n // 2 + 1))
        for _ in range(15):
            k = int(rng.integers(1, 4))
            x = rng.normal(size=(k, 4))[rng.integers(0, k, n)] + rng.normal(size=(n, 4)) * rng.uniform(0.05, 1.0)
            dist = np.asarray(distances(jnp.asarray(x, jnp.float32)), np.float64)
            dist = (dist + dist.T) / 2
            labels = (
                hdbscan(
                    min_cluster_size=n // 2 + 1,
                    min_samples=1,
                    allow_single_cluster=True,
                    metric="precomputed",
                    copy=True,
                )
                .fit(dist)
                .labels_
            )
            np.testing.assert_array_equal(np.asarray(find(jnp.asarray(dist, jnp.float32))), labels >= 0)


# -------------------------------------------------------------------------------------------- FLAME

MAJORITY = np.array([[1.0, 0.0], [2.0, 0.1], [4.0, -0.1]])
MINORITY = np.array([[-3.0, 0.0], [-3.0, 0.5]])


def test_flame_keeps_the_majority_and_clips_to_the_median_norm():
    x = np.concatenate([MAJORITY, MINORITY])
    out, info = step(FLAME_EXACT, x, weights=[5, 1, 1, 1, 1])
    norms = np.linalg.norm(x, axis=1)  # [1, 2.0025, 4.00125, 3, 3.0414]: median 3
    assert float(info["norm_bound"]) == pytest.approx(3.0)
    factors = np.array([1.0, 1.0, 3.0 / norms[2], 0.0, 0.0])
    np.testing.assert_allclose(info["clip_factors"], factors, rtol=1e-6)
    # Uniform mean of the clipped majority (example counts are ignored, as in the paper).
    np.testing.assert_allclose(out, (MAJORITY * factors[:3, None]).sum(0) / 3, rtol=1e-6)
    np.testing.assert_allclose(info["weights"], [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-6)


def test_flame_noise_is_lambda_times_the_median_norm_and_keyed():
    d = 4000
    rng = np.random.default_rng(1)
    x = (np.ones(d) + 0.01 * rng.normal(size=(5, d))).astype(np.float32)
    rule = flame(noise_lambda=0.5)
    clean, _ = step(FLAME_EXACT, x)
    noisy, info = step(rule, x, key=1)
    noise = (noisy - clean) / (0.5 * float(info["norm_bound"]))
    assert abs(noise.std() - 1.0) < 0.05 and abs(noise.mean()) < 0.05
    np.testing.assert_array_equal(step(rule, x, key=1)[0], noisy)
    assert not np.allclose(step(rule, x, key=2)[0], noisy)


def test_flame_permutation_invariance_and_non_finite_rows():
    rng = np.random.default_rng(2)
    x = np.concatenate([np.ones((5, 3)) + 0.2 * rng.normal(size=(5, 3)), -np.ones((2, 3))]).astype(np.float32)
    rule = flame(noise_lambda=0.01)
    out, info = step(rule, x)
    perm = rng.permutation(7)
    out_p, info_p = step(rule, x[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], atol=1e-6)
    assert info["weights"][5:].sum() == 0
    x[1] = np.nan
    x[6] = np.inf
    out, info = step(rule, x)
    assert np.all(np.isfinite(out)) and info["weights"][1] == 0 and info["weights"][6] == 0
    # With 4 of 7 non-finite no majority of 4 finite updates exists: nothing admitted, zero mean.
    x[2:5] = np.nan
    out, info = step(FLAME_EXACT, x)
    np.testing.assert_array_equal(out, np.zeros(3))
    np.testing.assert_array_equal(info["weights"], np.zeros(7))


def test_flame_min_cluster_size_and_bad_hyper_parameters():
    x = np.concatenate([MAJORITY, MINORITY])
    # min_cluster_size = 5 = n: the whole set is the cluster.
    _, info = step(flame(noise_lambda=0.0, min_cluster_size=5), x)
    np.testing.assert_allclose(info["weights"], np.full(5, 0.2))
    with pytest.raises(ValueError, match=r"flame: noise_lambda must be a number >= 0, got -1"):
        flame(noise_lambda=-1)
    with pytest.raises(
        ValueError, match=r"flame: min_cluster_size must be in n//2\+1..n = 3..5 \(a strict majority\), got 2"
    ):
        flame(min_cluster_size=2).requirement(5)
    with pytest.raises(ValueError, match=r"flame: min_cluster_size must be an integer > 0"):
        flame(min_cluster_size=2.5)


# ----------------------------------------------------------------------------------- cluster_filter


def spherical_two_means_reference(x, iterations):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.clip(u @ u.T, -1, 1)
    i, j = np.unravel_index(np.argmax(1 - cos), cos.shape)
    c = u[[i, j]]
    for _ in range(iterations):
        a = np.argmax(u @ c.T, axis=1)
        for k in range(2):
            if (a == k).any():
                s = u[a == k].sum(0)
                c[k] = s / np.linalg.norm(s)
    return np.argmax(u @ c.T, axis=1)


def test_cluster_filter_keeps_the_larger_group_weighted():
    a = np.array([[1.0, 0.1], [1.0, -0.1], [2.0, 0.0], [1.0, 0.2]])
    b = np.array([[-1.0, 1.0], [-2.0, 2.2]])
    counts = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 10.0])
    out, info = step(FILTER, np.concatenate([a, b]), weights=counts)
    np.testing.assert_allclose(out, (counts[:4, None] * a).sum(0) / 10.0, rtol=1e-6)
    np.testing.assert_allclose(info["weights"], [0.1, 0.2, 0.3, 0.4, 0, 0], rtol=1e-6)
    # Identical directions: both seeds coincide and everything is kept.
    out, info = step(FILTER, np.tile([[1.0, 1.0]], (6, 1)) * np.arange(1, 7)[:, None], weights=counts)
    np.testing.assert_allclose(info["weights"], counts / counts.sum(), rtol=1e-6)


def test_cluster_filter_matches_spherical_two_means_and_is_permutation_invariant():
    rng = np.random.default_rng(3)
    for _ in range(5):
        centers = rng.normal(size=(2, 5))
        x = (centers[rng.integers(0, 2, 9)] + 0.8 * rng.normal(size=(9, 5))).astype(np.float32)
        _, info = step(FILTER, x)
        assign = spherical_two_means_reference(x.astype(np.float64), 10)
        same = np.array_equal(info["cluster"], assign) or np.array_equal(info["cluster"], 1 - assign)
        assert same, (info["cluster"], assign)
        perm = rng.permutation(9)
        _, info_p = step(FILTER, x[perm])
        np.testing.assert_allclose(info_p["weights"], info["weights"][perm], atol=1e-6)


def test_cluster_filter_non_finite_rows_and_bad_hyper_parameters():
    x = np.array([[1.0, 0.0], [1.0, 0.1], [np.nan, 0.0], [1.0, -0.1], [-1.0, 0.0], [np.inf, 1.0]])
    out, info = step(FILTER, x)
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(info["weights"], [1 / 3, 1 / 3, 0, 1 / 3, 0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"cluster_filter: num_iterations must be an integer > 0, got 0"):
        cluster_filter(num_iterations=0)


def test_runner_builds_the_clustering_rules_by_name():
    assert "flame" in REGISTRY and "cluster_filter" in REGISTRY
    agg = build_aggregator(ExperimentConfig(aggregator="flame", noise_lambda=0.0, min_cluster_size=4))
    with pytest.raises(ValueError, match="flame: min_cluster_size"):
        agg.requirement(10)
    with pytest.raises(ValueError, match="cluster_filter: num_iterations"):
        build_aggregator(ExperimentConfig(aggregator="cluster_filter", num_iterations=-2))
