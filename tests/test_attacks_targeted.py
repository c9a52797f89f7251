"""Targeted model poisoning: boosting, PGD, Neurotoxin and constrain-and-scale against hand
computations on a linear model, honest rows untouched, and the runner's wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from experiments.run import run_experiment
from fljax.aggregators import mean
from fljax.attacks import (
    constrain_and_scale,
    constrain_and_scale_training,
    model_replacement,
    neurotoxin,
    neurotoxin_training,
    pgd,
    pgd_training,
)
from fljax.attacks.targeted import boost_factor, constrain_loss, neurotoxin_mask
from fljax.client import Batch, ClientData
from fljax.experiment import ExperimentConfig, build
from tests.helpers import make_data, squared_loss

U = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0], [0.0, 1.0]])
MAL = jnp.array([True, False, True, False])
KEY = jax.random.PRNGKey(0)

X = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [1.0, 1.0, 0.0], [2.0, -1.0, 1.0]], np.float32)
Y = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
G = np.array([0.2, -0.1, 0.3], np.float32)
CLIENT = ClientData(jnp.asarray(X), jnp.asarray(Y), jnp.arange(4), jnp.asarray(4))


def grad(w, y=Y):
    return ((X @ w - y)[:, None] * X).mean(0)


def test_model_replacement_scales_malicious_rows_by_gamma():
    out = fljax.apply_attack(model_replacement(gamma=3.0), U, MAL)
    np.testing.assert_allclose(out, [[3.0, -6.0], [3.0, 4.0], [15.0, 18.0], [0.0, 1.0]])
    np.testing.assert_array_equal(fljax.apply_attack(model_replacement(gamma=3.0), U, jnp.zeros(4, bool)), U)


def test_auto_gamma_replaces_the_global_model_under_fedavg():
    weights = jnp.array([1.0, 2.0, 3.0, 4.0])
    eta = 0.5
    assert float(boost_factor(MAL, weights, None, eta)) == pytest.approx(10.0 / (eta * 4.0))
    target = jnp.array([0.7, -1.2])  # X - G of both attackers; honest clients send zeros
    updates = jnp.where(MAL[:, None], target, 0.0)
    out = fljax.apply_attack(model_replacement(server_lr=eta), updates, MAL, weights=weights)
    new_params = eta * fljax.aggregate(mean(), out, weights=weights)  # G + eta * aggregate, G = 0
    np.testing.assert_allclose(new_params, target, rtol=1e-6)


def test_pgd_send_projects_then_boosts():
    out = fljax.apply_attack(pgd(norm_bound=2.0, gamma=2.0), U, MAL)
    row0 = np.array([1.0, -2.0]) * 2.0 / np.sqrt(5.0)
    row2 = np.array([5.0, 6.0]) * 2.0 / np.sqrt(61.0)
    np.testing.assert_allclose(out, [2 * row0, [3.0, 4.0], 2 * row2, [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(fljax.apply_attack(neurotoxin(), U, MAL), U)  # gamma 1: as trained


def test_pgd_training_projects_every_step_onto_the_ball():
    lr, steps, eps = 0.3, 4, 0.25
    w = G.copy()
    for _ in range(steps):
        d = w - lr * grad(w) - G
        w = G + d * min(1.0, eps / np.linalg.norm(d))
    update = pgd_training(squared_loss, optax.sgd(lr), norm_bound=eps, local_steps=steps, batch_size=4)
    delta = np.asarray(update({"w": jnp.asarray(G)}, CLIENT, KEY)["w"])
    np.testing.assert_allclose(delta, w - G, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(delta) <= eps * (1 + 1e-5)
    unprojected = fljax.fedavg(squared_loss, optax.sgd(lr), local_steps=steps, batch_size=4)(
        {"w": jnp.asarray(G)}, CLIENT, KEY
    )
    assert np.linalg.norm(unprojected["w"]) > 2 * eps  # the ball was active


def test_neurotoxin_mask_keeps_the_smallest_gradient_coordinates():
    g = {"a": jnp.array([0.5, -0.01, 2.0]), "b": jnp.array([[-0.2, 0.03]])}
    m = neurotoxin_mask(g, 0.6)  # floor(0.6 * 5) = 3 smallest |g|: -0.01, 0.03, -0.2
    np.testing.assert_array_equal(m["a"], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(m["b"], [[1.0, 1.0]])


def test_neurotoxin_training_by_hand_and_zero_outside_the_mask():
    lr, steps, ratio = 0.2, 3, 0.67  # floor(0.67 * 3) = 2 coordinates kept
    y_poison = Y + 1.0
    mask = np.zeros(3)
    mask[np.argsort(np.abs(grad(G)))[:2]] = 1.0  # from the CLEAN gradient at G
    w = G.copy()
    for _ in range(steps):
        w = w - lr * mask * grad(w, y_poison)  # steps on the poisoned batches
    update = neurotoxin_training(squared_loss, optax.sgd(lr), mask_ratio=ratio, local_steps=steps, batch_size=4)
    delta = np.asarray(update({"w": jnp.asarray(G)}, CLIENT, KEY, lambda x, y, m, k: (x, y + 1.0))["w"])
    np.testing.assert_allclose(delta, w - G, rtol=1e-5, atol=1e-6)
    assert np.all(delta[mask == 0] == 0.0) and np.all(delta[mask == 1] != 0.0)


def test_constrain_loss_has_the_distance_term():
    w = np.array([1.0, 0.5, -0.5], np.float32)
    alpha = 0.3
    batch = Batch(jnp.asarray(X), jnp.asarray(Y), jnp.ones(4, bool))
    expected = alpha * 0.5 * np.mean((X @ w - Y) ** 2) + (1 - alpha) * np.linalg.norm(w - G)
    loss = constrain_loss(squared_loss, {"w": jnp.asarray(G)}, alpha)
    assert float(loss({"w": jnp.asarray(w)}, batch)) == pytest.approx(expected, rel=1e-6)
    g = jax.grad(loss)({"w": jnp.asarray(G)}, batch)["w"]  # at w = G: finite, the task gradient only
    np.testing.assert_allclose(g, alpha * grad(G), rtol=1e-5)


def test_constrain_and_scale_training_by_hand():
    lr, steps, alpha = 0.4, 3, 0.5
    w = G.copy()
    for _ in range(steps):
        d = w - G
        dist_grad = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else 0.0 * d
        w = w - lr * (alpha * grad(w) + (1 - alpha) * dist_grad)
    update = constrain_and_scale_training(squared_loss, optax.sgd(lr), alpha=alpha, local_steps=steps, batch_size=4)
    delta = np.asarray(update({"w": jnp.asarray(G)}, CLIENT, KEY)["w"])
    np.testing.assert_allclose(delta, w - G, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fljax.apply_attack(constrain_and_scale(gamma=4.0), U, MAL)[0], 4.0 * U[0])


def test_malicious_training_in_a_round_leaves_honest_rows_untouched():
    data = make_data([[0, 1], [2, 3]], X, Y)
    honest = fljax.fedavg(squared_loss, optax.sgd(0.3), local_steps=3, batch_size=2)

    def round_updates(malicious_client_update):
        captured = []
        spy = fljax.ModelAttack(
            init=lambda p: (), update=lambda u, m, s, k, c: captured.append((u, c.client_ids)) or (u, s)
        )
        rnd = fljax.make_round(
            honest,
            mean(),
            clients_per_round=2,
            num_malicious=1,
            model_attack=spy,
            jit=False,
            malicious_client_update=malicious_client_update,
        )
        rnd.step(rnd.init({"w": jnp.asarray(G)}), data, KEY)
        u, ids = (np.asarray(a) for a in captured[0])
        return u[np.argsort(ids)]

    plain = round_updates(None)
    attacked = round_updates(pgd_training(squared_loss, optax.sgd(0.3), norm_bound=0.01, local_steps=3, batch_size=2))
    np.testing.assert_array_equal(attacked[1], plain[1])  # client 1 is honest
    assert np.linalg.norm(attacked[0]) <= 0.01 * (1 + 1e-5) < np.linalg.norm(plain[0])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: model_replacement(gamma=0.0), "model_replacement: gamma must be a number > 0, got 0.0"),
        (lambda: pgd(norm_bound=-1.0), "pgd: norm_bound must be a number > 0"),
        (
            lambda: constrain_and_scale_training(squared_loss, optax.sgd(0.1), alpha=1.5, local_steps=1),
            r"constrain_and_scale: alpha must be in \(0, 1\], got 1.5",
        ),
        (
            lambda: neurotoxin_training(squared_loss, optax.sgd(0.1), mask_ratio=0.0, local_steps=1),
            "neurotoxin: mask_ratio must be a number > 0",
        ),
        (
            lambda: pgd_training(squared_loss, optax.sgd(0.1), local_steps=1, protocol="fedsgd"),
            "pgd: changes local training, so it needs protocol fedavg",
        ),
        (lambda: pgd_training(squared_loss, optax.sgd(0.1)), "fedavg: give exactly one of local_steps or local_epochs"),
    ],
)
def test_bad_hyper_parameters(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_runner_wires_local_training_and_rejects_fedsgd():
    small = dict(
        dataset="digits",
        num_clients=10,
        clients_per_round=5,
        num_malicious=2,
        rounds=1,
        aggregator="mean",
        data_attack="backdoor",
        target_class=0,
        trigger_size=3,
    )
    with pytest.raises(ValueError, match="neurotoxin: changes local training, so it needs protocol fedavg"):
        build(ExperimentConfig(attack="neurotoxin", protocol="fedsgd", **small))
    with pytest.raises(ValueError, match="constrain_and_scale: alpha must be in"):
        build(ExperimentConfig(attack="constrain_and_scale", alpha=2.0, **small))
    with pytest.raises(
        ValueError, match="--norm_bound does not apply to --attack=model_replacement --data_attack=backdoor"
    ):
        build(ExperimentConfig(attack="model_replacement", norm_bound=1.0, **small))


def test_model_replacement_with_backdoor_end_to_end():
    """Two of twenty clients (0-2 per round of 10), boosted by n/eta, plant the backdoor in a few
    rounds (the same run without boosting, --attack=none, ends at ~0.2)."""
    config = ExperimentConfig(
        dataset="mnist5k",
        model="logreg",
        attack="model_replacement",
        data_attack="backdoor",
        target_class=0,
        num_clients=20,
        clients_per_round=10,
        num_malicious=2,
        aggregator="mean",
        rounds=6,
        eval_every=3,
        local_steps=10,
        local_epochs=None,
    )
    results = run_experiment(build(config), log=lambda *a: None)
    assert results["evals"]["attack_success_rate"][-1] > 0.85
    assert results["final"]["accuracy"] > 0.8
