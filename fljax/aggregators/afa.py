"""Adaptive Federated Averaging, AFA (Munoz-Gonzalez, Co, Lupu 2019)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import scipy.special
from jax.scipy.special import betainc

from fljax.aggregators import _common, _population
from fljax.types import Aggregator, Array

ROUNDING_SLACK = 1e-6
"""Similarities must lie this far beyond the threshold to be dropped: with near-identical
updates the std is at fp32 rounding level and rounding alone would otherwise drop clients."""


class AFAState(NamedTuple):
    """Per population client: the Beta(alpha, beta) posterior of its probability of sending
    good updates, and whether it is blocked."""

    alpha: Array
    beta: Array
    blocked: Array


def good_probability(alpha: Array, beta: Array) -> Array:
    """``P(p > 0.5)`` for ``p ~ Beta(alpha, beta)``: one minus the Beta CDF at 0.5."""
    return 1.0 - betainc(alpha, beta, jnp.asarray(0.5, jnp.result_type(alpha)))


def masked_median(values: Array, mask: Array) -> Array:
    """Median of ``values[mask]`` (mean of the two middle values for an even count; NaN if empty)."""
    count = jnp.sum(mask)
    ordered = jnp.sort(jnp.where(mask, values, jnp.inf))
    lo = ordered[jnp.maximum(count - 1, 0) // 2]
    hi = ordered[count // 2 - (count == 0)]
    return jnp.where(count > 0, (lo + hi) / 2, jnp.nan)


def afa(
    num_clients: int,
    xi: float = 2.0,
    delta_xi: float = 0.5,
    prior_alpha: float = 3.0,
    prior_beta: float = 3.0,
    block_threshold: float = 0.05,
) -> Aggregator:
    """AFA: iteratively drop updates dissimilar to the weighted mean; block clients with bad records.

    Each client k of the population has a Beta(alpha_k, beta_k) belief about its probability
    ``p_k = alpha_k / (alpha_k + beta_k)`` of sending good updates, and a blocked flag (the state,
    ``AFAState``, ``[num_clients]`` each, indexed by ``context.client_ids``). A round, with ``n_k``
    the example counts:

    1. the good set G starts as the cohort's finite updates of unblocked clients; ``xi <- xi_0``;
    2. repeat: ``M = sum_{G} p_k n_k x_k / sum_{G} p_k n_k``; ``s_k = cos(x_k, M)``; with the
       mean, median and (population) std of ``s`` over G: if ``mean < median`` drop the k in G
       with ``s_k < median - xi * std``, else those with ``s_k > median + xi * std``;
       ``xi <- xi + delta_xi``; until nothing is dropped (a ``lax.while_loop`` capped at n + 1
       passes, enough since every pass but the last drops a client);
    3. good clients get ``alpha_k + 1``, dropped ones (non-finite updates included)
       ``beta_k + 1``; blocked clients are left unchanged;
    4. a client is BLOCKED once ``P(p_k > 0.5) < block_threshold`` (Beta CDF via ``betainc``;
       the authors' code blocks when ``CDF(0.5) > 0.95``, the default here): it gets weight 0
       in this and every later round;
    5. the aggregate is the mean of G weighted by ``p_k n_k`` with the updated ``p_k``.

    Deviations: the similarities are between updates and their weighted mean (the authors' code
    compares whole models, which the shared global model makes near-identical); thresholds use
    the population std; a similarity must lie ``1e-6`` beyond the threshold to be dropped
    (a guard against fp32 rounding when the updates are near-identical). The prior
    ``Beta(3, 3)`` is this library's default: a symmetric prior under which six straight bad
    rounds block a client with the default threshold.

    Args:
      num_clients: the population size (rows of the state); must be >= clients per round.
      xi: the initial slack xi_0 of the thresholds (>= 0; the authors' code uses 2).
      delta_xi: the slack added after each pass (>= 0; 0.5 in the authors' original code).
      prior_alpha: alpha_0 of every client's Beta prior (> 0).
      prior_beta: beta_0 of every client's Beta prior (> 0).
      block_threshold: block a client when ``P(p_k > 0.5)`` falls below this, in ``[0, 1)``
        (0 never blocks); the prior itself must not be blocked.

    References:
      Munoz-Gonzalez, Co, Lupu, "Byzantine-Robust Federated Machine Learning through Adaptive
      Model Averaging", arXiv:1909.05125, 2019.

    Examples:
      >>> agg = afa(num_clients=5)
      >>> agg.init(jnp.zeros(2)).alpha  # the Beta(3, 3) prior of every population client
      Array([3., 3., 3., 3., 3.], dtype=float32)
      >>> updates = jnp.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-5.0, 5.0]])
      >>> fljax.aggregate(agg, updates)  # the last is dropped (dissimilar), the others averaged
      Array([0.975, 0.   ], dtype=float32)
    """
    rule = "afa"
    _population.check_num_clients(rule, num_clients)
    _common.check_positive(rule, "xi", xi, allow_zero=True)
    _common.check_positive(rule, "delta_xi", delta_xi, allow_zero=True)
    _common.check_positive(rule, "prior_alpha", prior_alpha)
    _common.check_positive(rule, "prior_beta", prior_beta)
    if (
        isinstance(block_threshold, bool)
        or not isinstance(block_threshold, (int, float))
        or not 0 <= block_threshold < 1
    ):
        raise ValueError(f"{rule}: block_threshold must be in [0, 1), got {block_threshold!r}")
    prior_good = 1.0 - float(scipy.special.betainc(prior_alpha, prior_beta, 0.5))
    _common.require(
        prior_good >= block_threshold,
        rule,
        f"the prior Beta(prior_alpha={prior_alpha}, prior_beta={prior_beta}) has P(p > 0.5) = {prior_good:.4g} "
        f"< block_threshold={block_threshold}: every client would start blocked",
    )

    def init(params):
        ones = jnp.ones((num_clients,), params.dtype)
        return AFAState(alpha=prior_alpha * ones, beta=prior_beta * ones, blocked=jnp.zeros((num_clients,), bool))

    def update(updates, state, context):
        n = updates.shape[0]
        ids = context.client_ids
        a, b, blocked = state.alpha[ids], state.beta[ids], state.blocked[ids]
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)
        norms = _common.safe_norms(x)
        base = (a / (a + b) * context.weights).astype(x.dtype)

        def similarities(good):
            m = _common.weighted_average(x, jnp.where(good, base, 0.0))
            m_norm = jnp.sqrt(jnp.sum(m * m))
            ok = (norms > 0) & (m_norm > 0)
            dots = jnp.dot(x, m, precision=jax.lax.Precision.HIGHEST)
            return jnp.where(ok, dots / jnp.where(ok, norms * m_norm, 1.0), 0.0)

        def body(carry):
            good, slack, passes, _ = carry
            s = similarities(good)
            count = jnp.maximum(jnp.sum(good), 1)
            mean = jnp.sum(jnp.where(good, s, 0.0)) / count
            median = masked_median(s, good)
            std = jnp.sqrt(jnp.sum(jnp.where(good, (s - mean) ** 2, 0.0)) / count)
            low = median - slack * std - ROUNDING_SLACK
            high = median + slack * std + ROUNDING_SLACK
            drop = good & jnp.where(mean < median, s < low, s > high)
            return good & ~drop, slack + delta_xi, passes + 1, jnp.any(drop)

        init_carry = (finite & ~blocked, jnp.asarray(xi, x.dtype), jnp.asarray(0), jnp.asarray(True))
        good, _, passes, _ = jax.lax.while_loop(lambda c: c[3] & (c[2] <= n), body, init_carry)

        bad = ~good & ~blocked
        a = a + good.astype(a.dtype)
        b = b + bad.astype(b.dtype)
        blocked = blocked | (good_probability(a, b) < block_threshold)
        weights = jnp.where(good & ~blocked, a / (a + b) * context.weights, 0.0).astype(x.dtype)
        new_state = AFAState(
            alpha=state.alpha.at[ids].set(a), beta=state.beta.at[ids].set(b), blocked=state.blocked.at[ids].set(blocked)
        )
        aggregate = _common.weighted_average(x, weights)
        return aggregate, new_state, _common.info(weights, good=good, blocked=blocked, afa_passes=passes)

    return Aggregator(
        init=init,
        update=update,
        count_weighted=True,
        requirement=lambda n: _population.population_requirement(rule, num_clients, n),
    )
