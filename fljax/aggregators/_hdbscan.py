"""HDBSCAN* (Campello, Moulavi, Sander 2013) on a precomputed ``[n, n]`` distance matrix, with
dense ops and ``fori_loop`` s only, so that it runs inside a jitted round (DeepSight clusters
with it).

The steps and their conventions are scikit-learn's (``sklearn.cluster.HDBSCAN``, the port of the
``hdbscan`` library; tests/test_aggregators_detectors.py checks the labels against it):

1. core distance of a point: the distance to its ``min_samples``-th nearest point, itself
   included (``min_samples = 1``: 0); mutual reachability ``max(d_ij, core_i, core_j)``;
2. its minimum spanning tree by Prim's algorithm from point 0, kept as the visiting order
   ``p_0, p_1, ...`` with ``delta_k`` the distance at which ``p_k`` joined: at every level t the
   single-linkage clusters are runs of consecutive points in that order, so joining ``p_{k-1}``
   and ``p_k`` at ``delta_k`` (scikit-learn's edge list) gives the single-linkage dendrogram;
3. the dendrogram condensed top-down with ``min_cluster_size``: where a cluster splits into two
   parts of at least that size both are new clusters born at ``lambda = 1 / distance``; a smaller
   part's points fall out of the cluster at that lambda; the larger part continues the cluster;
4. stability of a cluster: the sum over its points of (the lambda at which each left it - its
   birth lambda), a child cluster's points leaving at the child's birth;
5. excess of mass: bottom-up, a cluster is kept when its stability is at least its children's
   best total; a kept cluster drops its descendants; the root is a candidate only with
   ``allow_single_cluster``, and then (as scikit-learn labels it) only the points that leave the
   root at its largest lambda carry its label;
6. a point's label is the kept cluster it falls out of (or of an ancestor), else noise (-1).

Labels are cluster ids (node numbers of the dendrogram, not 0, 1, ...: compare them for
equality only), -1 for noise. Distances may be +inf (a point at +inf from all falls out at
lambda 0). Ties in the distances are broken by point order, which may differ from
scikit-learn's (its edge sort is not stable); the clustering is otherwise the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.types import Array


def _prim_order(mr: Array) -> tuple[Array, Array]:
    """Prim's visiting order ``[n]`` on the mutual-reachability matrix and the distance
    ``[n]`` at which each point of the order joined (``delta[0] = 0``, unused)."""
    n = mr.shape[0]

    def step(k, carry):
        order, delta, in_tree, reach, current = carry
        reach = jnp.minimum(reach, mr[current])
        nearest = jnp.min(jnp.where(in_tree, jnp.inf, reach))
        new = jnp.argmax(~in_tree & (reach == nearest))  # the first such point (all at +inf: the first left)
        return order.at[k].set(new), delta.at[k].set(nearest), in_tree.at[new].set(True), reach, new

    init = (
        jnp.zeros(n, jnp.int32),
        jnp.zeros(n, mr.dtype),
        jnp.zeros(n, bool).at[0].set(True),
        jnp.full(n, jnp.inf, mr.dtype),
        jnp.int32(0),
    )
    order, delta, *_ = jax.lax.fori_loop(1, n, step, init)
    return order, delta


def _dendrogram(order: Array, delta: Array):
    """Single linkage from the Prim order: ``(left, right, height, size)`` of the ``n - 1``
    merges (node ``n + i`` is merge i, in order of height, ties by position), each ``[n - 1]``."""
    n = order.shape[0]
    heights = delta[1:]
    merges = jnp.argsort(heights, stable=True)  # merge i joins positions merges[i] and merges[i] + 1

    def step(i, carry):
        label, left, right, size, node_size = carry
        k = merges[i] + 1
        a, b = label[k - 1], label[k]
        new = n + i
        grown = node_size[a] + node_size[b]
        label = jnp.where((label == a) | (label == b), new, label)
        return (label, left.at[i].set(a), right.at[i].set(b), size.at[i].set(grown), node_size.at[new].set(grown))

    init = (
        order.astype(jnp.int32),
        jnp.zeros(n - 1, jnp.int32),
        jnp.zeros(n - 1, jnp.int32),
        jnp.zeros(n - 1, jnp.int32),
        jnp.ones(2 * n - 1, jnp.int32),
    )
    _, left, right, size, _ = jax.lax.fori_loop(0, n - 1, step, init)
    return left, right, heights[merges], size


def hdbscan(distances: Array, min_cluster_size: int, min_samples: int, allow_single_cluster: bool = False) -> Array:
    """HDBSCAN* labels ``int[n]`` of the points of a precomputed ``[n, n]`` distance matrix
    (see the module docstring); -1 for noise. Needs ``2 <= min_cluster_size`` and
    ``1 <= min_samples <= n``."""
    n = distances.shape[0]
    if n < 2:
        return jnp.full((n,), -1, jnp.int32)
    d = jnp.where(jnp.eye(n, dtype=bool), 0.0, distances.astype(jnp.float32))
    d = jnp.where(jnp.isnan(d), jnp.inf, d)
    core = jnp.sort(d, axis=1)[:, min_samples - 1]
    mr = jnp.maximum(d, jnp.maximum(core[:, None], core[None, :]))
    order, delta = _prim_order(mr)
    left, right, height, size = _dendrogram(order, delta)

    nodes = 2 * n - 1
    root = nodes - 1
    node_size = jnp.concatenate([jnp.ones(n, jnp.int32), size])
    lam = jnp.where(height > 0, 1.0 / jnp.where(height > 0, height, 1.0), jnp.inf)  # lambda of merge node n + i
    big = node_size >= min_cluster_size

    # Condensing, top-down (a parent's id is larger than its children's).
    def condense(j, carry):
        active, clab, fall, birth, cparent, is_cluster = carry
        c = root - j
        i = c - n
        lo, hi, lc = left[i], right[i], lam[i]
        split = big[lo] & big[hi]
        act = active[c]

        def child(carry, q):
            active, clab, fall, birth, cparent, is_cluster = carry
            new_cluster = act & split
            stays = act & big[q]
            active = active.at[q].set(stays)
            clab = clab.at[q].set(jnp.where(new_cluster, q, clab[c]))
            fall = fall.at[q].set(jnp.where(act, lc, fall[c]))
            birth = birth.at[q].set(jnp.where(new_cluster, lc, birth[q]))
            cparent = cparent.at[q].set(jnp.where(new_cluster, clab[c], cparent[q]))
            is_cluster = is_cluster.at[q].set(new_cluster)
            return active, clab, fall, birth, cparent, is_cluster

        carry = child(carry, lo)
        return child(carry, hi)

    init = (
        jnp.zeros(nodes, bool).at[root].set(True),
        jnp.full(nodes, root, jnp.int32),
        jnp.zeros(nodes),
        jnp.zeros(nodes),
        jnp.full(nodes, root, jnp.int32),
        jnp.zeros(nodes, bool).at[root].set(True),
    )
    _, clab, fall, birth, cparent, is_cluster = jax.lax.fori_loop(0, n - 1, condense, init)

    # Stability: points leaving their cluster, child clusters born out of it.
    stability = jax.ops.segment_sum(fall[:n] - birth[clab[:n]], clab[:n], num_segments=nodes)
    child_rows = jnp.where(is_cluster, node_size * (birth - birth[cparent]), 0.0).at[root].set(0.0)
    stability = stability + jax.ops.segment_sum(child_rows, jnp.where(is_cluster, cparent, root), num_segments=nodes)

    # Excess of mass, bottom-up over the clusters (children have smaller ids).
    def select(q, carry):
        chosen, best, children = carry
        candidate = is_cluster[q] & ((q != root) | allow_single_cluster)
        keep = candidate & ~(children[q] > stability[q])  # as scikit-learn: NaN stabilities keep the node
        value = jnp.where(keep, stability[q], children[q])
        children = jnp.where(is_cluster[q] & (q != root), children.at[cparent[q]].add(value), children)
        return chosen.at[q].set(keep), best.at[q].set(value), children

    chosen, _, _ = jax.lax.fori_loop(n, nodes, select, (jnp.zeros(nodes, bool), jnp.zeros(nodes), jnp.zeros(nodes)))

    # A kept cluster drops its descendants; each cluster's label is its nearest kept ancestor-or-self.
    def label_down(j, carry):
        selected, label = carry
        q = root - j
        parent = cparent[q]
        covered = jnp.where(q == root, False, (label[parent] >= 0))
        keep = chosen[q] & ~covered
        own = jnp.where(keep, q, jnp.where(q == root, -1, label[parent]))
        return selected.at[q].set(keep), label.at[q].set(jnp.where(is_cluster[q], own, label[q]))

    selected, label = jax.lax.fori_loop(0, n - 1, label_down, (jnp.zeros(nodes, bool), jnp.full(nodes, -1, jnp.int32)))
    out = label[clab[:n]]
    # The root as the single cluster: only the points that leave it at its largest lambda.
    direct = jnp.where(clab[:n] == root, fall[:n], -jnp.inf)
    children_of_root = jnp.where(is_cluster & (cparent == root) & (jnp.arange(nodes) != root), birth, -jnp.inf)
    threshold = jnp.maximum(jnp.max(direct), jnp.max(children_of_root))
    single = selected[root]
    return jnp.where(single, jnp.where(fall[:n] >= threshold, root, -1), out).astype(jnp.int32)
