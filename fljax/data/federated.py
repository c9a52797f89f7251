"""The federated dataset a run trains on: all examples in one array, clients as index rows."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax.data.datasets import Dataset
from fljax.data.natural import natural
from fljax.data.partition import PARTITIONS, partition
from fljax.types import Array

METHODS = PARTITIONS + ("natural",)
"""``federate``'s methods: the partitions of ``fljax.data.partition`` and the natural clients."""


class FederatedData(NamedTuple):
    """Client data as indices into one shared example array (no per-client copies).

    Attributes:
      x: ``[N, ...]`` training inputs. y: ``[N]`` labels.
      client_indices: ``int32 [C, max_n]``; row c lists client c's examples, padded past its count.
      client_counts: ``int32 [C]`` examples per client (padding never counts).
      x_test, y_test: the held-out test set.
    """

    x: Array
    y: Array
    client_indices: Array
    client_counts: Array
    x_test: Array
    y_test: Array

    @property
    def num_clients(self) -> int:
        return self.client_indices.shape[0]


def federate(dataset: Dataset, num_clients: int, method: str = "iid", *, key: jax.Array, **kwargs) -> FederatedData:
    """Partitions ``dataset`` over ``num_clients`` clients: ``"natural"`` gives its natural
    clients (``fljax.data.natural``), other methods split it (``fljax.data.partition``)."""
    if method == "natural":
        indices, counts = natural(key, dataset.train_clients, num_clients, dataset.name)
    else:
        labels = np.asarray(dataset.y_train)
        if labels.ndim != 1 and method != "iid":
            raise ValueError(
                f"partition: {method} splits by label, and {dataset.name} has a label sequence per example; "
                f"valid for it: iid or natural"
            )
        indices, counts = partition(key, labels, num_clients, method, num_classes=dataset.num_classes, **kwargs)
    return FederatedData(
        jnp.asarray(dataset.x_train),
        jnp.asarray(dataset.y_train),
        jnp.asarray(indices),
        jnp.asarray(counts),
        jnp.asarray(dataset.x_test),
        jnp.asarray(dataset.y_test),
    )
