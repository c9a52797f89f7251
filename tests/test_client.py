"""Client updates: FedSGD / FedAvg against hand computations; padding never counts."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.client import ClientData, map_clients
from tests.helpers import squared_loss

X = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1e6, -1e6]])
Y = jnp.array([1.0, 2.0, 0.0, 1e6])
W0 = {"w": jnp.array([0.5, -1.0])}
KEY = jax.random.PRNGKey(0)


def client(indices, count):
    return ClientData(X, Y, jnp.asarray(indices, jnp.int32), jnp.asarray(count))


def test_fedsgd_is_minus_lr_times_full_batch_gradient():
    # grad = mean_i (x_i.w - y_i) x_i over examples 0, 1: residuals -0.5, -3 -> [-0.25, -1.5]
    delta = fljax.fedsgd(squared_loss, optax.sgd(0.1))(W0, client([0, 1], 2), KEY)
    np.testing.assert_allclose(delta["w"], [0.025, 0.15], rtol=1e-6)


@pytest.mark.parametrize("pad", [0, 3])
def test_padding_never_contributes(pad):
    """Padded entries point at a real example (0) or a huge one (3): the update is unchanged."""
    ref = fljax.fedsgd(squared_loss)(W0, client([0, 1], 2), KEY)
    padded = fljax.fedsgd(squared_loss)(W0, client([0, 1, pad, pad], 2), KEY)
    np.testing.assert_allclose(padded["w"], ref["w"], rtol=1e-6)
    avg = fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=3, batch_size=2)
    np.testing.assert_allclose(
        avg(W0, client([0, 1, pad, pad], 2), KEY)["w"], avg(W0, client([0, 1], 2), KEY)["w"], rtol=1e-6
    )


def test_fedavg_full_batch_steps_match_hand_computation():
    """Two local SGD steps (lr 0.1) on examples {0, 1} with batch 2 (= full batch each step)."""
    w = np.array([0.5, -1.0])
    for _ in range(2):
        r = X[:2] @ w - Y[:2]
        w = w - 0.1 * (r[:, None] * np.asarray(X[:2])).mean(0)
    delta = fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=2, batch_size=2)(W0, client([0, 1], 2), KEY)
    np.testing.assert_allclose(delta["w"], w - np.array([0.5, -1.0]), rtol=1e-5)


def test_fedavg_epochs_visit_every_example_once_per_epoch():
    """With a linear loss the update is the sum of per-batch mean gradients; one epoch of batch 1
    over 3 examples therefore sums each example's gradient exactly once, in any order."""
    linear = lambda p, b, k=None: jnp.sum(b.mask * (b.x @ p["w"])) / jnp.maximum(jnp.sum(b.mask), 1)
    delta = fljax.fedavg(linear, optax.sgd(1.0), local_epochs=1, batch_size=1)(W0, client([0, 1, 2, 0], 3), KEY)
    np.testing.assert_allclose(delta["w"], -(X[0] + X[1] + X[2]), rtol=1e-6)
    two = fljax.fedavg(linear, optax.sgd(1.0), local_epochs=2, batch_size=2)(W0, client([0, 1, 2, 0], 3), KEY)
    # 2 epochs of ceil(3/2) = 2 batches; each epoch: a full batch (mean of two) + a single example.
    assert np.isfinite(two["w"]).all() and not np.allclose(two["w"], 0)


def test_fedavg_epochs_mask_steps_beyond_a_small_clients_count():
    """A 1-example client runs E * 1 steps even though the scan is sized for the largest client."""
    linear = lambda p, b, k=None: jnp.sum(b.mask * (b.x @ p["w"])) / jnp.maximum(jnp.sum(b.mask), 1)
    delta = fljax.fedavg(linear, optax.sgd(1.0), local_epochs=2, batch_size=1)(W0, client([1, 0, 0, 0], 1), KEY)
    np.testing.assert_allclose(delta["w"], -2 * X[1], rtol=1e-6)


@pytest.mark.parametrize("count,local_steps", [(30, 2), (3, 2), (5, 3), (40, 12)])
def test_fedavg_batches_follow_each_epochs_permutation(count, local_steps):
    """Step t of a client with ``count`` real examples takes batch t % steps_per_epoch of epoch
    t // steps_per_epoch's order, the stable argsort of fresh uniform keys (padding last), also
    where only a prefix of the order is drawn (top_k, local_steps * batch_size << width)."""
    width, batch = 40, 4
    onehot = jnp.eye(width)
    indices = np.asarray(jax.random.permutation(jax.random.PRNGKey(3), width), np.int32)
    data = ClientData(onehot, jnp.zeros(width), jnp.asarray(indices), jnp.asarray(count))
    linear = lambda p, b, k=None: jnp.sum(b.mask * (b.x @ p["w"])) / jnp.maximum(jnp.sum(b.mask), 1)
    delta = fljax.fedavg(linear, optax.sgd(1.0), local_steps=local_steps, batch_size=batch)(
        {"w": jnp.zeros(width)}, data, KEY
    )["w"]
    k_perm = jax.random.split(KEY, 3)[0]
    per_epoch = max(-(-count // batch), 1)
    expected = np.zeros(width)
    for t in range(local_steps):
        epoch, b = divmod(t, per_epoch)
        keys = np.where(np.arange(width) < count, jax.random.uniform(jax.random.fold_in(k_perm, epoch), (width,)), 2.0)
        pos = b * batch + np.arange(batch)
        used = indices[np.argsort(keys, kind="stable")[pos[pos < count]]]
        expected[used] -= 1.0 / len(used)
    np.testing.assert_allclose(delta, expected, rtol=1e-6, atol=1e-7)


def test_client_without_data_sends_zero():
    delta = fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=3, batch_size=2)(W0, client([0, 0], 0), KEY)
    np.testing.assert_array_equal(delta["w"], 0.0)


def test_fedavg_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of local_steps or local_epochs"):
        fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=1, local_epochs=1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=1, batch_size=0)


@pytest.mark.parametrize("execution", ["vmap", "chunked", "sequential", "auto"])
def test_execution_strategies_agree(execution):
    f = lambda a: jnp.sin(a[0]) * a[1]
    xs = (jnp.arange(10.0), jnp.arange(10.0) + 1)
    np.testing.assert_allclose(map_clients(f, xs, execution, chunk_size=3), jnp.sin(xs[0]) * xs[1], rtol=1e-6)


def test_unknown_execution_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, vmap, chunked, sequential"):
        map_clients(lambda a: a, jnp.ones(2), "threads")


def test_use_cpu_cores_validates_count_and_needs_a_fresh_process():
    from fljax.client import use_cpu_cores

    with pytest.raises(ValueError, match="count must be an integer >= 1, got 0"):
        use_cpu_cores(0)
    jnp.zeros(1).block_until_ready()  # JAX's backends are running in this process now
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        use_cpu_cores(2)


def test_parallel_execution_with_one_device_is_sequential():
    xs = (jnp.arange(5.0), jnp.arange(5.0) * 3)
    out = jax.jit(lambda v: map_clients(lambda a: a[0] * a[1] + 1, v, "parallel"))(xs)
    np.testing.assert_allclose(out, xs[0] * xs[1] + 1)


RUN_CASE = (
    "run:backdoor+adaptive(objective='targeted')"  # tests/parallel_worker.py's whole run (it sets up JAX on import)
)


def _parallel_worker(*cases):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "tests", "parallel_worker.py"), *cases],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_parallel(result, names):
    assert result["devices"] == 2 and result["default_execution"] == "parallel"
    assert set(result["cases"]) == set(names)
    for name, case in result["cases"].items():
        assert "error" not in case, (name, case)
        # the same clients with the same keys as one sequential stream: equal to float rounding
        assert case["finite"] and case["diff"] <= 1e-6, (name, case)
    return result


def test_default_execution_on_two_cpu_cores_is_parallel_and_equals_sequential():
    """With 2 cores exposed, the default runs clients as ``pmap`` streams; DnC (whose LAPACK
    ``eigh`` once stalled under ``pmap``), the median and trimmed mean (their coordinates split
    over the two cores), PGD's malicious training and a whole run with a targeted adaptive
    attack (two client maps in one program) finish and equal the sequential ones.
    The slow version covers every rule and local-training attack."""
    cases = ("dnc", "median", "trimmed_mean", "attack:pgd", RUN_CASE)
    result = _check_parallel(_parallel_worker(*cases), cases)
    assert [name for name in cases if result["cases"][name]["columns_split"]] == [
        "median",
        "trimmed_mean",
        "attack:pgd",
    ]


@pytest.mark.slow
def test_every_rule_and_local_training_attack_under_the_parallel_default():
    from fljax import attacks
    from fljax.aggregators import REGISTRY

    _check_parallel(
        _parallel_worker(),
        set(REGISTRY)
        | {f"attack:{a}" for a, e in attacks.MODEL_ATTACKS.items() if e.local_training is not None}
        | {RUN_CASE},
    )
