"""Untargeted model poisoning from simple statistics of the round: non-finite and zero updates,
Inner Product Manipulation (IPM), A Little Is Enough (ALIE) and Mimic.

Every attack rewrites only the malicious rows (``replace_rows``) and is the identity when no
malicious client is in the round. ``knowledge`` selects which benign updates the statistics come
from (see ``fljax.attacks.threat``).
"""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
from jax.scipy.special import ndtri

from fljax.aggregators._common import gram, top_eigenpair
from fljax.attacks._common import check_number, stateless
from fljax.attacks.threat import check_knowledge, masked_mean_std, observed_rows
from fljax.types import Array, ModelAttack


def zero() -> ModelAttack:
    """Each malicious client sends the all-zero update (a dropped / free-riding client).

    References:
      Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods for Distributed Learning
      from Heterogeneous Datasets", AAAI 2019 (zero-gradient attack).

    Examples:
      >>> fljax.apply_attack(zero(), jnp.ones((3, 2)), jnp.array([True, False, False]))
      Array([[0., 0.],
             [1., 1.],
             [1., 1.]], dtype=float32)
    """
    return stateless(lambda u, m, key, ctx: jnp.zeros(u.shape[1:], u.dtype))


def nan() -> ModelAttack:
    """Each malicious client sends an update of NaNs (a crashed or buggy client).

    References:
      Blanchard et al., NeurIPS 2017 (arbitrary, even non-finite, Byzantine vectors).

    Examples:
      >>> fljax.apply_attack(nan(), jnp.ones((3, 2)), jnp.array([True, False, False]))
      Array([[nan, nan],
             [ 1.,  1.],
             [ 1.,  1.]], dtype=float32)
    """
    return stateless(lambda u, m, key, ctx: jnp.full(u.shape[1:], jnp.nan, u.dtype))


def inf() -> ModelAttack:
    """Each malicious client sends an update of ``+inf`` in every coordinate.

    References:
      Blanchard et al., NeurIPS 2017 (arbitrary, even non-finite, Byzantine vectors).

    Examples:
      >>> fljax.apply_attack(inf(), jnp.ones((3, 2)), jnp.array([True, False, False]))
      Array([[inf, inf],
             [ 1.,  1.],
             [ 1.,  1.]], dtype=float32)
    """
    return stateless(lambda u, m, key, ctx: jnp.full(u.shape[1:], jnp.inf, u.dtype))


def ipm(epsilon: float = 0.1, knowledge: str = "full") -> ModelAttack:
    """Inner Product Manipulation: every malicious client sends ``-epsilon * mu``.

    ``mu`` is the coordinate-wise mean of the honest updates of the round (full knowledge) or
    of the malicious clients' own benign updates (partial knowledge). A small epsilon (0.1, 0.5)
    keeps the crafted update close enough to pass distance-based rules while making the inner
    product of the aggregate with the true gradient negative; a large one (e.g. 10) reverses
    plain averaging.

    Args:
      epsilon: the scale (> 0).
      knowledge: ``"full"`` or ``"partial"``.

    References:
      Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
      Manipulation", UAI 2019.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> fljax.apply_attack(ipm(epsilon=0.5), updates, malicious)[:2]  # -0.5 * the honest mean (2, 2)
      Array([[-1., -1.],
             [-1., -1.]], dtype=float32)
    """
    check_number("ipm", "epsilon", epsilon, positive=True)
    check_knowledge("ipm", knowledge)

    def craft(u, m, key, ctx):
        mu, _ = masked_mean_std(u, observed_rows(m, knowledge))
        return -epsilon * mu

    return stateless(craft)


def alie_z(n: int | Array, f: int | Array) -> Array:
    """ALIE's ``z``: ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - f - s) / (n - f))``.

    Works on traced ``f`` (the number of malicious clients of the round). ``s`` is clamped to
    >= 1 (with ``f >= floor(n/2 + 1)`` the attackers need no honest support and the formula gives
    ``+inf``), and a non-finite result (``n - f <= 1``) becomes 0.

    Examples:
      >>> alie_z(50, 10)  # s = 16, Phi^-1(24 / 40) = 0.2533
      Array(0.2533, dtype=float32)
    """
    n = jnp.asarray(n, jnp.float32)
    f = jnp.asarray(f, jnp.float32)
    s = jnp.maximum(jnp.floor(n / 2 + 1) - f, 1.0)
    z = ndtri((n - f - s) / jnp.maximum(n - f, 1.0))
    return jnp.where(jnp.isfinite(z), z, 0.0)


def alie(z: Optional[float] = None, knowledge: str = "full") -> ModelAttack:
    """A Little Is Enough: every malicious client sends ``mu + z * sigma``.

    ``mu`` / ``sigma`` are the coordinate-wise mean and (population, ``ddof=0``) standard
    deviation of the honest updates (full knowledge) or of the malicious clients' own benign
    updates (partial knowledge, the setting of the paper's non-omniscient attacker). The sign
    follows the paper's Algorithm 1 (``mu_j + z^max sigma_j``); several public implementations
    use ``mu - z sigma`` on gradients, which is ``z < 0`` here.

    By default ``z`` follows the paper from the round's ``n`` (static) and the number ``f`` of
    malicious clients actually sampled in the round (traced, so it is computed in the graph with
    ``ndtri``): ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - f - s) / (n - f))`` (see ``alie_z``).

    Args:
      z: a fixed number of standard deviations (any finite value), or None for the paper's z.
      knowledge: ``"full"`` or ``"partial"``.

    References:
      Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
      Learning", NeurIPS 2019.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> fljax.apply_attack(alie(), updates, malicious)[0]  # n=5, f=2: z = Phi^-1(2/3) = 0.4307
      Array([2.3517, 2.    ], dtype=float32)

      The honest mean (2, 2) plus z times the honest std (0.8165, 0).
    """
    if z is not None:
        check_number("alie", "z", z)
        if not math.isfinite(z):
            raise ValueError(f"alie: z must be a finite number, got {z!r}")
    check_knowledge("alie", knowledge)

    def craft(u, m, key, ctx):
        mu, sigma = masked_mean_std(u, observed_rows(m, knowledge))
        z_round = alie_z(u.shape[0], jnp.sum(m)) if z is None else z
        return mu + z_round * sigma

    return stateless(craft)


MIMIC_CHOICES = ("max_variance", "first")


def mimic_target(updates: Array, honest: Array, choice: str = "max_variance") -> Array:
    """Index of the honest client the Byzantine clients copy (``choice``, see ``mimic``)."""
    if choice == "first":
        return jnp.argmax(honest)
    mu, _ = masked_mean_std(updates, honest)
    x = jnp.where(honest[:, None], updates - mu, 0.0)
    # The top eigenvector u of the Gram matrix holds the projections of the rows on the top
    # principal direction z of the honest updates, up to a factor: (x_i . z) = sqrt(lambda) u_i.
    _, vector = top_eigenpair(gram(x))
    return jnp.argmax(jnp.where(honest, jnp.abs(vector), -1.0))


def mimic(choice: str = "max_variance") -> ModelAttack:
    """Mimic: every Byzantine client sends a copy of one honest client's update of the round.

    Copying a real honest update passes every outlier test, yet over-weights that client's data,
    which hurts under data heterogeneity. Karimireddy et al. pick the honest worker ``i*`` that
    maximizes ``z^T x_i`` for the top eigenvector ``z`` of the honest updates' covariance, fixed
    after a warm-up; fljax chooses per round (cohorts change every round): with
    ``choice="max_variance"`` the honest client of the round whose centered update has the largest
    ``|z^T (x_i - mu)|`` (the top principal direction of the round's honest updates, from the
    eigendecomposition of their ``[n, n]`` Gram matrix); with ``choice="first"`` the honest client
    with the lowest index in the round. Needs full knowledge; a no-op in a round with no honest
    client.

    Args:
      choice: ``"max_variance"`` or ``"first"``.

    References:
      Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
      Bucketing", ICLR 2022.

    Examples:
      >>> updates = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
      >>> malicious = jnp.array([True, True, False, False, False])
      >>> fljax.apply_attack(mimic("first"), updates, malicious)[:2]  # the first honest client's update
      Array([[1., 2.],
             [1., 2.]], dtype=float32)
    """
    if choice not in MIMIC_CHOICES:
        raise ValueError(f"mimic: choice must be one of {', '.join(MIMIC_CHOICES)}, got {choice!r}")

    def craft(updates, malicious, key, context):
        honest = ~malicious
        target = updates[mimic_target(updates, honest, choice)]
        return jnp.where(jnp.any(honest), target, updates)  # without an honest client, nothing to copy

    return stateless(craft)
