"""Untargeted model-poisoning attacks on the updates the malicious clients send."""

from __future__ import annotations

import jax

from fljax.attacks._common import check_number, stateless
from fljax.types import ModelAttack


def no_attack() -> ModelAttack:
    """Malicious clients send their honest update (the attack, if any, is in their data)."""
    return stateless(_as_trained)


def _as_trained(updates, malicious, key, context):
    return updates


def sign_flip(scale: float = 1.0) -> ModelAttack:
    """Each malicious client sends ``-scale`` times the update it computed honestly.

    References:
      Damaskinos et al., "Asynchronous Byzantine Machine Learning", ICML 2018; Allen-Zhu et
      al., "Byzantine-Resilient Non-Convex SGD", ICLR 2021 (sign flipping as a baseline).

    Examples:
      >>> fljax.apply_attack(sign_flip(scale=2.0), jnp.ones((3, 2)), jnp.array([True, False, False]))
      Array([[-2., -2.],
             [ 1.,  1.],
             [ 1.,  1.]], dtype=float32)
    """
    check_number("sign_flip", "scale", scale, positive=True)
    return stateless(lambda u, m, key, ctx: -scale * u)


def gaussian(std: float = 1.0) -> ModelAttack:
    """Each malicious client sends a vector drawn from ``N(0, std^2 I)``.

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020 (the "Gaussian attack" baseline).
    """
    check_number("gaussian", "std", std, positive=True)
    return stateless(lambda u, m, key, ctx: std * jax.random.normal(key, u.shape, u.dtype))
