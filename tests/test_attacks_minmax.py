"""Shejwalkar & Houmansadr's Min-Max and Min-Sum: gamma by hand, the constraints, knowledge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.attacks import min_max, min_sum
from fljax.attacks.shejwalkar import shejwalkar_update
from tests.helpers import final_accuracy as accuracy  # SMALL_RUN with overrides

U = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]])
MAL = jnp.array([True, False, False])


def run(attack, u, mal):
    return np.asarray(jax.jit(lambda u, m: fljax.apply_attack(attack, u, m))(u, mal))


def test_min_max_and_min_sum_gamma_by_hand():
    # honest [3, 4], [5, 6]: mu = [4, 5], p = -mu / sqrt(41), max pairwise squared distance 8.
    # Min-Max: 2 + 2 gamma * 9 / sqrt(41) + gamma^2 <= 8; Min-Sum: 4 + 2 gamma^2 <= 8 (row sums are 8).
    b = 9 / np.sqrt(41)
    gamma_max = -b + np.sqrt(b * b + 6)
    p = -np.array([4.0, 5.0]) / np.sqrt(41)
    np.testing.assert_allclose(run(min_max(), U, MAL)[0], [4, 5] + gamma_max * p, atol=1e-4)
    np.testing.assert_allclose(run(min_sum(), U, MAL)[0], [4, 5] + np.sqrt(2) * p, atol=1e-4)
    np.testing.assert_array_equal(run(min_max(), U, MAL)[1:], U[1:])


def constraint(objective, honest, g):
    d_m = np.sum((honest - g) ** 2, axis=1)
    pair = np.sum((honest[:, None] - honest[None]) ** 2, axis=2)
    if objective == "min_max":
        return d_m.max() <= pair.max() * (1 + 1e-5)
    return d_m.sum() <= pair.sum(1).max() * (1 + 1e-5)


@pytest.mark.parametrize("objective", ["min_max", "min_sum"])
@pytest.mark.parametrize("direction", ["unit_vec", "sign", "std"])
def test_gamma_satisfies_the_constraint_and_twice_gamma_violates_it(objective, direction):
    u = jax.random.normal(jax.random.PRNGKey(7), (12, 30)) + 0.3
    rows = jnp.arange(12) >= 3
    mu, p, gamma = jax.jit(lambda u: shejwalkar_update(u, rows, objective, direction))(u)
    honest = np.asarray(u)[3:]
    np.testing.assert_allclose(mu, honest.mean(0), rtol=1e-5, atol=1e-6)
    expected_p = {
        "unit_vec": -honest.mean(0) / np.linalg.norm(honest.mean(0)),
        "sign": -np.sign(honest.mean(0)),
        "std": -honest.std(0),
    }[direction]
    np.testing.assert_allclose(p, expected_p, rtol=1e-5, atol=1e-6)
    gamma = float(gamma)
    assert 0 < gamma < 20
    assert constraint(objective, honest, np.asarray(mu + gamma * p))
    assert not constraint(objective, honest, np.asarray(mu + 2 * gamma * p))
    assert not constraint(objective, honest, np.asarray(mu + (gamma + 1e-3) * p))  # within tau of the boundary


def test_all_attackers_send_the_same_update_and_partial_knowledge_uses_their_own_rows():
    u = jax.random.normal(jax.random.PRNGKey(1), (8, 6)) + 0.5
    mal = jnp.arange(8) < 3
    full = run(min_max(direction="sign"), u, mal)
    partial = run(min_max(direction="sign", knowledge="partial"), u, mal)
    assert np.all(full[:3] == full[0]) and np.all(partial[:3] == partial[0])
    mu, p, gamma = jax.jit(lambda u: shejwalkar_update(u, mal, "min_max", "sign"))(u)
    np.testing.assert_allclose(partial[0], mu + gamma * p, rtol=1e-5)
    np.testing.assert_allclose(mu, np.asarray(u)[:3].mean(0), rtol=1e-5)
    assert not np.allclose(full[0], partial[0])


def test_bad_parameters():
    with pytest.raises(ValueError, match="min_max: direction must be one of unit_vec, sign, std, got 'up'"):
        min_max(direction="up")
    with pytest.raises(ValueError, match="min_sum: knowledge must be one of full, partial"):
        min_sum(knowledge="half")
    with pytest.raises(ValueError, match="min_sum: gamma_init must be a number > 0, got 0"):
        min_sum(gamma_init=0)
    with pytest.raises(ValueError, match="min_max: tau must be a number > 0"):
        min_max(tau=-1.0)


def test_min_max_and_min_sum_lower_the_mean_rules_accuracy_small():
    """20 clients, 4 malicious, 12 rounds (measured: mean 0.825 -> 0.697 / 0.710)."""
    clean = accuracy(attack="none")
    assert accuracy(attack="min_max") < clean - 0.03
    assert accuracy(attack="min_sum") < clean - 0.03


@pytest.mark.slow
def test_min_max_and_min_sum_against_robust_rules_full_size():
    """100 clients, 20 malicious, 30 rounds (measured clean -> min_max / min_sum: mean 0.911 ->
    0.786 / 0.762, Krum 0.789 -> 0.684 / 0.720, trimmed mean 0.895 -> 0.828 / 0.816, median
    0.890 -> 0.869 / 0.875)."""
    full = dict(num_clients=100, clients_per_round=100, num_malicious=20, rounds=30, eval_every=30, local_steps=None)
    for rule, margin in (("mean", 0.05), ("krum", 0.05), ("trimmed_mean", 0.05), ("median", 0.01)):
        clean = accuracy(attack="none", aggregator=rule, **full)
        for attack in ("min_max", "min_sum"):
            assert accuracy(attack=attack, aggregator=rule, **full) < clean - margin, (rule, attack)
