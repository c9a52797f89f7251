"""Helpers shared by the aggregation rules: validation, weights, distances, finite-safe math."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from typing import Callable

from fljax.aggregators.order_statistics import kth_smallest_and_largest
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
    return jax.lax.cond(excluded_nonfinite, lambda: jnp.dot(w, jnp.where((w > 0)[:, None], updates, 0.0), precision=hi),
                        lambda: jnp.dot(w, updates, precision=hi))


def gram_algorithm() -> str:
    """How ``gram`` multiplies: ``"split_bf16"`` on NVIDIA GPUs (measured on an H200: as
    accurate as fp32 and several times faster; a TF32 x3 preset there was no more accurate than
    one TF32 pass), ``"highest"`` (``Precision.HIGHEST``, true fp32) elsewhere."""
    return "split_bf16" if jax.default_backend() == "gpu" else "highest"


def _split_bf16(a: Array) -> tuple[Array, Array]:
    """``a ~ hi + lo`` with both bfloat16: ``hi`` is ``a`` rounded to 8 significant bits on its
    float32 bit pattern (round half away from zero, then mask: immune to XLA's excess-precision
    rewrites, which on GPU drop a float32 -> bfloat16 -> float32 round trip, measured lo = 0),
    ``lo`` the next 8 (``a - hi`` is exact in float32)."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    hi = jax.lax.bitcast_convert_type((bits + jnp.uint32(0x8000)) & jnp.uint32(0xFFFF0000), a.dtype)
    return hi.astype(jnp.bfloat16), (a - hi).astype(jnp.bfloat16)


def gram(x: Array, y: Array | None = None) -> Array:
    """``x @ y.T`` (``y`` defaults to ``x``) accurate to float32, never the GPU/TPU default (one
    TF32 or bf16 pass, ~10 mantissa bits, which loses the distances between close updates).

    ``gram_algorithm() == "split_bf16"``: each operand split into two bfloat16 parts and the
    three leading products (``hi hi + hi lo + lo hi``; two matmuls for ``x x^T``) run on bf16
    tensor cores with float32 accumulation, every partial product exact in float32; the dropped
    ``lo lo`` term is ~2^-16 of each product. Otherwise ``Precision.HIGHEST``.
    """
    if gram_algorithm() == "highest":
        return jnp.dot(x, (x if y is None else y).T, precision=jax.lax.Precision.HIGHEST)
    # HIGHEST on bf16 operands is the plain bf16 product; should a compiler widen the operands
    # back to float32, it still forbids a TF32 pass.
    dot = lambda a, b: jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    xh, xl = _split_bf16(x)
    if y is None:
        cross = dot(xh, xl)
        return (dot(xh, xh) + (cross + cross.T)).astype(x.dtype)
    yh, yl = _split_bf16(y)
    return (dot(xh, yh) + (dot(xh, yl) + dot(xl, yh))).astype(x.dtype)


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


def pairwise_sq_distances(updates: Array) -> Array:
    """``[n, n]`` squared Euclidean distances through one Gram matrix.

    ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` after centering the rows on their
    coordinate-wise (lower) median, computed with the fast selection kernel: distances are translation invariant, and without centering a large
    common offset (every client's update shares the same drift) makes the identity cancel
    catastrophically even in fp32. The center is the median, not the mean, so that a few huge
    (finite) attacker rows cannot drag it away from the honest rows (with a mean center, rows of
    1e30 would make every centered row huge and every distance overflow or cancel). The Gram
    matmul is float32-accurate (``gram``): one TF32 or bf16 pass (the GPU/TPU default) keeps
    ~10 bits of mantissa and would lose the distances between close updates. Rows with
    non-finite entries, or whose centered squared norm overflows fp32, are at distance +inf from
    every other row (and 0 from themselves), so they can never look close to anything; a
    distance that overflows is +inf, never NaN.
    """
    finite = finite_rows(updates)
    center, _ = kth_smallest_and_largest(sanitize(updates), (updates.shape[0] - 1) // 2)  # lower median
    center = jax.lax.stop_gradient(jnp.where(jnp.isfinite(center), center, 0.0))  # no finite majority: no centering
    x = jnp.where(finite[:, None], updates - center, 0.0)
    g = gram(x)
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

    return jax.lax.cond(jnp.any(m > 2.0 ** 120), huge, plain), m


def cosine_similarity_matrix(updates: Array, eps: float = 1e-12) -> Array:
    """``[n, n]`` cosine similarities (fp32 Gram matrix of the unit rows); non-finite rows and
    zero rows get similarity 0. Rows are scaled by their largest entry before normalizing, so
    huge finite rows (1e30) neither overflow nor turn into NaN."""
    finite = finite_rows(updates)
    scaled, _ = max_scaled(jnp.where(finite[:, None], updates, 0.0))
    norms = jnp.sqrt(jnp.sum(scaled * scaled, axis=1))
    unit = scaled / jnp.maximum(norms, eps)[:, None]
    return gram(unit)


def safe_norms(updates: Array) -> Array:
    """``[n]`` Euclidean norms; +inf for rows with non-finite entries. Computed as
    ``m * ||x / m||`` (m the row's largest entry), so a norm overflows only when it exceeds
    the float range, not when its square does."""
    finite = finite_rows(updates)
    scaled, m = max_scaled(jnp.where(finite[:, None], updates, 0.0))
    return jnp.where(finite, m * jnp.sqrt(jnp.sum(scaled * scaled, axis=1)), jnp.inf)


def info(weights: Array, **extra) -> dict:
    """The ``info`` dict every rule returns: normalized effective weights plus extras."""
    return {"weights": normalize(weights), **extra}
