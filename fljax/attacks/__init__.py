"""Poisoning attacks: data attacks (``DataAttack``) and model attacks (``ModelAttack``).

``DATA_ATTACKS`` and ``MODEL_ATTACKS`` map the runner's snake_case names to factories.
"""

from fljax.attacks.data import label_flip
from fljax.attacks.model import gaussian, no_attack, sign_flip

DATA_ATTACKS = {
    "label_flip": label_flip,
}
MODEL_ATTACKS = {
    "none": no_attack,
    "sign_flip": sign_flip,
    "gaussian": gaussian,
}

__all__ = ["DATA_ATTACKS", "MODEL_ATTACKS", "gaussian", "label_flip", "no_attack", "sign_flip"]

STRENGTH = {"sign_flip": "scale", "gaussian": "std"}
"""The parameter of each model attack that the runner's ``--attack_scale`` sets."""

DATA_ATTACKS["label_flip_all"] = lambda num_classes: label_flip(num_classes)

# Backdoors, targeted model poisoning and the adaptive attack (attacks part B).
from fljax.attacks.adaptive import adaptive, triggered_loss  # noqa: E402
from fljax.attacks.backdoor import backdoor, dba, feature_trigger  # noqa: E402
from fljax.attacks.targeted import (LOCAL_TRAINING, constrain_and_scale, constrain_and_scale_training,  # noqa: E402
                                    model_replacement, neurotoxin, neurotoxin_training, pgd, pgd_training)

DATA_ATTACKS.update(backdoor=backdoor, dba=dba, feature_trigger=feature_trigger)
MODEL_ATTACKS.update(model_replacement=model_replacement, constrain_and_scale=constrain_and_scale, pgd=pgd,
                     neurotoxin=neurotoxin, adaptive=adaptive)
__all__ += ["LOCAL_TRAINING", "adaptive", "backdoor", "constrain_and_scale", "constrain_and_scale_training", "dba",
            "feature_trigger", "model_replacement", "neurotoxin", "neurotoxin_training", "pgd", "pgd_training",
            "triggered_loss"]

# Untargeted model poisoning and the threat model (untargeted.py, fang.py, shejwalkar.py, threat.py).
from fljax.attacks import threat  # noqa: E402
from fljax.attacks.fang import fang_krum, fang_trim  # noqa: E402
from fljax.attacks.shejwalkar import min_max, min_sum  # noqa: E402
from fljax.attacks.threat import scheduled  # noqa: E402
from fljax.attacks.untargeted import alie, inf, ipm, mimic, nan, zero  # noqa: E402

MODEL_ATTACKS.update(zero=zero, nan=nan, inf=inf, ipm=ipm, alie=alie, mimic=mimic, fang_krum=fang_krum,
                     fang_trim=fang_trim, min_max=min_max, min_sum=min_sum)
STRENGTH["ipm"] = "epsilon"
__all__ += ["alie", "fang_krum", "fang_trim", "inf", "ipm", "mimic", "min_max", "min_sum", "nan", "scheduled",
            "threat", "zero"]
