"""FLDetector: flag the clients whose updates are inconsistent with their own history (Zhang et
al., KDD 2022)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fljax.aggregators import _common, _population
from fljax.types import Aggregator, Array

_HI = jax.lax.Precision.HIGHEST


class FLDetectorState(NamedTuple):
    """FLDetector's state.

    Attributes:
      prev_params: ``[d]`` the global model of the previous round, ``w_{t-1}``.
      prev_global: ``[d]`` the previous round's aggregate pseudo-gradient ``g_{t-1}``.
      weight_diffs: ``[N, d]`` the last N model differences ``s_k = w_k - w_{k-1}`` (a ring).
      grad_diffs: ``[N, d]`` their gradient differences ``y_k = g_k - g_{k-1}`` (same slots).
      pair_round: ``[N]`` the round k of each slot's pair; -1 for an empty or unusable slot.
      last_update: ``[num_clients, d]`` each client's last pseudo-gradient ``g^i``.
      last_round: ``[num_clients]`` the round of it (-1: never).
      scores: ``[N, num_clients]`` normalised distances of the last N scoring rounds (NaN: not
        scored that round), a ring by scoring round.
      scored_rounds: how many rounds have scored clients.
      removed: ``[num_clients]`` clients flagged and removed for good.
      round: the round number t.
    """

    prev_params: Array
    prev_global: Array
    weight_diffs: Array
    grad_diffs: Array
    pair_round: Array
    last_update: Array
    last_round: Array
    scores: Array
    scored_rounds: Array
    removed: Array
    round: Array


def lbfgs_hvp(s: Array, y: Array, valid: Array, order: Array, v: Array) -> Array:
    """``B v`` for the L-BFGS estimate ``B`` of the Hessian from the pairs ``(s_k, y_k)``, in the
    compact form of Byrd, Nocedal and Schnabel (1994), as FLDetector's Algorithm 2:

        B = sigma I - [sigma S  Y] [[sigma S^T S, L], [L^T, -D]]^{-1} [sigma S^T; Y^T]

    with ``S``, ``Y`` the pairs as columns, ``S^T Y = L + D + U`` (``L`` strictly lower: ``s_i.y_j``
    for the LATER pair i, ``D`` diagonal), ``sigma = y.s / s.s`` of the newest pair. It equals
    ``v`` multiplied by the matrix of the BFGS recursion ``B <- B - B s s^T B / s^T B s + y y^T / y^T s``
    from ``B_0 = sigma I`` over the pairs in order.

    Args:
      s, y: ``[N, d]`` pairs (rows), in any slot order.
      valid: ``bool[N]`` the slots in use (the others may hold anything).
      order: ``[N]`` the pairs' time order (larger: later); read only where valid.
      v: ``[d]``.

    Returns ``B v`` (``[d]``), or zeros without a valid pair.
    """
    s = jnp.where(valid[:, None], s, 0.0)
    y = jnp.where(valid[:, None], y, 0.0)
    n = s.shape[0]
    sy = jnp.dot(s, y.T, precision=_HI)
    ss = jnp.dot(s, s.T, precision=_HI)
    newest = jnp.argmax(jnp.where(valid, order, jnp.iinfo(jnp.int32).min))
    ss_new = ss[newest, newest]
    sigma = jnp.where(jnp.any(valid) & (ss_new > 0), sy[newest, newest] / jnp.where(ss_new > 0, ss_new, 1.0), 0.0)
    both = valid[:, None] & valid[None, :]
    lower = jnp.where(both & (order[:, None] > order[None, :]), sy, 0.0)
    unused = jnp.diag(~valid).astype(s.dtype)  # an empty slot is an identity row: p = 0 there
    m = jnp.block(
        [
            [sigma * jnp.where(both, ss, 0.0) + unused, lower],
            [lower.T, -jnp.diag(jnp.where(valid, jnp.diag(sy), 0.0)) + unused],
        ]
    )
    q = jnp.concatenate([sigma * jnp.dot(s, v, precision=_HI), jnp.dot(y, v, precision=_HI)])
    p = jnp.linalg.solve(m, q)
    out = sigma * v - sigma * jnp.dot(p[:n], s, precision=_HI) - jnp.dot(p[n:], y, precision=_HI)
    return jnp.where(jnp.any(valid), out, jnp.zeros_like(v))


def _split_costs(values: Array, valid: Array) -> tuple[Array, Array, Array]:
    """For the valid entries of each row of ``values`` (``[r, n]``): the within-cluster sum of
    squares of one cluster (``W_1``), of the best split into two (``W_2``, exact: the optimal
    2-means of points on a line are two runs of the sorted values) and the split's threshold
    (the smallest value of the upper run), each ``[r]``. Two-pass sums over ``[n - 1, n]`` masks
    (one per split), no cancellation of large sums."""
    n = values.shape[-1]
    ranked = jnp.sort(jnp.where(valid, values, jnp.inf), axis=-1)
    m = jnp.sum(valid, axis=-1)[:, None, None]  # [r, 1, 1]
    real = jnp.arange(n)[None, None, :] < m  # [r, 1, n]
    v = jnp.where(real, ranked[:, None, :], 0.0)  # [r, 1, n]
    split = jnp.arange(1, n)[None, :, None]  # split j: the j smallest values against the rest
    below = jnp.arange(n)[None, None, :] < split  # [1, n - 1, n]

    def ss(mask):
        count = jnp.maximum(jnp.sum(mask, -1, keepdims=True), 1)
        mu = jnp.sum(jnp.where(mask, v, 0.0), -1, keepdims=True) / count
        return jnp.sum(jnp.where(mask, (v - mu) ** 2, 0.0), -1)

    w1 = ss(real)[:, 0]
    cost = jnp.where(split[..., 0] < m[..., 0], ss(below & real) + ss(~below & real), jnp.inf)  # [r, n - 1]
    best = jnp.argmin(cost, axis=-1)
    w2 = jnp.take_along_axis(cost, best[:, None], -1)[:, 0]
    threshold = jnp.take_along_axis(ranked, (best + 1)[:, None], -1)[:, 0]
    return w1, w2, threshold


def gap_statistic_two_clusters(values: Array, valid: Array, key: Array, num_references: int) -> tuple[Array, Array]:
    """Tibshirani, Walther, Hastie's gap statistic, asked whether the valid ``values`` form
    more than one cluster, and the 2-means split.

    The values are min-max normalised to ``[0, 1]``; ``Gap(k) = E*[log W_k] - log W_k`` with
    ``W_k`` the pooled within-cluster sum of squares of the (exact) k-means clustering and
    ``E*`` the mean over ``num_references`` reference sets of as many points drawn uniformly
    on ``[0, 1]`` (from ``key``); ``s_k = sd*(log W_k) sqrt(1 + 1/B)``. The number of clusters is
    the smallest k with ``Gap(k) >= Gap(k + 1) - s_{k + 1}``, so it is at least 2 exactly when
    ``Gap(1) < Gap(2) - s_2`` (only ``W_1`` and ``W_2`` are needed). Fewer than 3 valid
    values, or all equal, are one cluster.

    Returns ``(two_or_more bool, upper bool[n])``: the valid values in the upper cluster of the
    2-means split.
    """
    lo = jnp.min(jnp.where(valid, values, jnp.inf))
    hi = jnp.max(jnp.where(valid, values, -jnp.inf))
    spread = hi - lo
    x = jnp.where(valid, (values - lo) / jnp.where(spread > 0, spread, 1.0), 0.0)
    w1, w2, cut = (a[0] for a in _split_costs(x[None], valid[None]))
    refs = jax.random.uniform(key, (num_references, values.shape[0]), values.dtype)
    r1, r2, _ = _split_costs(refs, jnp.broadcast_to(valid, refs.shape))
    tiny = jnp.finfo(values.dtype).tiny
    log = lambda w: jnp.log(jnp.maximum(w, tiny))
    gap1 = jnp.mean(log(r1)) - log(w1)
    gap2 = jnp.mean(log(r2)) - log(w2)
    s2 = jnp.std(log(r2)) * jnp.sqrt(1.0 + 1.0 / num_references)
    two = (gap1 < gap2 - s2) & (jnp.sum(valid) >= 3) & (spread > 0)
    return two, valid & (x >= cut)


def fldetector(num_clients: int, window_size: int = 10, num_references: int = 20) -> Aggregator:
    """FLDetector: predict each client's update from its previous one with an L-BFGS Hessian
    estimate; remove the clients that stay far from their predictions.

    Per round t, with ``g^i_t = -x_i`` the clients' pseudo-gradients (the rule works on the
    pseudo-gradients, as the paper; B's sign follows y's, so the distances are the same on the
    updates), ``w_t`` the global model (``context.params``) and the state of the last rounds:

    1. ``B`` = the L-BFGS Hessian estimate from the last ``N = window_size`` pairs
       ``s_k = w_k - w_{k-1}``, ``y_k = g_k - g_{k-1}`` (``g_k``: the round-k aggregate of the
       pseudo-gradients), k < t (``lbfgs_hvp``: Algorithm 2 of the paper);
    2. prediction ``g^i_hat = g^i_{t-1} + B (w_t - w_{t-1})``, distance
       ``d^i = ||g^i_hat - g^i_t||``, normalised over the clients scored this round;
    3. suspicion ``s^i`` = the mean of client i's normalised distances over the last N scoring
       rounds; once N rounds have been scored, the gap statistic
       (``gap_statistic_two_clusters``, reference sets from ``context.key``) decides whether the
       suspicions form >= 2 clusters, and if so 2-means flags the cluster of higher suspicion;
    4. flagged clients are removed for good (the paper removes them); the aggregate is the
       example-count-weighted mean of the round's other clients with finite updates, and
       ``(w_t - w_{t-1}, g_t - g_{t-1})`` becomes the newest pair.

    Differences from FLPoison's code, which this follows the paper against: there the pair that
    enters the L-BFGS memory is (this round's aggregate, its change since the last round), so
    ``s_k`` is one round AHEAD of ``y_k``, and the product is taken with the last aggregate rather
    than with the model difference ``w_t - w_{t-1}`` (they differ by the server's step: its sign
    and learning rate); here ``s_k`` and ``y_k`` belong to the same step and ``w`` is the global
    model the round really applied (server optimizer included). Its gap statistic answers
    ``k + 1`` where the rule says k, so it never answers 1 cluster; here it does. Normalising by
    the mean of the round's distances instead of their sum (the paper's L1 norm) differs by the
    constant n under full participation, to which the gap statistic (on min-max normalised
    values) and 2-means are blind; with partial participation it keeps rounds with different
    numbers of scored clients comparable. A pair enters the memory only with positive curvature
    ``s.y > 0`` (the L-BFGS safeguard that keeps B positive definite; the paper does not say).
    The paper restarts training from scratch once it has removed clients; a rule cannot, so the
    run goes on without them.

    Participation: the state is per client of the POPULATION (``[num_clients, d]`` rows indexed
    by ``context.client_ids``, as FoolsGold's). A client is scored in a round only if it also
    took part in the round before (its ``g^i_{t-1}``), so under partial participation with a
    fraction q of the clients per round a client is scored in about ``q^2 N`` rounds of a window
    of N (the paper assumes full participation); a client never scored in the window is not
    judged. Non-finite updates (and updates whose distance overflows) are excluded that round,
    never scored, never remembered.

    Memory: ``num_clients * d + 2 N d`` floats (e.g. 100 clients of a 200k-parameter MLP: 88 MB).

    ``info["weights"]``: the count-weighted share of each kept client (0 for removed, flagged or
    non-finite ones); ``info["suspicion"]`` the window's mean scores (NaN where not scored),
    ``info["flagged"]`` this round's flags.

    Args:
      num_clients: the population size (rows of the state); must be >= clients per round.
      window_size: N, the rounds of L-BFGS memory and of the suspicion window (the paper's 10).
      num_references: reference sets of the gap statistic (FLPoison's 20).

    References:
      Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated Learning Against Model Poisoning
      Attacks via Detecting Malicious Clients", KDD 2022. Byrd, Nocedal, Schnabel,
      "Representations of quasi-Newton matrices and their use in limited memory methods",
      Math. Programming 1994. Tibshirani, Walther, Hastie, "Estimating the number of clusters in
      a data set via the gap statistic", JRSS B 2001.

    Examples:
      >>> agg = fldetector(num_clients=100)  # --aggregator=fldetector: the run fills num_clients
      >>> agg.init(jnp.zeros(3)).last_update.shape  # each population client's last pseudo-gradient
      (100, 3)
    """
    rule = "fldetector"
    _population.check_num_clients(rule, num_clients)
    _common.check_positive(rule, "window_size", window_size, integer=True)
    _common.check_positive(rule, "num_references", num_references, integer=True)
    if num_references < 2:
        raise ValueError(
            f"{rule}: num_references must be an integer >= 2 (the gap statistic needs a spread), got {num_references!r}"
        )
    big_n = window_size

    def init(params):
        d, dtype = params.shape[0], params.dtype
        return FLDetectorState(
            prev_params=jnp.zeros(d, dtype),
            prev_global=jnp.zeros(d, dtype),
            weight_diffs=jnp.zeros((big_n, d), dtype),
            grad_diffs=jnp.zeros((big_n, d), dtype),
            pair_round=jnp.full(big_n, -1, jnp.int32),
            last_update=jnp.zeros((num_clients, d), dtype),
            last_round=jnp.full(num_clients, -1, jnp.int32),
            scores=jnp.full((big_n, num_clients), jnp.nan, dtype),
            scored_rounds=jnp.zeros((), jnp.int32),
            removed=jnp.zeros(num_clients, bool),
            round=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, context):
        ids, t = context.client_ids, state.round
        w = context.params.astype(updates.dtype)
        grads = -updates
        finite = _common.finite_rows(updates)
        removed = state.removed[ids]

        # 1-2. predictions from the clients' previous pseudo-gradients.
        pairs = state.pair_round >= 0
        hvp = lbfgs_hvp(state.weight_diffs, state.grad_diffs, pairs, state.pair_round, w - state.prev_params)
        predicted = state.last_update[ids] + hvp
        distance = _common.safe_norms(predicted - jnp.where(finite[:, None], grads, 0.0))
        scorable = finite & ~removed & (state.last_round[ids] == t - 1) & jnp.any(pairs)
        scored = scorable & jnp.isfinite(distance)
        top = jnp.max(jnp.where(scored, distance, 0.0))  # scaled by the largest first: a sum of huge ones stays finite
        scaled = jnp.where(scored, distance / jnp.where(top > 0, top, 1.0), 0.0)
        mean_scaled = jnp.sum(scaled) / jnp.maximum(jnp.sum(scored), 1)
        normalised = jnp.where(scored, scaled / jnp.where(mean_scaled > 0, mean_scaled, 1.0), jnp.nan)
        any_scored = jnp.any(scored)
        slot = state.scored_rounds % big_n
        row = jnp.full(num_clients, jnp.nan, updates.dtype).at[ids].set(normalised.astype(updates.dtype))
        scores = state.scores.at[slot].set(jnp.where(any_scored, row, state.scores[slot]))
        scored_rounds = state.scored_rounds + any_scored.astype(jnp.int32)

        # 3. suspicion over the window, gap statistic, 2-means.
        window = scores[:, ids]
        seen = jnp.sum(~jnp.isnan(window), axis=0)
        suspicion = jnp.where(seen > 0, jnp.nansum(window, axis=0) / jnp.maximum(seen, 1), jnp.nan)
        judged = (seen > 0) & finite & ~removed & (scored_rounds >= big_n)
        two, upper = gap_statistic_two_clusters(jnp.where(judged, suspicion, 0.0), judged, context.key, num_references)
        flagged = two & upper

        # 4. aggregate the others; remember.
        excluded = ~finite | removed | flagged | (scorable & ~scored)
        weights = jnp.where(excluded, 0.0, context.weights).astype(updates.dtype)
        aggregate = _common.weighted_average(updates, weights)
        g = -aggregate
        s_new, y_new = w - state.prev_params, g - state.prev_global
        usable = (
            (t >= 1) & (jnp.dot(s_new, y_new, precision=_HI) > 0) & jnp.all(jnp.isfinite(y_new)) & jnp.any(weights > 0)
        )
        pair_slot = t % big_n  # the pair of round t replaces round t - N's: the memory is the last N rounds
        remember = ~excluded
        new_state = FLDetectorState(
            prev_params=w,
            prev_global=g,
            weight_diffs=state.weight_diffs.at[pair_slot].set(jnp.where(usable, s_new, 0.0)),
            grad_diffs=state.grad_diffs.at[pair_slot].set(jnp.where(usable, y_new, 0.0)),
            pair_round=state.pair_round.at[pair_slot].set(jnp.where(usable, t, -1)),
            last_update=state.last_update.at[ids].set(jnp.where(remember[:, None], grads, state.last_update[ids])),
            last_round=state.last_round.at[ids].set(jnp.where(remember, t, state.last_round[ids])),
            scores=scores,
            scored_rounds=scored_rounds,
            removed=state.removed.at[ids].set(removed | flagged),
            round=t + 1,
        )
        return aggregate, new_state, _common.info(weights, suspicion=suspicion, flagged=flagged)

    return Aggregator(
        init=init,
        update=update,
        count_weighted=True,
        requirement=lambda n: _population.population_requirement(rule, num_clients, n),
    )
