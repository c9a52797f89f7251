"""Geometric median by the smoothed Weiszfeld algorithm, and RFA (Pillutla, Kakade, Harchaoui,
IEEE TSP 2022).

One Weiszfeld step is ``z <- sum_i b_i x_i / sum_i b_i`` with ``b_i = a_i / max(nu, ||z - x_i||)``.
``geometric_median`` iterates to a tolerance inside ``lax.while_loop``; a while loop has no
reverse-mode derivative, so its gradient is given by implicit differentiation of the fixed point
``z* = T(z*, x, a)`` (``jax.custom_vjp``): the adjoint equation ``u = g + (dT/dz)^T u`` is solved
by the same kind of fixed-point iteration, then ``(dT/dx, dT/da)^T u`` is the exact gradient at
convergence. ``rfa`` runs a fixed number of steps (a ``fori_loop``, differentiated directly).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator, Array

_HI = jax.lax.Precision.HIGHEST


def _distances(z: Array, x: Array, nu: float) -> Array:
    """``max(nu, ||z - x_i||)`` per row, computed as ``m ||(z - x_i) / m||`` (``m`` the row's
    largest entry; the norm's homogeneity makes the gradient through m vanish exactly), so
    rows of 1e30 get their true distance instead of an overflowed square; +inf only beyond the
    float range."""
    diff = x - z[None, :]
    scaled, m = _common.max_scaled(diff)
    nonzero = jnp.any(diff != 0, axis=1)
    squares = jnp.where(nonzero, jnp.sum(scaled * scaled, axis=1), 1.0)  # >= 1 where used: finite gradient
    norms = jnp.where(nonzero, m * jnp.sqrt(squares), 0.0)
    return jnp.maximum(jnp.where(jnp.isnan(norms), jnp.inf, norms), nu)


def _weiszfeld_weights(z: Array, x: Array, a: Array, nu: float) -> Array:
    """``b_i = a_i / max(nu, ||z - x_i||)`` (0 for a row beyond the float range)."""
    return a / _distances(z, x, nu)


def _normalized_average(b: Array, x: Array) -> Array:
    """``sum_i b_i x_i / sum_i b_i`` (zero when every b_i is zero)."""
    total = jnp.sum(b)
    return jnp.dot(b, x, precision=_HI) / jnp.where(total > 0, total, 1.0)


def weiszfeld_step(z: Array, x: Array, a: Array, nu: float) -> Array:
    """One smoothed Weiszfeld step from ``z`` (rows with ``a_i = 0`` must be finite, e.g. zeros)."""
    return _normalized_average(_weiszfeld_weights(z, x, a, nu), x)


def _robust_start(x: Array, a: Array, nu: float) -> Array:
    """The ``a``-weighted mean of the rows no farther from the coordinate-wise median than the
    median distance: a start that fewer than half of the rows cannot drag away, whatever their
    size, and that is not itself a data point (where smoothed Weiszfeld would stay)."""
    center, _ = _common.kth_smallest_and_largest(jnp.where(a[:, None] > 0, x, jnp.inf), (x.shape[0] - 1) // 2)
    center = jnp.where(jnp.isfinite(center), center, 0.0)
    dist = _distances(center, x, nu)
    near = (a > 0) & (dist <= _length_scale(dist, a))
    return jax.lax.stop_gradient(_common.weighted_average(x, jnp.where(near, a, 0.0)))


def _length_scale(dist: Array, a: Array) -> Array:
    """The lower median of the distances ``dist = ||z - x_i||`` of the rows with ``a_i > 0``: the
    honest cloud's size as seen from z, which fewer than half of the rows cannot inflate."""
    d = jnp.where(a > 0, dist, jnp.inf)
    count = jnp.sum(a > 0)
    return jnp.sort(d)[jnp.maximum(count - 1, 0) // 2]


def _prepare(updates: Array, weights: Array, weighted: bool) -> tuple[Array, Array]:
    """Non-finite rows become zeros with weight ``a_i = 0``; ``a`` sums to 1 (uniform if
    ``weighted=False``)."""
    finite = _common.finite_rows(updates)
    x = jnp.where(finite[:, None], updates, 0.0)
    a = weights.astype(updates.dtype) if weighted else jnp.ones(updates.shape[0], updates.dtype)
    return x, _common.normalize(jnp.where(finite, a, 0.0))


def _check_nu(rule: str, nu: float) -> None:
    _common.check_positive(rule, "nu", nu)


def geometric_median(
    nu: float = 1e-6, tol: Optional[float] = 1e-5, max_iter: Optional[int] = 100, weighted: bool = True
) -> Aggregator:
    """Geometric median ``argmin_z sum_i a_i ||z - x_i||`` by smoothed Weiszfeld iterations.

    Starts from the weighted mean of the half of the updates nearest the coordinate-wise median
    and stops when a step moves z by at most ``tol * s(z)``
    (``s(z)`` the median distance from z to the updates: the honest cloud's own length scale, so
    the test is scale and translation invariant and far outliers cannot loosen it) or after
    ``max_iter`` steps. The RFA code starts from the mean and stops on the objective's relative
    change; the minimizer is the same (the objective is convex), but a plain mean start lies ~1e29 away
    when attackers send rows of 1e30, and the objective's change is quadratic in the error near
    the optimum (in fp32 it stops while z still moves; the implicit gradient needs a converged
    fixed point). Distances are computed overflow-free (rows of 1e30 keep their true, tiny
    Weiszfeld weight). ``a_i`` are the example counts, normalized; a non-finite update gets
    ``a_i = 0``. The geometric median has breakdown point 1/2: fewer than half of the (weighted)
    updates, however large, move it by a bounded amount. ``info["weights"]`` are the Weiszfeld
    weights ``b_i / sum b`` at the returned point (at the fixed point the aggregate equals
    ``sum_i weights_i x_i``); ``info["iterations"]`` the steps taken. Gradients: implicit
    differentiation of the fixed point (see the module docstring).

    Args:
      nu: smoothing nu > 0: distances below nu count as nu (avoids dividing by 0 at a data point).
      tol: relative step tolerance (> 0).
      max_iter: iteration cap (>= 1).
      weighted: ``a_i`` = example counts (the paper's weights); ``False``: uniform.

    References:
      Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions
      on Signal Processing 70, 2022.

    Examples:
      >>> fljax.aggregate(geometric_median(), jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]))
      Array([0.5, 0.5], dtype=float32)
    """
    rule = "geometric_median"
    _check_nu(rule, nu)
    _common.check_bool(rule, "weighted", weighted)
    tol = 1e-5 if tol is None else tol
    max_iter = 100 if max_iter is None else max_iter
    _common.check_positive(rule, "tol", tol)
    _common.check_positive(rule, "max_iter", max_iter, integer=True)

    def solve(x, a):
        def cond(carry):
            it, _, _, step = carry
            return (it < max_iter) & (step > 0)

        def body(carry):  # one weiszfeld_step, with the distances at z carried from the last step
            it, z, dist, _ = carry
            z_new = _normalized_average(a / dist, x)
            dist_new = _distances(z_new, x, nu)
            moved = jnp.linalg.norm(z_new - z)
            return it + 1, z_new, dist_new, jnp.where(moved > tol * _length_scale(dist_new, a), moved, 0.0)

        z0 = _robust_start(x, a, nu)
        start = (jnp.zeros((), jnp.int32), z0, _distances(z0, x, nu), jnp.asarray(jnp.inf, x.dtype))
        it, z, _, _ = jax.lax.while_loop(cond, body, start)
        return z, it

    @jax.custom_vjp
    def fixed_point(x, a):
        return solve(x, a)

    def fixed_point_fwd(x, a):
        z, it = solve(x, a)
        return (z, it), (x, a, z)

    def fixed_point_bwd(residuals, cotangents):
        x, a, z = residuals
        g = cotangents[0]
        _, vjp_z = jax.vjp(lambda zz: weiszfeld_step(zz, x, a, nu), z)
        scale = tol * jnp.maximum(jnp.linalg.norm(g), jnp.finfo(g.dtype).tiny)

        def cond(carry):
            it, _, delta = carry
            return (it < max_iter) & (delta > scale)

        def body(carry):
            it, u, _ = carry
            u_new = g + vjp_z(u)[0]
            return it + 1, u_new, jnp.linalg.norm(u_new - u)

        _, u, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), g, jnp.asarray(jnp.inf, g.dtype)))
        _, vjp_xa = jax.vjp(lambda xx, aa: weiszfeld_step(z, xx, aa, nu), x, a)
        return vjp_xa(u)

    fixed_point.defvjp(fixed_point_fwd, fixed_point_bwd)

    def aggregate(updates, context):
        x, a = _prepare(updates, context.weights, weighted)
        z, iterations = fixed_point(x, a)
        b = jax.lax.stop_gradient(_weiszfeld_weights(z, x, a, nu))
        return z, _common.info(b, iterations=iterations)

    return _common.stateless(aggregate, count_weighted=weighted)


def rfa(num_iterations: Optional[int] = 3, nu: float = 1e-6, weighted: bool = True, start: str = "mean") -> Aggregator:
    """RFA: a fixed number T of smoothed Weiszfeld steps from the weighted mean.

    The few-iteration variant the paper runs in federated rounds (T = 3 by default; T = 1 is
    "one-step RFA"). Unrolled in a ``fori_loop`` and differentiated directly. ``a_i`` and
    non-finite updates as in ``geometric_median``; ``info["weights"]`` = the last step's
    ``b_i / sum b`` (the aggregate is exactly ``sum_i weights_i x_i``).

    Args:
      num_iterations: T >= 1 Weiszfeld steps.
      nu: smoothing nu > 0.
      weighted: ``a_i`` = example counts; ``False``: uniform.
      start: where the steps start: ``"mean"`` (the weighted mean, the paper's) or ``"zero"``
        (the origin, as Karimireddy et al.'s code, ICLR 2022, runs RFA with T = 8 and nu = 0.1
        on gradients). The start matters when T is too small to converge.

    References:
      Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions
      on Signal Processing 70, 2022.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
      >>> fljax.aggregate(rfa(num_iterations=3), updates)  # from the mean 12.75: 5.30, 2.12, 0.98
      Array([0.9777, 0.9777], dtype=float32)
    """
    rule = "rfa"
    _check_nu(rule, nu)
    _common.check_bool(rule, "weighted", weighted)
    num_iterations = 3 if num_iterations is None else num_iterations
    _common.check_positive(rule, "num_iterations", num_iterations, integer=True)
    if start not in ("mean", "zero"):
        raise ValueError(f"{rule}: start must be 'mean' or 'zero', got {start!r}")

    def aggregate(updates, context):
        x, a = _prepare(updates, context.weights, weighted)
        z0 = jnp.dot(a, x, precision=_HI) if start == "mean" else jnp.zeros(x.shape[1:], x.dtype)
        z_prev = jax.lax.fori_loop(0, num_iterations - 1, lambda _, z: weiszfeld_step(z, x, a, nu), z0)
        b = _weiszfeld_weights(z_prev, x, a, nu)
        z = jnp.dot(b, x, precision=_HI) / jnp.sum(b)
        return z, _common.info(jax.lax.stop_gradient(b))

    return _common.stateless(aggregate, count_weighted=weighted)
