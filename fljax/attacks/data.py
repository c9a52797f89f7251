"""Data-poisoning attacks: applied to a malicious client's training batches."""

from __future__ import annotations

import jax.numpy as jnp

from fljax.types import DataAttack


def _check_class(attack: str, name: str, value, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise ValueError(f"{attack}: {name} must be a class in 0..{num_classes - 1}, got {value!r}")
    return value


def label_flip(num_classes: int, source: int | None = None, target: int | None = None) -> DataAttack:
    """Label flipping: targeted ``source -> target``, or all-to-all ``y -> C - 1 - y``.

    Args:
      num_classes: C, the number of classes.
      source, target: the targeted flip; leave both ``None`` for the all-to-all flip.

    The targeted flip's success test is the share of source-class test examples classified as
    the target class.

    References:
      Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning
      Systems", ESORICS 2020.

    Examples:
      >>> attack = label_flip(num_classes=10, source=5, target=3)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"label_flip: num_classes must be an integer >= 2, got {num_classes!r}")
    if (source is None) != (target is None):
        raise ValueError("label_flip: give both source and target (targeted flip) or neither (all-to-all flip)")
    if source is None:
        return DataAttack(poison=lambda x, y, mask, key, attacker: (x, (num_classes - 1 - y).astype(y.dtype)))
    _check_class("label_flip", "source", source, num_classes)
    _check_class("label_flip", "target", target, num_classes)
    if source == target:
        raise ValueError(f"label_flip: source and target must differ, got {source} for both")

    def poison(x, y, mask, key, attacker):
        return x, jnp.where(y == source, target, y).astype(y.dtype)

    def targeted(x, y):
        return x, jnp.full_like(y, target), y == source

    return DataAttack(poison=poison, targeted=targeted)


def targeted_label_flip(num_classes: int, source: int = 5, target: int = 3) -> DataAttack:
    """``label_flip``'s targeted flip ``source -> target``, both always given (5 -> 3 unless
    set): the attack registered as ``label_flip``, fljax's default experiment.

    Examples:
      >>> attack = targeted_label_flip(num_classes=10, source=6, target=0)
    """
    return label_flip(num_classes, source, target)


def label_flip_all(num_classes: int) -> DataAttack:
    """``label_flip``'s all-to-all flip ``y -> C - 1 - y`` (Fang et al. 2020's label flipping
    attack), registered as ``label_flip_all``.

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020.
    """
    return label_flip(num_classes)
