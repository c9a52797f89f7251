"""MoNNA (Farhadkhani et al., ICML 2023): the mean of the n - f updates nearest to the update of
a client the server trusts."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fljax.aggregators import _common
from fljax.aggregators.krum import krum_scores
from fljax.types import Aggregator


def monna(num_byzantine: int, pivot: int = 0) -> Aggregator:
    """MoNNA: average the ``n - f`` updates nearest (Euclidean) to the pivot's update ``x_p``,
    the pivot itself included: ``(1 / (n - f)) sum_{i in N_p} x_i``.

    The pivot is a client the server TRUSTS to be honest (in the paper, a peer-to-peer setting,
    each honest node is its own pivot); its guarantee holds only then.

    ``pivot`` is a POPULATION client id, matched against ``context.client_ids``, never a row
    position: the rows of a round are the cohort in random order, so "row 0" would trust a
    random client each round (an attacker with probability f/n). ByzFL's ``MoNNA(f, idx)``
    indexes the input list, where its benchmarks put the honest vectors first; in fljax's
    threat model (``fljax.make_round``) the MALICIOUS clients are ids ``0 .. num_malicious - 1``
    (ids are shuffled over the data, not over the roles), so the default ``pivot=0`` trusts an
    attacker whenever ``num_malicious >= 1``: give an honest id (e.g. ``pivot=num_malicious``)
    to study the rule as the paper intends, or keep 0 to study a compromised pivot.

    In a round whose cohort does not contain the pivot (partial participation) or whose pivot
    update is not finite, no trusted update exists: the rule then pivots on the most central
    row in MoNNA's own sense, the one whose ``n - f`` nearest updates (itself included) have the
    smallest summed squared distance to it (Krum's score with ``n - f - 1`` neighbours). This
    fallback is fljax's, not the paper's; ``info["pivot_present"]`` tells the rounds apart and
    ``info["pivot_row"]`` gives the row used.

    Ties in distance go to the lower row. ``info["weights"]`` is uniform over the ``n - f``
    averaged clients: the f farthest from the pivot are flagged.

    Args:
      num_byzantine: f; needs n > 2f.
      pivot: the trusted client's population id (an integer >= 0).

    References:
      Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with
      Linear Gradient Overhead", ICML 2023.

    Examples:
      >>> agg = monna(num_byzantine=2, pivot=7)  # client 7 is trusted
    """
    rule = "monna"
    f = _common.check_num_byzantine(rule, num_byzantine)
    if isinstance(pivot, bool) or not isinstance(pivot, int) or pivot < 0:
        raise ValueError(f"{rule}: pivot must be a population client id, an integer >= 0, got {pivot!r}")

    def requirement(n: int) -> None:
        _common.require(
            n > 2 * f,
            rule,
            f"needs n > 2f clients per round; got n={n}, num_byzantine f={f} (n must be >= {2 * f + 1})",
        )

    def aggregate(updates, context):
        n = updates.shape[0]
        k = n - f
        guide = jax.lax.stop_gradient(updates)
        finite = _common.finite_rows(guide)
        is_pivot = (context.client_ids == pivot) & finite
        present = jnp.any(is_pivot)

        def from_pivot():  # one pass over the rows: distances to x_p only
            p = jnp.argmax(is_pivot)
            diff = guide - guide[p]
            sq = jnp.sum(diff * diff, axis=1)
            return p, jnp.where(jnp.isnan(sq), jnp.inf, sq)

        def from_center():  # the whole [n, n] distance matrix
            sq = _common.pairwise_sq_distances(guide)
            p = jnp.argmin(krum_scores(sq, k - 1))
            return p, sq[p]

        p, sq = jax.lax.cond(present, from_pivot, from_center)
        sq = jnp.where(jnp.arange(n) == p, -1.0, sq)  # the pivot first, even among exact duplicates
        nearest = jnp.argsort(sq, stable=True)[:k]
        weights = jnp.zeros(n, updates.dtype).at[nearest].set(1.0)
        return _common.weighted_average(updates, weights), _common.info(weights, pivot_present=present, pivot_row=p)

    return _common.stateless(aggregate, requirement=requirement)
