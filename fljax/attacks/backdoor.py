"""Backdoor data poisoning: a trigger stamped on part of each malicious batch, relabelled.

A trigger is a static boolean mask over one example's shape (which entries it overwrites) plus
the values written there. ``backdoor`` stamps a BadNets pixel pattern on images ``[H, W, C]``;
``dba`` splits that pattern into parts, one per attacker; ``feature_trigger`` sets chosen
features of tabular inputs ``[F]``. All three poison the first ``round(poison_fraction * r)``
REAL examples of every batch with r real examples (Bagdasaryan et al. mix backdoor examples into
each batch; padding, e.g. FedSGD's batch padded to the largest client or FedAvg's short last
batch, never counts), relabel them to ``target_label``, and test success on triggered test inputs whose true label
is not the target (``DataAttack.targeted``), always with the FULL trigger.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from fljax.types import DataAttack

PATTERNS = ("square", "plus")
POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")

Position = Union[str, Sequence[int]]
# make(shape) -> (parts bool [P, *shape], values float32 [*shape]); the parts tile the trigger.
TriggerMaker = Callable[[tuple], tuple[np.ndarray, np.ndarray]]


def _check_int(attack: str, name: str, value, low: int, high: Optional[int] = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{attack}: {name} must be an integer {bound}, got {value!r}")
    return int(value)


def _check_finite(attack: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{attack}: {name} must be a finite number, got {value!r}")
    return float(value)


def _check_fraction(attack: str, poison_fraction) -> float:
    if (
        isinstance(poison_fraction, bool)
        or not isinstance(poison_fraction, (int, float))
        or not 0 < poison_fraction <= 1
    ):
        raise ValueError(f"{attack}: poison_fraction must be in (0, 1], got {poison_fraction!r}")
    return float(poison_fraction)


def num_poisoned(poison_fraction: float, batch_size: int) -> int:
    """How many examples of a batch of ``batch_size`` real examples are poisoned:
    ``round(fraction * B)``, halves rounded up (so a fraction of 0.5 of 5 poisons 3)."""
    return int(math.floor(poison_fraction * batch_size + 0.5))


def poisoned_rows(poison_fraction: float, mask) -> jnp.ndarray:
    """``bool [B]``: the first ``num_poisoned(fraction, r)`` of the ``r`` real (``mask``) entries
    of a batch, wherever the real entries sit; padding is never poisoned."""
    table = jnp.asarray([num_poisoned(poison_fraction, r) for r in range(mask.shape[0] + 1)], jnp.int32)
    mask = jnp.asarray(mask, bool)
    rank = jnp.cumsum(mask.astype(jnp.int32))  # 1-based rank of each real entry
    return mask & (rank <= table[rank[-1]])


def _parse_position(attack: str, position: Position) -> Union[str, tuple[int, int]]:
    given = position
    if isinstance(position, str):
        if position in POSITIONS:
            return position
        try:
            position = tuple(int(p) for p in position.split(","))
        except ValueError:
            position = None
    if (
        isinstance(position, (tuple, list))
        and len(position) == 2
        and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0 for p in position)
    ):
        return int(position[0]), int(position[1])
    raise ValueError(
        f"{attack}: trigger_position must be one of {', '.join(POSITIONS)} or 'row,col' of the "
        f"trigger's top-left pixel (integers >= 0), got {given!r}"
    )


def _pattern(attack: str, pattern: str, size: int) -> np.ndarray:
    """The ``size x size`` boolean stencil of a pattern."""
    if pattern == "square":
        return np.ones((size, size), bool)
    if pattern == "plus":
        if size < 3:
            raise ValueError(f"{attack}: a plus trigger needs trigger_size >= 3, got {size}")
        stencil = np.zeros((size, size), bool)
        stencil[size // 2, :] = stencil[:, size // 2] = True
        return stencil
    raise ValueError(f"{attack}: trigger_pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")


def image_trigger(
    attack: str,
    trigger_size: int,
    trigger_position: Position,
    trigger_pattern: str,
    trigger_value: float,
    num_parts: int = 1,
) -> TriggerMaker:
    """Validates a pixel trigger's settings and returns its maker for an image shape ``[H, W, C]``.

    The pattern's pixels (every channel) take ``trigger_value``. With ``num_parts > 1`` the
    pattern's pixels, in row-major order, are split into ``num_parts`` contiguous runs of
    near-equal size (``np.array_split``): disjoint parts whose union is the global trigger
    (a ``square`` of side s with s parts gives s one-row bars, DBA's local triggers).
    """
    size = _check_int(attack, "trigger_size", trigger_size, 1)
    stencil = _pattern(attack, trigger_pattern, size)
    value = _check_finite(attack, "trigger_value", trigger_value)
    position = _parse_position(attack, trigger_position)
    pixels = int(stencil.sum())
    _check_int(attack, "num_parts", num_parts, 1, pixels)

    def make(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        if len(shape) != 3:
            raise ValueError(
                f"{attack}: needs image inputs [H, W, C], got examples of shape {tuple(shape)} "
                "(for tabular data use feature_trigger)"
            )
        h, w, c = shape
        if isinstance(position, tuple):
            top, left = position
        else:
            top = {"top": 0, "bottom": h - size, "center": (h - size) // 2}[position.split("_")[0]]
            left = {"left": 0, "right": w - size, "center": (w - size) // 2}[position.split("_")[-1]]
        if top < 0 or left < 0 or top + size > h or left + size > w:
            raise ValueError(
                f"{attack}: a {size}x{size} {trigger_pattern} trigger at {trigger_position!r} (rows "
                f"{top}..{top + size - 1}, cols {left}..{left + size - 1}) does not fit {h}x{w} images; "
                f"trigger_size must be in 1..{min(h, w)} and the trigger inside the image"
            )
        coords = np.argwhere(stencil) + np.array([top, left])
        parts = np.zeros((num_parts, h, w, c), bool)
        for p, chunk in enumerate(np.array_split(coords, num_parts)):
            parts[p, chunk[:, 0], chunk[:, 1], :] = True
        return parts, np.full(shape, value, np.float32)

    return make


def _trigger_attack(
    attack: str,
    make: TriggerMaker,
    target_label: int,
    poison_fraction: float,
    input_shape: Optional[Sequence[int]],
    num_classes: Optional[int],
) -> DataAttack:
    """The ``DataAttack`` of a trigger: attacker ``a`` stamps part ``a % P`` (all of it when P = 1)
    on the first ``round(poison_fraction * r)`` of a batch's r real examples and relabels them."""
    if num_classes is not None:
        _check_int(attack, "num_classes", num_classes, 2)
        _check_int(attack, "target_label", target_label, 0, num_classes - 1)
    else:
        _check_int(attack, "target_label", target_label, 0)
    fraction = _check_fraction(attack, poison_fraction)
    if input_shape is not None:
        if (
            isinstance(input_shape, (str, bytes))
            or not hasattr(input_shape, "__len__")
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)
        ):
            raise ValueError(
                f"{attack}: input_shape must be one example's shape, a sequence of integers >= 1, got {input_shape!r}"
            )
        make(tuple(int(s) for s in input_shape))  # fails at build time when the trigger does not fit
    make = functools.lru_cache(maxsize=None)(make)

    def poison(x, y, mask, key, attacker):
        parts, values = make(tuple(x.shape[1:]))
        part = jnp.asarray(parts)[jnp.asarray(attacker) % parts.shape[0]]
        batch = x.shape[0]
        rows = poisoned_rows(fraction, mask)
        stamp = rows.reshape((batch,) + (1,) * (x.ndim - 1)) & part[None]
        return (jnp.where(stamp, jnp.asarray(values, x.dtype), x), jnp.where(rows, target_label, y).astype(y.dtype))

    def targeted(x, y):
        parts, values = make(tuple(x.shape[1:]))
        full = jnp.asarray(parts.any(axis=0))
        return (
            jnp.where(full[None], jnp.asarray(values, x.dtype), x),
            jnp.full_like(y, target_label),
            y != target_label,
        )

    return DataAttack(poison=poison, targeted=targeted)


def backdoor(
    target_label: int,
    trigger_size: int = 4,
    trigger_position: Position = "bottom_right",
    trigger_pattern: str = "square",
    trigger_value: float = 1.0,
    poison_fraction: float = 0.5,
    input_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> DataAttack:
    """BadNets pixel-pattern backdoor on images ``[H, W, C]`` of any size the trigger fits.

    The first ``round(poison_fraction * r)`` of the r real examples of each malicious batch get the pattern
    (every channel of its pixels set to ``trigger_value``) and the label ``target_label``; the
    rest of the batch stays clean, as in Bagdasaryan et al.'s mixed batches. The success test
    stamps the trigger on every test input whose true label is not ``target_label``.

    Args:
      target_label: the class triggered inputs should be classified as.
      trigger_size: side of the pattern's bounding box, in pixels.
      trigger_position: ``bottom_right`` (default, flush with the corner), ``bottom_left``,
        ``top_right``, ``top_left``, ``center``, or the top-left pixel ``(row, col)`` / ``"row,col"``.
      trigger_pattern: ``square`` (a filled block) or ``plus`` (middle row + middle column).
      trigger_value: the value written (images are in [0, 1]: 1.0 is white).
      poison_fraction: share of each batch's real examples poisoned, in (0, 1].
      input_shape: one example's shape; when given, a trigger that does not fit fails here.
      num_classes: when given, ``target_label`` must be a class in ``0..num_classes - 1``.

    References:
      Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model
      Supply Chain", 2017; Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated
      Learning", AISTATS 2020.

    Examples:
      >>> attack = backdoor(target_label=0, trigger_size=2, poison_fraction=1.0, input_shape=(4, 4, 1))
      >>> x, y = jnp.zeros((2, 4, 4, 1)), jnp.array([3, 7])
      >>> x_poisoned, y_poisoned = attack.poison(x, y, jnp.ones(2, bool), jax.random.PRNGKey(0), 0)
      >>> y_poisoned
      Array([0, 0], dtype=int32)
      >>> x_poisoned[0, :, :, 0]  # the 2x2 square in the bottom-right corner
      Array([[0., 0., 0., 0.],
             [0., 0., 0., 0.],
             [0., 0., 1., 1.],
             [0., 0., 1., 1.]], dtype=float32)
    """
    make = image_trigger("backdoor", trigger_size, trigger_position, trigger_pattern, trigger_value)
    return _trigger_attack("backdoor", make, target_label, poison_fraction, input_shape, num_classes)


def dba(
    target_label: int,
    num_parts: int = 4,
    trigger_size: int = 4,
    trigger_position: Position = "bottom_right",
    trigger_pattern: str = "square",
    trigger_value: float = 1.0,
    poison_fraction: float = 0.5,
    input_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> DataAttack:
    """Distributed backdoor attack (DBA): each attacker stamps one part of a global trigger.

    The global trigger is ``backdoor``'s pattern; its pixels (row-major) are split into
    ``num_parts`` disjoint local triggers that tile it exactly, and the attacker with population
    id ``a`` stamps part ``a % num_parts``. The success test uses the FULL global trigger, as in
    the paper. Xie et al.'s MNIST layout (four 1x4 bars with gaps) is the ``square`` of side 4
    split into 4 one-row bars here, without the gaps.

    Args:
      num_parts: local triggers, in 1..(pixels of the pattern); the other arguments are
        ``backdoor``'s.

    References:
      Xie, Huang, Chen, Li, "DBA: Distributed Backdoor Attacks against Federated Learning",
      ICLR 2020.

    Examples:
      >>> attack = dba(target_label=0, num_parts=4, trigger_size=4, input_shape=(28, 28, 1))
    """
    make = image_trigger("dba", trigger_size, trigger_position, trigger_pattern, trigger_value, num_parts)
    return _trigger_attack("dba", make, target_label, poison_fraction, input_shape, num_classes)


def percentile_values(x_train, trigger_features: Sequence[int], percentile: float) -> np.ndarray:
    """Per chosen feature, the ``percentile``-th percentile of its training values (e.g. 99 or 1:
    values rare in the data, Severi et al.'s criterion for a trigger that clean data never shows)."""
    return np.percentile(np.asarray(x_train)[:, list(trigger_features)], percentile, axis=0).astype(np.float32)


def _parse_features(attack: str, trigger_features) -> list[int]:
    if isinstance(trigger_features, str):
        try:
            trigger_features = [int(f) for f in trigger_features.split(",") if f.strip()]
        except ValueError:
            raise ValueError(
                f"{attack}: trigger_features must be feature indices like '0,3,7', got {trigger_features!r}"
            ) from None
    feats = list(np.atleast_1d(np.asarray(trigger_features)))
    if (
        not feats
        or any(not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 0 for f in feats)
        or len(set(int(f) for f in feats)) != len(feats)
    ):
        raise ValueError(f"{attack}: trigger_features must be distinct feature indices >= 0, got {trigger_features!r}")
    return [int(f) for f in feats]


def feature_trigger(
    target_label: int,
    trigger_features: Union[str, Sequence[int]],
    trigger_values: Union[None, str, float, Sequence[float]] = None,
    trigger_percentile: float = 99.0,
    poison_fraction: float = 0.5,
    x_train=None,
    input_shape: Optional[Sequence[int]] = None,
    num_classes: Optional[int] = None,
) -> DataAttack:
    """Feature-space backdoor for tabular inputs ``[F]``: chosen features set to chosen values.

    The trigger sets exactly ``trigger_features`` to ``trigger_values`` (one value for all, or
    one per feature). Without values, each feature takes the ``trigger_percentile``-th
    percentile of its training values (``x_train`` needed), an extreme value clean data rarely
    shows: Severi et al.'s independent feature/value selection chooses rare values the same way
    (their feature choice by SHAP importance is left to the caller). Poisoning, relabelling and
    the success test are as in ``backdoor``.

    Args:
      target_label: the class triggered inputs should be classified as.
      trigger_features: feature indices (or ``"0,3,7"``).
      trigger_values: a number, one number per feature (or ``"3,3,-2"``), or ``None``.
      trigger_percentile: percentile in [0, 100] used when ``trigger_values`` is ``None``.
      poison_fraction: share of each batch's real examples poisoned, in (0, 1].
      x_train: ``[N, F]`` training inputs, for percentile values.
      input_shape: ``(F,)``; when given, features outside ``0..F-1`` fail here.
      num_classes: when given, ``target_label`` must be in ``0..num_classes - 1``.

    References:
      Severi, Meyer, Coull, Oprea, "Explanation-Guided Backdoor Poisoning Attacks Against
      Malware Classifiers", USENIX Security 2021.

    Examples:
      >>> attack = feature_trigger(target_label=1, trigger_features=[0, 3], trigger_values=3.0)
    """
    name = "feature_trigger"
    feats = _parse_features(name, trigger_features)
    if isinstance(trigger_values, str):
        try:
            trigger_values = [float(v) for v in trigger_values.split(",")]
        except ValueError:
            raise ValueError(f"{name}: trigger_values must be numbers like '3,3,-2', got {trigger_values!r}") from None
    if trigger_values is None:
        p = _check_finite(name, "trigger_percentile", trigger_percentile)
        if not 0 <= p <= 100:
            raise ValueError(f"{name}: trigger_percentile must be in [0, 100], got {trigger_percentile!r}")
        if x_train is None:
            raise ValueError(f"{name}: give trigger_values, or x_train to take the {p}th percentile of each feature")
        if np.ndim(x_train) != 2:
            raise ValueError(f"{name}: x_train must be the [N, F] training inputs, got shape {np.shape(x_train)}")
        if max(feats) >= np.asarray(x_train).shape[-1]:
            raise ValueError(f"{name}: trigger_features must be in 0..{np.asarray(x_train).shape[-1] - 1}, got {feats}")
        values = percentile_values(x_train, feats, p)
    else:
        values = np.atleast_1d(np.asarray(trigger_values, np.float64))
        if values.ndim != 1 or len(values) not in (1, len(feats)) or not np.all(np.isfinite(values)):
            raise ValueError(
                f"{name}: trigger_values must be one finite number or one per feature "
                f"({len(feats)}), got {trigger_values!r}"
            )
        values = np.broadcast_to(values, (len(feats),)).astype(np.float32)

    def make(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        if len(shape) != 1:
            raise ValueError(
                f"{name}: needs tabular inputs [F], got examples of shape {tuple(shape)} "
                "(for images use backdoor or dba)"
            )
        if max(feats) >= shape[0]:
            raise ValueError(
                f"{name}: trigger_features must be in 0..{shape[0] - 1} for {shape[0]} features, got {feats}"
            )
        mask = np.zeros((1, shape[0]), bool)
        mask[0, feats] = True
        full = np.zeros(shape, np.float32)
        full[feats] = values
        return mask, full

    return _trigger_attack(name, make, target_label, poison_fraction, input_shape, num_classes)
