"""Auror (Shen, Tople, Saxena, ACSAC 2016): find the coordinates on which the clients split into
two distant groups during the first rounds; then each round, 2-means on those coordinates, and
the minority cluster is left out."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.order_statistics import float_key, key_float
from fljax.types import Aggregator, Array


class AurorState(NamedTuple):
    """Auror's state: ``indicative`` ``bool[d]``, the indicative coordinates found so far, and
    ``round``, how many rounds the rule has aggregated (int32)."""

    indicative: Array
    round: Array


def two_means_1d_gaps(x: Array, valid: Array) -> Array:
    """``[d]``: per column of ``x [n, d]``, the distance between the two centres of the optimal
    1-D 2-means of the ``valid`` rows' values (0 with fewer than 2 of them).

    Exact: in one dimension the optimal 2-means is a split of the sorted values, the one that
    maximizes the between-cluster sum of squares ``t (m - t) / m (mean_left - mean_right)^2``, so
    all ``m - 1`` splits are scored from prefix sums (scikit-learn's Lloyd iterations may stop at
    a local optimum). Columns are scaled by their largest magnitude first, so that sums of huge
    values do not overflow.
    """
    n = x.shape[0]
    scale = jnp.max(jnp.where(valid[:, None], jnp.abs(x), 0.0), axis=0)
    scale = jnp.where(scale > 0, scale, 1.0)
    # Sorted as int32 keys (4x faster than a float sort on XLA CPU); invalid rows last.
    v = key_float(jnp.sort(float_key(jnp.where(valid[:, None], x / scale, jnp.inf)), axis=0))
    m = jnp.sum(valid)
    lower = jnp.tril(jnp.ones((n, n), x.dtype))  # prefix sums as one matmul (XLA CPU's cumsum is 7x slower)
    prefix = jnp.dot(lower, jnp.where(jnp.isfinite(v), v, 0.0), precision=jax.lax.Precision.HIGHEST)  # [n, d]
    total = prefix[jnp.maximum(m - 1, 0)]
    t = jnp.arange(1, n, dtype=x.dtype)[:, None]  # left sizes 1 .. n - 1
    mf = m.astype(x.dtype)
    left = prefix[:-1] / t
    right = (total - prefix[:-1]) / jnp.maximum(mf - t, 1.0)
    between = jnp.where(t < mf, t * (mf - t) / jnp.maximum(mf, 1.0) * jnp.square(right - left), -1.0)
    best = jnp.argmax(between, axis=0)
    gap = jnp.take_along_axis(right - left, best[None], axis=0)[0] * scale
    return jnp.where(m >= 2, jnp.abs(gap), 0.0)


def kernel_two_means(sq: Array, valid: Array, num_iterations: int) -> Array:
    """``int[n]`` cluster (0 or 1) of each row by Euclidean 2-means from its ``[n, n]`` squared
    distances ``sq`` (rows not ``valid`` join no cluster: -1).

    Seeds: the two valid rows farthest apart; then ``num_iterations`` Lloyd steps, each on
    ``sq`` alone: a centroid is a member set ``w`` of size s, and
    ``||x_i - c||^2 = (sq w)_i / s - w^T sq w / (2 s^2)``. Ties go to cluster 0; an emptied
    cluster keeps its members. Distances that overflowed float32 count as 4 times the largest
    finite one (farther than any other).
    """
    n = sq.shape[0]
    both = valid[:, None] & valid[None, :]
    finite = jnp.isfinite(sq) & both
    top = jnp.max(jnp.where(finite, sq, 0.0))
    d = jnp.where(both, jnp.where(finite, sq / jnp.where(top > 0, top, 1.0), 4.0), 0.0)
    flat = jnp.argmax(jnp.where(both, d, -1.0))
    sets = jax.nn.one_hot(jnp.stack([flat // n, flat % n]), n, dtype=d.dtype)  # [2, n]
    hi = jax.lax.Precision.HIGHEST

    def assign(w):
        size = jnp.maximum(jnp.sum(w, axis=1), 1.0)
        dw = jnp.dot(w, d, precision=hi)  # [2, n]
        spread = jnp.sum(dw * w, axis=1) / (2 * size * size)
        return jnp.argmin(dw / size[:, None] - spread[:, None], axis=0)

    def lloyd(_, w):
        member = jax.nn.one_hot(assign(w), 2, dtype=d.dtype).T * valid[None, :]
        return jnp.where((jnp.sum(member, axis=1) > 0)[:, None], member, w)

    sets = jax.lax.fori_loop(0, num_iterations, lloyd, sets)
    same = top <= 0  # every valid row equal on these coordinates: one cluster
    return jnp.where(valid, jnp.where(same, 0, assign(sets)), -1)


def auror(alpha: float = 0.002, detection_rounds: int = 10, num_iterations: int = 10) -> Aggregator:
    """Auror: cluster the clients on their indicative coordinates; average the majority.

    1. Indicative coordinates (in each of the first ``detection_rounds`` rounds the rule
       aggregates, then frozen in the state): coordinate j is indicative when the optimal 1-D
       2-means of the clients' values ``x_ij`` puts its two centres more than ``alpha`` apart
       (``two_means_1d_gaps``; exact, where scikit-learn's Lloyd may stop at a local optimum).
       Each detection round recomputes the set from its own updates (as FLPoison does).
    2. Every round: Euclidean 2-means of the updates restricted to the indicative coordinates
       (``kernel_two_means``: deterministic seeds at the two farthest updates, ``num_iterations``
       Lloyd steps); the clients of the smaller cluster are flagged and the others averaged
       uniformly. Two clusters of equal size: no one is flagged (Auror cannot tell which is
       malicious). No indicative coordinate: one cluster, everyone is averaged.

    ``alpha`` is in the units of the updates: FLPoison's default 0.002 is for FedSGD gradients
    at learning rate 0.01; scale it with the updates' magnitude. FLPoison looks at the output
    layer's coordinates only; the paper's features are the model's parameters, here all of
    them. Non-finite updates, and those whose squared distance to the cohort's center overflows
    float32, join no cluster and get weight 0. The state is ``AurorState``: a ``bool[d]`` mask
    and a round counter (rounds count the rule's own calls).

    Args:
      alpha: the least distance between the 2-means centres of an indicative coordinate (> 0).
      detection_rounds: the rounds that (re)compute the indicative coordinates (>= 1).
      num_iterations: Lloyd steps of the per-round 2-means (>= 1).

    References:
      Shen, Tople, Saxena, "Auror: Defending Against Poisoning Attacks in Collaborative Deep
      Learning Systems", ACSAC 2016.

    Examples:
      >>> agg = auror(alpha=0.01, detection_rounds=5)
      >>> agg.init(jnp.zeros(3))
      AurorState(indicative=Array([False, False, False], dtype=bool), round=Array(0, dtype=int32))
    """
    rule = "auror"
    _common.check_positive(rule, "alpha", alpha)
    _common.check_positive(rule, "detection_rounds", detection_rounds, integer=True)
    _common.check_positive(rule, "num_iterations", num_iterations, integer=True)

    def init(params):
        return AurorState(indicative=jnp.zeros(params.shape[0], bool), round=jnp.zeros((), jnp.int32))

    def update(updates, state, context):
        guide = jax.lax.stop_gradient(updates)
        finite = _common.finite_rows(guide)
        centered = jnp.where(finite[:, None], guide - _common.short_rows_center(guide), 0.0)
        ok = finite & jnp.isfinite(jnp.sum(centered * centered, axis=1))
        indicative = jax.lax.cond(
            state.round < detection_rounds,
            lambda: two_means_1d_gaps(jnp.where(ok[:, None], guide, 0.0), ok) > alpha,
            lambda: state.indicative,
        )
        x = jnp.where(ok[:, None] & indicative[None, :], guide, 0.0)
        sq = _common.pairwise_sq_distances(x)
        cluster = kernel_two_means(sq, ok, num_iterations)
        sizes = jnp.stack([jnp.sum(cluster == 0), jnp.sum(cluster == 1)])
        kept = jnp.where(sizes[0] > sizes[1], cluster == 0, jnp.where(sizes[1] > sizes[0], cluster == 1, cluster >= 0))
        weights = kept.astype(updates.dtype)
        info = _common.info(weights, cluster=cluster, num_indicative=jnp.sum(indicative))
        return _common.weighted_average(updates, weights), AurorState(indicative, state.round + 1), info

    return Aggregator(init=init, update=update)
