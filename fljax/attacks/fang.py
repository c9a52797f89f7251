"""Fang et al.'s local model poisoning attacks on Krum and on trimmed mean / median.

Fang et al. state both attacks on local *models* ``w`` around the received global model
``w_Re``. fljax's rules see *updates* (deltas) ``x = w - w_Re``, so ``w_Re`` is the origin:
the Krum attack's ``w1' = w_Re - lambda * s`` becomes the update ``-lambda * s`` and its
distances ``D(w_i, w_Re)`` become norms ``||x_i||``; the Trim attack's intervals are taken on the
updates' coordinates (as in Shejwalkar & Houmansadr's re-implementation), since those are what
the coordinate-wise rules order. ``s`` is the sign of the coordinate-wise mean of the benign
updates the attacker knows: the direction the global model would move without the attack.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fljax.attacks._common import check_number, stateless
from fljax.attacks.threat import ball_offsets, check_bool, check_knowledge, masked_mean_std, observed_rows, sq_distances
from fljax.types import Array, ModelAttack


def _nearest_sums(dist: Array, rows: Array, k: Array) -> Array:
    """Per row: the sum of its ``k`` (traced) smallest entries of ``dist`` over the other
    ``rows``; +inf when fewer exist."""
    m = dist.shape[0]
    others = rows[None, :] & ~jnp.eye(m, dtype=bool)
    nearest = jnp.sort(jnp.where(others, dist, jnp.inf), axis=1)
    return jnp.sum(jnp.where(jnp.arange(m)[None, :] < k, nearest, 0.0), axis=1)


def krum_choice(sq_dist: Array, participants: Array, num_byzantine: Array) -> Array:
    """Index Krum selects among ``participants`` of an ``[m, m]`` squared-distance matrix: the
    smallest sum of squared distances to the ``m' - f - 2`` nearest other participants
    (``m'`` participants; at least 1 neighbour), lowest index on ties, like
    ``fljax.aggregators.krum``."""
    count = jnp.sum(participants)
    k = jnp.clip(count - num_byzantine - 2, 1, jnp.maximum(count - 1, 1))
    scores = jnp.where(participants, _nearest_sums(sq_dist, participants, k), jnp.inf)
    return jnp.argmin(scores)


def krum_lambda_bound(
    sq_dist: Array, norms: Array, rows: Array, num_models: Array, num_byzantine: Array, dim: int
) -> Array:
    """Fang et al.'s upper bound on lambda (the start of the halving search).

    ``lambda <= min_i sum_{l in G(i)} D(w_l, w_i) / ((m - 2c - 1) sqrt(d)) + max_i D(w_i, w_Re) / sqrt(d)``
    over the benign ``rows`` i of ``sq_dist [n, n]`` (squared distances), with ``G(i)`` the
    ``m - c - 2`` benign models nearest to ``w_i`` (``D`` Euclidean, not squared),
    ``m = num_models``, ``c = num_byzantine``, ``D(w_i, w_Re) = norms[i]`` and ``d = dim``. The
    denominator is clamped to >= 1 and the neighbour count to ``1 .. |rows| - 1`` (partial
    knowledge simulates only ``2c`` models, where ``m - 2c - 1 < 1``; a larger start only costs
    halvings). 0 when no benign row is known.
    """
    r = jnp.sum(rows)
    k = jnp.clip(num_models - num_byzantine - 2, 1, jnp.maximum(r - 1, 1))
    sums = _nearest_sums(jnp.sqrt(sq_dist), rows, k)
    first = jnp.min(jnp.where(rows, sums, jnp.inf)) / jnp.maximum(num_models - 2 * num_byzantine - 1, 1)
    first = jnp.where(jnp.isfinite(first), first, 0.0)
    bound = (first + jnp.max(jnp.where(rows, norms, 0.0))) / jnp.sqrt(jnp.asarray(dim, sq_dist.dtype))
    return jnp.where(jnp.isfinite(bound), bound, 0.0)


def fang_krum(
    num_byzantine: Optional[int] = None,
    knowledge: str = "full",
    colluding: bool = True,
    epsilon: float = 1e-3,
    threshold: float = 1e-5,
) -> ModelAttack:
    """Fang et al.'s attack on Krum: the crafted update ``-lambda * s`` that Krum still selects.

    ``s`` is the sign of the benign mean update. Starting from the paper's upper bound
    (``krum_lambda_bound``), lambda is halved (``lax.while_loop``) until Krum, simulated on the
    benign updates the attacker knows plus the crafted ones, selects a crafted update, or until
    lambda <= ``threshold`` (the last lambda is then sent). Full knowledge: the simulation is the
    server's round itself (the honest updates plus the crafted ones). Partial knowledge: the
    attacker's own benign updates stand in for the honest ones, so Krum is simulated on ``2c``
    models, as in the paper. The attacker simulates Krum with ``num_byzantine`` (the f the
    server's Krum uses; default: the number of malicious clients in the round); the server's
    actual rule is not consulted, so the same updates go to any rule (the paper's transfer
    setting).

    Args:
      num_byzantine: f of the simulated Krum (None: the round's number of attackers).
      knowledge: ``"full"`` or ``"partial"``.
      colluding: True: all attackers send ``w1'``; False: the first attacker of the round sends
        ``w1'`` and each other one a random point within distance ``epsilon`` of it (the paper's
        "close to w1'"); the search simulates the actual perturbed set.
      epsilon: radius of those perturbations (> 0; only with ``colluding=False``).
      threshold: the search stops once lambda <= threshold (> 0; paper: 1e-5).

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020, Section 4.2.

    Examples:
      >>> updates = 1.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (7, 3))
      >>> attacked = fljax.apply_attack(fang_krum(num_byzantine=2), updates, jnp.arange(7) < 2)
      >>> jnp.sign(attacked[:2])  # -lambda * s, s = +1 (the benign mean's sign)
      Array([[-1., -1., -1.],
             [-1., -1., -1.]], dtype=float32)

      With honest updates this close together Krum never prefers the crafted update, and lambda
      ends at the threshold (1e-5): the attack needs spread, as in high-dimensional models.
    """
    if num_byzantine is not None and (
        isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 0
    ):
        raise ValueError(f"fang_krum: num_byzantine must be an integer >= 0, got {num_byzantine!r}")
    check_knowledge("fang_krum", knowledge)
    check_bool("fang_krum", "colluding", colluding)
    check_number("fang_krum", "epsilon", epsilon, positive=True)
    check_number("fang_krum", "threshold", threshold, positive=True)

    def requirement(n: int, f: int) -> None:
        f = f if num_byzantine is None else num_byzantine
        if not n > 2 * f + 2:
            raise ValueError(f"fang_krum: Krum needs n > 2f + 2 clients per round; got n={n}, num_byzantine f={f}")

    def craft(updates, malicious, key, context):
        n, d = updates.shape
        rows = observed_rows(malicious, knowledge)
        mu, _ = masked_mean_std(updates, rows)
        s = jnp.sign(mu)
        offsets = jnp.zeros_like(updates)
        if not colluding:
            first = jnp.arange(n) == jnp.argmax(malicious)
            offsets = jnp.where(first[:, None], 0.0, ball_offsets(key, n, d, epsilon, updates.dtype))
        # Simulated models y_k = z_k - lambda t_k s: the known benign updates (t = 0) and the crafted
        # ones (t = 1). Their squared distances are quadratic in lambda:
        # D0_kl - 2 lambda (t_k - t_l) s.(z_k - z_l) + lambda^2 (t_k - t_l)^2 ||s||^2.
        z = jnp.concatenate([updates, offsets])
        participants = jnp.concatenate([rows, malicious])
        t = jnp.concatenate([jnp.zeros(n), jnp.ones(n)]).astype(updates.dtype)
        d0 = sq_distances(z, mu)
        q = jnp.dot(z - mu, s, precision=jax.lax.Precision.HIGHEST)
        q = jnp.where(jnp.isfinite(q), q, 0.0)
        dt = t[:, None] - t[None, :]
        cross = dt * (q[:, None] - q[None, :])
        s2 = jnp.sum(s * s)
        f = jnp.sum(malicious) if num_byzantine is None else num_byzantine

        def selected(lam):
            dist = jnp.maximum(d0 - 2.0 * lam * cross + lam**2 * dt**2 * s2, 0.0)
            return krum_choice(dist, participants, f) >= n

        norms = jnp.linalg.norm(jnp.where(rows[:, None], updates, 0.0), axis=1)
        lam0 = krum_lambda_bound(d0[:n, :n], norms, rows, jnp.sum(participants), f, d)
        lam, _ = jax.lax.while_loop(
            lambda c: (~c[1]) & (c[0] > threshold), lambda c: (c[0] / 2, selected(c[0] / 2)), (lam0, selected(lam0))
        )
        return offsets - lam * s

    return stateless(craft, requirement=requirement)


def masked_max_min(updates: Array, rows: Array) -> tuple[Array, Array]:
    """Coordinate-wise max and min over the ``rows`` of ``updates [n, d]`` (zeros when none),
    as a loop over rows (XLA's CPU reductions over the leading axis are slow)."""

    def body(i, c):
        keep = rows[i]
        return (
            jnp.where(keep, jnp.maximum(c[0], updates[i]), c[0]),
            jnp.where(keep, jnp.minimum(c[1], updates[i]), c[1]),
        )

    init = (jnp.full(updates.shape[1:], -jnp.inf, updates.dtype), jnp.full(updates.shape[1:], jnp.inf, updates.dtype))
    w_max, w_min = jax.lax.fori_loop(0, updates.shape[0], body, init)
    known = jnp.any(rows)
    return jnp.where(known, w_max, 0.0), jnp.where(known, w_min, 0.0)


def fang_trim(knowledge: str = "full", colluding: bool = False, b: float = 2.0) -> ModelAttack:
    """Fang et al.'s attack on trimmed mean and median: per coordinate, values just beyond the
    benign extremes, on the side opposite to the benign direction ``s = sign(mu)``.

    Full knowledge, with ``w_max`` / ``w_min`` the coordinate-wise max / min of the honest updates:
    where ``s_j <= 0`` (the coordinate would decrease; 0 counts as a decrease) each value is
    drawn uniformly between ``w_max`` and ``b * w_max`` if ``w_max > 0``, else between
    ``w_max / b`` and ``w_max`` (always >= ``w_max``); where ``s_j > 0``, between ``w_min / b`` and
    ``w_min`` if ``w_min > 0``, else between ``b * w_min`` and ``w_min`` (always <= ``w_min``).
    Partial knowledge (mean ``mu`` and std ``sigma`` of the attackers' own benign updates, the
    paper's normal approximation ``w_max ~ mu + 3 sigma``, ``w_min ~ mu - 3 sigma``): uniform in
    ``[mu + 3 sigma, mu + 4 sigma]`` where ``s_j <= 0`` and ``[mu - 4 sigma, mu - 3 sigma]`` where
    ``s_j > 0``.

    Args:
      knowledge: ``"full"`` or ``"partial"``.
      colluding: False (the paper): every attacker draws its own values; True: one draw shared
        by all attackers (identical updates).
      b: the interval factor (> 1; paper: 2).

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020, Section 4.3.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> np.asarray(fljax.apply_attack(fang_trim(), updates, malicious, jax.random.PRNGKey(0))[:2], float).round(3)
      array([[0.526, 1.021],
             [0.834, 1.531]])

      The benign mean is positive, so each crafted value is drawn in ``[w_min / b, w_min]``:
      ``[0.5, 1]`` and ``[1, 2]`` here (b = 2).
    """
    check_knowledge("fang_trim", knowledge)
    check_bool("fang_trim", "colluding", colluding)
    check_number("fang_trim", "b", b)
    if not b > 1:
        raise ValueError(f"fang_trim: b must be a number > 1, got {b!r}")

    def craft(updates, malicious, key, context):
        rows = observed_rows(malicious, knowledge)
        mu, sigma = masked_mean_std(updates, rows)
        if knowledge == "full":
            w_max, w_min = masked_max_min(updates, rows)
            up = (w_max, jnp.where(w_max > 0, b * w_max, w_max / b))
            down = (w_min, jnp.where(w_min > 0, w_min / b, b * w_min))
        else:
            up = (mu + 3 * sigma, mu + 4 * sigma)
            down = (mu - 3 * sigma, mu - 4 * sigma)
        increase = mu > 0
        lo = jnp.where(increase, down[0], up[0])
        hi = jnp.where(increase, down[1], up[1])
        shape = (1,) + updates.shape[1:] if colluding else updates.shape
        u = jax.random.uniform(key, shape, updates.dtype)
        return lo + u * (hi - lo)

    return stateless(craft)
