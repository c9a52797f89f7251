"""Helpers shared by the attacks."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from fljax.types import AggregationContext, Array, AttackContext, ModelAttack, no_state


def stateless(craft: Callable[[Array, Array, Array, AttackContext], Array], **fields) -> ModelAttack:
    """A model attack without state from ``craft(updates [n, d], malicious bool[n], key, context)
    -> [n, d] or one [d] row``: the malicious rows take the crafted ones (``replace_rows``), the
    honest rows stay bit for bit, and the attack is the identity in a round without malicious
    clients. ``fields`` are the other ``ModelAttack`` fields (``requirement``).

    Examples:
      >>> flip = stateless(lambda updates, malicious, key, context: -updates)
    """

    def update(updates, malicious, state, key, context):
        return replace_rows(updates, malicious, craft(updates, malicious, key, context)), state

    return ModelAttack(init=no_state, update=update, **fields)


def simulated_server_context(context: AttackContext, dtype, key: Array) -> AggregationContext:
    """The server rule's context as an attack that runs the rule (line search, gradient ascent)
    rebuilds it: the round's weights, ids and model, the server's reference update (zeros where
    the round gives none) and model access, and ``key``, the attack's own aggregation key."""
    return AggregationContext(
        weights=context.weights.astype(dtype),
        key=key,
        client_ids=context.client_ids,
        params=context.params,
        reference=jnp.zeros_like(context.params) if context.reference is None else context.reference,
        model=context.model,
    )


def replace_rows(updates: Array, malicious: Array, crafted: Array) -> Array:
    """Malicious rows take ``crafted`` (``[n, d]`` or one ``[d]`` row for all), honest rows
    stay bit-for-bit unchanged."""
    crafted = jnp.broadcast_to(crafted, updates.shape).astype(updates.dtype)
    return jnp.where(malicious[:, None], crafted, updates)


def check_number(attack: str, name: str, value, *, positive: bool = False, nonnegative: bool = False):
    """Validates a numeric attack hyper-parameter (never NaN)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and positive:
        ok = value > 0
    if ok and nonnegative:
        ok = value >= 0
    if not ok:
        bound = " > 0" if positive else (" >= 0" if nonnegative else "")
        raise ValueError(f"{attack}: {name} must be a number{bound}, got {value!r}")
    return value
