"""LEAF's naturally federated datasets (FEMNIST by writer, Shakespeare by speaking role) read
from the JSON files LEAF's preprocessing writes.

A LEAF data directory (e.g. ``leaf/data/femnist/data`` after LEAF's ``preprocess.sh``) holds
``train/*.json`` and ``test/*.json``, each file::

    {"users": [u, ...], "num_samples": [n_u, ...], "user_data": {u: {"x": [...], "y": [...]}}}

The clients are the users (writers / speaking roles) of the training files, numbered in sorted
order of their names, so that the files' order and layout change nothing; the test files are
pooled into one held-out set. ``fljax.data.federate(..., "natural")`` turns them into clients.

References:
  Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018 (arXiv:1812.01097).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from fljax.data.datasets import Dataset

LEAF_DATASETS = ("femnist", "shakespeare")

FEMNIST_CLASSES = 62
"""Digits 0-9, upper-case letters 10-35, lower-case letters 36-61 (LEAF's ``relabel_class``)."""

SHAKESPEARE_CHARS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
"""LEAF's 80-character alphabet, in LEAF's order (``models/utils/language_utils.py``, ``ALL_LETTERS``)."""

PAD = 0
"""Token id reserved for padding (as FedJAX's ``PAD = 0``); LEAF's windows never contain it."""

OOV = len(SHAKESPEARE_CHARS) + 1
"""Token id of every character outside ``SHAKESPEARE_CHARS`` (as FedJAX's last id)."""

SHAKESPEARE_VOCAB = OOV + 1
"""82 token ids: PAD = 0, LEAF's characters 1..80 in LEAF's order, OOV = 81."""


def encode(texts) -> np.ndarray:
    """``int32 [n, L]`` token ids of ``n`` strings of one length ``L``: LEAF's character
    ``SHAKESPEARE_CHARS[i]`` is id ``i + 1``, any other character is ``OOV``.

    Examples:
      >>> encode(["To be"]).tolist()
      [[45, 68, 2, 55, 58]]
    """
    texts = np.asarray(list(texts), dtype=str)
    if texts.ndim != 1 or texts.size == 0:
        raise ValueError("encode: needs a non-empty list of strings")
    lengths = np.char.str_len(texts)
    if np.any(lengths != lengths[0]):
        raise ValueError(f"encode: all strings must have one length, got lengths {sorted(set(lengths.tolist()))[:5]}")
    codes = texts.view(np.uint32).reshape(len(texts), -1)[:, : lengths[0]]
    table = np.full(max(int(codes.max(initial=0)), 127) + 1, OOV, np.int32)
    table[[ord(c) for c in SHAKESPEARE_CHARS]] = np.arange(1, len(SHAKESPEARE_CHARS) + 1)
    return table[codes]


def decode(ids) -> str:
    """The text of a 1-D sequence of token ids (PAD as nothing, OOV as U+FFFD)."""
    chars = {i + 1: c for i, c in enumerate(SHAKESPEARE_CHARS)} | {PAD: "", OOV: "\ufffd"}
    return "".join(chars[int(i)] for i in np.asarray(ids).ravel())


def _read_split(directory: str, split: str, name: str) -> tuple[list[str], list[tuple[list, list]]]:
    """Users and their ``(x, y)`` lists from ``directory/split/*.json``, sorted by user name."""
    files = sorted(glob.glob(os.path.join(directory, split, "*.json")))
    if not files:
        raise FileNotFoundError(
            f"dataset: {name}: no LEAF JSON files in {os.path.join(directory, split)}; --data_dir must be "
            f"LEAF's data directory holding train/*.json and test/*.json (LEAF's preprocess.sh writes "
            f"them under leaf/data/{name}/data)"
        )
    users: dict[str, tuple[list, list]] = {}
    for path in files:
        with open(path) as f:
            content = json.load(f)
        if not isinstance(content, dict) or not {"users", "num_samples", "user_data"} <= content.keys():
            raise ValueError(
                f"dataset: {name}: {path} is not a LEAF file: it needs the keys users, num_samples and user_data"
            )
        if len(content["users"]) != len(content["num_samples"]):
            raise ValueError(
                f"dataset: {name}: {path} lists {len(content['users'])} users but "
                f"{len(content['num_samples'])} num_samples"
            )
        for user, n in zip(content["users"], content["num_samples"]):
            record = content["user_data"].get(user)
            if record is None or len(record.get("x", ())) != n or len(record.get("y", ())) != n:
                raise ValueError(
                    f"dataset: {name}: {path}: user {user!r} must have x and y of num_samples = {n} entries"
                )
            if user in users:
                raise ValueError(f"dataset: {name}: user {user!r} appears twice in {split}/ (again in {path})")
            users[user] = (record["x"], record["y"])
    names = sorted(users)
    return names, [users[u] for u in names]


def _pooled(records: list[tuple[list, list]], convert) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Converts each user's ``(x, y)`` and concatenates them; also returns each example's user."""
    parts = [convert(x, y) for x, y in records if len(y)]
    owner = np.concatenate([np.full(len(y), u, np.int32) for u, (_, y) in enumerate(records)] + [np.zeros(0, np.int32)])
    if not parts:
        raise ValueError("dataset: the LEAF files hold no examples")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), owner


def _femnist_arrays(x: list, y: list) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(x, np.float32)
    labels = np.asarray(y)
    if pixels.shape != (len(y), 784):
        raise ValueError(
            f"dataset: femnist: each x must be 784 pixel values (28x28), got an array of shape {pixels.shape}"
        )
    if not (np.all(np.isfinite(pixels)) and pixels.min() >= 0 and pixels.max() <= 1):
        raise ValueError("dataset: femnist: pixel values must be in [0, 1] as LEAF writes them")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= FEMNIST_CLASSES:
        raise ValueError(f"dataset: femnist: labels must be integers in 0..{FEMNIST_CLASSES - 1}")
    # LEAF stores grey levels / 255 of black-on-white scans; fljax's images have ink = 1 as in MNIST.
    return (1.0 - pixels).reshape(-1, 28, 28, 1), labels.astype(np.int32)


def _shakespeare_arrays(x: list, y: list) -> tuple[np.ndarray, np.ndarray]:
    if not all(isinstance(c, str) and len(c) == 1 for c in y):
        raise ValueError("dataset: shakespeare: each y must be the one next character")
    inputs = encode(x)
    return inputs, np.concatenate([inputs[:, 1:], encode(y)], axis=1)


def femnist(data_dir: str) -> Dataset:
    """FEMNIST from LEAF's JSON: 28x28x1 images in [0, 1] with ink = 1 (MNIST's convention;
    LEAF stores 1 minus that), 62 classes, one natural client per writer."""
    return _load("femnist", data_dir, _femnist_arrays, FEMNIST_CLASSES)


def shakespeare(data_dir: str) -> Dataset:
    """Shakespeare from LEAF's JSON, one natural client per speaking role.

    LEAF's example is an 80-character window ``x`` and the character after it ``y``; fljax
    makes it a language-modelling example as FedJAX does: ``x`` is the window's ``int32 [80]``
    token ids (see ``encode``: LEAF's alphabet, PAD = 0, OOV = 81, 82 ids) and the label is
    the shifted sequence ``int32 [80]``, the id of the character after each position (its last
    entry is LEAF's ``y``). A per-token loss thus trains on all 80 next characters; LEAF's own
    metric, the next character after the window, is the last position.
    """
    return _load("shakespeare", data_dir, _shakespeare_arrays, SHAKESPEARE_VOCAB)


def _load(name: str, data_dir: str | None, convert, num_classes: int) -> Dataset:
    if data_dir is None:
        raise ValueError(
            f"dataset: {name} is read from LEAF's JSON files: pass --data_dir (data_dir=) the LEAF data "
            f"directory holding train/ and test/ (e.g. leaf/data/{name}/data after LEAF's preprocess.sh)"
        )
    _, train = _read_split(data_dir, "train", name)
    _, test = _read_split(data_dir, "test", name)
    train = [(x, y) for x, y in train if len(y)]  # a user without training examples is no client
    x_train, y_train, clients = _pooled(train, convert)
    x_test, y_test, _ = _pooled(test, convert)
    return Dataset(x_train, y_train, x_test, y_test, num_classes, name, train_clients=clients)
