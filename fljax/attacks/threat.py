"""The threat model of model-poisoning attacks: what the attacker knows, and when it strikes.

* Knowledge. ``knowledge="full"`` (omniscient): the attacker reads the honest clients' updates of
  the round. ``knowledge="partial"``: it only has its own clients' benign updates (the malicious
  rows *before* replacement) and estimates every statistic from them (Fang et al. 2020,
  Shejwalkar & Houmansadr 2021). ``observed_rows`` turns this into a row mask and
  ``masked_mean_std`` into the statistics.
* Schedule. ``scheduled(attack, ...)`` applies an attack only in chosen rounds; in the other
  rounds the malicious clients behave honestly: ``make_round`` reads the schedule
  (``ModelAttack.active``) and gates the data attack and the malicious local training with it too.
* Collusion. Attacks whose papers send identical crafted updates, or per-attacker samples, take
  ``colluding=True|False``; ``ball_offsets`` gives the small per-attacker perturbations.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from fljax.types import Array, ModelAttack

KNOWLEDGE = ("full", "partial")


def check_knowledge(attack: str, knowledge: str) -> str:
    """Validates ``knowledge`` (``"full"`` or ``"partial"``) for ``attack``."""
    if knowledge not in KNOWLEDGE:
        raise ValueError(f"{attack}: knowledge must be one of {', '.join(KNOWLEDGE)}, got {knowledge!r}")
    return knowledge


def check_bool(attack: str, name: str, value) -> bool:
    """Validates a boolean attack hyper-parameter."""
    if not isinstance(value, bool):
        raise ValueError(f"{attack}: {name} must be True or False, got {value!r}")
    return value


def observed_rows(malicious: Array, knowledge: str) -> Array:
    """``bool[n]``: the rows whose (benign) updates the attacker sees: the honest rows under full
    knowledge, its own clients' rows (before it rewrites them) under partial knowledge."""
    return ~malicious if knowledge == "full" else malicious


def masked_mean_std(updates: Array, rows: Array) -> tuple[Array, Array]:
    """Coordinate-wise mean and population standard deviation (``ddof=0``) of the ``rows`` of
    ``updates [n, d]``; both are zeros when no row is selected (rows outside ``rows`` may hold
    anything, even NaN). The sums over clients are weight-vector products (on CPU, XLA's
    reductions over the leading axis are many times slower than a matvec)."""
    w = rows.astype(updates.dtype) / jnp.maximum(jnp.sum(rows), 1).astype(updates.dtype)
    hi = jax.lax.Precision.HIGHEST
    mu = jnp.dot(w, jnp.where(rows[:, None], updates, 0.0), precision=hi)
    var = jnp.dot(w, jnp.where(rows[:, None], (updates - mu) ** 2, 0.0), precision=hi)
    return mu, jnp.sqrt(var)


def sq_distances(x: Array, center: Array) -> Array:
    """``[m, m]`` squared Euclidean distances between the rows of ``x [m, d]`` from one fp32
    (``Precision.HIGHEST``) Gram matrix of ``x - center``; ``center`` should be close to the rows
    (e.g. the mean of the benign updates the attacker knows) so the identity
    ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` does not cancel. Non-finite rows are +inf away
    from every other row."""
    finite = jnp.all(jnp.isfinite(x), axis=1)
    y = jnp.where(finite[:, None], x - center, 0.0)
    gram = jnp.dot(y, y.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.diag(gram)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    d = jnp.where(finite[:, None] & finite[None, :] & jnp.isfinite(d), d, jnp.inf)
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)


def ball_offsets(key: Array, n: int, d: int, radius: float, dtype=jnp.float32) -> Array:
    """``[n, d]`` random offsets of norm at most ``radius`` (uniform direction, uniform length):
    distinct attackers placed within ``radius`` of a common crafted update."""
    k_dir, k_len = jax.random.split(key)
    direction = jax.random.normal(k_dir, (n, d), dtype)
    direction = direction / jnp.maximum(jnp.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    return radius * jax.random.uniform(k_len, (n, 1), dtype) * direction


def attack_rounds(
    start_round: int = 0, every: int = 1, single_shot: bool = False, rounds: Optional[Sequence[int]] = None
):
    """``active(round) -> bool`` (traced): the schedule of ``scheduled`` as a pure function."""
    if rounds is not None:
        if (
            not isinstance(rounds, (list, tuple))
            or not rounds
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rounds)
        ):
            raise ValueError(f"scheduled: rounds must be a non-empty list of integers >= 0, got {rounds!r}")
        chosen = jnp.asarray(sorted(set(rounds)), jnp.int32)
        return lambda r: jnp.any(r == chosen)
    for name, value, low in (("start_round", start_round, 0), ("every", every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"scheduled: {name} must be an integer >= {low}, got {value!r}")
    check_bool("scheduled", "single_shot", single_shot)
    if single_shot:
        return lambda r: r == start_round
    return lambda r: (r >= start_round) & ((r - start_round) % every == 0)


def scheduled(
    attack: ModelAttack,
    start_round: int = 0,
    every: int = 1,
    single_shot: bool = False,
    rounds: Optional[Sequence[int]] = None,
) -> ModelAttack:
    """Applies ``attack`` only in chosen rounds (``context.round``, counted from 0).

    Active rounds: ``start_round, start_round + every, start_round + 2 * every, ...``; with
    ``single_shot=True`` only ``start_round`` (e.g. a one-shot model replacement); or exactly the
    listed ``rounds``. In the other rounds the malicious clients send their honest update and
    the attack's state passes through unchanged (``lax.cond``: the attack is not computed).
    The schedule is the result's ``active``, which ``make_round`` applies to the whole attack:
    outside the active rounds the malicious clients' data attack and attack-specific local
    training (constrain-and-scale, PGD, Neurotoxin) are off as well, so they train and send
    exactly what honest clients would (Bagdasaryan et al.'s single-shot setting); pass
    ``make_round(continuous_data_poisoning=True)`` to keep poisoning their data in every round.
    Scheduling a scheduled attack attacks in the rounds both schedules allow.

    Args:
      attack: any ``ModelAttack``.
      start_round: first round of the attack (>= 0).
      every: period in rounds (>= 1).
      single_shot: attack in ``start_round`` only.
      rounds: explicit list of rounds (overrides the three above).

    References:
      Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020 (single-shot vs
      repeated attacks); Fang et al., USENIX Security 2020 (attacks in every round).

    Examples:
      >>> attack = scheduled(fljax.attacks.ipm(0.5), start_round=10, every=2)
    """
    own = attack_rounds(start_round, every, single_shot, rounds)
    active = own if attack.active is None else (lambda r: own(r) & attack.active(r))

    def update(updates, malicious, state, key, context):
        return jax.lax.cond(
            own(context.round), lambda: attack.update(updates, malicious, state, key, context), lambda: (updates, state)
        )

    return ModelAttack(init=attack.init, update=update, requirement=attack.requirement, active=active)
