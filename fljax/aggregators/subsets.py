"""Exact searches over the subsets of n - f clients: minimum diameter averaging, MDA (El Mhamdi
et al., PODC 2020), and smallest maximum eigenvalue averaging, SMEA (Allouah et al., ICML 2023).

Both pick, among the C(n, f) subsets S of n - f clients, the one that minimizes a spread of S,
and output its mean. The search is exact: every subset is visited (``best_subset``: a loop over
chunks of subset ranks, each chunk unranked on the fly in the combinatorial number system, so
the program holds no table of subsets). Its time grows with C(n, f), so a rule refuses at build
time a cohort whose count exceeds its ``max_subsets`` (default ``MAX_SUBSETS``), naming n, f
and the count; it is never replaced by an approximation.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fljax.aggregators import _common
from fljax.types import Aggregator, Array

MAX_SUBSETS = 20_000
"""Default largest C(n, f) an exact subset search accepts (e.g. n = 100 with f <= 2, n = 30 with
f <= 3, n = 20 with f <= 4). The search's time is linear in the count: SMEA costs O(n^3) per
subset, so C(100, 2) = 4,950 subsets took ~9 s on a loaded 2-core CPU (MDA: O(n f + n^2) per
subset, 0.4 s, mostly the Gram matrix of d = 199,210)."""

_CHUNK_ELEMENTS = 1 << 21
"""Subsets per chunk times n^2: bounds a chunk's ``[B, n, n]`` temporaries (8 MiB of float32)."""

_SQUARINGS = 20
"""Repeated squarings of SMEA's top eigenvalue: 2^20 power steps (``_common.top_eigenpair``)."""


def check_subsets(rule: str, n: int, f: int, max_subsets: int) -> None:
    """Build-time checks of an exact subset search: ``2f < n`` and ``C(n, f) <= max_subsets``."""
    _common.require(
        n > 2 * f, rule, f"needs n > 2f clients per round; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})"
    )
    count = math.comb(n, f)
    _common.require(
        count <= max_subsets,
        rule,
        f"the exact search visits all C(n, f) = C({n}, {f}) = {count:,} subsets of n - f = {n - f} "
        f"clients, which must be at most max_subsets={max_subsets:,}; lower n or f, or raise "
        f"max_subsets (time grows with the count; the search is never approximated)",
    )


def _binomials(n: int, f: int) -> np.ndarray:
    """``int32 [f + 1, n]``: ``C(c, k)`` for ``k <= f``, ``c < n`` (each at most ``C(n, f)``)."""
    return np.array([[math.comb(c, k) for c in range(n)] for k in range(f + 1)], np.int64).astype(np.int32)


def removed_sets(ranks: Array, n: int, f: int) -> Array:
    """``int32 [B, f]``: the f removed clients of each subset rank (``0 <= rank < C(n, f)``),
    by the combinatorial number system: ``rank = sum_k C(c_k, k)`` with ``c_f > ... > c_1``,
    ``c_k`` the largest c with ``C(c, k)`` at most what is left of the rank."""
    table = jnp.asarray(_binomials(n, f))
    out, rest = [], ranks
    for k in range(f, 0, -1):
        c = jnp.sum(table[k][None, :] <= rest[:, None], axis=1) - 1
        out.append(c)
        rest = rest - table[k][c]
    return jnp.stack(out, axis=1) if out else jnp.zeros((ranks.shape[0], 0), jnp.int32)


def best_subset(score: Callable[[Array], tuple[Array, Array]], n: int, f: int) -> Array:
    """``bool[n]``: the subset of ``n - f`` rows whose ``score`` is lexicographically smallest
    among all C(n, f) subsets; exact ties go to the lowest rank.

    ``score(keep bool[B, n]) -> (primary [B], secondary [B])`` (NaN counts as +inf). Chunks of
    ranks run in a ``fori_loop``, each chunk's subsets in one vectorized call.
    """
    total = math.comb(n, f)
    chunk = max(1, min(total, _CHUNK_ELEMENTS // (n * n)))
    clean = lambda v: jnp.where(jnp.isnan(v), jnp.inf, v)

    def body(j, carry):
        best1, best2, best_rank = carry
        ranks = j * chunk + jnp.arange(chunk, dtype=jnp.int32)
        valid = ranks < total
        ranks = jnp.where(valid, ranks, 0)
        removed = removed_sets(ranks, n, f)
        keep = ~jnp.any(jnp.arange(n)[None, :, None] == removed[:, None, :], axis=2)
        k1, k2 = score(keep)
        k1, k2 = jnp.where(valid, clean(k1), jnp.inf), jnp.where(valid, clean(k2), jnp.inf)
        m1 = jnp.min(k1)
        k2 = jnp.where(k1 == m1, k2, jnp.inf)
        m2 = jnp.min(k2)
        i = jnp.argmax((k1 == m1) & (k2 == m2))
        better = (m1 < best1) | ((m1 == best1) & (m2 < best2))
        return (jnp.where(better, m1, best1), jnp.where(better, m2, best2), jnp.where(better, ranks[i], best_rank))

    init = (jnp.array(jnp.inf, jnp.float32), jnp.array(jnp.inf, jnp.float32), jnp.array(0, jnp.int32))
    _, _, rank = jax.lax.fori_loop(0, -(-total // chunk), body, init)
    removed = removed_sets(rank[None], n, f)[0]
    return ~jnp.any(jnp.arange(n)[:, None] == removed[None, :], axis=1)


def _check_max_subsets(rule: str, max_subsets) -> int:
    return _common.check_positive(rule, "max_subsets", max_subsets, integer=True)


def _subset_rule(rule: str, f: int, max_subsets: int, choose: Callable[[Array], Array]) -> Aggregator:
    def requirement(n: int) -> None:
        check_subsets(rule, n, f, max_subsets)

    def aggregate(updates, context):
        n = updates.shape[0]
        kept = choose(jax.lax.stop_gradient(updates)) if f > 0 else jnp.ones(n, bool)
        weights = kept.astype(updates.dtype)
        return _common.weighted_average(updates, weights), _common.info(weights)

    return _common.stateless(aggregate, requirement=requirement)


def mda(num_byzantine: int, max_subsets: int = MAX_SUBSETS) -> Aggregator:
    """Minimum diameter averaging: the mean of the ``n - f`` updates whose diameter
    ``max_{i, j in S} ||x_i - x_j||`` is smallest.

    Exact: all C(n, f) subsets are visited (a build-time error beyond ``max_subsets``). A
    subset's diameter is found from each row's ``f + 1`` farthest rows (one of them is always
    kept), so a subset costs O(n f) after one ``[n, n]`` Gram matrix of distances
    (``_common.pairwise_sq_distances``; a non-finite update is infinitely far from all).

    Ties: several subsets often share the smallest diameter (when fewer than f updates are
    outliers, which further rows are dropped does not change it), and the paper takes any of
    them; ByzFL takes the first in its enumeration order, which depends on the order of the
    clients. Here the tie goes to the tied subset of least variance (summed squared pairwise
    distances), which does not depend on the order of the clients; the lowest subset rank
    breaks exact ties left.

    Args:
      num_byzantine: f; needs n > 2f.
      max_subsets: the largest C(n, f) accepted (default ``MAX_SUBSETS``).

    References:
      El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed Byzantine Machine
      Learning", PODC 2020.

    Examples:
      >>> fljax.aggregate(mda(num_byzantine=1), jnp.array([[0.0], [1.0], [9.0]]))  # {0, 1}: diameter 1
      Array([0.5], dtype=float32)
    """
    rule = "mda"
    f = _common.check_num_byzantine(rule, num_byzantine)
    _check_max_subsets(rule, max_subsets)

    def choose(updates):
        n = updates.shape[0]
        sq = _common.pairwise_sq_distances(updates)
        far, idx = jax.lax.top_k(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sq), f + 1)  # [n, f + 1]
        spread = jnp.where(jnp.isfinite(sq), sq, 0.0)  # only read for subsets of finite diameter

        def score(keep):
            rows = jnp.max(jnp.where(keep[:, idx], far[None], -jnp.inf), axis=2)  # [B, n]
            diameter = jnp.max(jnp.where(keep, rows, -jnp.inf), axis=1)
            k = keep.astype(sq.dtype)
            return diameter, jnp.sum(k * jnp.dot(k, spread, precision=jax.lax.Precision.HIGHEST), axis=1)

        return best_subset(score, n, f)

    return _subset_rule(rule, f, max_subsets, choose)


def smea(num_byzantine: int, max_subsets: int = MAX_SUBSETS) -> Aggregator:
    """Smallest maximum eigenvalue averaging: the mean of the ``n - f`` updates whose empirical
    covariance ``(1/|S|) sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T`` has the smallest largest
    eigenvalue.

    Exact search over all C(n, f) subsets (a build-time error beyond ``max_subsets``). The
    ``d x d`` covariance is never formed: its nonzero eigenvalues are those of the subset's
    centered ``n x n`` Gram matrix divided by ``|S|``, and that matrix follows from one Gram
    matrix of all updates (``K``, computed once: O(n^2 d)) by masking and centering, so a subset
    costs O(n^3). Its top eigenvalue is computed by power iteration through repeated squaring,
    ``2^20`` power steps (``_common.top_eigenpair``, matrix products only), which converges to
    the top eigenvalue for any spectrum: the Rayleigh quotient's relative error is at most
    ``(n - 1) / (2^21 e)`` in the worst case (1.7e-5 at n = 100), and at float32 rounding in the
    tests against float64 ``eigvalsh``. ByzFL instead takes ONE power step from a random vector
    per subset, an estimate that can be off by any factor, so its choice of subset is random.
    Exact ties (subsets with the same covariance) go to the least variance, then the lowest rank.

    Non-finite updates, and those whose squared distance to the cohort's center overflows
    float32, make any subset holding them infinitely spread (they are never chosen while at
    most f exist).

    Args:
      num_byzantine: f; needs n > 2f.
      max_subsets: the largest C(n, f) accepted (default ``MAX_SUBSETS``).

    References:
      Allouah, Guerraoui, Gupta, Pinot, Stephan, "On the Privacy-Robustness-Utility Trilemma in
      Distributed Learning", ICML 2023.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 2.5]])
      >>> fljax.aggregate(smea(num_byzantine=1), updates)  # top eigenvalue 2/3; with (1, 2.5): >= 25/18
      Array([1., 0.], dtype=float32)
    """
    rule = "smea"
    f = _common.check_num_byzantine(rule, num_byzantine)
    _check_max_subsets(rule, max_subsets)

    def choose(updates):
        n = updates.shape[0]
        k, bad = centered_gram(updates)
        s = n - f

        def score(keep):
            m = keep.astype(k.dtype)
            w = m / s
            kw = jnp.dot(w, k, precision=jax.lax.Precision.HIGHEST)  # [B, n]
            wkw = jnp.sum(w * kw, axis=1)
            centered = k[None] - kw[:, :, None] - kw[:, None, :] + wkw[:, None, None]
            g = m[:, :, None] * centered * m[:, None, :] / s
            top = jax.vmap(lambda a: _common.top_eigenpair(a, _SQUARINGS)[0])(g)
            spoiled = jnp.any(keep & bad[None, :], axis=1)
            return jnp.where(spoiled, jnp.inf, top), jnp.where(spoiled, jnp.inf, jnp.trace(g, axis1=1, axis2=2))

        return best_subset(score, n, f)

    return _subset_rule(rule, f, max_subsets, choose)


def centered_gram(updates: Array) -> tuple[Array, Array]:
    """``(K [n, n], bad bool[n])``: the Gram matrix of the rows centered on
    ``_common.short_rows_center`` (a point within the honest rows' scale, so that a large common
    offset does not cancel catastrophically), with the rows and columns of ``bad`` rows (not
    finite, or whose centered squared norm overflows float32) zeroed."""
    finite = _common.finite_rows(updates)
    k = _common.gram_of_centered_rows(updates, _common.short_rows_center(updates), finite)
    bad = ~(finite & jnp.isfinite(jnp.diag(k)))
    return jnp.where(bad[:, None] | bad[None, :], 0.0, k), bad
