"""CONTRA: reputation from per-round cosine similarity (Awan, Luo, Li, ESORICS 2021)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common, _population
from fljax.types import Aggregator, Array


def _top_k_mean(cs: Array, k: int) -> Array:
    """Each row's mean of its ``k`` largest off-diagonal entries."""
    return jnp.mean(jax.lax.top_k(_population.off_diagonal(cs, -jnp.inf), k)[0], axis=1)


class ContraState(NamedTuple):
    """CONTRA's state: ``reputation`` ``[num_clients]``, each client's reputation in [0, 1] (1 at first)."""

    reputation: Array


def contra(
    num_clients: int,
    num_byzantine: Optional[int] = None,
    top_k: Optional[int] = None,
    similarity_threshold: float = 0.5,
    reputation_delta: float = 0.1,
) -> Aggregator:
    """CONTRA: penalize clients that stay too similar to others; scale and drop by reputation.

    Every client of the population has a reputation ``r`` in ``[0, 1]`` (the state,
    ``[num_clients]``, starting at 1, indexed by ``context.client_ids``). A round:

    1. ``cs_ij = cos(x_i, x_j)`` between the round's updates, clipped to ``[0, 1]``;
       ``tau_i`` = the mean of client i's ``k`` largest ``cs_ij`` (j != i);
    2. reputation: ``r_i <- r_i - delta`` if ``tau_i > similarity_threshold`` (or its update is
       non-finite), else ``r_i + delta``; clipped at 0 and divided by the cohort's largest;
    3. FoolsGold-style learning rates: pardoning ``cs_ij <- cs_ij * tau_i / tau_j`` where
       ``tau_j > tau_i``; ``tau_i`` recomputed; ``lr_i = 1 - tau_i``, rescaled by the max, then
       ``ln(lr / (1 - lr)) + 0.5`` clipped to ``[0, 1]``;
    4. the ``f = num_byzantine`` clients with the lowest reputation are dropped (ties: the more
       similar first); the rest are averaged with weights ``lr_i * r_i``.

    Deviations (documented, the paper leaves these open or relies on client selection): the
    paper uses reputation to set each client's probability of being SELECTED for a round; the
    round here samples cohorts uniformly, so reputation instead scales the aggregation weight and
    the ``f`` least reputable clients of the cohort are dropped. Negative similarities count as
    0 (as in public re-implementations). Reputations are clipped at 0 and normalized by the
    cohort's maximum so that an IID round in which everyone is similar does not drive every
    reputation to zero. Only the current round's updates are compared (no history), so the
    state is one float per client. Example counts are not used.

    Args:
      num_clients: the population size (length of the state); must be >= clients per round.
      num_byzantine: f, how many lowest-reputation clients each round drops (default 0).
      top_k: k of the top-k similarity average (default ``max(1, f)``, the expected number of
        colluders per round, as in the paper); needs k <= n - 1.
      similarity_threshold: tau, the top-k similarity above which reputation falls, in [0, 1].
      reputation_delta: delta, the reputation change per round, in (0, 1].

    References:
      Awan, Luo, Li, "CONTRA: Defending Against Poisoning Attacks in Federated Learning",
      ESORICS 2021.

    Examples:
      >>> agg = contra(num_clients=100, num_byzantine=2)
    """
    rule = "contra"
    _population.check_num_clients(rule, num_clients)
    f = 0 if num_byzantine is None else _common.check_num_byzantine(rule, num_byzantine)
    k = max(1, f) if top_k is None else _common.check_positive(rule, "top_k", top_k, integer=True)
    for name, value, ok, bound in (
        ("similarity_threshold", similarity_threshold, lambda v: 0 <= v <= 1, "[0, 1]"),
        ("reputation_delta", reputation_delta, lambda v: 0 < v <= 1, "(0, 1]"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"{rule}: {name} must be in {bound}, got {value!r}")

    def requirement(n: int) -> None:
        _population.population_requirement(rule, num_clients, n)
        _common.require(k <= n - 1, rule, f"top_k must be in 1..n-1={n - 1} (k most similar other clients), got {k}")
        _common.require(
            f <= n - 1, rule, f"num_byzantine f must be in 0..n-1={n - 1} (f clients dropped per round), got {f}"
        )

    def init(params):
        return ContraState(reputation=jnp.ones((num_clients,), params.dtype))

    def update(updates, state, context):
        reputation = state.reputation
        n = updates.shape[0]
        ids = context.client_ids
        finite = _common.finite_rows(updates)
        cs = jnp.clip(_common.cosine_similarity_matrix(jnp.where(finite[:, None], updates, 0.0)), 0.0, 1.0)
        tau = _top_k_mean(cs, k)
        suspicious = (tau > similarity_threshold) | ~finite
        r = jnp.maximum(reputation[ids] + jnp.where(suspicious, -reputation_delta, reputation_delta), 0.0)
        top = jnp.max(r)
        r = jnp.where(top > 0, r / jnp.where(top > 0, top, 1.0), r)
        tau_pardoned = _top_k_mean(_population.pardon(_population.off_diagonal(cs, 0.0), tau), k)
        lr = _population.logit_weights(jnp.where(finite, 1.0 - tau_pardoned, 0.0))
        dropped = jnp.zeros(n, bool).at[jnp.lexsort((-tau, r))[:f]].set(True)
        weights = jnp.where(dropped | ~finite, 0.0, lr * r).astype(updates.dtype)
        aggregate = _common.weighted_average(updates, weights)
        return (
            aggregate,
            ContraState(reputation.at[ids].set(r.astype(reputation.dtype))),
            _common.info(weights, reputation=r, top_k_similarity=tau, learning_rates=lr),
        )

    return Aggregator(init=init, update=update, requirement=requirement)
