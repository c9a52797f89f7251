"""Optimal IPM and optimal ALIE: the attack factor tau chosen by a line search through the
server's rule (ByzFL's "optimal" variants, with its ``LineMaximize`` objective).

Every malicious client sends the same row of a one-parameter family, IPM's ``-tau * mu`` or
ALIE's ``mu + tau * sigma`` (``mu`` / ``sigma``: coordinate-wise mean and population standard
deviation of the round's honest updates), with the tau in ``[0, tau_max]`` that maximises
``||Agg(round's updates with the malicious rows replaced) - mu||``: how far the server's actual
rule (pre-aggregations included: ``context.aggregator`` is the whole chain) is pushed from the
honest mean. The attacker is omniscient, as in ByzFL: it reads the honest updates and the rule.

The search is deterministic: a grid, then a golden-section refinement around its best point
(``line_search``). ByzFL's ``LineMaximize`` explores by expansion and contraction from tau = 0
instead; a fixed grid cannot miss a narrow window by stepping over it as the expansion may, and
bounding the range keeps tau finite where the objective grows without bound (IPM against the mean).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp
from jax import lax

from fljax.aggregators.averaging import mean
from fljax.attacks._common import replace_rows, simulated_server_context
from fljax.attacks.threat import masked_mean_std
from fljax.types import Aggregator, Array, ModelAttack

GOLDEN = 0.6180339887498949
"""``(sqrt(5) - 1) / 2``, the golden-section ratio."""


class LineSearchState(NamedTuple):
    """The last round's chosen ``tau`` and its ``deviation`` ``||Agg - mu||`` (float32 scalars,
    0 in a round without attackers)."""

    tau: Array
    deviation: Array


def search_grid(tau_max: float, grid_points: int) -> Array:
    """The ``grid_points`` taus of the first pass, ``tau_k = tau_max * (k / (G - 1))^2`` for
    ``k = 0 .. G - 1``: from 0 to ``tau_max``, denser near 0 (spacing ``tau_max / (G - 1)^2``
    there), where robust rules' windows of acceptance are narrow."""
    k = jnp.arange(grid_points, dtype=jnp.float32)
    return tau_max * (k / (grid_points - 1)) ** 2


def line_search(
    score: Callable[[Array], Array], tau_max: float, grid_points: int = 33, refine_steps: int = 12
) -> tuple[Array, Array]:
    """``(tau, score(tau))``: a deterministic maximiser of ``score`` over ``[0, tau_max]``.

    1. Every tau of ``search_grid(tau_max, grid_points)`` is scored (``lax.map``, one at a time);
       the best, ``tau_k*`` (the smallest on ties), is kept.
    2. Golden-section search on ``[tau_{k*-1}, tau_{k*+1}]`` (clipped to the grid) for
       ``refine_steps`` iterations, one new score each; a point replaces the best only if it
       scores strictly higher.

    The result is never worse than the grid's best, and is within ``0.618^refine_steps`` of the
    bracket's width from a local maximum where ``score`` is unimodal on the bracket. A
    non-finite score counts as ``-inf`` (never chosen); when every score is, tau is 0.
    """

    def value(tau):
        v = score(tau)
        return jnp.where(jnp.isfinite(v), v, -jnp.inf)

    taus = search_grid(tau_max, grid_points)
    values = lax.map(value, taus)
    k = jnp.argmax(values)
    best = (taus[k], values[k])
    a, b = taus[jnp.maximum(k - 1, 0)], taus[jnp.minimum(k + 1, grid_points - 1)]
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = value(c), value(d)

    def keep(best, tau, v):
        return jnp.where(v > best[1], tau, best[0]), jnp.maximum(v, best[1])

    best = keep(keep(best, c, fc), d, fd)

    def body(_, carry):
        a, b, c, d, fc, fd, best = carry
        left = fc >= fd  # the maximum lies in [a, d]: d <- c, new c; else in [c, b]: c <- d, new d
        a, b = jnp.where(left, a, c), jnp.where(left, d, b)
        new = jnp.where(left, b - GOLDEN * (b - a), a + GOLDEN * (b - a))
        fnew = value(new)
        c, d, fc, fd = (
            jnp.where(left, new, d),
            jnp.where(left, c, new),
            jnp.where(left, fnew, fd),
            jnp.where(left, fc, fnew),
        )
        return a, b, c, d, fc, fd, keep(best, new, fnew)

    *_, best = lax.fori_loop(0, refine_steps, body, (a, b, c, d, fc, fd, best))
    return best


def stable_norm(x: Array) -> Array:
    """``||x||_2`` scaled by ``max |x_j|`` first, so that a finite vector of huge entries (1e30)
    does not overflow float32's squares."""
    scale = jnp.max(jnp.abs(x))
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale * jnp.sqrt(jnp.sum((x / safe) ** 2))


def _check_int(attack: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{attack}: {name} must be an integer >= {low}, got {value!r}")
    return value


def _optimal(
    attack: str,
    family: Callable[[Array, Array, Array], Array],
    tau_max: float,
    grid_points: int,
    refine_steps: int,
    rule: Optional[Aggregator],
) -> ModelAttack:
    if isinstance(tau_max, bool) or not isinstance(tau_max, (int, float)) or not 0 < tau_max < math.inf:
        raise ValueError(f"{attack}: tau_max must be a finite number > 0, got {tau_max!r}")
    _check_int(attack, "grid_points", grid_points, 2)
    _check_int(attack, "refine_steps", refine_steps, 0)
    if rule is not None and not isinstance(rule, Aggregator):
        raise ValueError(f"{attack}: rule must be an fljax.Aggregator (or None for the round's), got {rule!r}")

    def init(params):
        return LineSearchState(tau=jnp.zeros((), jnp.float32), deviation=jnp.zeros((), jnp.float32))

    def update(updates, malicious, state, key, context):
        agg_rule = rule if rule is not None else (context.aggregator or mean())
        agg_state = context.agg_state if agg_rule is context.aggregator else agg_rule.init(context.params)
        # The server's aggregation key is not the attacker's: a random rule (bucketing) is simulated
        # with a key of the attack's own, the same for every tau, so the search is deterministic.
        agg_ctx = simulated_server_context(context, updates.dtype, key)
        # Statistics that overflow (honest rows near the float maximum) are taken as 0.
        mu, sigma = (jnp.where(jnp.isfinite(s), s, 0.0) for s in masked_mean_std(updates, ~malicious))

        def craft(tau):
            row = family(mu, sigma, tau.astype(updates.dtype))
            return jnp.where(jnp.isfinite(row), row, mu)

        def deviation(tau):
            aggregate, _, _ = agg_rule.update(replace_rows(updates, malicious, craft(tau)), agg_state, agg_ctx)
            return stable_norm(aggregate - mu)

        tau, dev = line_search(deviation, float(tau_max), grid_points, refine_steps)
        any_mal = jnp.any(malicious)
        new_state = LineSearchState(
            tau=jnp.where(any_mal, tau, 0.0).astype(jnp.float32),
            deviation=jnp.where(any_mal & jnp.isfinite(dev), dev, 0.0).astype(jnp.float32),
        )
        return replace_rows(updates, malicious, craft(tau)), new_state

    return ModelAttack(init=init, update=update)


def ipm_row(mu: Array, sigma: Array, tau: Array) -> Array:
    """IPM's row ``-tau * mu``."""
    return -tau * mu


def alie_row(mu: Array, sigma: Array, tau: Array) -> Array:
    """ALIE's row ``mu + tau * sigma``."""
    return mu + tau * sigma


def optimal_ipm(
    tau_max: float = 10.0, grid_points: int = 33, refine_steps: int = 12, rule: Optional[Aggregator] = None
) -> ModelAttack:
    """Optimal IPM: every malicious client sends ``-tau * mu`` with the tau in ``[0, tau_max]``
    that maximises ``||Agg(updates) - mu||`` through the server's rule (``line_search``).

    ``mu`` is the mean of the round's honest updates (full knowledge; ``fljax.attacks.ipm`` is
    the fixed-tau attack, ``epsilon`` there). The rule is ``rule``, else the round's
    (``context.aggregator``: the server's chain, pre-aggregations included, with its state),
    else the mean; it runs with a zero FLTrust reference (the attacker does not see the server's
    root update). The attack's state (``LineSearchState``) holds the round's tau and deviation.
    Each round costs ``grid_points + refine_steps + 2`` aggregations.

    Args:
      tau_max: the end of the searched range (finite, > 0). Against the mean the deviation grows
        with tau, so the search returns ``tau_max`` there.
      grid_points: taus of the first pass (>= 2), ``search_grid``.
      refine_steps: golden-section iterations around the grid's best (>= 0).
      rule: the aggregation rule to simulate; default the round's.

    References:
      Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
      Manipulation", UAI 2019; the objective, the aggregate's distance to the honest mean,
      follows ByzFL's optimal IPM (github.com/LPD-EPFL/byzfl, ``LineMaximize``).

    Examples:
      >>> fljax.apply_attack(optimal_ipm(), updates, malicious, aggregator=fljax.aggregators.median())  # doctest: +SKIP
    """
    return _optimal("optimal_ipm", ipm_row, tau_max, grid_points, refine_steps, rule)


def optimal_alie(
    tau_max: float = 10.0, grid_points: int = 33, refine_steps: int = 12, rule: Optional[Aggregator] = None
) -> ModelAttack:
    """Optimal ALIE: every malicious client sends ``mu + tau * sigma`` with the tau in
    ``[0, tau_max]`` that maximises ``||Agg(updates) - mu||`` through the server's rule.

    ``mu`` and ``sigma`` are the mean and population (``ddof=0``) standard deviation of the
    round's honest updates, the sign of ``fljax.attacks.alie`` (Baruch et al.'s ``mu + z sigma``;
    ``alie`` is the attack with the paper's fixed z). Search, rule and state as ``optimal_ipm``.

    Args:
      tau_max, grid_points, refine_steps, rule: as ``optimal_ipm``.

    References:
      Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
      Learning", NeurIPS 2019; the objective follows ByzFL's optimal ALIE
      (github.com/LPD-EPFL/byzfl, ``LineMaximize``).

    Examples:
      >>> fljax.apply_attack(
      ...     optimal_alie(tau_max=5.0), updates, malicious, aggregator=fljax.aggregators.krum(2)
      ... )  # doctest: +SKIP
    """
    return _optimal("optimal_alie", alie_row, tau_max, grid_points, refine_steps, rule)
