"""The federated dataset a run trains on: all examples in one array, clients as index rows."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fljax.data.datasets import Dataset
from fljax.data.natural import natural
from fljax.data.partition import PARTITIONS, pack, partition
from fljax.types import Array

METHODS = PARTITIONS + ("natural",)
"""``federate``'s methods: the partitions of ``fljax.data.partition`` and the natural clients."""

MALICIOUS_DATA = ("share", "iid")
"""What the malicious clients hold: ``share``, their share of the partition like any client
(``federate``); ``iid``, IID samples beside a partition of the honest clients (``federate_honest``)."""


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
    return _federated(dataset, indices, counts)


def federate_honest(
    dataset: Dataset, num_clients: int, num_malicious: int, method: str = "iid", *, key: jax.Array, **kwargs
) -> FederatedData:
    """Karimireddy, He, Jaggi (ICLR 2022)'s split, as in their code: ``method`` deals the whole
    training set over the ``num_clients - num_malicious`` honest clients only, and each malicious
    client (ids ``0..num_malicious-1``, as the runner's) holds an IID sample of the honest
    clients' average size (malicious client j: shard ``j mod H`` of an IID split over the H
    honest clients). Under a skewed ``method`` no label is then lost to the attackers' shares."""
    num_honest = num_clients - num_malicious
    if method == "natural":
        raise ValueError("malicious_data: iid needs a partition of the data, not natural clients; got natural")
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int) or not 0 <= num_malicious < num_clients:
        raise ValueError(
            f"malicious_data: iid needs num_malicious in 0..num_clients-1={num_clients - 1} (an honest client "
            f"to hold the data), got {num_malicious!r}"
        )
    k_honest, k_malicious = jax.random.split(key)
    honest = federate(dataset, num_honest, method, key=k_honest, **kwargs)
    if num_malicious == 0:
        return honest
    iid_table, iid_counts = partition(k_malicious, np.asarray(dataset.y_train), num_honest, "iid")
    rows = [iid_table[j % num_honest, : iid_counts[j % num_honest]] for j in range(num_malicious)]
    table, counts = np.asarray(honest.client_indices), np.asarray(honest.client_counts)
    rows += [table[c, : counts[c]] for c in range(num_honest)]
    return _federated(dataset, *pack(rows))


def _federated(dataset: Dataset, indices, counts) -> FederatedData:
    return FederatedData(
        jnp.asarray(dataset.x_train),
        jnp.asarray(dataset.y_train),
        jnp.asarray(indices),
        jnp.asarray(counts),
        jnp.asarray(dataset.x_test),
        jnp.asarray(dataset.y_test),
    )
