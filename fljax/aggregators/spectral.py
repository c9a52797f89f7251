"""Spectral filtering: Divide-and-Conquer, DnC (Shejwalkar & Houmansadr, NDSS 2021)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator, Array


def dnc_keep(updates: Array, finite: Array, key: Array, subsample_dim: int, num_kept: int) -> Array:
    """One DnC pass: ``bool[n]``, the ``num_kept`` updates with the lowest outlier scores.

    Samples ``b = subsample_dim`` coordinates without replacement, centers the finite rows on
    their mean, and scores ``s_i = ((x_i - mu) . v)^2`` with ``v`` the top right singular vector
    of the centered ``[n, b]`` matrix C; non-finite rows score +inf (removed first). ``v`` is not
    formed: with ``u`` the top eigenvector (eigenvalue ``lambda``) of the ``[n, n]`` Gram
    ``C C^T``, ``C v = sqrt(lambda) u``, so ``s_i = lambda u_i^2`` (one matmul and
    ``_common.top_eigenpair``'s n x n products instead of an SVD of the ``[n, b]`` matrix, which is
    slow on CPU).
    """
    n, d = updates.shape
    # A uniformly random b-subset: the b largest of d uniform draws (jax.random.choice without
    # replacement sorts a whole permutation, 20x slower on CPU; a tie at the b-th value, rare,
    # goes to the lower index).
    coords = jax.lax.top_k(jax.random.uniform(key, (d,)), subsample_dim)[1] if subsample_dim < d else jnp.arange(d)
    sub = jnp.where(finite[:, None], updates[:, coords], 0.0)
    # A row whose squared norm overflows fp32 (entries ~1e20 and up) would overflow the mean and
    # the Gram matrix; in exact arithmetic it dominates v and scores highest, so it scores +inf.
    finite = finite & jnp.isfinite(jnp.sum(sub * sub, axis=1))
    sub = jnp.where(finite[:, None], sub, 0.0)
    mu = jnp.dot(_common.normalize(finite.astype(sub.dtype)), sub, precision=jax.lax.Precision.HIGHEST)
    centered = jnp.where(finite[:, None], sub - mu, 0.0)
    eigenvalue, eigenvector = _common.top_eigenpair(_common.gram(centered))
    scores = jnp.where(finite, eigenvalue * jnp.square(eigenvector), jnp.inf)
    lowest = jnp.argsort(scores, stable=True)[:num_kept]
    return jnp.zeros(n, bool).at[lowest].set(True)


def dnc(
    num_byzantine: int,
    num_iterations: Optional[int] = 5,
    subsample_dim: Optional[int] = 10000,
    filter_frac: Optional[float] = 1.0,
) -> Aggregator:
    """DnC: k random-subspace spectral filters; average the updates that survive all of them.

    k times (``num_iterations``): sample b coordinates (``context.key``), center the updates,
    compute the top right singular vector v of the centered ``[n, b]`` matrix (exactly, through
    the ``[n, n]`` Gram, see ``dnc_keep``), score
    ``s_i = ((x_i - mu) . v)^2`` and keep the ``n - floor(c f)`` lowest; intersect the kept sets
    and return the uniform mean of the survivors (the paper averages uniformly).

    Deviations: non-finite updates, and those whose squared norm overflows fp32, score +inf
    before the spectral step (they would make every score NaN; exactly, they would score highest);
    if the intersection is empty (possible when k c f >= n), the first pass's kept set is used;
    b is capped at d. Selection runs under ``stop_gradient`` (the aggregate is differentiable in
    the kept updates).

    Args:
      num_byzantine: f.
      num_iterations: k >= 1 subsampling passes (default 5, the common reimplementations' default).
      subsample_dim: b >= 1 coordinates per pass (default 10,000, as in the paper's experiments).
      filter_frac: c > 0, the filtering fraction: each pass removes floor(c f) updates.

    References:
      Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks
      and Defenses for Federated Learning", NDSS 2021.

    Examples:
      >>> agg = dnc(num_byzantine=2, num_iterations=5, subsample_dim=1000)
    """
    rule = "dnc"
    f = _common.check_num_byzantine(rule, num_byzantine)
    k = 5 if num_iterations is None else num_iterations
    b = 10000 if subsample_dim is None else subsample_dim
    c = 1.0 if filter_frac is None else filter_frac
    _common.check_positive(rule, "num_iterations", k, integer=True)
    _common.check_positive(rule, "subsample_dim", b, integer=True)
    _common.check_positive(rule, "filter_frac", c)
    removed = int(c * f)

    def requirement(n: int) -> None:
        _common.require(
            n > removed,
            rule,
            f"needs n > floor(filter_frac * f) clients per round; got n={n}, num_byzantine f={f}, "
            f"filter_frac c={c} (n must be >= {removed + 1})",
        )

    def aggregate(updates, context):
        n, d = updates.shape
        finite = _common.finite_rows(updates)
        guide = jax.lax.stop_gradient(updates)
        keys = jax.random.split(context.key, k)
        kept = jax.vmap(lambda key: dnc_keep(guide, finite, key, min(b, d), n - removed))(keys)
        good = jnp.all(kept, axis=0) & finite
        good = jnp.where(jnp.any(good), good, kept[0] & finite)
        w = good.astype(updates.dtype)
        return _common.weighted_average(updates, w), _common.info(w, kept=good)

    return _common.stateless(aggregate, requirement=requirement)
