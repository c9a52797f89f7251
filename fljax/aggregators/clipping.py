"""Norm clipping rules: norm bounding and weak DP (Sun et al. 2019), centered clipping
(Karimireddy, He, Jaggi, ICML 2021).

The clipping factor ``min(1, M / ||x||)`` is computed as ``M / sqrt(max(||x||^2, M^2))``: the
same value, but its gradient is finite everywhere (also at ``x = 0``), so attacks can
differentiate through these rules.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator, Array


def clip_factors(sq_norms: Array, max_norm) -> Array:
    """``min(1, M / ||x||)`` from squared norms, with finite gradients (``M > 0``)."""
    return max_norm / jnp.sqrt(jnp.maximum(sq_norms, jnp.square(max_norm)))


def clip_rows(updates: Array, max_norm) -> tuple[Array, Array, Array]:
    """Scales each row to norm at most ``max_norm``: ``x_i / max(1, ||x_i|| / M)``.

    Returns:
      ``(clipped [n, d], factors [n], finite bool[n])``; non-finite rows come back as zeros
      (factor 1) and are flagged in ``finite`` so the caller decides what they mean.
    """
    finite = _common.finite_rows(updates)
    x = jnp.where(finite[:, None], updates, 0.0)
    factors = clip_factors(jnp.sum(x * x, axis=1), max_norm)
    return x * factors[:, None], factors, finite


def _clipped_mean(rule: str, max_norm: float, weighted: bool):
    _common.check_positive(rule, "max_norm", max_norm)
    _common.check_bool(rule, "weighted", weighted)

    def aggregate(updates, context):
        clipped, factors, finite = clip_rows(updates, max_norm)
        w = (context.weights if weighted else jnp.ones_like(context.weights)).astype(updates.dtype)
        w = jnp.where(finite, w, 0.0)
        return _common.weighted_average(clipped, w), _common.info(w * factors, clip_factors=factors)

    return aggregate


def norm_clipping(max_norm: float, weighted: bool = True) -> Aggregator:
    """Norm bounding: clip every update to norm ``M``, then take the (example-count) weighted mean.

    ``x_i <- x_i / max(1, ||x_i|| / M)``. A non-finite update cannot be clipped to a direction
    and gets weight 0. ``info["weights"]`` is each client's coefficient in the aggregate,
    ``w_i * min(1, M/||x_i||)``, normalized: heavily clipped clients show as down-weighted.

    Args:
      max_norm: the norm bound M (> 0), in the units of the updates.
      weighted: weight by example counts (FedAvg); ``False`` gives the plain mean.

    References:
      Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019
      (arXiv:1911.07963).

    Examples:
      >>> fljax.aggregate(norm_clipping(max_norm=1.0), jnp.array([[3.0, 4.0], [0.0, 0.5]]))  # (0.6, 0.8), (0, 0.5)
      Array([0.3 , 0.65], dtype=float32)
    """
    return _common.stateless(_clipped_mean("norm_clipping", max_norm, weighted), count_weighted=weighted)


def weak_dp(max_norm: float, noise_std: float, weighted: bool = True) -> Aggregator:
    """Weak differential privacy: norm clipping, then Gaussian noise ``N(0, sigma^2 I)`` added
    to the aggregate (drawn from ``context.key``).

    Args:
      max_norm: the norm bound M (> 0).
      noise_std: sigma (>= 0), the standard deviation of the noise on each coordinate.
      weighted: weight by example counts (FedAvg).

    References:
      Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019
      (arXiv:1911.07963).

    Examples:
      >>> agg = weak_dp(max_norm=3.0, noise_std=0.025)
    """
    _common.check_positive("weak_dp", "noise_std", noise_std, allow_zero=True)
    clipped_mean = _clipped_mean("weak_dp", max_norm, weighted)

    def aggregate(updates, context):
        out, info = clipped_mean(updates, context)
        noise = noise_std * jax.random.normal(context.key, out.shape, out.dtype)
        return out + noise, info

    return _common.stateless(aggregate, count_weighted=weighted)


class CenteredClippingState(NamedTuple):
    """Centered clipping's state: ``center`` ``[d]``, the last aggregate (zeros before the first round)."""

    center: Array


def centered_clipping(clip_radius: float, num_iterations: Optional[int] = 1) -> Aggregator:
    """Centered clipping: clip the updates around a center that starts at the last aggregate.

    ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``, ``L`` times, from ``v`` = the
    previous round's aggregate (the rule's state, ``CenteredClippingState``, zeros at ``init``);
    the result is the new aggregate and the next center. Uniform ``1/n`` as in the paper (example counts are not used).
    A non-finite update contributes nothing (it is treated as ``x_i = v``).

    ``info["weights"]``: the aggregate is exactly ``a_0 v_0 + sum_i a_i x_i``; the coefficients
    ``a_i`` are tracked through the L iterations and normalized.

    Args:
      clip_radius: tau (> 0).
      num_iterations: L (>= 1); the authors' code uses 1.

    References:
      Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
      ICML 2021.

    Examples:
      >>> agg = centered_clipping(clip_radius=1.0, num_iterations=1)
      >>> fljax.aggregate(agg, jnp.array([[3.0, 4.0], [0.0, 0.0]]))  # from v = 0: mean of (0.6, 0.8) and 0
      Array([0.3, 0.4], dtype=float32)
    """
    _common.check_positive("centered_clipping", "clip_radius", clip_radius)
    num_iterations = 1 if num_iterations is None else num_iterations
    _common.check_positive("centered_clipping", "num_iterations", num_iterations, integer=True)

    def init(params):
        return CenteredClippingState(center=jnp.zeros_like(params))

    def update(updates, state, context):
        n = updates.shape[0]
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)

        def step(_, carry):
            v, coef_v, coef_x = carry
            diff = x - v[None, :]
            c = jnp.where(finite, clip_factors(jnp.sum(diff * diff, axis=1), clip_radius), 0.0) / n
            v = v + jnp.dot(c, diff, precision=jax.lax.Precision.HIGHEST)
            keep = 1.0 - jnp.sum(c)
            return v, coef_v * keep, coef_x * keep + c

        start = (state.center.astype(updates.dtype), jnp.ones((), updates.dtype), jnp.zeros(n, updates.dtype))
        v, coef_v, coef_x = jax.lax.fori_loop(0, num_iterations, step, start)
        return v, CenteredClippingState(v.astype(state.center.dtype)), _common.info(coef_x, center_weight=coef_v)

    return Aggregator(init=init, update=update)
