"""Clustering-based filtering: keep the majority cluster of updates by cosine distance.

FLAME (Nguyen et al., USENIX Security 2022) and a generic two-cluster filter. Both work on the
``[n, n]`` cosine distances with dense ops, so they stay inside one jitted round.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator, Array


def cosine_distances(updates: Array) -> Array:
    """``[n, n]`` cosine distances ``1 - cos`` in ``[0, 2]``; a non-finite row is at +inf from
    every other row; an all-zero row is at distance 1 from all (like scikit-learn)."""
    finite = _common.finite_rows(updates)
    d = jnp.clip(1.0 - _common.cosine_similarity_matrix(updates), 0.0, 2.0)
    d = jnp.where(finite[:, None] & finite[None, :], d, jnp.inf)
    return jnp.where(jnp.eye(updates.shape[0], dtype=bool), 0.0, d)


def single_linkage_levels(distances: Array) -> Array:
    """Single-linkage (minimax) distances: ``u_ij`` = the smallest possible largest hop on a path
    from i to j, i.e. the height at which i and j merge in the single-linkage dendrogram.
    Floyd-Warshall in the (min, max) algebra: n passes of dense ``[n, n]`` ops."""

    def relax(k, u):
        return jnp.minimum(u, jnp.maximum(u[:, k][:, None], u[k, :][None, :]))

    return jax.lax.fori_loop(0, distances.shape[0], relax, distances)


def majority_cluster(distances: Array, min_cluster_size: int) -> Array:
    """``bool[n]``: the HDBSCAN cluster for ``min_samples=1``, ``allow_single_cluster=True`` and
    ``min_cluster_size > n / 2`` (at most one cluster can then exist).

    With ``min_samples=1`` the mutual-reachability distance equals the distance itself, so the
    hierarchy is single linkage. Going down from the root, the cluster follows the child with at
    least ``min_cluster_size`` points while smaller children fall out as noise, and it ends at the
    first split where no child is that large; HDBSCAN's single-cluster labelling keeps the points
    that stay to that end. That node is the component (edges ``<= t*``) of the lowest level
    ``t*`` at which some component still has ``min_cluster_size`` points: for each point, the level
    at which its component reaches that size is the ``min_cluster_size``-th smallest entry of its
    single-linkage row. Empty when no such component exists (infinite distances).
    """
    u = single_linkage_levels(distances)
    reach = jnp.sort(u, axis=1)[:, min_cluster_size - 1]
    level = jnp.min(reach)
    return (u[jnp.argmin(reach)] <= level) & jnp.isfinite(level)


def flame(noise_lambda: float = 0.001, min_cluster_size: Optional[int] = None) -> Aggregator:
    """FLAME: majority cluster by cosine distance, clipping to the median norm, Gaussian noise.

    1. Cosine distances ``c_ij = 1 - cos(x_i, x_j)`` between the updates.
    2. The clients of the majority cluster are admitted: the paper runs HDBSCAN with
       ``min_cluster_size = n/2 + 1``, ``min_samples = 1`` and ``allow_single_cluster=True``.
       HDBSCAN does not fit in jit; ``majority_cluster`` computes the same labelling with dense
       ops (see its docstring): with ``min_samples = 1`` HDBSCAN's hierarchy is single linkage,
       and with ``min_cluster_size > n/2`` the condensed tree is a single chain, so the result
       is the component of the lowest single-linkage level that still holds
       ``min_cluster_size`` points. It may differ from the library only on exactly tied
       distances (where the library's result depends on its merge order).
    3. ``S_t`` = the median of all n Euclidean norms ``||x_i||`` (``= ||W_i - G_{t-1}||``);
       admitted updates are clipped, ``x_i * min(1, S_t / ||x_i||)``, and averaged uniformly.
    4. Gaussian noise ``N(0, (lambda * S_t)^2)`` is added to every coordinate (``context.key``);
       the paper uses ``lambda = 0.001`` for image classification (0.01 for NLP).

    Deviations: the paper measures cosine distances between the local MODELS ``W_i``; here they
    are between the updates ``W_i - G`` (the shared ``G`` otherwise dominates every cosine and
    fp32 loses the differences). Non-finite updates are infinitely far from all (never admitted)
    and count as +inf norms in the median; if no cluster of ``min_cluster_size`` finite updates
    exists, nothing is admitted and the aggregate is zero (plus noise with a finite ``S_t``).
    Example counts are not used (the paper averages uniformly).

    ``info["weights"]`` is uniform over the admitted clients (their updates are clipped before
    that weight applies); ``info["clip_factors"]`` and ``info["norm_bound"]`` give the clipping.

    Args:
      noise_lambda: lambda >= 0, the noise level relative to ``S_t`` (0 disables the noise).
      min_cluster_size: admitted cluster's least size, in ``n//2 + 1 .. n`` (default ``n//2 + 1``).

    References:
      Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022.

    Examples:
      >>> updates = jnp.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-5.0, 5.0]])
      >>> fljax.aggregate(flame(noise_lambda=0.0), updates)  # the first four admitted, none above S_t
      Array([0.975, 0.   ], dtype=float32)
    """
    rule = "flame"
    _common.check_positive(rule, "noise_lambda", noise_lambda, allow_zero=True)
    if min_cluster_size is not None:
        _common.check_positive(rule, "min_cluster_size", min_cluster_size, integer=True)

    def size_of(n: int) -> int:
        return n // 2 + 1 if min_cluster_size is None else min_cluster_size

    def requirement(n: int) -> None:
        _common.require(
            n // 2 + 1 <= size_of(n) <= n,
            rule,
            f"min_cluster_size must be in n//2+1..n = {n // 2 + 1}..{n} (a strict majority), got {size_of(n)}",
        )

    def aggregate(updates, context):
        n, d = updates.shape
        finite = _common.finite_rows(updates)
        admitted = majority_cluster(cosine_distances(updates), size_of(n)) & finite
        norms = _common.safe_norms(updates)
        bound = jnp.median(norms)
        factors = jnp.where(norms > bound, bound / jnp.where(norms > bound, norms, 1.0), 1.0)
        factors = jnp.where(admitted, factors, 0.0).astype(updates.dtype)
        x = jnp.where(admitted[:, None], updates, 0.0)
        out = jnp.dot(factors, x, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(jnp.sum(admitted), 1)
        if noise_lambda > 0:
            sigma = jnp.where(jnp.isfinite(bound), noise_lambda * bound, 0.0)
            out = out + sigma * jax.random.normal(context.key, (d,), updates.dtype)
        return out, _common.info(admitted.astype(updates.dtype), clip_factors=factors, norm_bound=bound)

    return _common.stateless(aggregate, requirement=requirement)


def two_means(updates: Array, num_iterations: int) -> tuple[Array, Array]:
    """Spherical 2-means on the unit directions of the finite updates.

    Seeds: the two updates at the largest cosine distance; then ``num_iterations`` Lloyd steps
    (assign each update to the centroid of higher cosine similarity, ties to the first; a
    centroid is its members' mean direction, renormalized; an emptied cluster keeps its
    centroid). Returns ``(assign int[n] in {0, 1}, member bool[n])``; non-finite rows are no
    member of either cluster.

    Everything runs on the ``[n, n]`` cosine matrix S of the unit directions ``u_i``: a centroid
    is a member set ``w``, and ``u_i . normalize(sum_j w_j u_j) = (S w)_i / sqrt(w^T S w)``, so a
    Lloyd step costs O(n^2) rather than two passes over the ``[n, d]`` updates.
    """
    finite = _common.finite_rows(updates)
    both = finite[:, None] & finite[None, :]
    sim = jnp.where(both, _common.cosine_similarity_matrix(updates), 0.0)
    n = updates.shape[0]
    dist = jnp.where(both & ~jnp.eye(n, dtype=bool), jnp.clip(1.0 - sim, 0.0, 2.0), jnp.where(both, 0.0, -jnp.inf))
    flat = jnp.argmax(dist)
    sets = jax.nn.one_hot(jnp.stack([flat // n, flat % n]), n, dtype=sim.dtype)  # [2, n]: the seeds
    hi = jax.lax.Precision.HIGHEST

    def sizes(w):  # ||sum_j w_kj u_j|| per centroid
        return jnp.sqrt(jnp.maximum(jnp.sum(w * jnp.dot(w, sim, precision=hi), axis=1), 0.0))

    def assign_to(w):
        size = sizes(w)
        scores = jnp.dot(sim, w.T, precision=hi) / jnp.where(size > 0, size, 1.0)[None, :]
        return jnp.argmax(scores, axis=1)

    def lloyd(_, w):
        member = (jax.nn.one_hot(assign_to(w), 2, dtype=sim.dtype) * finite[:, None]).T
        return jnp.where((sizes(member) > 0)[:, None], member, w)

    sets = jax.lax.fori_loop(0, num_iterations, lloyd, sets)
    return assign_to(sets), finite


def cluster_filter(num_iterations: int = 10) -> Aggregator:
    """Two clusters by cosine distance; keep the larger; weighted mean of its updates.

    The generic clustering defense: spherical 2-means (``two_means``: deterministic seeds at the
    two most distant updates, ``num_iterations`` Lloyd steps), keep the cluster with more
    clients (ties: more examples, then the first seed's cluster), and average it weighted by the
    example counts. When all updates point the same way both seeds coincide and every update
    lands in one cluster. Non-finite updates belong to no cluster (weight 0).

    Args:
      num_iterations: Lloyd iterations (an integer >= 1).

    References:
      The clustering-based filtering family (e.g. Nguyen et al., "FLAME: Taming Backdoors in
      Federated Learning", USENIX Security 2022); cosine bi-partitioning of updates is also
      used by Sattler, Mueller, Wiegand, Samek, "On the Byzantine Robustness of Clustered
      Federated Learning", ICASSP 2020 (with hierarchical, not 2-means, clustering).

    Examples:
      >>> fljax.aggregate(cluster_filter(), jnp.array([[1.0, 0.1], [1.0, 0.0], [-1.0, 0.0]]))
      Array([1.  , 0.05], dtype=float32)
    """
    _common.check_positive("cluster_filter", "num_iterations", num_iterations, integer=True)

    def aggregate(updates, context):
        assign, member = two_means(updates, num_iterations)
        in_first = (assign == 0) & member
        in_second = (assign == 1) & member
        counts = jnp.stack([jnp.sum(in_first), jnp.sum(in_second)])
        mass = jnp.stack(
            [jnp.sum(jnp.where(in_first, context.weights, 0.0)), jnp.sum(jnp.where(in_second, context.weights, 0.0))]
        )
        keep_second = (counts[1] > counts[0]) | ((counts[1] == counts[0]) & (mass[1] > mass[0]))
        kept = jnp.where(keep_second, in_second, in_first)
        weights = jnp.where(kept, context.weights, 0.0).astype(updates.dtype)
        return _common.weighted_average(updates, weights), _common.info(weights, cluster=assign)

    return _common.stateless(aggregate, count_weighted=True)
