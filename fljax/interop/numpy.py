"""NumPy bridge: the clients' NumPy arrays through any fljax rule and back, in one call.

    import fljax
    from fljax.interop import numpy as fnp

    # three clients, each a list of arrays (or a dict name -> array) shaped like the model
    updates = [[w1, b1], [w2, b2], [w3, b3]]
    aggregate = fnp.aggregate(fljax.aggregators.median(), updates, weights=[50, 20, 30])
    # -> [w, b]: NumPy arrays with the shapes and dtypes of one client's

Each client's arrays are flattened once into one row of an ``[n, d]`` matrix (float32, or
float64 under ``jax_enable_x64``), handed to JAX through DLPack (no copy), and the rule's
``[d]`` aggregate is split back into the clients' structure; integer arrays (e.g. BatchNorm's
``num_batches_tracked``) are rounded to their dtype. For a rule with state across rounds
(FoolsGold, AFA, CONTRA, centered clipping), pass a ``fljax.interop.Session`` instead of the rule.
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from fljax.interop.layout import Layout
from fljax.interop.session import Session
from fljax.types import Aggregator


def cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` as ``dtype``: integer and bool dtypes are rounded and clipped to their range."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.asarray(np.rint(values) != 0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(np.nan_to_num(values)), info.min, info.max)
    return np.asarray(values).astype(dtype, copy=False)  # 0-d stays an array, not a NumPy scalar


def aligned_empty(shape: tuple, dtype, alignment: int = 64) -> np.ndarray:
    """``np.empty`` aligned to ``alignment`` bytes: XLA on CPU takes a DLPack buffer without a copy
    only when it is 64-byte aligned, and NumPy aligns to 16."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def pack(
    clients: Sequence, layout: Layout, dtype=None, minus: Optional[np.ndarray] = None, where: str = "client"
) -> np.ndarray:
    """The ``[n, d]`` matrix of the clients' structures, one flat row per client (``dtype``
    defaults to JAX's float: float32, float64 under ``jax_enable_x64``). With ``minus`` (a flat
    ``[d]`` model), each row is ``client - minus``, subtracted at ``minus``'s precision before
    the cast to ``dtype``: updates from models in one pass. The matrix is 64-byte aligned, so
    JAX on CPU takes it without a copy."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    out = aligned_empty((len(clients), layout.size), dtype)
    offsets = np.cumsum((0,) + layout.sizes)
    for i, tree in enumerate(clients):
        for a, start, stop in zip(layout.leaves(tree, f"{where} {i}"), offsets[:-1], offsets[1:]):
            a, row = np.asarray(a).reshape(-1), out[i, start:stop]
            if minus is None:
                np.copyto(row, a, casting="unsafe")
            else:  # computed at the wider of the two precisions, written straight into the row
                np.subtract(a, minus[start:stop], out=row, casting="unsafe")
    return out


def unpack(vector, layout: Layout):
    """The structure of ``layout`` from a flat ``[d]`` vector, each array cast to its dtype."""
    vector = np.asarray(vector)
    offsets = np.cumsum((0,) + layout.sizes)
    arrays = [
        cast(vector[start:stop].reshape(shape), dtype)
        for start, stop, shape, dtype in zip(offsets[:-1], offsets[1:], layout.shapes, layout.dtypes)
    ]
    return layout.rebuild(arrays)


def aggregate(
    rule, updates, weights=None, client_ids: Optional[Sequence[Hashable]] = None, params=None, reference=None
):
    """Aggregates the clients' NumPy ``updates`` with an fljax rule; returns one client's structure.

    Args:
      rule: an ``fljax.Aggregator`` (stateless call: fresh state each time, the compiled rule
        is reused) or a ``fljax.interop.Session`` (state kept across calls; ``session.population``
        maps ``client_ids`` to the rule's client rows).
      updates: the ``n`` clients' updates, each a list of arrays, a dict name -> array, or one
        array, all with the same names and shapes; or one stacked array ``[n, ...]``.
      weights: ``[n]`` example counts (default ones).
      client_ids: ``n`` distinct ids (for stateful rules; default ``0..n-1``).
      params: the global model in the same structure (rules that read it; default zeros).
      reference: the server's own update in the same structure (FLTrust).

    Returns:
      The aggregate with the structure, shapes and dtypes of one client's update.

    Examples:
      >>> from fljax.interop import numpy as fnp
      >>> fnp.aggregate(fljax.aggregators.median(), [[np.ones(2)], [2 * np.ones(2)], [9 * np.ones(2)]])
      [array([2., 2.])]
    """
    session = rule if isinstance(rule, Session) else Session(rule) if isinstance(rule, Aggregator) else None
    if session is None:
        raise ValueError(
            f"aggregate: rule must be an fljax.Aggregator or a fljax.interop.Session, got {type(rule).__name__}"
        )
    if isinstance(updates, np.ndarray):
        if updates.ndim < 2:
            raise ValueError(
                f"aggregate: a stacked updates array must be [n, ...] with ndim >= 2, got shape {updates.shape}"
            )
        layout = Layout.of(updates[0])
        matrix = updates.reshape(updates.shape[0], -1)
    else:
        if len(updates) < 1:
            raise ValueError("aggregate: updates must hold at least one client")
        layout = Layout.of(updates[0])
        matrix = pack(updates, layout)
    flat = {
        name: None if tree is None else pack([tree], layout, where=name)[0]
        for name, tree in (("params", params), ("reference", reference))
    }
    out, _ = session(matrix, weights, client_ids, flat["params"], flat["reference"])
    return unpack(np.asarray(out), layout)
