"""The IDX reader on files written here byte by byte, and Fashion-MNIST from IDX files
(a --data_dir, Debian's package), TFDS or a one-line error naming both routes."""

import gzip
import os
import struct
import time

import numpy as np
import pytest

from fljax import data
from fljax.data import datasets

CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding, written independently of the reader: magic, big-endian dims, big-endian data."""
    header = struct.pack(">HBB", 0, CODES[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, array, compress=False):
    raw = idx_bytes(array)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return str(path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-300, 2, 1000], np.int16),  # > 1 byte: catches a wrong byte order
        np.array([[0.5, -1.25e3]], np.float32),
    ],
)
def test_read_idx_round_trips(tmp_path, array, compress):
    out = data.read_idx(write(tmp_path / "a", array, compress))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_read_idx_refuses_wrong_magic_truncation_and_extra_bytes(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    cases = {
        "magic": (b"\x01\x00" + good[2:], "not an IDX file: magic number 0100"),
        "type": (good[:2] + b"\x07" + good[3:], "not an IDX file"),
        "empty": (b"", r"not an IDX file: magic number \(empty\)"),
        "header": (good[:6], "truncated: its header needs 12 bytes, the file has 6"),
        "data": (good[:-1], r"truncated: shape \(3, 4\) of uint8 needs 12 bytes of data, found 11"),
        "long": (good + b"\x00", "longer than its header says"),
        "gzip": (gzip.compress(good)[:-9], "truncated or corrupt gzip"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=message):
            data.read_idx(str(path))


def write_fashion_dir(directory, n_train=5, n_test=3, gz=(True, False, True, False)):
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    ]
    os.makedirs(directory, exist_ok=True)
    for stem, array, compress in zip(datasets.IDX_FILES, arrays, gz):
        write(os.path.join(directory, stem + (".gz" if compress else "")), array, compress)
    return arrays


def test_fashion_mnist_from_a_data_dir_of_idx_files(tmp_path):
    x_train, y_train, x_test, y_test = write_fashion_dir(tmp_path)  # plain and gzipped files mixed
    ds = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train, x_train[..., None] / 255.0)  # [0, 1], one channel, the files' order
    np.testing.assert_allclose(ds.x_test, x_test[..., None] / 255.0)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.y_train.dtype == np.int32


def test_idx_dir_missing_a_file_or_inconsistent_is_refused(tmp_path):
    write_fashion_dir(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="lacks the IDX file.*t10k-labels-idx1-ubyte"):
        data.load("fashion_mnist", data_dir=str(tmp_path))
    write(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))  # 3 test images, 2 labels
    with pytest.raises(ValueError, match="t10k IDX files .* must hold uint8 images"):
        data.load("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_nowhere_fails_fast_naming_apt_and_tfds(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", str(tmp_path / "no_debian_package"))
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        data.load("fashion_mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "tfds.data_source('fashion_mnist')" in message
    assert "\n" not in message and time.perf_counter() - start < 20


def test_debian_files_are_preferred_to_tfds(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _, y_train, _, _ = write_fashion_dir(debian, n_train=4)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", str(debian))
    ds = data.load("fashion_mnist", data_dir=str(tmp_path / "empty_tfds_dir"))
    np.testing.assert_array_equal(ds.y_train, y_train)


REAL = datasets.DEBIAN_FASHION_MNIST


@pytest.mark.skipif(
    not all(datasets._idx_paths(REAL)) if os.path.isdir(REAL) else True,
    reason=f"Fashion-MNIST IDX files absent from {REAL}: apt-get install dataset-fashion-mnist",
)
def test_real_fashion_mnist_from_the_debian_package():
    ds = data.load("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    # the published pixel statistics of the training set (Xiao et al. 2017's repository): mean 0.2860, std 0.3530
    assert abs(ds.x_train.mean() - 0.2860) < 5e-4 and abs(ds.x_train.std() - 0.3530) < 5e-4
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
