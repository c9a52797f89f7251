"""The natural federated partition: one client per natural client of the data (a writer of
FEMNIST, a speaking role of Shakespeare), as LEAF defines them.

References:
  Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018 (arXiv:1812.01097).
"""

from __future__ import annotations

import jax
import numpy as np

from fljax.data.partition import pack


def natural(key: jax.Array, train_clients: np.ndarray | None, num_clients: int, dataset: str = "the dataset"):
    """``(client_indices, client_counts)`` of ``num_clients`` natural clients drawn at random.

    Client ``c`` holds exactly the training examples of natural client ``order[c]``, where
    ``order`` is a ``jax.random`` permutation of the natural clients: the client ids (and so
    the malicious ids ``0..num_malicious-1``) are a uniform draw of writers, independent of
    their names, sizes and the files' order. With fewer ``num_clients`` than natural clients,
    the others' examples go unused (LEAF's user sampling).

    Args:
      key: draws which natural clients become clients ``0..num_clients-1``.
      train_clients: ``int [N]``, the natural client ``0..K-1`` of each training example
        (``Dataset.train_clients``).
      num_clients: clients to make, ``1..K``.
      dataset: the dataset's name, for error messages.
    """
    if train_clients is None:
        raise ValueError(
            f"partition: natural needs a dataset with natural clients (femnist, shakespeare, "
            f"synthetic:femnist, synthetic:shakespeare); {dataset} has none"
        )
    train_clients = np.asarray(train_clients)
    total = int(train_clients.max(initial=-1)) + 1
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or not 1 <= num_clients <= total:
        raise ValueError(
            f"partition: num_clients must be an integer in 1..{total} (the natural clients of {dataset}) "
            f"for the natural partition, got {num_clients!r}"
        )
    by_client = np.argsort(train_clients, kind="stable")
    bounds = np.searchsorted(train_clients[by_client], np.arange(total + 1))
    order = np.asarray(jax.random.permutation(key, total))[:num_clients]
    return pack([by_client[bounds[w] : bounds[w + 1]] for w in order])
