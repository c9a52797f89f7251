"""Weighted averaging: the non-robust baseline of FedAvg."""

from __future__ import annotations

import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator


def mean(weighted: bool = True) -> Aggregator:
    """FedAvg's mean of the updates, weighted by the clients' example counts.

    Args:
      weighted: weight each client by its number of examples (FedAvg); ``False`` gives the
        plain average.

    References:
      McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
      Data", AISTATS 2017.

    Examples:
      >>> fljax.aggregate(fljax.aggregators.mean(), jnp.array([[0.0], [2.0]]))
      Array([1.], dtype=float32)
      >>> fljax.aggregate(fljax.aggregators.mean(), jnp.array([[0.0], [2.0]]), weights=jnp.array([3.0, 1.0]))
      Array([0.5], dtype=float32)
    """
    if not isinstance(weighted, bool):
        raise ValueError(f"mean: weighted must be a bool (True or False), got {weighted!r}")

    def aggregate(updates, context):
        w = context.weights if weighted else jnp.ones_like(context.weights)
        w = w.astype(updates.dtype)
        return _common.weighted_average(updates, w), _common.info(w)

    return _common.stateless(aggregate, count_weighted=weighted)
