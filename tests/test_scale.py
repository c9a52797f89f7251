"""Scale: whole runs vmapped over seeds, matmul precision and bfloat16 mixed precision, and the
memory script's synthetic population."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax import aggregators, attacks
from fljax.precision import PRECISIONS, check_precision, mixed_precision, with_matmul_precision

NUM_CLASSES = 3


def _tiny():
    """A linear classifier on 48 random examples split over 12 unequal clients."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = np.argmax(x[:, :NUM_CLASSES] + 0.2 * rng.normal(size=(48, NUM_CLASSES)), axis=1).astype(np.int32)
    counts = rng.integers(1, 6, size=12).astype(np.int32)
    table = rng.integers(0, 48, size=(12, 5)).astype(np.int32)
    data = fljax.FederatedData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(table), jnp.asarray(counts), jnp.asarray(x), jnp.asarray(y)
    )
    apply = lambda p, xb: xb @ p["w"] + p["b"]
    init = lambda key: {"w": 0.1 * jax.random.normal(key, (4, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)}
    return data, apply, init


def test_train_vmapped_over_seeds_equals_separate_runs():
    """``jax.vmap(train)(keys)``: a seed sweep as one program, each seed's final state and whole
    history (per-round metrics and evaluations) as in its own run."""
    data, apply, init = _tiny()
    rnd = fljax.make_round(
        fljax.fedavg(fljax.classification_loss(apply), optax.sgd(0.5), local_steps=2, batch_size=2),
        aggregators.trimmed_mean(num_byzantine=1),
        clients_per_round=6,
        num_malicious=3,
        data_attack=attacks.label_flip(num_classes=NUM_CLASSES, source=1, target=2),
        jit=False,
    )
    train = fljax.make_train(rnd, data, init, fljax.make_evaluate(apply), num_rounds=5, eval_every=2)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    batched_state, batched_history = jax.vmap(train)(keys)
    assert batched_history.evals["accuracy"].shape == (3, 3)  # 3 seeds x evaluations after rounds 2, 4, 5
    finals = []
    for i, key in enumerate(keys):
        state, history = train(key)
        pick = lambda tree: jax.tree.map(lambda a: a[i], tree)  # noqa: B023
        for got, want in zip(
            jax.tree.leaves(pick((batched_state, batched_history))), jax.tree.leaves((state, history))
        ):
            np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-6, atol=1e-6)
        finals.append(np.asarray(state.server.params["w"]))
    assert not np.allclose(finals[0], finals[1])  # the seeds really differ


@pytest.mark.parametrize("precision, printed", [("fp32", "HIGHEST"), ("tf32", "HIGH"), ("bf16", "DEFAULT")])
def test_matmul_precision_is_fixed_into_every_client_matmul(precision, printed):
    _, apply, init = _tiny()
    update = fljax.fedavg(fljax.classification_loss(apply), optax.sgd(0.1), local_steps=2, batch_size=2)
    client = fljax.ClientData(jnp.ones((4, 4)), jnp.array([0, 1, 2, 0]), jnp.arange(4), jnp.array(4))
    args = (init(jax.random.PRNGKey(0)), client, jax.random.PRNGKey(1))
    text = str(jax.make_jaxpr(with_matmul_precision(update, precision))(*args))
    found = re.findall(r"precision=\(Precision\.(\w+), Precision\.(\w+)\)", text)
    assert len(found) >= 2 and len(found) == text.count("dot_general[")  # forward and backward, every one
    assert set(found) == {(printed, printed)}
    assert "Precision." not in str(jax.make_jaxpr(update)(*args))  # no override: the backend default
    assert with_matmul_precision(update, "default") is update


def test_unknown_precision_is_rejected_by_name():
    with pytest.raises(
        ValueError, match=r"precision: unknown matmul precision 'fp16'; valid: default, fp32, tf32, bf16"
    ):
        check_precision("fp16")
    from fljax.experiment import ExperimentConfig, validate

    with pytest.raises(ValueError, match=r"--precision: unknown matmul precision 'half'; valid: default, fp32"):
        validate(ExperimentConfig(precision="half"))
    assert set(PRECISIONS) == {"default", "fp32", "tf32", "bf16"}


def test_mixed_precision_computes_in_bf16_and_keeps_fp32_updates():
    data, apply, init = _tiny()
    params = init(jax.random.PRNGKey(2))
    client = fljax.ClientData(data.x, data.y, jnp.arange(16), jnp.array(16))
    full = fljax.fedavg(fljax.classification_loss(apply), optax.sgd(0.5), local_steps=3, batch_size=8)
    mixed = fljax.fedavg(fljax.classification_loss(mixed_precision(apply)), optax.sgd(0.5), local_steps=3, batch_size=8)
    key = jax.random.PRNGKey(3)
    text = str(jax.make_jaxpr(mixed)(params, client, key))
    assert re.search(r"bf16\[[0-9,]*\] = dot_general", text)  # the matmuls run in bfloat16
    d_full, d_mixed = full(params, client, key), mixed(params, client, key)
    for leaf_full, leaf_mixed in zip(jax.tree.leaves(d_full), jax.tree.leaves(d_mixed)):
        assert leaf_mixed.dtype == jnp.float32  # fp32 master params, fp32 update
        scale = float(jnp.max(jnp.abs(leaf_full)))
        assert scale > 1e-3
        err = float(jnp.max(jnp.abs(leaf_full - leaf_mixed)))
        assert 0 < err <= 0.05 * scale  # bf16 rounding (8 mantissa bits): close, but not the fp32 result


def test_experiment_config_wires_precision_and_mixed_precision(monkeypatch):
    """``--precision`` and ``--mixed_precision`` reach the round's client training (and only it:
    the evaluation's matmuls stay float32)."""
    from fljax import experiment

    config = experiment.ExperimentConfig(
        dataset="digits",
        model="logreg",
        num_clients=10,
        clients_per_round=5,
        num_malicious=0,
        attack="none",
        aggregator="median",
        rounds=1,
        local_steps=1,
        precision="tf32",
        mixed_precision=True,
    )
    exp = experiment.build(config)
    state = exp.train.init(jax.random.PRNGKey(0))
    text = str(jax.make_jaxpr(exp.round.step)(state.server, exp.data, jax.random.PRNGKey(1)))
    assert re.search(r"bf16\[[0-9,]*\] = dot_general", text)
    assert "Precision.HIGH)" in text
    evals = str(jax.make_jaxpr(exp.train.evaluate)(state.server.params, exp.data.x_test, exp.data.y_test))
    assert "bf16" not in evals and "Precision.HIGH" not in evals


def test_synthetic_population_shares_examples_through_the_index_table():
    from experiments.memory import synthetic_population
    from fljax.data.datasets import Dataset

    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    ds = Dataset(x, np.arange(10, dtype=np.int32) % 3, x[:2], np.zeros(2, np.int32), 3, "toy")
    data = synthetic_population(ds, 1000, 6, jax.random.PRNGKey(0))
    assert data.client_indices.shape == (1000, 6) and data.x.shape == (10, 2)  # examples never copied per client
    counts, table = np.asarray(data.client_counts), np.asarray(data.client_indices)
    assert counts.min() == 3 and counts.max() == 6
    assert np.all(table[np.arange(6)[None, :] >= counts[:, None]] == 0)  # padding past each count
    assert len(np.unique(table)) == 10  # every example is in use
    again = synthetic_population(ds, 1000, 6, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(again.client_indices, table)
