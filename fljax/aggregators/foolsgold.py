"""FoolsGold: down-weight clients whose update histories are too alike (Fung et al., RAID 2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from fljax.aggregators import _common, _population
from fljax.types import Aggregator, Array


class FoolsGoldState(NamedTuple):
    """FoolsGold's state: ``history`` ``[num_clients, d]``, each client's summed updates."""

    history: Array


def foolsgold(num_clients: int, kappa: float = 1.0, feature_importance: bool = False) -> Aggregator:
    """FoolsGold: sybils that push the same objective share a direction over time; give them ~0 weight.

    The state is the cumulative update history ``H`` of every client of the POPULATION
    (``[num_clients, d]``, indexed by ``context.client_ids``, so a client's history follows it
    across cohorts). Each round, with ``H_i <- H_i + x_i`` for the cohort:

    1. ``cs_ij = cos(H_i, H_j)`` between the cohort's histories, with ``cs_ii = 0``;
    2. ``v_i = max_j cs_ij``; pardoning: ``cs_ij <- cs_ij * v_i / v_j`` where ``v_j > v_i``;
    3. ``w_i = 1 - max_j cs_ij`` clipped to ``[0, 1]``, rescaled so ``max_i w_i = 1``;
    4. ``w_i <- kappa * (ln(w_i / (1 - w_i)) + 0.5)`` clipped to ``[0, 1]`` (``w = 1`` gives 1);
    5. the aggregate is the ``w``-weighted average of the round's updates.

    As in the authors' code, the zero diagonal makes ``v_i = max(0, max_{j != i} cs_ij)``.
    Deviation: Algorithm 1 of the paper applies ``sum_i w_i x_i`` (a sum scaled by its own
    learning rate); here the sum is divided by ``sum_i w_i`` so the server learning rate keeps
    FedAvg's meaning. The logit maps ``w = 1`` to its limit 1 (the authors' code uses 0.99, which
    differs only for ``kappa < 0.2``). A non-finite update adds nothing to its history and gets
    weight 0 that round. Example counts are not used (the paper weights by ``w`` only).

    Memory: the history is ``num_clients * d`` floats (4 bytes each in fp32), e.g. 100 clients
    of a 200k-parameter MLP hold 80 MB, carried in the server state; this is the paper's design.

    Args:
      num_clients: the population size (rows of the history); must be >= clients per round.
      kappa: the logit's confidence parameter (> 0; the paper's default is 1).
      feature_importance: weight every coordinate of the histories by the magnitude of the global
        model's parameter, ``|theta_k| / sum |theta|``, before the cosine similarity (the paper's
        optional feature-importance weighting, the authors' ``importanceFeatureMapGlobal``; the
        paper restricts it to the output layer, here it spans all parameters of the flat model).

    References:
      Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil Settings",
      RAID 2020 (FoolsGold).

    Examples:
      >>> agg = foolsgold(num_clients=100)
      >>> agg.init(jnp.zeros(3)).history.shape  # each population client's summed updates
      (100, 3)
    """
    rule = "foolsgold"
    _population.check_num_clients(rule, num_clients)
    _common.check_positive(rule, "kappa", kappa)
    if not isinstance(feature_importance, bool):
        raise ValueError(f"{rule}: feature_importance must be a bool, got {feature_importance!r}")

    def init(params):
        return FoolsGoldState(history=jnp.zeros((num_clients, params.shape[0]), params.dtype))

    def update(updates, state, context):
        ids = context.client_ids
        finite = _common.finite_rows(updates)
        history = state.history.at[ids].add(jnp.where(finite[:, None], updates, 0.0).astype(state.history.dtype))
        h = history[ids]
        if feature_importance:
            magnitude = jnp.abs(context.params).astype(h.dtype)  # cosine ignores the 1 / sum |theta|
            h = h * jnp.where(jnp.sum(magnitude) > 0, magnitude, 1.0)
        cs = _population.off_diagonal(_common.cosine_similarity_matrix(h), 0.0)
        cs = _population.pardon(cs, jnp.max(cs, axis=1))
        w = jnp.where(finite, jnp.clip(1.0 - jnp.max(cs, axis=1), 0.0, 1.0), 0.0)
        alpha = _population.logit_weights(w, kappa).astype(updates.dtype)
        return (
            _common.weighted_average(updates, alpha),
            FoolsGoldState(history),
            _common.info(alpha, foolsgold_weights=alpha),
        )

    return Aggregator(
        init=init, update=update, requirement=lambda n: _population.population_requirement(rule, num_clients, n)
    )
