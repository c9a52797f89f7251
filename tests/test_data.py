"""Embedded datasets, TFDS by name (mock data, offline failure), synthetic stand-ins, and the
four label partitions. IDX files / Fashion-MNIST: test_data_idx.py; LEAF: test_data_leaf.py."""

import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fljax import data

KEY = jax.random.PRNGKey(0)
LABELS = np.repeat(np.arange(10), 60)  # sorted, like the embedded files


def members(indices, counts):
    return [indices[c, : counts[c]] for c in range(len(counts))]


@pytest.mark.parametrize(
    "method,kw",
    [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("shards", {"shards_per_client": 3}), ("bias", {"p": 0.7})],
)
def test_every_example_goes_to_exactly_one_client(method, kw):
    idx, counts = data.partition(KEY, LABELS, 20, method, num_classes=10, **kw)
    allocated = np.concatenate(members(idx, counts))
    np.testing.assert_array_equal(np.sort(allocated), np.arange(len(LABELS)))
    again = data.partition(KEY, LABELS, 20, method, num_classes=10, **kw)
    np.testing.assert_array_equal(again[0], idx)  # deterministic in the key


def test_iid_counts_are_balanced_and_padding_is_beyond_counts():
    idx, counts = data.partition(KEY, np.arange(603) % 10, 10, "iid")
    assert counts.min() == 60 and counts.max() == 61 and idx.shape == (10, 61)


def test_shards_give_each_client_few_classes():
    idx, counts = data.partition(KEY, LABELS, 20, "shards", shards_per_client=2)
    assert max(len(np.unique(LABELS[m])) for m in members(idx, counts)) <= 3


def test_dirichlet_small_alpha_is_more_skewed_than_large():
    def skew(alpha):
        idx, counts = data.partition(KEY, LABELS, 10, "dirichlet", num_classes=10, alpha=alpha)
        return np.mean(
            [np.bincount(LABELS[m], minlength=10).max() / max(len(m), 1) for m in members(idx, counts) if len(m)]
        )

    assert skew(0.1) > skew(100.0) + 0.2


def test_bias_p_sends_a_share_p_of_each_label_to_its_group():
    labels = np.repeat(np.arange(10), 2000)
    idx, counts = data.partition(KEY, labels, 20, "bias", num_classes=10, p=0.6)
    # 20 clients in 10 groups of 2, in random id order: a client's group is the label it holds most of
    group_of_client = np.array([np.bincount(labels[m], minlength=10).argmax() for m in members(idx, counts)])
    assert np.array_equal(np.bincount(group_of_client, minlength=10), np.full(10, 2))
    in_own = sum(np.sum(labels[m] == group_of_client[c]) for c, m in enumerate(members(idx, counts)))
    assert abs(in_own / len(labels) - 0.6) < 0.02
    # the rest is spread uniformly over the 9 other groups
    off = np.zeros(10)
    for c, m in enumerate(members(idx, counts)):
        off[group_of_client[c]] += np.sum((labels[m] == 0) & (group_of_client[c] != 0))
    assert off[0] == 0 and np.all(np.abs(off[1:] / 2000 - 0.4 / 9) < 0.015)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"method": "dirichlet", "alpha": 0.0}, "dirichlet_alpha must be > 0"),
        ({"method": "bias", "p": 1.5}, r"bias must be in \[0, 1\]"),
        ({"method": "nope"}, "valid: iid, dirichlet, shards, bias"),
    ],
)
def test_partition_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        data.partition(KEY, LABELS, 10, **kw)


def test_mnist5k_is_real_shuffled_and_deterministic():
    ds = data.load("mnist5k")
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1 and ds.num_classes == 10
    assert len(np.unique(ds.y_test[:50])) > 5  # not sorted by label any more
    assert np.all(np.bincount(np.concatenate([ds.y_train, ds.y_test])) == 500)
    np.testing.assert_array_equal(data.load("mnist5k").y_train, ds.y_train)


def test_digits_and_breast_cancer():
    d = data.load("digits")
    assert d.x_train.shape[1:] == (8, 8, 1) and d.num_classes == 10
    b = data.load("breast_cancer")
    assert b.x_train.shape[1] == 30 and b.num_classes == 2
    np.testing.assert_allclose(b.x_train.mean(0), 0, atol=1e-4)


def test_digits_and_breast_cancer_are_scikit_learns_tables_read_without_importing_it():
    """The same examples and labels as ``sklearn.datasets.load_*``, shuffled and split alike;
    loading them does not import scikit-learn (1.4 s of a process's start)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    for name, loader, scale in (("digits", "load_digits", 16.0), ("breast_cancer", "load_breast_cancer", None)):
        ref = getattr(sklearn_datasets, loader)()
        ds = data.load(name)
        x = np.concatenate([ds.x_train, ds.x_test]).reshape(len(ref.target), -1)
        y = np.concatenate([ds.y_train, ds.y_test])
        order = np.asarray(jax.random.permutation(jax.random.PRNGKey(0), len(ref.target)))
        n_test = len(ds.y_test)
        order = np.concatenate([order[n_test:], order[:n_test]])  # train first, as concatenated above
        np.testing.assert_array_equal(y, ref.target[order])
        if scale:
            np.testing.assert_array_equal(x, ref.data[order].astype(np.float32) / scale)
        else:  # standardized with the training split's statistics
            raw = ref.data[order].astype(np.float32)
            mu, sd = raw[: len(ds.y_train)].mean(0), raw[: len(ds.y_train)].std(0) + 1e-6
            np.testing.assert_allclose(x, (raw - mu) / sd, rtol=1e-5, atol=1e-5)
    code = "import sys; from fljax import data; data.load('digits'); data.load('breast_cancer'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(
        ValueError,
        match="valid: mnist5k, digits, breast_cancer, fashion_mnist, mnist, cifar10, cifar100, "
        "emnist, femnist, shakespeare, synthetic:<mnist|.*|shakespeare> or tfds:<name>",
    ):
        data.load("mnist6k")
    for bad in ("synthetic:mnist5k", "synthetic:", "tfds:"):
        with pytest.raises(ValueError, match="unknown dataset"):
            data.load(bad)


def test_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = data.load("tfds:mnist")
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1
    assert ds.num_classes == 10 and ds.y_train.dtype == np.int32


def test_tfds_offline_fails_fast_with_instructions(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="never downloads while loading.*--dataset=mnist5k"):
        data.load("tfds:mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 20
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        data.load("tfds:no_such_dataset_xyz")


def test_federate_builds_index_rows():
    ds = data.load("digits")
    fed = data.federate(ds, 7, "iid", key=KEY)
    assert fed.num_clients == 7 and int(fed.client_counts.sum()) == len(ds.y_train)


def test_federate_honest_deals_all_data_to_the_honest_clients_and_iid_samples_to_the_malicious():
    ds = data.load("digits")
    n, labels = len(ds.y_train), np.asarray(ds.y_train)
    fed = data.federate_honest(ds, 12, 2, "shards", key=KEY, shards_per_client=1)
    rows = members(np.asarray(fed.client_indices), np.asarray(fed.client_counts))
    assert len(rows) == 12
    # The label-sorted shards go to the 10 honest clients (ids 2..11): every example exactly once,
    # so no label is lost to the attackers; each honest client holds a few neighbouring labels.
    np.testing.assert_array_equal(np.sort(np.concatenate(rows[2:])), np.arange(n))
    assert all(len(np.unique(labels[r])) <= 3 for r in rows[2:])
    # Each malicious client (ids 0, 1) holds an IID sample of an honest client's size: distinct
    # examples of (nearly) every label, not one shard's one or two.
    for r in rows[:2]:
        assert len(r) in (n // 10, n // 10 + 1) and len(np.unique(r)) == len(r)
        assert len(np.unique(labels[r])) >= 9
    assert not np.array_equal(rows[0], rows[1])
    again = data.federate_honest(ds, 12, 2, "shards", key=KEY, shards_per_client=1)
    np.testing.assert_array_equal(np.asarray(again.client_indices), np.asarray(fed.client_indices))
    # More attackers than honest clients: malicious client j holds honest shard j mod H's IID sample.
    many = data.federate_honest(ds, 12, 8, "iid", key=KEY)
    many_rows = members(np.asarray(many.client_indices), np.asarray(many.client_counts))
    np.testing.assert_array_equal(many_rows[0], many_rows[4])
    assert not np.array_equal(many_rows[0], many_rows[1])
    # No attacker: the partition of the honest clients alone.
    none = data.federate_honest(ds, 12, 0, "shards", key=KEY, shards_per_client=1)
    np.testing.assert_array_equal(
        np.asarray(none.client_indices),
        np.asarray(data.federate(ds, 12, "shards", key=jax.random.split(KEY)[0], shards_per_client=1).client_indices),
    )
    with pytest.raises(ValueError, match=r"malicious_data: iid needs num_malicious in 0..num_clients-1=11 .*got 12"):
        data.federate_honest(ds, 12, 12, "iid", key=KEY)
    with pytest.raises(ValueError, match="malicious_data: iid needs a partition of the data, not natural clients"):
        data.federate_honest(ds, 12, 2, "natural", key=KEY)


def test_runner_malicious_data_iid_builds_that_split_and_is_recorded_only_when_set():
    from experiments.run import describe
    from fljax.experiment import ExperimentConfig, build, config_dict, validate

    config = ExperimentConfig(
        dataset="digits", partition="shards", shards_per_client=1, num_clients=12, clients_per_round=12,
        num_malicious=2, malicious_data="iid",
    )  # fmt: skip
    exp = build(config)
    rows = members(np.asarray(exp.data.client_indices), np.asarray(exp.data.client_counts))
    np.testing.assert_array_equal(np.sort(np.concatenate(rows[2:])), np.arange(len(exp.data.y)))
    assert "malicious_data" not in config_dict(ExperimentConfig())  # earlier cells keep their keys
    assert config_dict(config)["malicious_data"] == "iid"
    assert "of the honest clients; malicious clients: IID samples" in str(describe(config))
    with pytest.raises(ValueError, match="--malicious_data must be one of share, iid, got 'honest'"):
        validate(ExperimentConfig(malicious_data="honest"))
    with pytest.raises(ValueError, match="--malicious_data=iid needs a partition .*got --partition=natural"):
        validate(ExperimentConfig(dataset="synthetic:femnist", partition="natural", malicious_data="iid"))
    with pytest.raises(ValueError, match=r"--malicious_data=iid needs an honest client .*0..num_clients-1=9, got 10"):
        validate(ExperimentConfig(num_clients=10, clients_per_round=10, num_malicious=10, malicious_data="iid"))


# name -> (input shape, classes) of the real datasets (TFDS's catalog), by bare name
TFDS_SHAPES = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "emnist": ((28, 28, 1), 62),
    "fashion_mnist": ((28, 28, 1), 10),
}


@pytest.mark.parametrize("name", sorted(TFDS_SHAPES))
def test_tfds_by_bare_name_with_mock_data(name, monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from fljax.data import datasets

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", str(tmp_path))  # fashion_mnist: the TFDS route
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load(name)
        raw = tfds.data_source(name, split="train", download=False)
        images = np.stack([np.asarray(raw[i]["image"]) for i in range(6)])
        labels = np.array([raw[i]["label"] for i in range(6)])
    shape, classes = TFDS_SHAPES[name]
    assert ds.name == name and ds.x_train.shape == (6,) + shape and ds.x_test.shape == (6,) + shape
    assert ds.num_classes == classes and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    upright = images.swapaxes(1, 2) if name == "emnist" else images  # TFDS's EMNIST is stored transposed
    np.testing.assert_array_equal(ds.x_train, upright.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(ds.y_train, labels)


def test_tfds_bare_name_offline_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="dataset: cifar100 is not prepared in .*never downloads while loading"):
        data.load("cifar100", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("name", sorted(data.SYNTHETIC))
def test_synthetic_stand_ins_have_the_real_shapes(name):
    small = lambda seed: data.synthetic(name, num_train=200, num_test=10, seed=seed)
    ds, shape = small(1), data.SYNTHETIC[name]
    real = {"mnist": ((28, 28, 1), 10), "femnist": ((28, 28, 1), 62), "shakespeare": ((80,), 82), **TFDS_SHAPES}
    assert (shape.input_shape, shape.num_classes) == real[name]
    assert ds.name == f"synthetic:{name}" and ds.num_classes == shape.num_classes
    assert ds.x_train.shape == (200,) + shape.input_shape and ds.x_test.shape == (10,) + shape.input_shape
    assert (ds.train_clients is not None) == (name in ("femnist", "shakespeare"))
    np.testing.assert_array_equal(small(1).x_train, ds.x_train)  # deterministic in the seed
    assert not np.array_equal(small(2).x_train, ds.x_train)


def test_load_synthetic_by_name():
    ds = data.load("synthetic:fashion_mnist", seed=4)
    assert (
        ds.name == "synthetic:fashion_mnist"
        and ds.x_train.shape == (6000, 28, 28, 1)
        and ds.x_test.shape == (1000, 28, 28, 1)
    )
    np.testing.assert_array_equal(ds.y_test, data.synthetic("fashion_mnist", seed=4).y_test)


def test_synthetic_images_are_learnable_and_balanced():
    ds = data.synthetic("cifar100", num_train=1000, num_test=200)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1 and np.all(np.bincount(ds.y_train, minlength=100) == 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=100), np.full(100, 2))
    means = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(100)]).reshape(100, -1)
    distances = ((ds.x_test.reshape(200, 1, -1) - means[None]) ** 2).sum(-1)
    assert np.mean(distances.argmin(1) == ds.y_test) > 0.9  # nearest class mean


def test_synthetic_shakespeare_is_a_learnable_chain_with_natural_clients():
    ds = data.load("synthetic:shakespeare")
    np.testing.assert_array_equal(ds.y_train[:, :-1], ds.x_train[:, 1:])  # shifted-sequence targets
    assert ds.x_train.min() >= 1 and ds.x_train.max() <= 80  # LEAF's characters: no PAD, no OOV
    seen = {}
    for a, b in zip(ds.x_train.ravel(), ds.y_train.ravel()):
        seen.setdefault(int(a), set()).add(int(b))
    assert max(len(s) for s in seen.values()) <= 3  # at most 3 successors: the next token is predictable
    assert all(int(b) in seen[int(a)] for a, b in zip(ds.x_test.ravel(), ds.y_test.ravel()))
    counts = np.bincount(ds.train_clients)
    assert len(counts) == 100 and counts.min() >= 1 and counts.max() > 3 * counts.min()  # unequal roles
    fed = data.federate(ds, 100, "natural", key=KEY)
    assert sorted(np.asarray(fed.client_counts).tolist()) == sorted(counts.tolist())


def test_synthetic_is_named_in_every_output():
    """The dataset name in the results JSON and the summary table says "synthetic"."""
    from experiments.run import run_experiment, summary_table
    from fljax.experiment import ExperimentConfig, build

    config = ExperimentConfig(
        dataset="synthetic:femnist",
        partition="natural",
        model="logreg",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        attack="sign_flip",
        aggregator="median",
        rounds=1,
        eval_every=1,
        local_steps=1,
    )
    exp = build(config)
    results = run_experiment(exp, lambda *a: None)
    assert results["config"]["dataset"] == "synthetic:femnist"
    assert "synthetic:femnist / logreg (natural)" in summary_table(results)


def test_runner_validates_dataset_names():
    from fljax.experiment import ExperimentConfig, validate

    for name in data.DATASETS + ("tfds:mnist", "synthetic:cifar100", "synthetic:shakespeare"):
        validate(ExperimentConfig(dataset=name))
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'synthetic:imagenet'; valid: .*synthetic:<mnist"):
        validate(ExperimentConfig(dataset="synthetic:imagenet"))
    validate(ExperimentConfig(dataset="synthetic:femnist", partition="natural"))
    with pytest.raises(ValueError, match="--partition=natural needs .*got --dataset=synthetic:cifar10"):
        validate(ExperimentConfig(dataset="synthetic:cifar10", partition="natural"))


def test_train_examples_is_a_seeded_subset_recorded_only_when_set():
    from fljax.experiment import ExperimentConfig, build, config_dict, training_subset, validate

    full = data.load("digits", seed=0)
    subset = training_subset(full, 300, seed=3)
    assert subset.x_train.shape == (300, *full.x_train.shape[1:]) and subset.x_test is full.x_test
    # Drawn without replacement, in the original order, the same for the same seed.
    rows = {r.tobytes(): i for i, r in enumerate(full.x_train)}
    picked = [rows[r.tobytes()] for r in subset.x_train]
    assert picked == sorted(set(picked)) and np.array_equal(full.y_train[picked], subset.y_train)
    assert np.array_equal(training_subset(full, 300, seed=3).x_train, subset.x_train)
    assert not np.array_equal(training_subset(full, 300, seed=4).x_train, subset.x_train)
    # Unset, it is not recorded (earlier cells and checkpoints keep their keys); set, it is.
    assert "train_examples" not in config_dict(ExperimentConfig())
    assert config_dict(ExperimentConfig(train_examples=400))["train_examples"] == 400
    exp = build(
        ExperimentConfig(dataset="digits", train_examples=400, num_clients=10, clients_per_round=10, num_malicious=2)
    )
    assert int(np.sum(np.asarray(exp.data.client_counts))) == 400
    with pytest.raises(ValueError, match=r"--train_examples must be an integer >= 1 \(or unset: all\), got 0"):
        validate(ExperimentConfig(train_examples=0))
    with pytest.raises(
        ValueError, match=r"--train_examples must be in 1..1438 \(the training examples of digits\), got 5000"
    ):
        build(ExperimentConfig(dataset="digits", train_examples=5000))
