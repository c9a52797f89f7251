"""Small builders shared by the tests: tiny linear models and hand-made federated data."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fljax.client import Batch
from fljax.data.federated import FederatedData


def squared_loss(params, batch: Batch, key=None):
    """0.5 * mean over real examples of (x . w - y)^2 for a linear model ``{"w": [d]}``."""
    err = batch.x @ params["w"] - batch.y
    m = batch.mask.astype(err.dtype)
    return 0.5 * jnp.sum(m * err**2) / jnp.maximum(jnp.sum(m), 1.0)


def make_data(client_rows: list[list[int]], x, y, x_test=None, y_test=None, pad_index: int = 0) -> FederatedData:
    """``FederatedData`` whose client c holds examples ``client_rows[c]``, padded with ``pad_index``."""
    width = max(len(r) for r in client_rows)
    table = np.full((len(client_rows), width), pad_index, np.int32)
    for c, r in enumerate(client_rows):
        table[c, : len(r)] = r
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    return FederatedData(x, y, jnp.asarray(table), jnp.asarray([len(r) for r in client_rows], jnp.int32),
                         x if x_test is None else x_test, y if y_test is None else y_test)


_JITTED_UPDATES = {}


def aggregate_once(rule, x, weights=None, key=0):
    """One jitted ``rule.update`` on ``x [n, d]`` from the rule's initial state (compiled once per
    rule object): ``(aggregate, info)`` as numpy. ``weights`` default to ones, the key to
    ``PRNGKey(key)``, client ids to ``0..n-1``, params and reference to zeros."""
    import jax

    import fljax

    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    ctx = fljax.AggregationContext(weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
                                   key=jax.random.PRNGKey(key), client_ids=jnp.arange(n),
                                   params=jnp.zeros(d), reference=jnp.zeros(d))
    update = _JITTED_UPDATES.setdefault(id(rule), (rule, jax.jit(rule.update)))[1]
    out, _, info = update(x, rule.init(jnp.zeros(d)), ctx)
    return np.asarray(out), jax.tree.map(np.asarray, info)
