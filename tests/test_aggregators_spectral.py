"""DnC, SignGuard (and its jit mean shift against scikit-learn) and RLR against their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fljax.aggregators import dnc, rlr, signguard
from fljax.aggregators.sign import estimate_bandwidth, mean_shift_largest_cluster
from tests.helpers import aggregate_once


def run(rule, x, weights=None, key=0):
    out, info = aggregate_once(rule, x, weights, key)
    return out, info["weights"], info


# ---------------------------------------------------------------- DnC


def dnc_reference_keep(x, num_kept):
    """One DnC pass on all coordinates (numpy, float64)."""
    c = x - x.mean(0)
    v = np.linalg.svd(c, full_matrices=False)[2][0]
    return set(np.argsort((c @ v) ** 2, kind="stable")[:num_kept].tolist())


def test_dnc_removes_the_outliers_along_the_top_singular_direction():
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(8, 6)) * 0.1
    bad = np.tile([5.0, 5.0, 0, 0, 0, 0], (2, 1)) + rng.normal(size=(2, 6)) * 0.1  # large in a shared direction
    x = np.concatenate([bad, honest])
    out, w, info = run(dnc(num_byzantine=2, num_iterations=1, subsample_dim=6), x)
    np.testing.assert_allclose(out, honest.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, np.r_[0, 0, np.full(8, 1 / 8)], atol=1e-7)


@pytest.mark.parametrize("seed", [1, 2])
def test_dnc_matches_the_reference_scores(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, 5)) * rng.uniform(0.5, 3, size=(10, 1))
    f, c = 3, 1.0
    _, w, info = run(dnc(num_byzantine=f, num_iterations=2, subsample_dim=5, filter_frac=c), x)
    expected = dnc_reference_keep(x, 10 - 3)  # every pass sees all coordinates: the same kept set
    assert set(np.flatnonzero(w).tolist()) == expected
    np.testing.assert_allclose(w[w > 0], 1 / 7, rtol=1e-6)


def test_dnc_subsampling_is_keyed_and_intersection_shrinks_the_kept_set():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 200))
    rule = dnc(num_byzantine=2, num_iterations=4, subsample_dim=20)
    _, w1, _ = run(rule, x, key=1)
    _, w1b, _ = run(rule, x, key=1)
    np.testing.assert_array_equal(w1, w1b)
    assert (w1 > 0).sum() <= 10  # each pass keeps n - f = 10; the intersection at most that
    kept = [np.flatnonzero(run(rule, x, key=k)[1]).tolist() for k in range(2, 6)]
    assert len({tuple(k) for k in kept}) > 1  # different keys sample different coordinates


def test_dnc_survives_non_finite_rows_and_is_permutation_invariant():
    rng = np.random.default_rng(4)
    honest = rng.normal(size=(8, 5))
    x = np.concatenate([[[np.nan] * 5], [[np.inf, 0, 0, 0, 0]], honest])
    rule = dnc(num_byzantine=2, num_iterations=1, subsample_dim=5)
    out, w, _ = run(rule, x)
    assert np.isfinite(out).all() and w[:2].sum() == 0
    perm = rng.permutation(8)
    out_p, w_p, _ = run(rule, honest[perm])
    out_h, w_h, _ = run(rule, honest)
    np.testing.assert_allclose(out_p, out_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w_p, w_h[perm], atol=1e-7)


def test_dnc_validates_its_hyperparameters():
    with pytest.raises(ValueError, match=r"dnc: needs n > floor\(filter_frac \* f\).*n=4.*f=2.*c=2"):
        dnc(num_byzantine=2, filter_frac=2.0).requirement(4)
    dnc(num_byzantine=2, filter_frac=2.0).requirement(5)
    for kwargs, name in [
        ({"num_iterations": 0}, "num_iterations"),
        ({"subsample_dim": 0}, "subsample_dim"),
        ({"filter_frac": 0.0}, "filter_frac"),
    ]:
        with pytest.raises(ValueError, match=f"dnc: {name}"):
            dnc(num_byzantine=1, **kwargs)


# ---------------------------------------------------------------- SignGuard


def test_signguard_norm_filter_and_median_clipping_hand_case():
    # norms [1, 1, 1.2, 0.02, 20]: median 1; 0.02 < 0.1 and 20 > 3 fail the filter; all signs agree.
    base = np.ones(4) * 0.5
    x = np.stack([base, base, base * 1.2, base * 0.02, base * 20])
    out, w, info = run(signguard(coordinate_fraction=1.0), x)
    np.testing.assert_allclose(out, base, rtol=1e-6)  # row 2 clipped to the median norm 1
    np.testing.assert_allclose(w, np.array([1, 1, 1 / 1.2, 0, 0]) / (2 + 1 / 1.2), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(info["norm_kept"]), [1, 1, 1, 0, 0])


def test_signguard_sign_clustering_removes_sign_flippers_with_honest_norms():
    rng = np.random.default_rng(5)
    honest = rng.normal(loc=0.5, size=(10, 400))
    attackers = -honest[:3]  # same norms, flipped signs
    x = np.concatenate([attackers, honest])
    out, w, info = run(signguard(coordinate_fraction=0.5), x)
    np.testing.assert_array_equal(np.asarray(info["sign_kept"]), [0] * 3 + [1] * 10)
    assert w[:3].sum() == 0 and np.all(w[3:] > 0)
    median_norm = np.median(np.linalg.norm(x, axis=1))
    clipped = honest * np.minimum(1, median_norm / np.linalg.norm(honest, axis=1))[:, None]
    np.testing.assert_allclose(out, clipped.mean(0), rtol=1e-5, atol=1e-6)


def test_signguard_survives_non_finite_rows():
    rng = np.random.default_rng(6)
    x = rng.normal(loc=0.3, size=(9, 50))
    x[0] = np.nan
    x[1, 3] = np.inf
    out, w, _ = run(signguard(), x)
    assert np.isfinite(out).all() and w[:2].sum() == 0


def test_mean_shift_matches_scikit_learn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(7)
    shift = jax.jit(mean_shift_largest_cluster)
    for _ in range(3):  # two blobs and two stray points, one compiled shape
        pts = np.concatenate(
            [rng.normal(0.2, 0.05, size=(9, 3)), rng.normal(0.8, 0.05, size=(4, 3)), rng.uniform(0, 1, size=(2, 3))]
        ).astype(np.float32)
        bw = sklearn_cluster.estimate_bandwidth(pts, quantile=0.5)
        np.testing.assert_allclose(float(estimate_bandwidth(jnp.asarray(pts), 0.5)), bw, rtol=1e-5)
        labels = sklearn_cluster.MeanShift(bandwidth=bw, bin_seeding=True, cluster_all=False).fit(pts).labels_
        valid = labels[labels >= 0]
        expected = labels == np.argmax(np.bincount(valid))
        got = np.asarray(shift(jnp.asarray(pts), jnp.float32(bw)))
        np.testing.assert_array_equal(got, expected)


def test_signguard_validates_its_hyperparameters():
    with pytest.raises(ValueError, match="signguard: norm_upper_bound must be > norm_lower_bound"):
        signguard(norm_lower_bound=2.0, norm_upper_bound=1.0)
    with pytest.raises(ValueError, match=r"signguard: coordinate_fraction must be in \(0, 1\]"):
        signguard(coordinate_fraction=1.5)
    with pytest.raises(ValueError, match="signguard: norm_lower_bound"):
        signguard(norm_lower_bound=0.0)


# ---------------------------------------------------------------- RLR


def test_rlr_hand_cases():
    x = [[1.0, 2.0], [1.0, -1.0], [-1.0, 2.0]]
    # sign sums: col 0: 1 + 1 - 1 = 1; col 1: 1 - 1 + 1 = 1. Weighted mean with counts [1, 1, 2]: [0, 1.25]
    out, w, info = run(rlr(learning_threshold=1), x, weights=[1, 1, 2])
    np.testing.assert_allclose(out, [0.0, 1.25], atol=1e-7)
    np.testing.assert_allclose(w, [0.25, 0.25, 0.5])
    out, w, info = run(rlr(learning_threshold=2), x, weights=[1, 1, 2])
    np.testing.assert_allclose(out, [0.0, -1.25], atol=1e-7)
    assert float(info["flipped"]) == 1.0
    # agreement only on the first coordinate: [[1,1],[1,-1],[1,0]] with theta = 3
    out, _, info = run(rlr(learning_threshold=3), [[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-7)
    assert float(info["flipped"]) == 0.5


def test_rlr_drops_non_finite_rows_and_validates_theta():
    out, w, _ = run(rlr(learning_threshold=2), [[1.0, 1.0], [1.0, 1.0], [np.nan, -5.0]])
    np.testing.assert_allclose(out, [1.0, 1.0])
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"rlr: learning_threshold must be in 1..n=3, got 4"):
        rlr(learning_threshold=4).requirement(3)
    with pytest.raises(ValueError, match="rlr: learning_threshold must be an integer > 0"):
        rlr(learning_threshold=0)


@pytest.mark.parametrize("gap", [0.5, 0.99])
def test_top_eigenpair_matches_eigh(gap):
    """Matmul-only top eigenpair (DnC's, no LAPACK) against numpy's eigh, down to a 1% spectral gap."""
    from fljax.aggregators._common import top_eigenpair

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    eigenvalues = np.r_[3.0, 3.0 * gap, rng.uniform(0, 3.0 * gap, 38)]
    g = (q * eigenvalues) @ q.T
    value, vector = jax.jit(top_eigenpair)(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(float(value), 3.0, rtol=1e-4)
    assert abs(abs(float(np.dot(np.asarray(vector), q[:, 0]))) - 1.0) < 1e-4
    value, vector = jax.jit(top_eigenpair)(jnp.zeros((5, 5)))
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(vector)))
