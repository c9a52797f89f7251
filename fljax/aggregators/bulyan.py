"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018): repeated Krum selection, then a
coordinate-wise trimmed average around the median of the selected set."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.order_statistics import kth_smallest_and_largest
from fljax.types import Aggregator, Array

_HI = jax.lax.Precision.HIGHEST


def iterated_krum(sq_dist: Array, num_byzantine: int, num_selected: int) -> Array:
    """Indices ``[num_selected]`` chosen by repeated Krum on ``[n, n]`` squared distances.

    Each step scores the REMAINING updates with Krum (sum of squared distances to the
    ``max(1, n' - f - 2)`` nearest other remaining updates, ``n'`` = the remaining count), picks
    the lowest score (lowest index on ties) and removes it. ``krum.krum_scores`` needs a static
    neighbour count; here the count shrinks with ``n'`` inside a ``fori_loop``, so each row's
    neighbours are sorted once and the first ``k`` still-remaining ones are summed (a running
    count over the sorted row): step 0 equals ``krum_scores(sq_dist, n - f - 2)``.
    """
    n = sq_dist.shape[0]
    rows = jnp.arange(n)
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, sq_dist)
    order = jnp.argsort(others, axis=1, stable=True)
    sorted_d = jnp.take_along_axis(others, order, axis=1)
    not_self = order != rows[:, None]

    def step(t, carry):
        remaining, chosen = carry
        k = jnp.maximum(1, n - t - num_byzantine - 2)
        alive = remaining[order] & not_self
        take = alive & (jnp.cumsum(alive, axis=1) <= k)
        scores = jnp.where(remaining, jnp.sum(jnp.where(take, sorted_d, 0.0), axis=1), jnp.inf)
        best = remaining & (scores == jnp.min(scores))
        winner = jnp.argmax(best)
        return remaining.at[winner].set(False), chosen.at[t].set(winner)

    init = (jnp.ones(n, bool), jnp.zeros(num_selected, jnp.int32))
    return jax.lax.fori_loop(0, num_selected, step, init)[1]


def closest_to_median_mean(x: Array, beta: int) -> tuple[Array, Array]:
    """Per column of ``x [m, d]`` (NaN already +inf): the mean of the ``beta`` values closest to
    the column's median, and each row's number of kept slots summed over columns ``[m]``.

    With ``r`` the beta-th smallest distance to the median, values nearer than ``r`` are kept and
    the remaining slots are split evenly among the values at distance exactly ``r``: the mean
    over ALL optimal subsets of the paper's argmin (which is ambiguous under ties), so the
    result does not depend on the clients' order. Order statistics come from the sort-free
    ``order_statistics`` kernel under ``stop_gradient``; the output is differentiable in ``x``.
    Column sums run as matrix-vector products (fast on XLA CPU, unlike axis-0 reductions).
    """
    m = x.shape[0]
    guide = jax.lax.stop_gradient(x)
    lo, hi = kth_smallest_and_largest(guide, (m - 1) // 2)
    deviation = _common.sanitize(jnp.abs(guide - 0.5 * (lo + hi)))
    radius = kth_smallest_and_largest(deviation, beta - 1)[0]
    inside, tied = deviation < radius, deviation == radius
    ones = jnp.ones(m, x.dtype)
    slots = beta - jnp.dot(ones, inside.astype(x.dtype), precision=_HI)
    per_tie = slots / jnp.maximum(jnp.dot(ones, tied.astype(x.dtype), precision=_HI), 1.0)
    coef = jnp.where(inside, 1.0, 0.0) + jnp.where(tied, per_tie, 0.0)
    aggregate = jnp.dot(ones, coef * jnp.where(coef > 0, x, 0.0), precision=_HI) / beta
    return aggregate, jnp.dot(coef, jnp.ones(x.shape[1], x.dtype), precision=_HI)


def bulyan(num_byzantine: int) -> Aggregator:
    """Bulyan: theta = n - 2f updates chosen by repeated Krum, then per coordinate the mean of
    the beta = theta - 2f selected values closest to the coordinate-wise median of the selection.

    1. Selection: repeat Krum theta times on the remaining set, removing each winner; as the set
       shrinks, Krum scores with ``max(1, n' - f - 2)`` neighbours (``iterated_krum``). Scores use
       SQUARED distances as in Krum's paper (``_common.pairwise_sq_distances``: a non-finite
       update is infinitely far from all, so it is never selected while at most f exist).
    2. Aggregation: per coordinate j, ``(1/beta) sum_{X in M_j} X_j`` with M_j the beta selected
       values nearest to the median of the theta selected values; ties at the boundary share
       the remaining slots evenly (``closest_to_median_mean``).

    Needs n >= 4f + 3. Uniform over clients (example counts are not used, as in the paper).
    ``info["weights"][i]`` is the share of (coordinate, slot) pairs client i filled: 0 for a
    client never selected; ``info["selected"]`` marks the theta selected clients.

    Args:
      num_byzantine: f, the number of Byzantine clients tolerated.

    References:
      El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
      Byzantium", ICML 2018.

    Examples:
      >>> agg = bulyan(num_byzantine=1)  # n >= 7 clients per round
      >>> fljax.aggregate(agg, jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]))
      Array([1.6666666], dtype=float32)

      Krum selects 2, 4, 1, 5, 0 (lowest index on ties); the beta = 3 values nearest their
      median 2 are 2, 1 and one of the tied 0 and 4, which share the last slot: (2 + 1 + 2) / 3.
    """
    f = _common.check_num_byzantine("bulyan", num_byzantine)

    def requirement(n: int) -> None:
        _common.require(
            n >= 4 * f + 3,
            "bulyan",
            f"needs n >= 4f + 3 clients per round; got n={n}, num_byzantine f={f} (n must be >= {4 * f + 3})",
        )

    def aggregate(updates, context):
        n, d = updates.shape
        theta = n - 2 * f
        beta = theta - 2 * f
        sq = jax.lax.stop_gradient(_common.pairwise_sq_distances(updates))
        chosen = iterated_krum(sq, f, theta)
        out, slots = closest_to_median_mean(_common.sanitize(updates[chosen]), beta)
        shares = jnp.zeros(n, updates.dtype).at[chosen].add(slots / (d * beta))
        return out, _common.info(shares, selected=jnp.zeros(n, bool).at[chosen].set(True))

    return _common.stateless(aggregate, requirement=requirement)
