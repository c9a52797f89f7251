"""Worker momentum (fljax.momentum): both conventions by hand, per-client rows over the population
under partial participation, what the attack sees, and the runner's flags."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_data

import fljax
from fljax.experiment import ExperimentConfig, build, validate
from fljax.momentum import worker_momentum

BETA = 0.5


def test_update_by_hand_for_both_conventions():
    momenta = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    u = jnp.array([[10.0, 20.0], [30.0, 40.0]])
    ids = jnp.array([2, 0])
    sent, new = worker_momentum(BETA, "ema").update(momenta, u, ids)
    np.testing.assert_allclose(
        sent, [[0.5 * 5 + 0.5 * 10, 0.5 * 6 + 0.5 * 20], [0.5 * 1 + 0.5 * 30, 0.5 * 2 + 0.5 * 40]]
    )
    np.testing.assert_allclose(new, [sent[1], [3.0, 4.0], sent[0]])  # client 1 was not sampled: unchanged
    sent, new = worker_momentum(BETA, "heavy_ball").update(momenta, u, ids)
    np.testing.assert_allclose(sent, [[0.5 * 5 + 10, 0.5 * 6 + 20], [0.5 * 1 + 30, 0.5 * 2 + 40]])
    np.testing.assert_allclose(new, [sent[1], [3.0, 4.0], sent[0]])


def _constant_update(params, client, key, *extra):
    """Client i sends ``count_i`` in every coordinate whatever the model: its momentum is a
    geometric sum of it."""
    return jax.tree.map(lambda p: jnp.full_like(p, client.count), params)


def _spy_rule(seen):
    def update(u, state, ctx):
        seen.append((np.asarray(ctx.client_ids), np.asarray(u)))
        n = u.shape[0]
        return jnp.mean(u, 0), state, {"weights": jnp.full(n, 1.0 / n)}

    return fljax.Aggregator(init=fljax.types.no_state, update=update)


@pytest.mark.parametrize("convention", ["ema", "heavy_ball"])
def test_each_client_sends_the_momentum_of_the_rounds_it_was_sampled_in(convention):
    """4 clients (counts 1..4), 2 sampled per round, 6 rounds: client i's k-th sampled round
    sends ``count_i * (1 - beta**k)`` (ema) or ``count_i * (1 - beta**k) / (1 - beta)`` (heavy ball)."""
    data = make_data([[0], [1, 2], [3, 4, 5], [6, 7, 8, 9]], np.zeros((10, 1)), np.zeros(10))
    seen = []
    rnd = fljax.make_round(
        _constant_update,
        _spy_rule(seen),
        clients_per_round=2,
        jit=False,
        worker_momentum=worker_momentum(BETA, convention),
        num_clients=4,
    )
    state = rnd.init({"w": jnp.zeros(3)})
    for r in range(6):
        state, _ = rnd.step(state, data, jax.random.PRNGKey(r))
    times = np.zeros(4, int)
    for ids, sent in seen:
        for i, row in zip(ids, sent):
            times[i] += 1
            k = times[i]
            expected = (i + 1) * (1 - BETA**k) * (1.0 if convention == "ema" else 1 / (1 - BETA))
            np.testing.assert_allclose(row, np.full(3, expected), rtol=1e-6)
    assert times.min() >= 1 and times.max() >= 3  # the check saw repeated and fresh clients
    last = {int(i): row for ids, sent in seen for i, row in zip(ids, sent)}
    for i, row in last.items():  # the state holds each client's last momentum
        np.testing.assert_allclose(state.momenta[i], row, rtol=1e-6)


def test_beta_zero_is_no_momentum_and_the_attack_sees_the_honest_momenta():
    data = make_data([[0], [1, 2], [3, 4, 5], [6, 7, 8, 9]], np.zeros((10, 1)), np.zeros(10))
    attack_saw = []

    def spy_attack(updates, malicious, state, key, ctx):
        attack_saw.append(np.asarray(updates))
        return jnp.where(malicious[:, None], -100.0, updates), state

    attack = fljax.ModelAttack(init=lambda p: (), update=spy_attack)
    runs = {}
    for name, momentum in (("off", None), ("zero", worker_momentum(0.0)), ("half", worker_momentum(BETA))):
        seen = []
        rnd = fljax.make_round(
            _constant_update,
            _spy_rule(seen),
            clients_per_round=4,
            num_malicious=1,
            jit=False,
            model_attack=attack,
            worker_momentum=momentum,
            num_clients=4,
        )
        state = rnd.init({"w": jnp.zeros(2)})
        for r in range(3):
            state, _ = rnd.step(state, data, jax.random.PRNGKey(r))
        runs[name] = seen
    for (ids_off, off), (ids_zero, zero) in zip(runs["off"], runs["zero"]):
        np.testing.assert_array_equal(ids_off, ids_zero)
        np.testing.assert_array_equal(off, zero)
    # With beta = 1/2, in round 3 the honest clients' rows the attack saw are their momenta (1 - 1/8) count.
    ids, _ = runs["half"][-1]
    saw = attack_saw[-1]
    for i, row in zip(ids, saw):
        np.testing.assert_allclose(row, np.full(2, (i + 1) * (1 - BETA**3)), rtol=1e-6)
    # ... and the malicious client's crafted row is what the rule received, not stored as its momentum.
    assert np.all(runs["half"][-1][1][ids == 0] == -100.0)


def test_make_round_needs_the_population_for_momenta():
    with pytest.raises(ValueError, match="worker_momentum needs num_clients"):
        fljax.make_round(
            _constant_update, fljax.aggregators.mean(), clients_per_round=2, worker_momentum=worker_momentum(0.9)
        )
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\), got 1.0"):
        worker_momentum(1.0)
    with pytest.raises(ValueError, match="convention must be one of ema, heavy_ball, got 'nesterov'"):
        worker_momentum(0.9, "nesterov")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(worker_momentum=1.0), "--worker_momentum must be in [0, 1), got 1.0"),
        (
            dict(worker_momentum=0.9, worker_momentum_convention="nesterov"),
            "--worker_momentum_convention must be one of ema, heavy_ball, got 'nesterov'",
        ),
    ],
)
def test_runner_refuses_bad_momentum_settings(kwargs, words):
    with pytest.raises(ValueError) as err:
        validate(ExperimentConfig(**kwargs))
    assert words in str(err.value)


def test_runner_runs_with_worker_momentum_and_carries_the_momenta():
    config = ExperimentConfig(
        dataset="digits",
        model="logreg",
        num_clients=6,
        clients_per_round=4,
        num_malicious=1,
        protocol="fedsgd",
        rounds=2,
        eval_every=2,
        attack="alie",
        aggregator="median",
        worker_momentum=0.9,
        worker_momentum_convention="heavy_ball",
    )
    exp = build(config)
    state, history = exp.train(jax.random.PRNGKey(0))
    momenta = np.asarray(state.server.momenta)
    assert momenta.shape == (6, 650)  # logreg on 8x8 digits: 64 x 10 + 10
    assert np.isfinite(momenta).all() and (np.abs(momenta).sum(1) > 0).sum() >= 4  # sampled clients hold momenta
    assert np.isfinite(np.asarray(history.evals["accuracy"])).all()
