"""PyTorch bridge: the clients' tensors or state dicts through any fljax rule and back::

    import fljax
    from fljax.interop import torch as ftorch

    # updates: one state_dict (name -> tensor) per client, e.g. local_model - global_model
    aggregate = ftorch.aggregate(fljax.aggregators.trimmed_mean(num_byzantine=1), updates,
                                 weights=[len(d) for d in client_datasets])
    # -> a state_dict of tensors with each entry's shape, dtype and device

The clients' tensors are flattened with PyTorch into one ``[n, d]`` float32 tensor (float64
under ``jax_enable_x64``), handed to JAX through DLPack and the ``[d]`` aggregate comes back the
same way, so the only copy is the flattening itself (a tensor already stacked ``[n, ...]`` is not
copied at all). Tensors on a device JAX does not hold (CUDA with a CPU-only JAX) go through the
CPU. Pass a ``fljax.interop.Session`` instead of the rule to keep a rule's state across rounds.
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch

from fljax.interop.layout import Layout
from fljax.interop.session import Session
from fljax.types import Aggregator


def _float_dtype() -> torch.dtype:
    return torch.float64 if jnp.result_type(float) == jnp.float64 else torch.float32


def _to_jax(tensor: torch.Tensor) -> jax.Array:
    """A contiguous float tensor as a JAX array through DLPack (no copy on a shared device)."""
    tensor = tensor.detach().contiguous()
    if tensor.device.type != "cpu" and not any(d.platform == "gpu" for d in jax.devices()):
        tensor = tensor.cpu()
    return jax.dlpack.from_dlpack(tensor)


def pack(clients: Sequence, layout: Layout, where: str = "client") -> torch.Tensor:
    """The ``[n, d]`` tensor of the clients' structures, one flat row per client (one copy)."""
    out = None
    offsets = np.cumsum((0,) + layout.sizes)
    for i, tree in enumerate(clients):
        tensors = layout.leaves(tree, f"{where} {i}")
        if out is None:
            out = torch.empty((len(clients), layout.size), dtype=_float_dtype(), device=tensors[0].device)
        for t, start, stop in zip(tensors, offsets[:-1], offsets[1:]):
            out[i, start:stop] = t.detach().reshape(-1)
    return out


def unpack(vector: torch.Tensor, layout: Layout, device) -> object:
    """The structure of ``layout`` from a flat ``[d]`` tensor: views, cast to each dtype (integer
    dtypes rounded) and moved to ``device``."""
    arrays = []
    for part, shape, dtype in zip(torch.split(vector, list(layout.sizes)), layout.shapes, layout.dtypes):
        if not (dtype.is_floating_point or dtype.is_complex):
            info = torch.iinfo(dtype) if dtype != torch.bool else None
            part = torch.round(torch.nan_to_num(part))
            part = part != 0 if info is None else part.clamp(info.min, info.max)
        arrays.append(part.reshape(shape).to(dtype=dtype, device=device))
    return layout.rebuild(arrays)


def aggregate(
    rule, updates, weights=None, client_ids: Optional[Sequence[Hashable]] = None, params=None, reference=None
):
    """Aggregates the clients' PyTorch ``updates`` with an fljax rule; returns one client's structure.

    Args:
      rule: an ``fljax.Aggregator`` (stateless call) or a ``fljax.interop.Session`` (state kept).
      updates: the ``n`` clients' updates, each a ``state_dict`` (name -> tensor), a list of
        tensors or one tensor, all with the same names and shapes; or one stacked tensor ``[n, ...]``.
      weights: ``[n]`` example counts (list, NumPy or tensor; default ones).
      client_ids: ``n`` distinct ids (for stateful rules; default ``0..n-1``).
      params: the global model in the same structure (rules that read it; default zeros).
      reference: the server's own update in the same structure (FLTrust).

    Returns:
      The aggregate with the structure, shapes, dtypes and device of one client's update.

    Examples:
      >>> import torch
      >>> from fljax.interop import torch as ftorch
      >>> ftorch.aggregate(fljax.aggregators.median(), torch.tensor([[1.0], [2.0], [9.0]]))
      tensor([2.])
    """
    session = rule if isinstance(rule, Session) else Session(rule) if isinstance(rule, Aggregator) else None
    if session is None:
        raise ValueError(
            f"aggregate: rule must be an fljax.Aggregator or a fljax.interop.Session, got {type(rule).__name__}"
        )
    if isinstance(updates, torch.Tensor):
        if updates.ndim < 2:
            raise ValueError(
                f"aggregate: a stacked updates tensor must be [n, ...] with ndim >= 2, got shape {tuple(updates.shape)}"
            )
        layout, device = Layout.of(updates[0]), updates.device
        matrix = updates.detach().reshape(updates.shape[0], -1).to(_float_dtype())
    else:
        if len(updates) < 1:
            raise ValueError("aggregate: updates must hold at least one client")
        layout = Layout.of(updates[0])
        device = layout.leaves(updates[0])[0].device
        matrix = pack(updates, layout)
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    flat = {
        name: None if tree is None else _to_jax(pack([tree], layout, where=name)[0])
        for name, tree in (("params", params), ("reference", reference))
    }
    out, _ = session(_to_jax(matrix), weights, client_ids, flat["params"], flat["reference"])
    return unpack(torch.from_dlpack(out), layout, device)
