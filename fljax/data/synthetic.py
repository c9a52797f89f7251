"""Synthetic stand-ins with a real dataset's shapes and classes, for benchmarks and CI.

``load("synthetic:cifar10")`` gives random 32x32x3 images in 10 classes, named
``synthetic:cifar10`` wherever results are reported. They are learnable, so that a loss falls:
an image is a mix of its class's fixed random prototype and uniform noise; a Shakespeare
sequence is a walk of a random Markov chain over LEAF's characters with three successors per
character. ``femnist`` and ``shakespeare`` stand-ins have natural clients of unequal sizes, so
``--partition=natural`` runs on them. Every draw comes from NumPy's generator seeded with the
bits of a ``jax.random`` key of ``seed`` and the name (NumPy: no compilation per shape).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from fljax.data import leaf
from fljax.data.datasets import Dataset


class Shape(NamedTuple):
    input_shape: tuple[int, ...]
    num_classes: int
    natural_clients: int = 0  # > 0: that many natural clients (writers, roles)


SYNTHETIC = {
    "mnist": Shape((28, 28, 1), 10),
    "fashion_mnist": Shape((28, 28, 1), 10),
    "emnist": Shape((28, 28, 1), 62),
    "cifar10": Shape((32, 32, 3), 10),
    "cifar100": Shape((32, 32, 3), 100),
    "femnist": Shape((28, 28, 1), leaf.FEMNIST_CLASSES, natural_clients=100),
    "shakespeare": Shape((80,), leaf.SHAKESPEARE_VOCAB, natural_clients=100),
}
"""The stand-ins: the real dataset's input shape and classes (Shakespeare: 80 tokens, 82 ids)."""

SUCCESSORS = 3
"""Characters that may follow each character in the synthetic Shakespeare chain."""


def _images(rng: np.random.Generator, sizes: tuple[int, int], shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images, each split with balanced classes, drawn around shared prototypes."""
    prototypes = rng.random((shape.num_classes,) + shape.input_shape, np.float32)
    labels = np.concatenate([rng.permutation(np.arange(n) % shape.num_classes) for n in sizes]).astype(np.int32)
    noise = rng.random((len(labels),) + shape.input_shape, np.float32)
    return 0.4 * prototypes[labels] + 0.6 * noise, labels


def _text(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token windows of a random chain over ids 1..80 (LEAF's characters) and the shifted windows."""
    chars = len(leaf.SHAKESPEARE_CHARS)
    successors = rng.integers(1, chars + 1, (chars + 1, SUCCESSORS))
    choice = rng.integers(0, SUCCESSORS, (n, length))
    walk = np.empty((n, length + 1), np.int32)
    walk[:, 0] = rng.integers(1, chars + 1, n)
    for t in range(length):
        walk[:, t + 1] = successors[walk[:, t], choice[:, t]]
    return walk[:, :-1], walk[:, 1:]


def synthetic(name: str, num_train: int = 6000, num_test: int = 1000, seed: int = 0) -> Dataset:
    """The stand-in for ``name`` (a key of ``SYNTHETIC``): ``num_train`` / ``num_test`` examples.

    Examples:
      >>> ds = synthetic("cifar10", num_train=100, num_test=20)
      >>> ds.x_train.shape, ds.num_classes, ds.name
      ((100, 32, 32, 3), 10, 'synthetic:cifar10')
    """
    if name not in SYNTHETIC:
        raise ValueError(
            f"dataset: unknown synthetic stand-in {name!r}; valid: {', '.join(f'synthetic:{n}' for n in SYNTHETIC)}"
        )
    shape = SYNTHETIC[name]
    if not (
        isinstance(num_train, int)
        and isinstance(num_test, int)
        and num_train >= max(1, shape.natural_clients)
        and num_test >= 1
    ):
        raise ValueError(
            f"synthetic: num_train must be an integer >= {max(1, shape.natural_clients)} and num_test >= 1, "
            f"got {num_train!r}, {num_test!r}"
        )
    key = jax.random.fold_in(jax.random.PRNGKey(seed), sorted(SYNTHETIC).index(name))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    if name == "shakespeare":  # one chain for train and test: the test set is learnable from the training set
        x, y = _text(rng, num_train + num_test, shape.input_shape[0])
    else:
        x, y = _images(rng, (num_train, num_test), shape)
    clients = None
    if shape.natural_clients:  # each natural client gets one example, the rest go by unequal Dirichlet shares
        weights = rng.dirichlet(np.ones(shape.natural_clients))
        rest = rng.choice(shape.natural_clients, num_train - shape.natural_clients, p=weights)
        clients = np.sort(np.concatenate([np.arange(shape.natural_clients), rest])).astype(np.int32)
    return Dataset(
        x[:num_train],
        y[:num_train],
        x[num_train:],
        y[num_train:],
        shape.num_classes,
        f"synthetic:{name}",
        train_clients=clients,
    )
