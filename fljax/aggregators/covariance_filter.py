"""Covariance-bound agnostic filter, CAF (Allouah, Guerraoui, Stephan, ICML 2025): down-weight the
updates that stretch the weighted covariance along its top direction; output the weighted mean
of smallest top eigenvalue seen."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.subsets import centered_gram
from fljax.types import Aggregator

_HI = jax.lax.Precision.HIGHEST

SQUARINGS = 16
"""Repeated squarings of CAF's top eigenpair: 2^16 power steps (``_common.top_eigenpair``)."""


def caf(num_byzantine: int) -> Aggregator:
    """CAF: the filter of the paper's Algorithm 1.

    Weights ``c = 1``; while ``sum(c) > n - 2f``: ``mu`` = the c-weighted mean, ``Sigma`` = the
    c-weighted covariance ``sum_i c_i (x_i - mu)(x_i - mu)^T / sum(c)``, ``(lambda, v)`` its top
    eigenpair; remember ``mu`` when ``lambda`` is the smallest seen; ``tau_i = ((x_i - mu).v)^2``;
    ``c_i <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)``. The output is the remembered mean
    (with ``f = 0`` the loop never runs: the plain mean). Each pass zeroes at least the client
    of largest ``tau``, so at most 2f passes run (a static loop bound under jit).

    The top eigenpair is computed in ``n x n``: with ``A = diag(sqrt(c / sum c)) (X - mu)``,
    ``Sigma = A^T A`` shares its top eigenvalue with ``M = A A^T``, whose top eigenvector ``u``
    gives ``v = A^T u / sqrt(lambda)`` and ``tau = (K_c sqrt(w) u)^2 / lambda``, where ``K_c`` is
    the Gram matrix of the centered updates, itself computed once from the Gram matrix of all
    updates (O(n^2 d) once, then O(n^3) per pass; no ``d x d`` matrix). ``(lambda, u)`` come from
    a deterministic power iteration that converges: repeated squaring, ``2^16`` power steps
    (``_common.top_eigenpair``, matrix products only); ``lambda`` is its Rayleigh quotient.

    Deviations: ByzFL takes one power step from a RANDOM vector per pass (a random direction
    and an eigenvalue that can be off by any factor) and the maximum of ``tau`` over all
    clients, also those already at weight 0 (the paper: over ``c_j > 0``). Non-finite updates,
    and those whose squared distance to the cohort's center overflows float32, start at weight
    0 (in exact arithmetic their ``tau`` is the largest and the first pass zeroes them without
    remembering its infinite ``lambda``).

    ``info["weights"]`` are the remembered weights ``c / sum(c)``.

    Args:
      num_byzantine: f; needs n > 2f.

    References:
      Allouah, Guerraoui, Stephan, "Towards Trustworthy Federated Learning with Untrusted
      Participants", ICML 2025.

    Examples:
      >>> fljax.aggregate(caf(num_byzantine=1), jnp.array([[0.0], [1.0], [2.0], [10.0]]))  # two passes
      Array([1.07531], dtype=float32)
    """
    rule = "caf"
    f = _common.check_num_byzantine(rule, num_byzantine)

    def requirement(n: int) -> None:
        _common.require(
            n > 2 * f,
            rule,
            f"needs n > 2f clients per round; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})",
        )

    def aggregate(updates, context):
        n = updates.shape[0]
        k, bad = centered_gram(jax.lax.stop_gradient(updates))
        c0 = (~bad).astype(k.dtype)

        def step(_, carry):
            c, best_lambda, best_c, done = carry
            active = ~done & (jnp.sum(c) > n - 2 * f)
            w = _common.normalize(c)
            kw = jnp.dot(k, w, precision=_HI)
            centered = k - kw[:, None] - kw[None, :] + jnp.dot(w, kw, precision=_HI)
            root = jnp.sqrt(w)
            lam, u = _common.top_eigenpair(root[:, None] * centered * root[None, :], SQUARINGS)
            proj = jnp.dot(centered, root * u, precision=_HI)
            tau = jnp.where(lam > 0, proj * proj / jnp.where(lam > 0, lam, 1.0), 0.0)
            top = jnp.argmax(jnp.where(c > 0, tau, -1.0))
            tau_max = tau[top]
            record = active & (lam < best_lambda)
            # The client of largest tau is set to exactly 0 (XLA may compute tau twice, rounding
            # differently, so 1 - tau / tau_max need not be 0 there).
            shrunk = jnp.maximum(c * (1.0 - tau / jnp.where(tau_max > 0, tau_max, 1.0)), 0.0).at[top].set(0.0)
            return (
                jnp.where(active & (tau_max > 0), shrunk, c),
                jnp.where(record, lam, best_lambda),
                jnp.where(record, c, best_c),
                done | ~active | (tau_max <= 0),
            )

        init = (c0, jnp.array(jnp.inf, k.dtype), c0, jnp.array(False))
        _, _, weights, _ = jax.lax.fori_loop(0, 2 * f, step, init)
        weights = weights.astype(updates.dtype)
        return _common.weighted_average(updates, weights), _common.info(weights)

    return _common.stateless(aggregate, requirement=requirement)
