"""fljax's rules outside fljax's simulator: NumPy and PyTorch arrays, and Flower servers.

- ``fljax.interop.numpy.aggregate(rule, updates)``: the clients' NumPy arrays (lists or dicts
  per client) through any fljax rule, back as NumPy arrays shaped like one client's.
- ``fljax.interop.torch.aggregate(rule, updates)``: the same for PyTorch tensors and
  ``state_dict``s, through DLPack (needs ``torch``).
- ``fljax.interop.flower.FljaxStrategy(rule)``: a Flower ``ServerApp`` strategy aggregating with
  any fljax rule (needs ``pip install fljax[flower]``).
- ``Session``: a rule with its state across rounds (FoolsGold, AFA, CONTRA), named clients
  mapped to the rule's population ids; pass it wherever a rule is taken.
- ``Layout``: the names, shapes and dtypes of one client's model, which the bridges flatten by.

The ``numpy``, ``torch`` and ``flower`` modules are imported on first use, so ``import fljax``
never imports PyTorch or Flower.
"""

import importlib

from fljax.interop.layout import Layout
from fljax.interop.session import Session

_SUBMODULES = ("numpy", "torch", "flower")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"fljax.interop.{name}")
    raise AttributeError(f"module 'fljax.interop' has no attribute {name!r}")


__all__ = ["Layout", "Session", "flower", "numpy", "torch"]
