"""FLTrust: trust bootstrapped from the server's own update on a clean root set (Cao et al., NDSS 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator


def fltrust() -> Aggregator:
    """FLTrust: weight each update by its ReLU-clipped cosine similarity to the server's update.

    With ``g0 = context.reference`` (the server's update on its clean root set; the aggregator
    sets ``needs_reference`` so the round computes it):
    ``TS_i = ReLU(cos(x_i, g0))`` and the result is
    ``sum_i TS_i * (||g0|| / ||x_i||) x_i / sum_i TS_i``: every update is rescaled to the norm
    of ``g0`` and averaged with its trust score. The result is zero when every trust score is
    zero (as in the paper). Non-finite and all-zero updates get trust 0. Example counts are not
    used (the paper weights by trust only).

    ``info["weights"]`` is each client's share of the trust, ``TS_i / sum_j TS_j`` (its update is
    rescaled to ``||g0||`` before that weight applies); ``info["trust_scores"]`` holds ``TS_i``.

    References:
      Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
      Bootstrapping", NDSS 2021.

    Examples:
      >>> fljax.aggregate(fltrust(), jnp.array([[2.0, 0.0], [0.0, 5.0]]), reference=jnp.array([1.0, 0.0]))
      Array([1., 0.], dtype=float32)

      Trust scores ReLU(cos) = 1 and 0; the trusted update is scaled to the reference's norm 1.
    """

    def aggregate(updates, context):
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)
        g0 = jnp.where(jnp.isfinite(context.reference), context.reference, 0.0).astype(x.dtype)
        g0_norm = jnp.sqrt(jnp.sum(g0 * g0))
        # (||g0|| / ||x_i||) x_i = ||g0|| u_i with u_i = x_i / ||x_i||, computed from the rows
        # scaled by their largest entry, so that rows near the float32 maximum neither overflow
        # the dot products nor the norms.
        scaled, _ = _common.max_scaled(x)
        lengths = jnp.sqrt(jnp.sum(scaled * scaled, axis=1))
        usable = finite & (lengths > 0) & (g0_norm > 0)
        unit = scaled / jnp.where(usable, lengths, 1.0)[:, None]
        cos = jnp.where(
            usable, jnp.dot(unit, g0, precision=jax.lax.Precision.HIGHEST) / jnp.where(g0_norm > 0, g0_norm, 1.0), 0.0
        )
        trust = jnp.maximum(cos, 0.0)
        total = jnp.sum(trust)
        out = g0_norm * jnp.dot(trust, unit, precision=jax.lax.Precision.HIGHEST) / jnp.where(total > 0, total, 1.0)
        return out, _common.info(trust, trust_scores=trust)

    return _common.stateless(aggregate, needs_reference=True)
