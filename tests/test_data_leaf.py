"""LEAF's natural clients (FEMNIST writers, Shakespeare roles) read from a LEAF-format tree
written here, and the natural partition: exact client split, random client ids."""

import json
import os

import jax
import numpy as np
import pytest

from fljax import data
from fljax.data import leaf
from fljax.experiment import ExperimentConfig, build, validate

KEY = jax.random.PRNGKey(3)


def write_leaf(root, splits):
    """``splits``: {"train": [file_users, ...], "test": [...]} with ``file_users`` {user: (x, y)}."""
    for split, files in splits.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i, users in enumerate(files):
            content = {
                "users": list(users),
                "num_samples": [len(y) for _, y in users.values()],
                "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
            }
            with open(os.path.join(root, split, f"all_data_{i}_niid_0_keep_0_{split}_9.json"), "w") as f:
                json.dump(content, f)
    return str(root)


def femnist_user(writer: int, n: int):
    """``n`` images whose pixels all equal a value unique to (writer, example); label = writer + example."""
    values = [(10 * writer + j) / 100 for j in range(n)]
    return [[v] * 784 for v in values], [(writer + j) % 62 for j in range(n)]


# writers w0..w3 hold 3, 1, 4 and 2 examples; spread over two train files in no particular order
SIZES = {"w0": 3, "w1": 1, "w2": 4, "w3": 2}


@pytest.fixture
def femnist_dir(tmp_path):
    users = {u: femnist_user(int(u[1]), n) for u, n in SIZES.items()}
    return write_leaf(
        tmp_path,
        {
            "train": [{"w2": users["w2"], "w0": users["w0"]}, {"w3": users["w3"], "w1": users["w1"]}],
            "test": [{"w1": femnist_user(5, 2), "w3": femnist_user(6, 1)}],
        },
    )


def test_femnist_reads_writers_in_name_order_with_mnist_ink(femnist_dir):
    ds = data.load("femnist", data_dir=femnist_dir)
    assert ds.name == "femnist" and ds.num_classes == 62 and ds.x_train.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(ds.train_clients, [0, 0, 0, 1, 2, 2, 2, 2, 3, 3])  # w0, w1, w2, w3
    expected = np.concatenate([femnist_user(w, n)[0] for w, n in enumerate(SIZES.values())])
    np.testing.assert_allclose(ds.x_train.reshape(10, 784), 1 - np.asarray(expected, np.float32))  # ink = 1
    np.testing.assert_array_equal(
        ds.y_train, np.concatenate([femnist_user(w, n)[1] for w, n in enumerate(SIZES.values())])
    )
    assert ds.x_test.shape == (3, 28, 28, 1) and ds.y_test.dtype == np.int32  # the test files pooled


def test_natural_partition_gives_each_client_exactly_one_writer(femnist_dir):
    ds = data.load("femnist", data_dir=femnist_dir)
    fed = data.federate(ds, 4, "natural", key=KEY)
    order = np.asarray(jax.random.permutation(KEY, 4))  # client c is writer order[c]
    writers = list(SIZES)
    for c in range(4):
        mine = np.asarray(fed.client_indices[c, : fed.client_counts[c]])
        np.testing.assert_array_equal(mine, np.flatnonzero(ds.train_clients == order[c]))
        assert fed.client_counts[c] == SIZES[writers[order[c]]]
    assert sorted(np.concatenate([fed.client_indices[c, : fed.client_counts[c]] for c in range(4)]).tolist()) == list(
        range(10)
    )
    # fewer clients than writers: a random subset of whole writers
    fed2 = data.federate(ds, 2, "natural", key=KEY)
    picked = np.asarray(jax.random.permutation(KEY, 4))[:2]
    for c in range(2):
        np.testing.assert_array_equal(
            fed2.client_indices[c, : fed2.client_counts[c]], np.flatnonzero(ds.train_clients == picked[c])
        )


def test_file_layout_and_order_change_nothing(femnist_dir, tmp_path):
    users = {u: femnist_user(int(u[1]), n) for u, n in SIZES.items()}
    other = write_leaf(
        tmp_path / "other",
        {
            "train": [{u: users[u] for u in ["w3", "w1", "w0", "w2"]}],
            "test": [{"w3": femnist_user(6, 1)}, {"w1": femnist_user(5, 2)}],
        },
    )
    a, b = data.load("femnist", data_dir=femnist_dir), data.load("femnist", data_dir=other)
    for field in ("x_train", "y_train", "train_clients"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    fa, fb = data.federate(a, 4, "natural", key=KEY), data.federate(b, 4, "natural", key=KEY)
    np.testing.assert_array_equal(fa.client_indices, fb.client_indices)


def test_malicious_ids_are_a_uniform_draw_of_writers():
    """Clients 0..m-1 (the malicious ones) are random writers, not the first or largest in the files."""
    sizes = np.arange(1, 11)  # writer w has w + 1 examples
    clients = np.repeat(np.arange(10), sizes)
    chosen = np.zeros(10)
    for seed in range(300):
        fed = data.natural(jax.random.PRNGKey(seed), clients, 10)
        first_three = [clients[fed[0][c, 0]] for c in range(3)]
        chosen[first_three] += 1
    share = chosen / 300  # each writer is malicious in 3 of 10 draws
    assert np.all(np.abs(share - 0.3) < 0.1), share
    assert abs(np.sum(share * sizes) / 3 - sizes.mean()) < 0.6  # not biased to large or small writers


def shakespeare_dir(tmp_path):
    text = "To be, or not to be: that is the question. Whether 'tis nobler in the mind$ to suffer the slings"
    windows = lambda s: ([s[i : i + 80] for i in range(len(s) - 80)], [s[i + 80] for i in range(len(s) - 80)])
    return text, write_leaf(
        tmp_path,
        {
            "train": [{"HAMLET": windows(text), "OPHELIA": windows(text[::-1][:83])}],
            "test": [{"HAMLET": windows(text[:82])}],
        },
    )


def test_shakespeare_tokens_and_shifted_targets(tmp_path):
    text, root = shakespeare_dir(tmp_path)
    ds = data.load("shakespeare", data_dir=root)
    n_hamlet = len(text) - 80
    assert ds.num_classes == 82 and ds.x_train.shape == (n_hamlet + 3, 80) and ds.y_train.shape == (n_hamlet + 3, 80)
    assert ds.x_train.dtype == np.int32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.train_clients, [0] * n_hamlet + [1] * 3)  # HAMLET < OPHELIA
    # LEAF's alphabet in LEAF's order, shifted by one for PAD = 0; '$' is not in it
    ids = {c: leaf.SHAKESPEARE_CHARS.index(c) + 1 for c in "To"}
    assert (ids["T"], ids["o"], leaf.encode(["\n"])[0, 0], leaf.encode(["}"])[0, 0]) == (45, 68, 1, 80)
    assert leaf.encode(["$"])[0, 0] == leaf.OOV == 81
    for i in range(n_hamlet):  # x is the window, y the next character of every position
        assert leaf.decode(ds.x_train[i]) == text[i : i + 80].replace("$", "\ufffd")
        assert leaf.decode(ds.y_train[i]) == text[i + 1 : i + 81].replace("$", "\ufffd")
    assert ds.x_test.shape == (2, 80) and ds.y_test[1, -1] == leaf.encode([text[81]])[0, 0]
    fed = data.federate(ds, 2, "natural", key=KEY)
    assert sorted(np.asarray(fed.client_counts).tolist()) == [3, n_hamlet]
    with pytest.raises(ValueError, match="dirichlet splits by label.*valid for it: iid or natural"):
        data.federate(ds, 2, "dirichlet", key=KEY)
    assert int(data.federate(ds, 2, "iid", key=KEY).client_counts.sum()) == n_hamlet + 3


def test_natural_partition_errors(femnist_dir):
    ds = data.load("femnist", data_dir=femnist_dir)
    with pytest.raises(ValueError, match=r"num_clients must be an integer in 1..4 \(the natural clients of femnist\)"):
        data.federate(ds, 5, "natural", key=KEY)
    with pytest.raises(ValueError, match="natural needs a dataset with natural clients.*digits has none"):
        data.federate(data.load("digits"), 5, "natural", key=KEY)
    with pytest.raises(ValueError, match="--partition=natural needs a dataset with natural clients"):
        validate(ExperimentConfig(dataset="mnist5k", partition="natural"))


def test_leaf_format_errors(tmp_path):
    def fails(content, match, name="femnist"):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for split in ("train", "test"):
            os.makedirs(root / split)
            (root / split / "a.json").write_text(json.dumps(content))
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            data.load(name, data_dir=str(root))

    x, y = femnist_user(0, 2)
    fails({"users": ["a"], "user_data": {}}, "needs the keys users, num_samples and user_data")
    fails(
        {"users": ["a"], "num_samples": [3], "user_data": {"a": {"x": x, "y": y}}},
        "user 'a' must have x and y of num_samples = 3",
    )
    fails(
        {"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": [[0.5] * 783] * 2, "y": y}}}, "784 pixel values"
    )
    fails(
        {"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": x, "y": [0, 62]}}},
        r"labels must be integers in 0..61",
    )
    fails(
        {"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": ["a" * 80], "y": ["bc"]}}},
        "one next character",
        name="shakespeare",
    )
    (tmp_path / "dup" / "train").mkdir(parents=True)
    for i in range(2):
        (tmp_path / "dup" / "train" / f"{i}.json").write_text(
            json.dumps({"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": x, "y": y}}})
        )
    with pytest.raises(ValueError, match="user 'a' appears twice in train/"):
        data.load("femnist", data_dir=str(tmp_path / "dup"))
    with pytest.raises(
        FileNotFoundError, match="no LEAF JSON files in .*train; --data_dir must be LEAF's data directory"
    ):
        data.load("femnist", data_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="pass --data_dir"):
        data.load("shakespeare")


def test_runner_builds_a_natural_federation(femnist_dir):
    config = ExperimentConfig(
        dataset="femnist",
        data_dir=femnist_dir,
        partition="natural",
        model="logreg",
        num_clients=4,
        clients_per_round=4,
        num_malicious=1,
        attack="sign_flip",
        aggregator="mean",
        rounds=1,
        eval_every=1,
        local_steps=1,
    )
    exp = build(config)
    k_part = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    order = np.asarray(jax.random.permutation(k_part, 4))
    np.testing.assert_array_equal(exp.data.client_counts, np.array(list(SIZES.values()))[order])
