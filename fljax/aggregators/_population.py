"""Helpers of the stateful, behaviour-based rules (FoolsGold, AFA, CONTRA): population-sized
state checks, FoolsGold-style pardoning and the logit re-weighting."""

from __future__ import annotations

import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Array


def check_num_clients(rule: str, num_clients: int) -> int:
    """Validates the population size that sizes a rule's per-client state."""
    return _common.check_positive(rule, "num_clients", num_clients, integer=True)


def population_requirement(rule: str, num_clients: int, n: int) -> None:
    """A cohort cannot be larger than the population its state is indexed by."""
    _common.require(
        n <= num_clients,
        rule,
        f"the cohort of n={n} clients per round cannot exceed the population "
        f"num_clients={num_clients} (per-client state is indexed by client id)",
    )


def pardon(cs: Array, v: Array) -> Array:
    """FoolsGold's pardoning: ``cs_ij <- cs_ij * v_i / v_j`` wherever ``v_j > v_i`` (``v >= 0``)."""
    vj = v[None, :]
    return jnp.where(vj > v[:, None], cs * v[:, None] / jnp.where(vj > 0, vj, 1.0), cs)


def logit_weights(w: Array, kappa: float = 1.0) -> Array:
    """FoolsGold's re-weighting of ``w`` in ``[0, 1]``: rescale so the largest is 1, then
    ``kappa * (ln(w / (1 - w)) + 0.5)`` clipped to ``[0, 1]``; ``w = 1`` maps to 1 and ``w = 0``
    to 0 (the limits of the logit; the authors' code replaces 1 by 0.99 to dodge the infinity)."""
    w = jnp.clip(w, 0.0, 1.0)
    top = jnp.max(w)
    w = jnp.where(top > 0, w / jnp.where(top > 0, top, 1.0), 0.0)
    inner = jnp.clip(w, 1e-30, 1.0 - 1e-7)
    logit = kappa * (jnp.log(inner) - jnp.log1p(-inner) + 0.5)
    return jnp.where(w >= 1.0, 1.0, jnp.where(w <= 0.0, 0.0, jnp.clip(logit, 0.0, 1.0)))


def off_diagonal(cs: Array, value: float) -> Array:
    """``cs`` with its diagonal set to ``value``."""
    return jnp.where(jnp.eye(cs.shape[0], dtype=bool), value, cs)
