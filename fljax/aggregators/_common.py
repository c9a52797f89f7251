"""Helpers shared by the aggregation rules: validation, weights, distances, finite-safe math."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fljax.aggregators.order_statistics import kth_smallest_and_largest as kth_smallest_and_largest  # re-exported
from fljax.types import AggregationContext, Aggregator, Array, no_state


def stateless(aggregate: Callable[[Array, AggregationContext], tuple[Array, dict]], **fields) -> Aggregator:
    """A rule without state from ``aggregate(updates [n, d], context) -> (aggregate [d], info)``.

    Its ``init`` returns ``EmptyState()`` and its ``update`` passes the state through, as
    ``optax.stateless`` does for gradient transformations; ``fields`` are the other
    ``Aggregator`` fields (``requirement``, ``needs_reference``, ``count_weighted``).

    Examples:
      >>> rule = stateless(lambda u, ctx: (u.mean(0), info(jnp.full(u.shape[0], 1 / u.shape[0]))))
    """

    def update(updates, state, context):
        out, details = aggregate(updates, context)
        return out, state, details

    return Aggregator(init=no_state, update=update, **fields)


def require(condition: bool, rule: str, message: str) -> None:
    """Raises a ``ValueError`` naming the rule when a build-time requirement fails."""
    if not condition:
        raise ValueError(f"{rule}: {message}")


def check_num_byzantine(rule: str, num_byzantine: int) -> int:
    """Validates the ``num_byzantine`` hyper-parameter shared by most rules."""
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 0:
        raise ValueError(f"{rule}: num_byzantine must be an integer >= 0, got {num_byzantine!r}")
    return num_byzantine


def check_positive(rule: str, name: str, value, *, integer: bool = False, allow_zero: bool = False):
    """Validates a positive (or non-negative) hyper-parameter; returns it unchanged."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{rule}: {name} must be {kind} {bound}, got {value!r}")
    return value


def check_bool(rule: str, name: str, value) -> bool:
    """Validates a boolean hyper-parameter (``True`` or ``False``, not a truthy value)."""
    if not isinstance(value, bool):
        raise ValueError(f"{rule}: {name} must be a bool (True or False), got {value!r}")
    return value


def sanitize(updates: Array) -> Array:
    """Maps NaN to +inf so that a NaN update behaves as an unbounded outlier.

    Order statistics and distances then push it to the extremes instead of poisoning every
    comparison (NaN compares false with everything).
    """
    return jnp.where(jnp.isnan(updates), jnp.inf, updates)


def finite_rows(updates: Array) -> Array:
    """``bool[n]``: the rows whose every entry is finite."""
    return jnp.all(jnp.isfinite(updates), axis=1)


def normalize(weights: Array) -> Array:
    """Scales non-negative weights to sum to 1 (all zeros stay zeros)."""
    total = jnp.sum(weights)
    return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)


def weighted_average(updates: Array, weights: Array) -> Array:
    """``sum_i w_i x_i / sum_i w_i`` as one matrix-vector product; rows with zero weight
    never contribute, even if they hold NaN or Inf. The zeroed copy of the updates that this
    takes is made only when such a row exists (on CPU the copy cost 20x the product itself)."""
    w = normalize(weights)
    hi = jax.lax.Precision.HIGHEST
    excluded_nonfinite = jnp.any((w <= 0) & ~finite_rows(updates))
    return jax.lax.cond(
        excluded_nonfinite,
        lambda: jnp.dot(w, jnp.where((w > 0)[:, None], updates, 0.0), precision=hi),
        lambda: jnp.dot(w, updates, precision=hi),
    )


@functools.lru_cache(maxsize=None)
def _gram_precision(backend: str):
    """The Gram matrices' matmul algorithm on ``backend``: on NVIDIA GPUs the three-pass
    bfloat16 preset ``BF16_BF16_F32_X3`` where it compiles (measured on an H200 at [1000, 199210]:
    distance error 4.5e-6 against float64 vs 1.8e-5 for ``HIGHEST``, in 7.0 ms vs 9.0 ms; a
    hand-split bfloat16 product and the ``TF32_TF32_F32_X3`` preset were no more accurate there
    than one pass, ~3e-4), else ``Precision.HIGHEST`` (true float32)."""
    if backend == "gpu":
        preset = jax.lax.DotAlgorithmPreset.BF16_BF16_F32_X3
        try:
            spec = jax.ShapeDtypeStruct((8, 8), jnp.float32)
            jax.jit(lambda a: jnp.dot(a, a.T, precision=preset)).lower(spec).compile()
            return preset
        except Exception:  # this GPU has no such algorithm: true float32
            pass
    return jax.lax.Precision.HIGHEST


def gram(x: Array, y: Array | None = None) -> Array:
    """``x @ y.T`` (``y`` defaults to ``x``) accurate to float32 (``_gram_precision``), never the
    GPU/TPU default (one TF32 or bf16 pass, ~10 mantissa bits), which loses the distances between
    close updates."""
    return jnp.dot(x, (x if y is None else y).T, precision=_gram_precision(jax.default_backend()))


def top_eigenpair(g: Array, squarings: int = 12) -> tuple[Array, Array]:
    """Top eigenvalue and unit eigenvector of a symmetric positive semi-definite ``[n, n]`` matrix,
    with matrix products only (no LAPACK: ``eigh`` inside a ``pmap`` over CPU devices stalled).

    Power iteration by repeated squaring: ``A <- A A / trace(A A)`` ``squarings`` times is
    ``2^squarings`` power steps (4,096 by default: a spectral gap ``lambda_2 / lambda_1`` of
    0.99 leaves 1e-18 of the second direction), after which ``A ~ u u^T`` and its largest
    column is ``u``; two power steps with ``g`` itself then polish ``u`` and give the eigenvalue
    as the Rayleigh quotient. A zero matrix gives eigenvalue 0.
    """
    hi = jax.lax.Precision.HIGHEST

    def square(_, a):
        a = jnp.dot(a, a, precision=hi)
        return a / jnp.maximum(jnp.trace(a), jnp.finfo(a.dtype).tiny)

    a = jax.lax.fori_loop(0, squarings, square, g / jnp.maximum(jnp.trace(g), jnp.finfo(g.dtype).tiny))
    u = a[:, jnp.argmax(jnp.diag(a))]
    for _ in range(2):
        u = jnp.dot(g, u, precision=hi)
        u = u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(g.dtype).tiny)
    return jnp.dot(u, jnp.dot(g, u, precision=hi), precision=hi), u


GRAM_BLOCK_BYTES = 4 << 20
"""Bytes of one ``[n, columns]`` float32 block of ``gram_of_centered_rows`` on CPU."""


def gram_of_centered_rows(updates: Array, center: Array, rows: Array) -> Array:
    """``x @ x.T`` (float32-accurate, ``gram``) for ``x = where(rows[:, None], updates - center,
    0)``, without storing ``x`` on CPU: there the Gram matrix is summed over column blocks of
    ``GRAM_BLOCK_BYTES`` (the ``[n, d]`` centered copy, a fresh buffer, cost as much as the
    product: ``[100, 199210]`` 58 -> 30 ms on 2 cores); elsewhere one matmul."""
    n, d = updates.shape
    cols = max(128, GRAM_BLOCK_BYTES // (4 * max(n, 1)))
    if jax.default_backend() != "cpu" or d <= cols:
        return gram(jnp.where(rows[:, None], updates - center, 0.0))

    def body(j, g):  # the last block ends at d; its columns seen already are masked out
        start = jnp.minimum(j * cols, d - cols)
        block = jax.lax.dynamic_slice_in_dim(updates, start, cols, axis=1)
        block = block - jax.lax.dynamic_slice_in_dim(center, start, cols)
        fresh = start + jnp.arange(cols) >= j * cols
        return g + gram(jnp.where(rows[:, None] & fresh[None, :], block, 0.0))

    return jax.lax.fori_loop(0, -(-d // cols), body, jnp.zeros((n, n), updates.dtype))


def short_rows_center(updates: Array) -> Array:
    """The mean of the rows whose squared norm is at most the lower median of all rows' (rows
    with NaN or Inf count as infinitely long): a point within the honest rows' scale (its norm is
    at most the median row norm) that fewer than half of the rows cannot drag away, however large.
    Two passes over ``[n, d]`` and a sort of n numbers (a coordinate-wise median, the center
    used before, cost ~10x that on CPU). Zero when no such row is finite."""
    sq = jnp.sum(updates * updates, axis=1)
    sq = jnp.where(jnp.isnan(sq), jnp.inf, sq)
    short = sq <= jnp.sort(sq)[(updates.shape[0] - 1) // 2]
    center = weighted_average(updates, (short & jnp.isfinite(sq)).astype(updates.dtype))
    return jnp.where(jnp.isfinite(center), center, 0.0)


def pairwise_sq_distances(updates: Array) -> Array:
    """``[n, n]`` squared Euclidean distances through one Gram matrix.

    ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` after centering the rows on ``short_rows_center``:
    distances are translation invariant, and without centering a large common offset (every
    client's update shares the same drift) makes the identity cancel catastrophically even in
    fp32. The center is not the plain mean, so that a few huge (finite) attacker rows cannot
    drag it away from the honest rows (with a mean center, rows of 1e30 would make every
    centered row huge and every distance overflow or cancel). The Gram
    matmul is float32-accurate (``gram``): one TF32 or bf16 pass (the GPU/TPU default) keeps
    ~10 bits of mantissa and would lose the distances between close updates. Rows with
    non-finite entries, or whose centered squared norm overflows fp32, are at distance +inf from
    every other row (and 0 from themselves), so they can never look close to anything; a
    distance that overflows is +inf, never NaN.
    """
    finite = finite_rows(updates)
    center = jax.lax.stop_gradient(short_rows_center(updates))
    g = gram_of_centered_rows(updates, center, finite)
    sq = jnp.diag(g)
    ok = finite & jnp.isfinite(sq)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    d = jnp.where(ok[:, None] & ok[None, :] & ~jnp.isnan(d), d, jnp.inf)
    return jnp.where(jnp.eye(updates.shape[0], dtype=bool), 0.0, d)


def max_scaled(x: Array) -> tuple[Array, Array]:
    """``(x / m, m)`` with ``m [n]`` the largest absolute entry of each (finite) row, so that
    squares of the scaled rows never overflow (zero rows stay zero, with ``m = 1``)."""
    m = jnp.max(jnp.abs(x), axis=1)
    m = jnp.where(m > 0, m, 1.0)

    def plain():
        return x / m[:, None]

    def huge():
        # XLA divides by multiplying with the reciprocal, and 1 / m for m near the float32 maximum
        # is a denormal that CPUs flush to zero: divide (x / 8) by (m / 8), which the barrier keeps
        # XLA from simplifying back.
        xs, ms = jax.lax.optimization_barrier((x * 0.125, m * 0.125))
        return xs / ms[:, None]

    return jax.lax.cond(jnp.any(m > 2.0**120), huge, plain), m


def _plain_squares(updates: Array) -> Array:
    """Whether every row is finite with its largest entry 0 or within ``[2^-40, 2^40]``: then
    squares and dot products of the raw rows neither overflow nor underflow to zero (d < 2^40
    entries), and the rescaled paths below (two extra copies of ``[n, d]``) are not needed."""
    m = jnp.max(jnp.abs(updates), axis=1)  # NaN rows give NaN, failing both tests below
    return jnp.all((m == 0) | ((m >= 2.0**-40) & (m <= 2.0**40)))


def cosine_similarity_matrix(updates: Array, eps: float = 1e-12) -> Array:
    """``[n, n]`` cosine similarities (fp32 Gram matrix of the unit rows); non-finite rows and
    zero rows get similarity 0. When some row is non-finite, huge or tiny, rows are scaled by
    their largest entry before normalizing, so huge finite rows (1e30) neither overflow nor
    turn into NaN; otherwise the raw rows' Gram matrix is normalized (no copies of the rows)."""

    def plain():
        g = gram(updates)
        norms = jnp.sqrt(jnp.diag(g))
        inverse = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
        return g * inverse[:, None] * inverse[None, :]

    def rescaled():
        finite = finite_rows(updates)
        scaled, _ = max_scaled(jnp.where(finite[:, None], updates, 0.0))
        norms = jnp.sqrt(jnp.sum(scaled * scaled, axis=1))
        return gram(scaled / jnp.maximum(norms, eps)[:, None])

    return jax.lax.cond(_plain_squares(updates), plain, rescaled)


def safe_norms(updates: Array) -> Array:
    """``[n]`` Euclidean norms; +inf for rows with non-finite entries. When some row is
    non-finite, huge or tiny, computed as ``m * ||x / m||`` (m the row's largest entry), so a
    norm overflows only when it exceeds the float range, not when its square does."""

    def rescaled():
        finite = finite_rows(updates)
        scaled, m = max_scaled(jnp.where(finite[:, None], updates, 0.0))
        return jnp.where(finite, m * jnp.sqrt(jnp.sum(scaled * scaled, axis=1)), jnp.inf)

    return jax.lax.cond(_plain_squares(updates), lambda: jnp.sqrt(jnp.sum(updates * updates, axis=1)), rescaled)


def info(weights: Array, **extra) -> dict:
    """The ``info`` dict every rule returns: normalized effective weights plus extras."""
    return {"weights": normalize(weights), **extra}
