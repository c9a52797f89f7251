"""Pre-aggregation: transforms of the cohort's updates ``[n, d] -> [n', d]`` applied before any
aggregation rule, composed in the spirit of ``optax.chain``.

A ``PreAggregator`` maps the updates (with their example counts and client ids) to new rows and
returns the ``[n', n]`` MIXING matrix ``M`` with ``rows' = M @ rows``. The combinator
``with_preaggregation(rule, pre_1, pre_2, ...)`` applies them in order, runs ``rule`` on the
result and maps the rule's weights back to the ORIGINAL clients, ``w = normalize(w' @ M)``, so
``info["weights"]`` stays per client. Requirements propagate: each pre-aggregator is checked
against the row count it receives and the rule against the final ``n'``.

    agg = with_preaggregation(krum(num_byzantine=2), bucketing(bucket_size=2), nnm(num_byzantine=2))
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.clipping import clip_rows
from fljax.registry import Registry
from fljax.types import Aggregator, Array

_HI = jax.lax.Precision.HIGHEST


class PreAggregator(NamedTuple):
    """A pure transform of the cohort applied before an aggregation rule.

    Attributes:
      apply: ``apply(updates [n, d], weights [n], client_ids [n], key) -> (updates' [n', d],
        weights' [n'], client_ids' [n'], mixing [n', n])`` with ``updates' = mixing @ updates``
        (non-finite inputs propagate as NaN rows to every row that mixes them).
      output_size: ``n -> n'`` (static).
      requirement: ``requirement(n)`` raises ``ValueError`` when it cannot work with n rows.
      name: shown in error messages.
    """

    apply: Callable[..., tuple[Array, Array, Array, Array]]
    output_size: Callable[[int], int] = lambda n: n
    requirement: Callable[[int], None] = lambda n: None
    name: str = "pre_aggregation"


def mix(mixing: Array, updates: Array) -> Array:
    """``mixing @ updates`` where a row that mixes a non-finite update (with a nonzero
    coefficient) becomes NaN instead of silently absorbing it or poisoning all rows."""
    finite = _common.finite_rows(updates)
    out = jnp.dot(mixing, jnp.where(finite[:, None], updates, 0.0), precision=_HI)
    tainted = jnp.dot(jnp.abs(mixing), (~finite).astype(updates.dtype), precision=_HI) > 0
    return jnp.where(tainted[:, None], jnp.nan, out)


def nnm(num_byzantine: int) -> PreAggregator:
    """Nearest-neighbour mixing: each ``x_i`` becomes the mean of its ``n - f`` nearest updates
    (Euclidean, itself included and always first), ``y_i = (1/(n-f)) sum_{j in N_i} x_j``.

    Needs n > 2f. Distances from ``_common.pairwise_sq_distances`` (non-finite updates are
    infinitely far from all, so they enter no finite row's neighbourhood while at most f exist).

    References:
      Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
      Optimal Byzantine ML under Heterogeneity", AISTATS 2023.

    Examples:
      >>> agg = with_preaggregation(fljax.aggregators.trimmed_mean(num_byzantine=2), nnm(num_byzantine=2))
    """
    f = _common.check_num_byzantine("nnm", num_byzantine)

    def requirement(n: int) -> None:
        _common.require(
            n > 2 * f, "nnm", f"needs n > 2f rows; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})"
        )

    def apply(updates, weights, client_ids, key):
        n = updates.shape[0]
        k = n - f
        sq = jax.lax.stop_gradient(_common.pairwise_sq_distances(updates))
        sq = jnp.where(jnp.eye(n, dtype=bool), -1.0, sq)  # itself first, even among exact duplicates
        nearest = jnp.argsort(sq, axis=1, stable=True)[:, :k]
        mixing = jnp.zeros((n, n), updates.dtype).at[jnp.arange(n)[:, None], nearest].set(1.0 / k)
        return mix(mixing, updates), weights, client_ids, mixing

    return PreAggregator(apply=apply, requirement=requirement, name=f"nnm(num_byzantine={f})")


def bucketing(bucket_size: int = 2) -> PreAggregator:
    """Bucketing: shuffle the updates (``context.key``) and average consecutive groups of s,
    giving ``n' = ceil(n / s)`` rows.

    ``y_b = mean of the updates in bucket b``; when s does not divide n the last bucket holds
    the remaining ``n mod s`` updates and averages over them (the authors' code; the paper's
    pseudo-code writes 1/s, which agrees when s divides n). The in-bucket mean is uniform as in
    the paper; a bucket's example count is the sum of its members', and its client id that of
    its first member (rules with per-client history then track buckets, not clients).

    Args:
      bucket_size: s >= 1 (s = 1 only shuffles).

    References:
      Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
      Bucketing", ICLR 2022.

    Examples:
      >>> agg = with_preaggregation(fljax.aggregators.krum(num_byzantine=1), bucketing(bucket_size=2))
    """
    s = _common.check_positive("bucketing", "bucket_size", bucket_size, integer=True)

    def output_size(n: int) -> int:
        return math.ceil(n / s)

    def apply(updates, weights, client_ids, key):
        n = updates.shape[0]
        buckets = jnp.arange(n) // s  # static bucket of each shuffled position
        sizes = jnp.minimum(s, n - buckets * s).astype(updates.dtype)
        perm = jax.random.permutation(key, n)
        member = jnp.zeros((output_size(n), n), updates.dtype).at[buckets, perm].set(1.0)
        mixing = member.at[buckets, perm].set(1.0 / sizes)
        return mix(mixing, updates), jnp.dot(member, weights, precision=_HI), client_ids[perm[::s]], mixing

    return PreAggregator(apply=apply, output_size=output_size, name=f"bucketing(bucket_size={s})")


def clip(max_norm: float) -> PreAggregator:
    """Per-client norm clipping ``x_i <- x_i / max(1, ||x_i|| / M)`` before the rule.

    Non-finite updates pass through unchanged, for the rule to treat as outliers (the
    ``norm_clipping`` aggregator instead gives them weight 0).

    References:
      Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019.

    Examples:
      >>> agg = with_preaggregation(fljax.aggregators.median(), clip(max_norm=1.0))
    """
    _common.check_positive("clip", "max_norm", max_norm)

    def apply(updates, weights, client_ids, key):
        clipped, factors, finite = clip_rows(updates, max_norm)
        out = jnp.where(finite[:, None], clipped, updates)
        mixing = jnp.diag(jnp.where(finite, jax.lax.stop_gradient(factors), 1.0))
        return out, weights, client_ids, mixing

    return PreAggregator(apply=apply, name=f"clip(max_norm={max_norm})")


def arc(num_byzantine: int) -> PreAggregator:
    """Adaptive robust clipping: the ``k = floor(2 f (n - f) / n)`` updates of largest norm are
    scaled down to the norm of the largest update that is not clipped; the others are unchanged.

    ``x_i <- x_i min(1, ||x_(k+1)|| / ||x_i||)`` with ``||x_(k+1)||`` the (k+1)-th largest norm,
    which is the same as clipping the k largest (ties at the threshold are left unchanged either
    way). k is computed in integers (ByzFL's ``int(2 * f / n * (n - f))`` rounds some exact
    integers down, e.g. 3 instead of 4 at n = 9, f = 3). Non-finite updates count as infinitely
    long (they take clipping slots) and pass through unchanged, for the rule to treat as
    outliers (as ``clip`` does); a finite update whose norm overflows float32 is scaled to zero.
    The mixing matrix is ``diag(factors)``, so a heavily clipped client shows as down-weighted
    in the rule's weights per client.

    Args:
      num_byzantine: f; needs n > 2f.

    References:
      Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The Vital Role of Gradient Clipping in
      Byzantine-Resilient Distributed Learning", arXiv:2405.14432, 2024.

    Examples:
      >>> agg = with_preaggregation(fljax.aggregators.krum(num_byzantine=2), arc(num_byzantine=2))
    """
    f = _common.check_num_byzantine("arc", num_byzantine)

    def requirement(n: int) -> None:
        _common.require(
            n > 2 * f, "arc", f"needs n > 2f rows; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})"
        )

    def apply(updates, weights, client_ids, key):
        n = updates.shape[0]
        k = 2 * f * (n - f) // n
        finite = _common.finite_rows(updates)
        norms = jax.lax.stop_gradient(_common.safe_norms(updates))
        threshold = jnp.sort(norms)[n - 1 - k]  # the (k + 1)-th largest norm
        clipped = finite & (norms > threshold)
        factors = jnp.where(clipped, threshold / jnp.where(clipped, norms, 1.0), 1.0).astype(updates.dtype)
        return jnp.where(clipped[:, None], updates * factors[:, None], updates), weights, client_ids, jnp.diag(factors)

    return PreAggregator(apply=apply, requirement=requirement, name=f"arc(num_byzantine={f})")


def with_preaggregation(aggregator: Aggregator, *preaggregators: PreAggregator) -> Aggregator:
    """``aggregator`` applied after ``preaggregators`` (in order); returns an ``Aggregator``.

    The rule sees the transformed rows with their example counts and ids; each pre-aggregator
    and the rule get their own key split from ``context.key``; the rule's state passes through.
    ``info["weights"]`` is per ORIGINAL client (``normalize(w' @ M)`` with ``M`` the product of
    the mixing matrices); ``info["inner_weights"]`` keeps the rule's weights per row. A rule's
    ``info["kept_share"]`` maps back as each client's average over the rows it enters, weighted
    by its coefficients (``(s' @ M) / (1 @ M)``), so detection reads it per client too; the
    result is ``count_weighted`` when the rule is.

    Examples:
      >>> agg = with_preaggregation(fljax.aggregators.krum(num_byzantine=2), bucketing(2), nnm(2))
      >>> agg.requirement(10)  # krum is checked against the 5 rows it receives
      Traceback (most recent call last):
      ...
      ValueError: krum: needs n > 2f + 2 clients per round; got n=5, num_byzantine f=2 ...
    """
    if not preaggregators:
        return aggregator
    names = " -> ".join(p.name for p in preaggregators)

    def requirement(n: int) -> None:
        sizes = [n]
        for p in preaggregators:
            p.requirement(sizes[-1])
            sizes.append(p.output_size(sizes[-1]))
        try:
            aggregator.requirement(sizes[-1])
        except ValueError as err:
            chain = " -> ".join(str(m) for m in sizes)
            raise ValueError(f"{err} [after pre-aggregation {names}: rows {chain}]") from None

    def update(updates, state, context):
        keys = jax.random.split(context.key, len(preaggregators) + 1)
        x, w, ids = updates, context.weights, context.client_ids
        total = jnp.eye(updates.shape[0], dtype=updates.dtype)
        for p, k in zip(preaggregators, keys[:-1]):
            x, w, ids, mixing = p.apply(x, w, ids, k)
            total = jnp.dot(jax.lax.stop_gradient(mixing), total, precision=_HI)
        inner = context._replace(weights=w, key=keys[-1], client_ids=ids)
        aggregate, state, info = aggregator.update(x, state, inner)
        weights = jnp.dot(info["weights"], total, precision=_HI)
        out = {**info, **_common.info(weights), "inner_weights": info["weights"]}
        if "kept_share" in info:
            presence = jnp.dot(jnp.ones_like(info["kept_share"]), total, precision=_HI)
            kept = jnp.dot(info["kept_share"], total, precision=_HI)
            out["kept_share"] = jnp.where(presence > 0, kept / jnp.where(presence > 0, presence, 1.0), 1.0)
        return aggregate, state, out

    return aggregator._replace(update=update, requirement=requirement)  # every other field (needs_reference, ...) kept


PREAGGREGATORS = Registry("pre-aggregation", {"nnm": nnm, "bucketing": bucketing, "clip": clip, "arc": arc})
"""The pre-aggregations by name: a spec chain puts them before the rule, applied in order
(``--aggregator='bucketing(bucket_size=2)+nnm+krum'``)."""
