"""One-call helpers on plain arrays, for notebooks, tests and quick checks."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fljax.types import AggregationContext, Aggregator, Array, AttackContext, ModelAccess, ModelAttack, PyTree


def _as_matrix(updates: PyTree):
    """``([n, d] matrix, unravel of one row)``; the unravel is ``None`` for a plain matrix."""
    if hasattr(updates, "ndim") and updates.ndim == 2:
        return jnp.asarray(updates), None
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], updates))
    return jax.vmap(lambda u: ravel_pytree(u)[0])(updates), unravel


def aggregate(
    aggregator: Aggregator,
    updates: PyTree,
    weights: Optional[Array] = None,
    key: Optional[Array] = None,
    params: Optional[PyTree] = None,
    reference: Optional[Array] = None,
    model: Optional[ModelAccess] = None,
):
    """Aggregates ``updates`` (``[n, d]`` or a pytree with a leading client axis) in one stateless call.

    ``weights`` are the example counts (default: all ones), ``key`` feeds randomized rules,
    ``params`` is the global model (default zeros), ``reference`` a server update (FLTrust),
    ``model`` the model for a rule that reads it (``fljax.types.ModelAccess``: DeepSight).
    Returns the aggregate without the client axis, shaped like one client's update.

    Examples:
      >>> fljax.aggregate(fljax.aggregators.median(), jnp.array([[1.0], [2.0], [10.0]]))
      Array([2.], dtype=float32)
    """
    matrix, unravel = _as_matrix(updates)
    n, d = matrix.shape
    aggregator.requirement(n)
    flat_params = jnp.zeros(d, matrix.dtype) if params is None else ravel_pytree(params)[0]
    ctx = AggregationContext(
        weights=jnp.ones(n, matrix.dtype) if weights is None else jnp.asarray(weights, matrix.dtype),
        key=jax.random.PRNGKey(0) if key is None else key,
        client_ids=jnp.arange(n),
        params=flat_params,
        reference=jnp.zeros(d, matrix.dtype) if reference is None else jnp.asarray(reference, matrix.dtype),
        model=model,
    )
    out, _, _ = aggregator.update(matrix, aggregator.init(flat_params), ctx)
    return out if unravel is None else unravel(out)


def apply_attack(
    attack: ModelAttack,
    updates: PyTree,
    malicious: Array,
    key: Optional[Array] = None,
    aggregator: Optional[Aggregator] = None,
    weights: Optional[Array] = None,
    params: Optional[PyTree] = None,
    reference: Optional[Array] = None,
    model: Optional[ModelAccess] = None,
):
    """Applies a model attack once to ``updates`` (``[n, d]`` or stacked pytree) with the
    ``bool[n]`` ``malicious`` mask; returns the poisoned updates in the same structure.

    ``reference`` and ``model`` are what ``aggregator`` reads besides the updates (as in
    ``aggregate``: FLTrust's server update, DeepSight's model), for attacks that run the rule."""
    matrix, unravel = _as_matrix(updates)
    n, d = matrix.shape
    flat_params = jnp.zeros(d, matrix.dtype) if params is None else ravel_pytree(params)[0]
    ctx = AttackContext(
        params=flat_params,
        weights=jnp.ones(n, matrix.dtype) if weights is None else jnp.asarray(weights, matrix.dtype),
        round=jnp.zeros((), jnp.int32),
        aggregator=aggregator,
        agg_state=None if aggregator is None else aggregator.init(flat_params),
        client_ids=jnp.arange(n),
        reference=None if reference is None else jnp.asarray(reference, matrix.dtype),
        model=model,
    )
    out, _ = attack.update(
        matrix,
        jnp.asarray(malicious, bool),
        attack.init(flat_params),
        jax.random.PRNGKey(0) if key is None else key,
        ctx,
    )
    return out if unravel is None else jax.vmap(unravel)(out)
