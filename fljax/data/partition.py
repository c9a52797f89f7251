"""Federated partitions of a centralized training set into client shards.

Each partition returns ``(client_indices int32 [C, max_n], client_counts int32 [C])``: row c
lists the training examples of client c, padded with zeros past ``client_counts[c]`` (padding
is masked out everywhere). Randomness comes only from the ``jax.random`` key.

Client ids carry no structure: ``partition`` shuffles the rows after any method's assignment
(``shuffle_clients``), so that any fixed set of ids (the runner's malicious clients
``0..num_malicious-1``) holds the same data distribution as any other set of that size.
"""

from __future__ import annotations

import jax
import numpy as np

PARTITIONS = ("iid", "dirichlet", "shards", "bias")


def pack(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(table, counts)`` of the clients' example indices ``groups``, rows zero-padded."""
    counts = np.array([len(g) for g in groups], np.int32)
    table = np.zeros((len(groups), max(1, counts.max(initial=0))), np.int32)
    for c, g in enumerate(groups):
        table[c, : len(g)] = g
    return table, counts


def shuffle_clients(key: jax.Array, table: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a client table in a random order: client ids independent of the assignment."""
    order = np.asarray(jax.random.permutation(key, len(counts)))
    return table[order], counts[order]


def iid(key: jax.Array, labels: np.ndarray, num_clients: int):
    """Shuffle, then split into ``num_clients`` near-equal shards."""
    order = np.asarray(jax.random.permutation(key, len(labels)))
    return pack(np.array_split(order, num_clients))


def dirichlet(key: jax.Array, labels: np.ndarray, num_clients: int, alpha: float, num_classes: int):
    """Label skew: each class is split over the clients with proportions ~ Dir(alpha).

    Small alpha gives clients few classes; large alpha approaches IID.

    References:
      Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
      Visual Classification", 2019.
    """
    groups: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        k_perm, k_dir, key = jax.random.split(jax.random.fold_in(key, c), 3)
        members = np.flatnonzero(labels == c)
        members = members[np.asarray(jax.random.permutation(k_perm, len(members)))]
        shares = np.asarray(jax.random.dirichlet(k_dir, np.full(num_clients, alpha, np.float32)), np.float64)
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            groups[client].append(part)
    return pack([np.concatenate(g) for g in groups])


def shards(key: jax.Array, labels: np.ndarray, num_clients: int, shards_per_client: int = 2):
    """McMahan et al.'s pathological non-IID split: sort by label, cut into
    ``num_clients * shards_per_client`` shards, give each client ``shards_per_client`` at random."""
    k_tie, k_assign = jax.random.split(key)
    tiebreak = np.asarray(jax.random.uniform(k_tie, (len(labels),)))
    order = np.lexsort((tiebreak, labels))
    pieces = np.array_split(order, num_clients * shards_per_client)
    assignment = np.asarray(jax.random.permutation(k_assign, len(pieces))).reshape(num_clients, shards_per_client)
    return pack([np.concatenate([pieces[s] for s in row]) for row in assignment])


def bias(key: jax.Array, labels: np.ndarray, num_clients: int, p: float, num_classes: int):
    """Fang et al.'s p-bias groups: clients form ``num_classes`` equal groups; an example of
    label l goes to group l with probability p, otherwise to one of the other groups uniformly,
    then to a client of that group uniformly. p = 1/C is IID; p = 1 puts each class in one group.
    Clients are dealt into the groups in a random order (as the authors' code permutes the
    workers after the group assignment), so ids do not reveal groups.

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020 (Section 4.1).
    """
    k_keep, k_other, k_client, k_group = jax.random.split(key, 4)
    n = len(labels)
    keep = np.asarray(jax.random.uniform(k_keep, (n,))) < p
    other = np.asarray(jax.random.randint(k_other, (n,), 0, num_classes - 1))
    other = other + (other >= labels)  # uniform over the groups other than the label's
    group = np.where(keep, labels, other)
    group_of_client = np.array_split(np.asarray(jax.random.permutation(k_group, num_clients)), num_classes)
    u = np.asarray(jax.random.uniform(k_client, (n,)))
    client = np.empty(n, np.int64)
    for g, members in enumerate(group_of_client):
        sel = group == g
        if len(members) == 0:
            raise ValueError(f"partition: bias needs num_clients >= num_classes ({num_classes}), got {num_clients}")
        client[sel] = members[np.minimum((u[sel] * len(members)).astype(int), len(members) - 1)]
    return pack([np.flatnonzero(client == c) for c in range(num_clients)])


def partition(
    key: jax.Array,
    labels: np.ndarray,
    num_clients: int,
    method: str = "iid",
    *,
    num_classes: int = 10,
    alpha: float = 0.5,
    p: float = 0.5,
    shards_per_client: int = 2,
):
    """Dispatches to one of ``iid``, ``dirichlet``, ``shards``, ``bias`` after validating, then
    shuffles the client order (``shuffle_clients``) so that ids carry none of the method's
    structure (e.g. ``bias``'s groups, or the order of a natural partition's users)."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or not 1 <= num_clients <= len(labels):
        raise ValueError(
            f"partition: num_clients must be an integer in 1..{len(labels)} (the training examples), got {num_clients!r}"
        )
    if method == "dirichlet" and not alpha > 0:
        raise ValueError(f"partition: dirichlet_alpha must be > 0, got {alpha!r}")
    if method == "shards" and (not isinstance(shards_per_client, int) or shards_per_client < 1):
        raise ValueError(f"partition: shards_per_client must be an integer >= 1, got {shards_per_client!r}")
    if method == "bias" and not 0 <= p <= 1:
        raise ValueError(f"partition: bias must be in [0, 1], got {p!r}")
    if method not in PARTITIONS:
        raise ValueError(f"partition: unknown partition {method!r}; valid: {', '.join(PARTITIONS)}")
    k_method, k_shuffle = jax.random.split(key)
    if method == "iid":
        assigned = iid(k_method, labels, num_clients)
    elif method == "dirichlet":
        assigned = dirichlet(k_method, labels, num_clients, float(alpha), num_classes)
    elif method == "shards":
        assigned = shards(k_method, labels, num_clients, shards_per_client)
    else:
        assigned = bias(k_method, labels, num_clients, float(p), num_classes)
    return shuffle_clients(k_shuffle, *assigned)
