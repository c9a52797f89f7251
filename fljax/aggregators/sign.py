"""Sign-based rules: SignGuard (Xu, Huang, Song, Lan, ICDCS 2022) and the robust learning rate,
RLR (Ozdayi, Kantarcioglu, Gel, AAAI 2021)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.clipping import clip_factors
from fljax.types import Aggregator, Array


def _dist(a: Array, b: Array) -> Array:
    """``[len(a), len(b)]`` Euclidean distances between small sets of low-dimensional points."""
    return jnp.sqrt(jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1))


def estimate_bandwidth(points: Array, quantile: float) -> Array:
    """scikit-learn's ``estimate_bandwidth``: the mean over points of the distance to their
    ``max(1, int(n * quantile))``-th nearest point, the point itself counted first."""
    n = points.shape[0]
    k = max(1, int(n * quantile))
    return jnp.mean(jnp.sort(_dist(points, points), axis=1)[:, k - 1])


def mean_shift_largest_cluster(points: Array, bandwidth: Array, max_iter: int = 300) -> Array:
    """``bool[n]``: the largest cluster of scikit-learn's flat-kernel ``MeanShift(bandwidth,
    bin_seeding=True, cluster_all=False)``, with dense ops and a bounded loop.

    As the library: seeds are the points rounded to a grid of step ``bandwidth`` (the points
    themselves if every point has its own bin, or if the bandwidth is 0); each seed moves to the
    mean of the points within ``bandwidth`` until it moves by at most ``1e-3 * bandwidth`` (at
    most ``max_iter`` moves); its intensity is the number of points it had within reach; the
    modes are scanned by decreasing intensity and each kept one suppresses the modes within
    ``bandwidth``; each point joins its nearest kept mode if it is within ``bandwidth``
    (otherwise it is an orphan); the largest cluster wins, ties to the most intense mode.
    Differences: duplicate seeds are kept (they converge to the same mode and are suppressed),
    equal intensities are ordered by seed index (the library orders them by mode coordinates),
    and all n points are used (the library's ``estimate_bandwidth(n_samples=50)`` subsamples
    when n > 50).
    """
    n = points.shape[0]
    same_bin = jnp.all(
        jnp.round(points[:, None, :] / jnp.where(bandwidth > 0, bandwidth, 1.0))
        == jnp.round(points[None, :, :] / jnp.where(bandwidth > 0, bandwidth, 1.0)),
        axis=-1,
    )
    first_of_bin = ~jnp.any(jnp.tril(same_bin, k=-1), axis=1)
    binned = jnp.round(points / jnp.where(bandwidth > 0, bandwidth, 1.0)) * bandwidth
    seeds = jnp.where((bandwidth > 0) & (jnp.sum(first_of_bin) < n), binned, points)
    stop = 1e-3 * bandwidth

    def cond(carry):
        it, _, _, active = carry
        return (it < max_iter) & jnp.any(active)

    def body(carry):
        it, modes, counts, active = carry
        within = _dist(modes, points) <= bandwidth
        count = jnp.sum(within, axis=1)
        moved = jnp.dot(within.astype(points.dtype), points) / jnp.maximum(count, 1)[:, None]
        moved = jnp.where((count > 0)[:, None], moved, modes)
        done = (count == 0) | (jnp.linalg.norm(moved - modes, axis=1) <= stop)
        modes = jnp.where(active[:, None], moved, modes)
        counts = jnp.where(active, count, counts)
        return it + 1, modes, counts, active & ~done

    init = (jnp.zeros((), jnp.int32), seeds, jnp.zeros(n, jnp.int32), jnp.ones(n, bool))
    _, modes, intensity, _ = jax.lax.while_loop(cond, body, init)

    order = jnp.argsort(-intensity, stable=True)
    modes, valid = modes[order], intensity[order] > 0
    close = _dist(modes, modes) <= bandwidth

    def suppress(i, unique):
        return jnp.where(unique[i], unique & ~(close[i] & (jnp.arange(n) != i)), unique)

    unique = jax.lax.fori_loop(0, n, suppress, valid)
    to_mode = jnp.where(unique[None, :], _dist(points, modes), jnp.inf)
    label = jnp.argmin(to_mode, axis=1)
    member = jnp.min(to_mode, axis=1) <= bandwidth
    sizes = jnp.zeros(n, jnp.int32).at[label].add(member.astype(jnp.int32))
    return member & (label == jnp.argmax(sizes))


def sign_features(updates: Array, coords: Array) -> Array:
    """``[n, 3]``: fractions of positive, zero and negative values on ``coords``, each column
    divided by its maximum over clients (as the authors' code). NaN counts as +inf (positive)."""
    s = jnp.sign(_common.sanitize(updates[:, coords]))
    feats = jnp.stack([jnp.mean(s > 0, axis=1), jnp.mean(s == 0, axis=1), jnp.mean(s < 0, axis=1)], axis=1)
    return feats / (jnp.max(feats, axis=0) + 1e-8)


def _grad_safe_norms(x: Array) -> Array:
    sq = jnp.sum(x * x, axis=1)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def signguard(
    norm_lower_bound: Optional[float] = 0.1,
    norm_upper_bound: Optional[float] = 3.0,
    coordinate_fraction: Optional[float] = 0.1,
    bandwidth_quantile: float = 0.5,
) -> Aggregator:
    """SignGuard: norm filter + sign-statistics clustering; then clip to the median norm, average.

    1. Norm filter: M = median of the n update norms; S1 = {i : L <= ||x_i|| / M <= R}.
    2. Sign clustering: on a random subset of ``max(1, int(fraction * d))`` coordinates (``context.key``)
       each client's feature is its (positive, zero, negative) sign fractions, each column
       divided by its max over clients; S2 = the largest mean-shift cluster of these features.
    3. S = S1 & S2 (S1 if empty); the aggregate is the uniform mean over S of
       ``x_i * min(1, M / ||x_i||)``.

    Clustering: the paper (and its code) uses scikit-learn's ``MeanShift`` with
    ``bandwidth = estimate_bandwidth(quantile=0.5)``, ``bin_seeding=True`` and
    ``cluster_all=False``. Here the same flat-kernel mean shift runs with dense ops in a bounded
    ``while_loop`` (``mean_shift_largest_cluster``; its docstring lists the small differences:
    tie order of equal intensities, no 50-point subsampling of the bandwidth estimate).
    The authors' code takes a random CONTIGUOUS block of coordinates; we sample coordinates
    uniformly without replacement, as the paper's text describes a random subset.
    Non-finite updates have infinite norm and fail the norm filter. ``info["weights"]``:
    membership in S times the clipping factor, normalized.

    Args:
      norm_lower_bound: L (> 0), default 0.1.
      norm_upper_bound: R (> L), default 3.0.
      coordinate_fraction: fraction of coordinates for the sign statistics, in (0, 1], default 0.1.
      bandwidth_quantile: the quantile of ``estimate_bandwidth``, in (0, 1], default 0.5.

    References:
      Xu, Huang, Song, Lan, "Byzantine-robust Federated Learning through Collaborative Malicious
      Gradient Filtering" (SignGuard), ICDCS 2022 (arXiv:2109.05872).

    Examples:
      >>> agg = signguard()
    """
    rule = "signguard"
    lo = 0.1 if norm_lower_bound is None else norm_lower_bound
    hi = 3.0 if norm_upper_bound is None else norm_upper_bound
    frac = 0.1 if coordinate_fraction is None else coordinate_fraction
    _common.check_positive(rule, "norm_lower_bound", lo)
    _common.check_positive(rule, "norm_upper_bound", hi)
    _common.require(hi > lo, rule, f"norm_upper_bound must be > norm_lower_bound; got R={hi}, L={lo}")
    for name, value in (("coordinate_fraction", frac), ("bandwidth_quantile", bandwidth_quantile)):
        _common.check_positive(rule, name, value)
        _common.require(value <= 1, rule, f"{name} must be in (0, 1], got {value!r}")

    def aggregate(updates, context):
        n, d = updates.shape
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)
        norms = jnp.where(finite, _grad_safe_norms(x), jnp.inf)
        median_norm = jnp.median(norms)
        guide_norms, guide_m = jax.lax.stop_gradient(norms), jax.lax.stop_gradient(median_norm)
        s1 = finite & (guide_norms >= lo * guide_m) & (guide_norms <= hi * guide_m)

        num = max(1, int(frac * d))
        coords = jax.random.choice(context.key, d, (num,), replace=False) if num < d else jnp.arange(d)
        feats = sign_features(jax.lax.stop_gradient(updates), coords)
        bandwidth = estimate_bandwidth(feats, bandwidth_quantile)
        s2 = mean_shift_largest_cluster(feats, bandwidth)

        keep = s1 & s2
        keep = jnp.where(jnp.any(keep), keep, s1)
        factors = jnp.where(
            median_norm > 0, clip_factors(jnp.sum(x * x, axis=1), jnp.where(median_norm > 0, median_norm, 1.0)), 0.0
        )
        w = keep.astype(updates.dtype)
        return _common.weighted_average(x * factors[:, None], w), _common.info(
            w * jax.lax.stop_gradient(factors), norm_kept=s1, sign_kept=s2
        )

    return _common.stateless(aggregate)


def rlr(learning_threshold: int, weighted: bool = True) -> Aggregator:
    """Robust learning rate: per coordinate, keep the mean's direction where at least theta
    clients agree on its sign, reverse it elsewhere.

    ``lr_j = +1 if |sum_i sign(x_ij)| >= theta else -1``; the aggregate is ``lr * mean`` (the
    example-count weighted mean, as the paper's FedAvg). The paper's server rate ``eta`` is the
    runner's ``--server_lr`` (the server optimizer multiplies the aggregate), so only the sign is
    applied here. RLR excludes no client: ``info["weights"]`` are the plain mean's weights.
    Non-finite updates are dropped (weight 0, no vote); ``info["flipped"]`` is the fraction of
    coordinates whose rate was reversed.

    Args:
      learning_threshold: theta, an integer in 1..n (the authors' example: 4 with 10 agents).
      weighted: weight the mean by example counts; ``False``: plain mean.

    References:
      Ozdayi, Kantarcioglu, Gel, "Defending Against Backdoors in Federated Learning with Robust
      Learning Rate", AAAI 2021.

    Examples:
      >>> fljax.aggregate(rlr(learning_threshold=2), jnp.array([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]]))  # sign sums 3, 0
      Array([ 1., -0.], dtype=float32)
    """
    rule = "rlr"
    theta = _common.check_positive(rule, "learning_threshold", learning_threshold, integer=True)
    _common.check_bool(rule, "weighted", weighted)

    def requirement(n: int) -> None:
        _common.require(theta <= n, rule, f"learning_threshold must be in 1..n={n}, got {theta}")

    def aggregate(updates, context):
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)
        w = (context.weights if weighted else jnp.ones_like(context.weights)).astype(updates.dtype)
        w = jnp.where(finite, w, 0.0)
        ones = jnp.ones(x.shape[0], x.dtype)  # column sums as a matrix-vector product (fast on XLA CPU)
        agreement = jnp.abs(jnp.dot(ones, jnp.sign(x), precision=jax.lax.Precision.HIGHEST))
        lr = jnp.where(agreement >= theta, 1.0, -1.0).astype(updates.dtype)
        return lr * _common.weighted_average(x, w), _common.info(w, flipped=jnp.mean(lr < 0))

    return _common.stateless(aggregate, requirement=requirement, count_weighted=weighted)
