"""Coordinate-wise robust statistics: median and trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import Optional

from fljax.aggregators import _common
from fljax.aggregators.order_statistics import trimmed_mean_and_kept_mass
from fljax.types import Aggregator


def _coordinatewise(rule: str, trim_of_n) -> Aggregator:
    def requirement(n: int) -> None:
        k = trim_of_n(n)
        _common.require(
            0 <= 2 * k < n,
            rule,
            f"needs n > 2 * trimmed values per side; got n={n} and trim k={k} (requires num_byzantine < n/2)",
        )

    def aggregate(updates, context):
        out, shares, kept = trimmed_mean_and_kept_mass(_common.sanitize(updates), trim_of_n(updates.shape[0]))
        return out, _common.info(shares, kept_share=kept)

    return _common.stateless(aggregate, requirement=requirement)


def median() -> Aggregator:
    """Coordinate-wise median: per coordinate, the median of the n clients' values.

    For even n the mean of the two middle values. NaN updates count as +inf, so up to
    ``ceil(n/2) - 1`` arbitrary (even non-finite) updates cannot move the output outside the
    range of the honest values. ``info["weights"][i]`` is the share of coordinates client i
    supplied; ``info["kept_share"][i]`` the share of its update (entries weighed by magnitude)
    in the kept values, which detection reads: client i is flagged when that share is below half
    the cohort's average. Needs no f: it tolerates any f < n/2.

    References:
      Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
      Statistical Rates", ICML 2018.

    Examples:
      >>> fljax.aggregate(median(), jnp.array([[1.0], [5.0], [100.0]]))
      Array([5.], dtype=float32)
    """
    return _coordinatewise("median", lambda n: (n - 1) // 2)


def trimmed_mean(num_byzantine: Optional[int] = None, beta: Optional[float] = None) -> Aggregator:
    """Coordinate-wise trimmed mean: drop the k largest and k smallest values, average the rest.

    Args:
      num_byzantine: k = f values trimmed at each end (Yin et al. use k = beta n >= f).
      beta: alternatively, the trimmed fraction per side, k = floor(beta * n); ``0 <= beta < 0.5``.

    Requires n > 2k. NaN updates count as +inf (trimmed as outliers). ``info`` as ``median``'s:
    a client is flagged when the share of its update in the kept values is below half the
    cohort's average (with k = 0 every value is kept and no one is flagged).

    References:
      Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
      Statistical Rates", ICML 2018.

    Examples:
      >>> fljax.aggregate(trimmed_mean(num_byzantine=1), jnp.array([[0.0], [1.0], [2.0], [9.0]]))  # mean of 1, 2
      Array([1.5], dtype=float32)
    """
    if (num_byzantine is None) == (beta is None):
        raise ValueError("trimmed_mean: give exactly one of num_byzantine (an int >= 0) or beta (in [0, 0.5))")
    if beta is not None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {beta!r}")
        return _coordinatewise("trimmed_mean", lambda n: int(beta * n))
    f = _common.check_num_byzantine("trimmed_mean", num_byzantine)
    return _coordinatewise("trimmed_mean", lambda n: f)
