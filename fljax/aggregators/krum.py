"""The Krum family: select updates close to their neighbours (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.types import Aggregator, Array


def krum_scores(sq_dist: Array, num_neighbours: int) -> Array:
    """Krum score of each row: the sum of its ``num_neighbours`` smallest squared distances to
    the other rows (``sq_dist`` is ``[n, n]`` with zeros on the diagonal)."""
    n = sq_dist.shape[0]
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, sq_dist)
    nearest = jnp.sort(others, axis=1)[:, :num_neighbours]
    return jnp.sum(nearest, axis=1)


def _check_krum(rule: str, n: int, f: int) -> None:
    _common.require(
        n > 2 * f + 2,
        rule,
        f"needs n > 2f + 2 clients per round; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 3})",
    )


def multi_krum(num_byzantine: int, num_selected: Optional[int] = None, distance_power: float = 2.0) -> Aggregator:
    """Multi-Krum: the average of the ``m`` updates with the lowest Krum scores.

    The score of update i is the sum of SQUARED Euclidean distances to its ``n - f - 2``
    nearest other updates, as in the paper (ByzFL uses ``n - f - 1`` neighbours, FLPoison
    unsquared distances; both differ from the paper). Distances come from one fp32 Gram
    matmul (``_common.pairwise_sq_distances``); a non-finite update is infinitely far from all.

    Args:
      num_byzantine: f, the number of Byzantine clients tolerated; needs n > 2f + 2.
      num_selected: m, how many lowest-score updates to average (default ``n - f``); m = 1 is Krum.
      distance_power: p, the score sums ``||x_i - x_j||^p`` over the same nearest neighbours:
        2 is the paper's; 4 is what Karimireddy et al.'s code computes (ICLR 2022; it squares
        the squared distances), which weighs far neighbours more, so that copies of one update
        (mimic) gain less from their zero distances; 1 is FLPoison's.

    References:
      Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
      Tolerant Gradient Descent", NeurIPS 2017.

    Examples:
      >>> agg = multi_krum(num_byzantine=1, num_selected=2)
    """
    rule = "krum" if num_selected == 1 else "multi_krum"
    f = _common.check_num_byzantine(rule, num_byzantine)
    if num_selected is not None:
        _common.check_positive(rule, "num_selected", num_selected, integer=True)
    _common.check_positive(rule, "distance_power", distance_power)
    if not math.isfinite(distance_power):
        raise ValueError(f"{rule}: distance_power must be a finite number > 0, got {distance_power!r}")

    def m_of(n: int) -> int:
        return n - f if num_selected is None else num_selected

    def requirement(n: int) -> None:
        _check_krum(rule, n, f)
        _common.require(m_of(n) <= n, rule, f"num_selected must be in 1..n={n}, got {m_of(n)}")

    def aggregate(updates, context):
        n = updates.shape[0]
        sq_dist = _common.pairwise_sq_distances(updates)
        scores = krum_scores(sq_dist if distance_power == 2 else sq_dist ** (distance_power / 2), n - f - 2)
        m = m_of(n)
        chosen = jnp.argsort(scores, stable=True)[:m]
        weights = jnp.zeros(n, updates.dtype).at[chosen].set(1.0)
        # Gathering the m chosen rows copies them; a weighted matrix-vector product reads all n.
        aggregate = jnp.mean(updates[chosen], axis=0) if 2 * m < n else _common.weighted_average(updates, weights)
        return aggregate, _common.info(weights, scores=scores)

    return _common.stateless(aggregate, requirement=requirement)


def krum(num_byzantine: int, distance_power: float = 2.0) -> Aggregator:
    """Krum: the single update whose summed squared distance to its ``n - f - 2`` nearest
    neighbours is smallest. Needs n > 2f + 2. ``distance_power``: as in ``multi_krum`` (2: the
    paper; 4: Karimireddy et al.'s code).

    References:
      Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
      Tolerant Gradient Descent", NeurIPS 2017.

    Examples:
      >>> updates = jnp.array([[0.0], [0.1], [0.15], [0.3], [9.0]])
      >>> fljax.aggregate(krum(num_byzantine=1), updates)  # scores .0325, .0125, .025, .0625, 154
      Array([0.1], dtype=float32)
    """
    return multi_krum(num_byzantine, num_selected=1, distance_power=distance_power)
