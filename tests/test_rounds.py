"""The round: hand-computed 2-client rounds, one trace, strategies agree, attacks only when sampled."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.aggregators import mean, median
from fljax.attacks import label_flip, sign_flip
from tests.helpers import make_data, squared_loss

X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Y = np.array([1.0, 2.0, 0.0])
W0 = {"w": jnp.array([0.5, -1.0])}
KEY = jax.random.PRNGKey(3)
# client 0 holds examples 0 and 1, client 1 holds example 2 (padded to width 2)
DATA = make_data([[0, 1], [2]], X, Y)


def grad(w, rows):
    r = X[rows] @ w - Y[rows]
    return (r[:, None] * X[rows]).mean(0)


def test_two_client_fedsgd_round_by_hand():
    w = np.array([0.5, -1.0])
    # FedSGD: clients send -grad; FedAvg mean weights 2/3, 1/3; server SGD lr 0.5 on -aggregate
    expected = w + 0.5 * (2 / 3 * -grad(w, [0, 1]) + 1 / 3 * -grad(w, [2]))
    rnd = fljax.make_round(fljax.fedsgd(squared_loss), mean(), clients_per_round=2, server_optimizer=optax.sgd(0.5))
    state, metrics = rnd.step(rnd.init(W0), DATA, KEY)
    np.testing.assert_allclose(state.params["w"], expected, rtol=1e-6)
    assert int(state.round) == 1 and int(metrics["num_malicious"]) == 0


def test_two_client_fedavg_round_by_hand():
    w0 = np.array([0.5, -1.0])
    deltas = []
    for rows in ([0, 1], [2]):
        w = w0.copy()
        for _ in range(3):  # 3 local steps; batch 2 covers each client's data fully
            w = w - 0.1 * grad(w, rows)
        deltas.append(w - w0)
    expected = w0 + (2 / 3) * deltas[0] + (1 / 3) * deltas[1]
    rnd = fljax.make_round(
        fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=3, batch_size=2), mean(), clients_per_round=2
    )
    state, _ = rnd.step(rnd.init(W0), DATA, KEY)
    np.testing.assert_allclose(state.params["w"], expected, rtol=1e-5)


def _traced_round(**kw):
    traces = []

    def loss(params, batch, key=None):
        traces.append(1)
        return squared_loss(params, batch)

    return fljax.make_round(fljax.fedavg(loss, optax.sgd(0.1), local_steps=2, batch_size=2), mean(), **kw), traces


def test_jitted_round_traces_once():
    rnd, traces = _traced_round(clients_per_round=2)
    state = rnd.init(W0)
    for i in range(4):
        state, _ = rnd.step(state, DATA, jax.random.PRNGKey(i))
    assert len(traces) == 1


def _mnist_like_round(execution):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 60)
    data = make_data([list(range(i * 6, i * 6 + 6 - (i % 3))) for i in range(10)], x, y)
    model = fljax.models.get("mlp", (8, 8, 1), 10, hidden=(16,))
    client = fljax.fedavg(fljax.classification_loss(model.apply), optax.sgd(0.1), local_steps=3, batch_size=4)
    rnd = fljax.make_round(
        client,
        median(),
        clients_per_round=7,
        num_malicious=3,
        model_attack=sign_flip(2.0),
        execution=execution,
        chunk_size=3,
    )
    state = rnd.init(model.init(jax.random.PRNGKey(0)))
    for i in range(2):
        state, _ = rnd.step(state, data, jax.random.PRNGKey(i))
    return state.params


def test_all_execution_strategies_give_the_same_round():
    ref = _mnist_like_round("vmap")
    for execution in ("sequential",):  # chunked: tests/test_determinism.py
        out = _mnist_like_round(execution)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), ref, out)


def test_cohort_is_a_sample_without_replacement_and_attack_only_hits_sampled_malicious():
    seen = []

    def spy_update(updates, malicious, state, key, ctx):
        seen.append((ctx.client_ids, malicious))
        return updates, state

    attack = fljax.ModelAttack(init=lambda p: (), update=spy_update)
    data = make_data([[0], [1], [2], [0], [1], [2]], X, Y)
    rnd = fljax.make_round(
        fljax.fedsgd(squared_loss), mean(), clients_per_round=4, num_malicious=2, model_attack=attack, jit=False
    )
    state = rnd.init(W0)
    for i in range(5):
        state, m = rnd.step(state, data, jax.random.PRNGKey(i))
        ids, mal = seen[-1]
        assert len(set(np.asarray(ids).tolist())) == 4
        np.testing.assert_array_equal(mal, np.asarray(ids) < 2)
        assert int(m["num_malicious"]) == int(np.sum(np.asarray(ids) < 2))


def test_data_attack_poisons_only_malicious_clients():
    """Targeted flip 0 -> 1 on a 1-feature logistic model: only a malicious client's update changes."""
    x = np.ones((4, 1), np.float32)
    y = np.array([0, 0, 0, 0])
    data = make_data([[0, 1], [2, 3]], x, y)
    model = fljax.models.get("logreg", (1,), 2)
    client = fljax.fedsgd(fljax.classification_loss(model.apply))
    params = model.init(jax.random.PRNGKey(0))

    def deltas(num_malicious):
        captured = []
        attack = fljax.ModelAttack(
            init=lambda p: (), update=lambda u, m, s, k, c: captured.append((u, c.client_ids)) or (u, s)
        )
        rnd = fljax.make_round(
            client,
            mean(),
            clients_per_round=2,
            num_malicious=num_malicious,
            data_attack=label_flip(2, source=0, target=1),
            model_attack=attack,
            jit=False,
        )
        rnd.step(rnd.init(params), data, KEY)
        u, ids = captured[0]
        return np.asarray(u)[np.argsort(np.asarray(ids))]

    clean, poisoned = deltas(0), deltas(1)
    np.testing.assert_allclose(poisoned[1], clean[1])
    assert not np.allclose(poisoned[0], clean[0])
    # softmax bias gradient is p - onehot(y): relabeling 0 -> 1 adds e0 - e1, so delta = -grad moves by e1 - e0
    bias = lambda row: row[-2:]
    np.testing.assert_allclose(bias(poisoned[0]), bias(clean[0]) + np.array([-1.0, 1.0]), rtol=1e-5, atol=1e-6)


def test_clients_per_round_larger_than_population_is_rejected():
    rnd = fljax.make_round(fljax.fedsgd(squared_loss), mean(), clients_per_round=3)
    with pytest.raises(ValueError, match="clients_per_round must be in 1..num_clients=2"):
        rnd.step(rnd.init(W0), DATA, KEY)


def test_detection_rates():
    w = jnp.array([0.0, 0.3, 0.3, 0.4])
    flagged = fljax.rounds.flagged_clients({"weights": w}, jnp.ones(4))
    np.testing.assert_array_equal(flagged, [True, False, False, False])
    tpr, fpr = fljax.rounds.detection_rates(flagged, jnp.array([True, True, False, False]))
    assert float(tpr) == 0.5 and float(fpr) == 0.0
