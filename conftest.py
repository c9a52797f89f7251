"""The doctests' setup: ``pytest --doctest-modules fljax`` runs every docstring's ``>>>``
example with the names a reader of the docs has imported (``fljax``, ``jax``, ``jnp``, ``np``);
the interop modules whose framework is not installed are not collected."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax

collect_ignore = [
    path
    for module, path in (("torch", "fljax/interop/torch.py"), ("flwr", "fljax/interop/flower.py"))
    if importlib.util.find_spec(module) is None
]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(fljax=fljax, jax=jax, jnp=jnp, np=np)
