"""Mean around the median, Meamed (Xie, Koyejo, Gupta 2018): per coordinate, the mean of the
n - f values closest to the coordinate-wise median."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.order_statistics import MASS_CAP, kth_smallest_and_largest
from fljax.types import Aggregator, Array

_HI = jax.lax.Precision.HIGHEST


def _column_sums(x: Array) -> Array:
    """``[d]`` sums over the rows of ``x [n, d]`` as a matrix-vector product (XLA CPU's
    ``sum(axis=0)`` walks one column at a time)."""
    return jnp.dot(jnp.ones(x.shape[0], x.dtype), x, precision=_HI)


def _row_sums(x: Array) -> Array:
    return jnp.dot(x, jnp.ones(x.shape[1], x.dtype), precision=_HI)


def mean_around_median(x: Array, num_kept: int) -> tuple[Array, Array, Array]:
    """Per column of ``x [n, d]`` (NaN counts as +inf): the mean of the ``num_kept`` values
    closest to the column's median, and each row's kept slots.

    The kept values are those at distance below ``r``, the ``num_kept``-th smallest distance to
    the median, plus the right share of those at exactly ``r``: ties at ``r`` (e.g. ``med - r``
    and ``med + r``) share the remaining slots equally, so the result does not depend on the
    order of the rows. Two exact order statistics (``kth_smallest_and_largest``) and a few
    masked reductions; no sort.

    Returns:
      ``(mean [d], slots [n, d], everyone [d])``: ``slots[i, j]`` in ``[0, 1]`` is the share of
      a kept slot entry ``(i, j)`` fills (they sum to ``num_kept`` per column); ``everyone``
      marks the columns where all n values are equal.
    """
    n = x.shape[0]
    x = _common.sanitize(x)
    lo, hi = kth_smallest_and_largest(x, (n - 1) // 2)
    median = jnp.where(lo == hi, lo, 0.5 * lo + 0.5 * hi)
    dev = _common.sanitize(jnp.abs(x - median))
    r, _ = kth_smallest_and_largest(dev, num_kept - 1)
    below, at = dev < r, dev == r
    n_below = _column_sums(below.astype(x.dtype))
    n_at = _column_sums(at.astype(x.dtype))
    share_at = (num_kept - n_below) / jnp.maximum(n_at, 1.0)
    total = _column_sums(jnp.where(below, x, 0.0)) + share_at * _column_sums(jnp.where(at, x, 0.0))
    slots = below.astype(x.dtype) + at.astype(x.dtype) * share_at
    return total / num_kept, slots, (r == 0) & (n_at == n)


def meamed(num_byzantine: int) -> Aggregator:
    """Meamed: per coordinate, the average of the ``n - f`` values closest to the median.

    The median is the coordinate-wise median (the mean of the two middle values for even n).
    Where values tie at the cut-off distance (the paper leaves it open; ByzFL's
    ``argpartition`` keeps whichever comes first), the tied values share the remaining slots
    equally, so the output does not depend on the order of the clients. NaN counts as +inf:
    up to f non-finite or huge values per coordinate are never among the kept ones.

    ``info`` as the other coordinate-wise rules': ``info["weights"][i]`` is the share of kept
    slots client i filled; ``info["kept_share"][i]`` the share of its update (entries weighed by
    magnitude, columns where all clients tie weigh nothing) in the kept values, which detection
    reads (``fljax.rounds.flagged_clients``).

    Args:
      num_byzantine: f; needs n > 2f.

    References:
      Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018.

    Examples:
      >>> fljax.aggregate(meamed(num_byzantine=1), jnp.array([[0.0], [1.0], [2.0], [9.0]]))  # median 1.5
      Array([1.], dtype=float32)
      >>> fljax.aggregate(meamed(num_byzantine=2), jnp.array([[0.0], [2.0], [4.0], [2.0], [50.0]]))  # 0, 4 tie
      Array([2.], dtype=float32)
    """
    rule = "meamed"
    f = _common.check_num_byzantine(rule, num_byzantine)

    def requirement(n: int) -> None:
        _common.require(
            n > 2 * f,
            rule,
            f"needs n > 2f clients per round; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})",
        )

    def aggregate(updates, context):
        n, d = updates.shape
        out, slots, everyone = mean_around_median(updates, n - f)
        mass = jnp.where(everyone[None, :], 0.0, jnp.minimum(jnp.abs(_common.sanitize(updates)), MASS_CAP))
        kept, total = _row_sums(slots * mass), _row_sums(mass)
        kept_share = jnp.where(total > 0, kept / jnp.where(total > 0, total, 1.0), 1.0)
        return out, _common.info(_row_sums(slots) / (max(d, 1) * (n - f)), kept_share=kept_share)

    return _common.stateless(aggregate, requirement=requirement)
