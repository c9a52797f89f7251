"""Robust aggregation rules, each a factory returning an ``fljax.Aggregator``.

``REGISTRY`` holds the rules by the names that specs, the runner and the sweep use
(``krum(num_byzantine=2)``), ``PREAGGREGATORS`` the pre-aggregations (``fljax.registry``).
``stateless`` makes a rule without state from its aggregation alone.
"""

from fljax.aggregators._common import stateless
from fljax.aggregators.afa import AFAState, afa
from fljax.aggregators.averaging import mean
from fljax.aggregators.bulyan import bulyan
from fljax.aggregators.clipping import CenteredClippingState, centered_clipping, norm_clipping, weak_dp
from fljax.aggregators.clustering import cluster_filter, flame
from fljax.aggregators.contra import ContraState, contra
from fljax.aggregators.coordinatewise import median, trimmed_mean
from fljax.aggregators.covariance_filter import caf
from fljax.aggregators.crfl import CRFLState, crfl
from fljax.aggregators.deepsight import deepsight
from fljax.aggregators.fldetector import FLDetectorState, fldetector
from fljax.aggregators.foolsgold import FoolsGoldState, foolsgold
from fljax.aggregators.geometric_median import geometric_median, rfa
from fljax.aggregators.indicative_features import AurorState, auror
from fljax.aggregators.krum import krum, multi_krum
from fljax.aggregators.layerwise import lasa
from fljax.aggregators.mean_around_median import meamed
from fljax.aggregators.preaggregation import (
    PREAGGREGATORS,
    PreAggregator,
    arc,
    bucketing,
    clip,
    nnm,
    with_preaggregation,
)
from fljax.aggregators.sign import rlr, signguard
from fljax.aggregators.spectral import dnc
from fljax.aggregators.subsets import mda, smea
from fljax.aggregators.trust import fltrust
from fljax.aggregators.trusted_pivot import monna
from fljax.registry import Registry

REGISTRY = Registry(
    "aggregator",
    {
        "mean": mean,
        "median": median,
        "trimmed_mean": trimmed_mean,
        "krum": krum,
        "multi_krum": multi_krum,
        "fltrust": fltrust,
        "foolsgold": foolsgold,
        "afa": afa,
        "contra": contra,
        "flame": flame,
        "cluster_filter": cluster_filter,
        "bulyan": bulyan,
        "geometric_median": geometric_median,
        "rfa": rfa,
        "norm_clipping": norm_clipping,
        "weak_dp": weak_dp,
        "centered_clipping": centered_clipping,
        "dnc": dnc,
        "signguard": signguard,
        "rlr": rlr,
        "mda": mda,
        "smea": smea,
        "caf": caf,
        "meamed": meamed,
        "monna": monna,
        "lasa": lasa,
        "auror": auror,
        "fldetector": fldetector,
        "deepsight": deepsight,
        "crfl": crfl,
    },
)

__all__ = [
    "AFAState",
    "CenteredClippingState",
    "ContraState",
    "FoolsGoldState",
    "PREAGGREGATORS",
    "PreAggregator",
    "REGISTRY",
    "afa",
    "bucketing",
    "bulyan",
    "centered_clipping",
    "clip",
    "cluster_filter",
    "contra",
    "dnc",
    "flame",
    "fltrust",
    "foolsgold",
    "geometric_median",
    "krum",
    "mean",
    "median",
    "multi_krum",
    "nnm",
    "norm_clipping",
    "rfa",
    "rlr",
    "signguard",
    "stateless",
    "trimmed_mean",
    "weak_dp",
    "with_preaggregation",
    "AurorState",
    "arc",
    "auror",
    "caf",
    "lasa",
    "mda",
    "meamed",
    "monna",
    "smea",
    "CRFLState",
    "FLDetectorState",
    "crfl",
    "deepsight",
    "fldetector",
]
