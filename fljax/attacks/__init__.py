"""Poisoning attacks: data attacks (``DataAttack``) and model attacks (``ModelAttack``).

``DATA_ATTACKS`` and ``MODEL_ATTACKS`` hold them by the names that specs, the runner and the
sweep use (``fljax.registry``): each entry records its factory, a model attack's strength
parameter (what the deprecated ``--attack_scale`` sets), the local training of the attacks that
change how the malicious clients train, and whether the attack is targeted. ``stateless`` makes
a model attack without state from the rows it crafts.
"""

from fljax.attacks import threat
from fljax.attacks._common import replace_rows, stateless
from fljax.attacks.adaptive import AdaptiveState, adaptive, triggered_loss
from fljax.attacks.alter_min import alter_min, alter_min_training
from fljax.attacks.backdoor import backdoor, dba, feature_trigger
from fljax.attacks.data import label_flip, label_flip_all, targeted_label_flip
from fljax.attacks.edge_case import edge_case
from fljax.attacks.fang import fang_krum, fang_trim
from fljax.attacks.model import gaussian, no_attack, sign_flip
from fljax.attacks.optimal import LineSearchState, optimal_alie, optimal_ipm
from fljax.attacks.shejwalkar import min_max, min_sum
from fljax.attacks.targeted import (
    constrain_and_scale,
    constrain_and_scale_training,
    model_replacement,
    neurotoxin,
    neurotoxin_training,
    pgd,
    pgd_training,
)
from fljax.attacks.text import phrase_backdoor
from fljax.attacks.threat import scheduled
from fljax.attacks.untargeted import alie, inf, ipm, mimic, nan, zero
from fljax.registry import Registry

DATA_ATTACKS = Registry("data attack")
DATA_ATTACKS.register("label_flip", targeted_label_flip, targeted=True)
DATA_ATTACKS.register("label_flip_all", label_flip_all)
DATA_ATTACKS.register("backdoor", backdoor, targeted=True)
DATA_ATTACKS.register("dba", dba, targeted=True)
DATA_ATTACKS.register("feature_trigger", feature_trigger, targeted=True)
DATA_ATTACKS.register("phrase_backdoor", phrase_backdoor, targeted=True)
DATA_ATTACKS.register("edge_case", edge_case, targeted=True)

MODEL_ATTACKS = Registry("model attack")
MODEL_ATTACKS.register("none", no_attack)
MODEL_ATTACKS.register("sign_flip", sign_flip, strength="scale")
MODEL_ATTACKS.register("gaussian", gaussian, strength="std")
MODEL_ATTACKS.register("zero", zero)
MODEL_ATTACKS.register("nan", nan)
MODEL_ATTACKS.register("inf", inf)
MODEL_ATTACKS.register("ipm", ipm, strength="epsilon")
MODEL_ATTACKS.register("alie", alie)
MODEL_ATTACKS.register("optimal_ipm", optimal_ipm)
MODEL_ATTACKS.register("optimal_alie", optimal_alie)
MODEL_ATTACKS.register("mimic", mimic)
MODEL_ATTACKS.register("fang_krum", fang_krum)
MODEL_ATTACKS.register("fang_trim", fang_trim)
MODEL_ATTACKS.register("min_max", min_max)
MODEL_ATTACKS.register("min_sum", min_sum)
MODEL_ATTACKS.register("adaptive", adaptive)
MODEL_ATTACKS.register("model_replacement", model_replacement, targeted=True)
MODEL_ATTACKS.register(
    "constrain_and_scale", constrain_and_scale, local_training=constrain_and_scale_training, targeted=True
)
MODEL_ATTACKS.register("pgd", pgd, local_training=pgd_training, targeted=True)
MODEL_ATTACKS.register("neurotoxin", neurotoxin, local_training=neurotoxin_training, targeted=True)
MODEL_ATTACKS.register("alter_min", alter_min, local_training=alter_min_training, targeted=True)

__all__ = [
    "AdaptiveState",
    "DATA_ATTACKS",
    "LineSearchState",
    "phrase_backdoor",
    "MODEL_ATTACKS",
    "adaptive",
    "alie",
    "alter_min",
    "alter_min_training",
    "backdoor",
    "constrain_and_scale",
    "constrain_and_scale_training",
    "dba",
    "edge_case",
    "fang_krum",
    "fang_trim",
    "feature_trigger",
    "gaussian",
    "inf",
    "ipm",
    "label_flip",
    "label_flip_all",
    "mimic",
    "min_max",
    "min_sum",
    "model_replacement",
    "nan",
    "neurotoxin",
    "neurotoxin_training",
    "no_attack",
    "optimal_alie",
    "optimal_ipm",
    "pgd",
    "pgd_training",
    "replace_rows",
    "scheduled",
    "sign_flip",
    "stateless",
    "targeted_label_flip",
    "threat",
    "triggered_loss",
    "zero",
]
