"""Shejwalkar & Houmansadr's aggregation-agnostic attacks: Min-Max and Min-Sum.

Every attacker sends ``g_m = mu + gamma * p``: the benign mean pushed along a perturbation
``p``, with the largest ``gamma`` that keeps ``g_m`` no farther from the benign updates than they
are from each other, so distance- and statistics-based rules cannot tell it apart.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fljax.attacks._common import check_number, stateless
from fljax.attacks.threat import check_knowledge, masked_mean_std, observed_rows, sq_distances
from fljax.types import Array, ModelAttack

DIRECTIONS = ("unit_vec", "sign", "std")
MAX_ITERATIONS = 200
"""Safety cap of the halving search (it ends after about log2(gamma_init / tau) + 1 steps)."""


def perturbation(mu: Array, sigma: Array, direction: str) -> Array:
    """The paper's ``p``: ``-mu / ||mu||`` (``unit_vec``), ``-sign(mu)`` (``sign``) or ``-sigma``
    (``std``); zeros for ``unit_vec`` when ``mu = 0``."""
    if direction == "unit_vec":
        norm = jnp.linalg.norm(mu)
        return jnp.where(norm > 0, -mu / jnp.where(norm > 0, norm, 1.0), 0.0)
    if direction == "sign":
        return -jnp.sign(mu)
    return -sigma


def halving_search(feasible: Callable[[Array], Array], gamma_init: float, tau: float) -> Array:
    """The paper's Algorithm 1 search for the largest feasible gamma, as a ``lax.while_loop``.

    ``gamma = gamma_init``, ``step = gamma_init``; while ``|gamma_succ - gamma| > tau``: if
    ``feasible(gamma)`` then ``gamma_succ = gamma`` and ``gamma += step / 2``, else
    ``gamma -= step / 2``; ``step /= 2``. Returns ``gamma_succ`` (0 when nothing was feasible;
    at most ``2 * gamma_init``). For a feasible set ``[0, gamma*]`` it ends within ``tau`` of
    ``gamma*`` (if ``gamma* < 2 gamma_init``).
    """

    def body(c):
        gamma, step, succ, it = c
        ok = feasible(gamma)
        return (jnp.where(ok, gamma + step / 2, gamma - step / 2), step / 2, jnp.where(ok, gamma, succ), it + 1)

    init = (jnp.float32(gamma_init), jnp.float32(gamma_init), jnp.float32(0.0), jnp.int32(0))
    _, _, succ, _ = jax.lax.while_loop(lambda c: (jnp.abs(c[2] - c[0]) > tau) & (c[3] < MAX_ITERATIONS), body, init)
    return succ


def shejwalkar_update(
    updates: Array, rows: Array, objective: str, direction: str, gamma_init: float = 10.0, tau: float = 1e-5
) -> tuple[Array, Array, Array]:
    """``(mu, p, gamma)`` of Min-Max (``objective="min_max"``) or Min-Sum (``"min_sum"``) from the
    benign ``rows`` of ``updates [n, d]``; the crafted update is ``mu + gamma * p``.

    Min-Max: ``max_i ||g_m - g_i|| <= max_{i,j} ||g_i - g_j||``. Min-Sum:
    ``sum_i ||g_m - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``; i, j over the benign rows. Since
    ``||mu + gamma p - g_i||^2 = ||mu - g_i||^2 + 2 gamma p.(mu - g_i) + gamma^2 ||p||^2``, each
    search step costs O(n) after one O(n^2 d) pass.
    """
    mu, sigma = masked_mean_std(updates, rows)
    p = perturbation(mu, sigma, direction)
    centered = jnp.where(rows[:, None], mu - updates, 0.0)
    a = jnp.sum(centered * centered, axis=1)
    b = jnp.dot(centered, p, precision=jax.lax.Precision.HIGHEST)
    p2 = jnp.sum(p * p)
    dist = jnp.where(rows[:, None] & rows[None, :], sq_distances(jnp.where(rows[:, None], updates, mu), mu), 0.0)
    if objective == "min_max":
        bound = jnp.max(dist)
        feasible = lambda g: jnp.max(jnp.where(rows, a + 2 * g * b + g * g * p2, -jnp.inf)) <= bound
    else:
        bound = jnp.max(jnp.where(rows, jnp.sum(dist, axis=1), -jnp.inf))
        r = jnp.sum(rows).astype(updates.dtype)
        feasible = lambda g: jnp.sum(a) + 2 * g * jnp.sum(b) + r * g * g * p2 <= bound
    return mu, p, halving_search(feasible, gamma_init, tau)


def _attack(objective: str, direction: str, knowledge: str, gamma_init: float, tau: float) -> ModelAttack:
    if direction not in DIRECTIONS:
        raise ValueError(f"{objective}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    check_knowledge(objective, knowledge)
    check_number(objective, "gamma_init", gamma_init, positive=True)
    check_number(objective, "tau", tau, positive=True)

    def craft(updates, malicious, key, context):
        rows = observed_rows(malicious, knowledge)
        mu, p, gamma = shejwalkar_update(updates, rows, objective, direction, gamma_init, tau)
        return mu + gamma * p

    return stateless(craft)


def min_max(
    direction: str = "unit_vec", knowledge: str = "full", gamma_init: float = 10.0, tau: float = 1e-5
) -> ModelAttack:
    """Min-Max: ``mu + gamma * p`` with the largest gamma such that its largest distance to a
    benign update is at most the largest distance between two benign updates.

    ``mu`` is the mean of the honest updates (full knowledge, the paper's default) or of the
    attackers' own benign updates (partial knowledge, the paper's "unknown benign gradients"
    setting), and the constraint is checked on the same set. Every attacker sends the same update.

    Args:
      direction: ``p``: ``"unit_vec"`` (-mu/||mu||), ``"sign"`` (-sign(mu)) or ``"std"`` (-sigma).
      knowledge: ``"full"`` or ``"partial"``.
      gamma_init: the search's first gamma (> 0; authors' code: 10); gamma stays below 2 gamma_init.
      tau: the search's stopping tolerance (> 0; authors' code: 1e-5).

    References:
      Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
      Defenses for Federated Learning", NDSS 2021 (Eq. 2 and Algorithm 1).

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> fljax.apply_attack(min_max(direction="std"), updates, malicious)[0].round(4)
      Array([1., 2.], dtype=float32)

      mu - gamma * std = (2 - 0.816 gamma, 2), at most 2 (the largest benign distance) from every
      benign update: gamma = 2.449 / 2, the point (1, 2).
    """
    return _attack("min_max", direction, knowledge, gamma_init, tau)


def min_sum(
    direction: str = "unit_vec", knowledge: str = "full", gamma_init: float = 10.0, tau: float = 1e-5
) -> ModelAttack:
    """Min-Sum: ``mu + gamma * p`` with the largest gamma such that its sum of squared distances to
    the benign updates is at most the largest such sum of a benign update.

    Follows the paper's Eq. 3 (``<= max_i sum_j ||g_i - g_j||^2``); the authors' released code
    compares with the *minimum* over i instead, a stricter (smaller-gamma) variant. Arguments as
    for ``min_max``.

    References:
      Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
      Defenses for Federated Learning", NDSS 2021 (Eq. 3 and Algorithm 1).

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> fljax.apply_attack(min_sum(), updates, malicious)[0].round(4)
      Array([1.2929, 1.2929], dtype=float32)

      (2 - b)(1, 1) along the unit mean: its squared distances to the benign updates sum to
      6 b^2 + 2, at most 5 (the largest benign sum): b = 0.7071.
    """
    return _attack("min_sum", direction, knowledge, gamma_init, tau)
