"""Fang et al.'s Krum and Trim attacks against hand-computed cases and the real Krum rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import krum
from fljax.attacks import fang_krum, fang_trim
from fljax.attacks.fang import krum_lambda_bound
from tests.helpers import final_accuracy as accuracy  # SMALL_RUN with overrides

D = 20
MU0 = 0.1 * np.sign(np.sin(np.arange(D) + 1.0)).astype(np.float32)


def krum_cohort(n=10, f=2, seed=0, spread=0.3):
    """Honest updates whose spread dominates their mean, as for stochastic gradients (Krum cannot
    be fooled by -lambda s when the honest cluster sits far from the origin, the global model)."""
    u = MU0 + spread * np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, D)))
    return jnp.asarray(u, jnp.float32), jnp.arange(n) < f


def run(attack, u, mal, key=None):
    """``fljax.apply_attack`` under jit (one compile instead of many eager dispatches); key 0 by default."""
    key = jax.random.PRNGKey(0) if key is None else key
    return jax.jit(lambda u, m, k: fljax.apply_attack(attack, u, m, k))(u, mal, key)


def krum_weights(updates, f):
    """The real rule's ``info["weights"]`` (one-hot on the update Krum selects)."""
    n, d = updates.shape
    ctx = fljax.AggregationContext(jnp.ones(n), jax.random.PRNGKey(0), jnp.arange(n), jnp.zeros(d), jnp.zeros(d))
    return np.asarray(jax.jit(lambda x: krum(num_byzantine=f).update(x, (), ctx)[2]["weights"])(updates))


def paper_bound(honest: np.ndarray, m: int, c: int) -> float:
    """Fang et al.'s bound in update space, straight from the formula with numpy."""
    r, d = honest.shape
    dist = np.linalg.norm(honest[:, None] - honest[None], axis=2)
    sums = [np.sort(np.delete(dist[i], i))[: m - c - 2].sum() for i in range(r)]
    return min(sums) / ((m - 2 * c - 1) * np.sqrt(d)) + np.linalg.norm(honest, axis=1).max() / np.sqrt(d)


def test_lambda_bound_matches_the_paper_formula():
    u, mal = krum_cohort()
    honest = np.asarray(u)[2:]
    sq = np.sum((np.asarray(u)[:, None] - np.asarray(u)[None]) ** 2, axis=2)
    got = jax.jit(lambda sq, u, m: krum_lambda_bound(sq, jnp.linalg.norm(u, axis=1), m, 10, 2, D))(sq, u, ~mal)
    assert float(got) == pytest.approx(paper_bound(honest, 10, 2), rel=1e-5)


def test_fang_krum_update_is_selected_by_krum_and_lambda_is_the_first_halving_that_works():
    u, mal = krum_cohort()
    out = run(fang_krum(num_byzantine=2), u, mal)
    s = np.sign(np.asarray(u)[2:].mean(0))
    crafted = np.asarray(out)[:2]
    lam = -crafted[0] @ s / len(s)
    assert lam > 0
    np.testing.assert_allclose(
        crafted, np.broadcast_to(-lam * s, (2, D)), rtol=1e-6
    )  # w1' = w_Re - lambda s, all equal
    np.testing.assert_array_equal(np.asarray(out)[2:], np.asarray(u)[2:])
    assert krum_weights(out, 2)[:2].sum() == 1.0  # Krum picks a crafted update
    # lambda = bound / 2^k, and with 2 * lambda (the previous try) Krum picked an honest update
    k = np.log2(paper_bound(np.asarray(u)[2:], 10, 2) / lam)
    assert k == pytest.approx(round(k), abs=1e-4) and round(k) >= 1
    doubled = jnp.where(mal[:, None], -2 * lam * jnp.asarray(s), u)
    assert krum_weights(doubled, 2)[:2].sum() == 0.0


def test_fang_krum_distinct_attackers_sit_within_epsilon():
    u, mal = krum_cohort(n=12, f=3)
    out = np.asarray(run(fang_krum(num_byzantine=3, colluding=False, epsilon=0.01), u, mal, jax.random.PRNGKey(1)))
    s = np.sign(np.asarray(u)[3:].mean(0))
    lam = -out[0] @ s / len(s)
    np.testing.assert_allclose(out[0], -lam * s, rtol=1e-6)
    gaps = np.linalg.norm(out[1:3] - out[0], axis=1)
    assert np.all(gaps <= 0.01 + 1e-6) and np.all(gaps > 0) and not np.allclose(out[1], out[2])
    assert krum_weights(jnp.asarray(out), 3)[:3].sum() == 1.0


def test_fang_krum_partial_knowledge_uses_the_attackers_own_updates():
    u, mal = krum_cohort(n=12, f=4, seed=2)
    u = u.at[:4].set(-jnp.abs(u[:4]) - 0.1)  # attackers' own benign updates: all negative
    s_partial = np.sign(np.asarray(u)[:4].mean(0))
    s_full = np.sign(np.asarray(u)[4:].mean(0))
    assert not np.array_equal(s_partial, s_full)
    partial = np.asarray(run(fang_krum(num_byzantine=2, knowledge="partial"), u, mal))
    full = np.asarray(run(fang_krum(num_byzantine=2), u, mal))
    np.testing.assert_array_equal(np.sign(partial[0]), -s_partial)
    np.testing.assert_array_equal(np.sign(full[0]), -s_full)


def trim_cohort():
    # columns: (s > 0, w_min > 0), (s > 0, w_min < 0), (s < 0, w_max > 0), (s < 0, w_max < 0)
    honest = np.array(
        [[1.0, 2.0, -1.0, -3.0], [2.0, -1.0, -2.0, -1.0], [3.0, 3.0, 1.0, -2.0], [4.0, 1.0, -3.0, -4.0]], np.float32
    )
    attackers = np.full((3, 4), 7.0, np.float32)
    return jnp.asarray(np.concatenate([attackers, honest])), jnp.arange(7) < 3


def test_fang_trim_full_knowledge_values_lie_in_the_papers_intervals():
    u, mal = trim_cohort()
    out = np.asarray(run(fang_trim(), u, mal, jax.random.PRNGKey(0)))[:3]
    honest = np.asarray(u)[3:]
    w_max, w_min = honest.max(0), honest.min(0)
    # s > 0 (columns 0, 1): below w_min; w_min = 1 > 0 -> [w_min / 2, w_min]; w_min = -1 -> [2 w_min, w_min]
    assert np.all((out[:, 0] >= 0.5) & (out[:, 0] <= 1.0))
    assert np.all((out[:, 1] >= -2.0) & (out[:, 1] <= -1.0))
    # s < 0 (columns 2, 3): above w_max; w_max = 1 > 0 -> [w_max, 2 w_max]; w_max = -1 -> [w_max, w_max / 2]
    assert np.all((out[:, 2] >= 1.0) & (out[:, 2] <= 2.0))
    assert np.all((out[:, 3] >= -1.0) & (out[:, 3] <= -0.5))
    assert np.all(out[:, :2] <= w_min[:2]) and np.all(out[:, 2:] >= w_max[2:])
    assert len({tuple(r) for r in out}) == 3  # per-attacker samples (the paper)
    same = np.asarray(run(fang_trim(colluding=True), u, mal, jax.random.PRNGKey(0)))[:3]
    assert np.all(same == same[0])


def test_fang_trim_partial_knowledge_uses_mu_plus_3_to_4_sigma_of_the_attackers_updates():
    u, mal = trim_cohort()
    own = np.array([[1.0, -2.0, 0.0, 5.0], [3.0, -4.0, 2.0, 5.0], [2.0, -3.0, 4.0, 5.0]], np.float32)
    u = u.at[:3].set(own)
    out = np.asarray(run(fang_trim(knowledge="partial", b=3.0), u, mal, jax.random.PRNGKey(2)))[:3]
    mu, sd = own.mean(0), own.std(0)
    up = mu <= 0  # s <= 0: [mu + 3 sd, mu + 4 sd]; s > 0: [mu - 4 sd, mu - 3 sd]
    lo = np.where(up, mu + 3 * sd, mu - 4 * sd)
    hi = np.where(up, mu + 4 * sd, mu - 3 * sd)
    assert np.all((out >= lo - 1e-5) & (out <= hi + 1e-5))
    np.testing.assert_allclose(out[:, 3], 5.0)  # sigma = 0: the interval is the point mu


def test_bad_parameters_and_requirement():
    with pytest.raises(ValueError, match="fang_trim: b must be a number > 1, got 1"):
        fang_trim(b=1)
    with pytest.raises(ValueError, match="fang_krum: knowledge must be one of full, partial"):
        fang_krum(knowledge="none")
    with pytest.raises(ValueError, match="fang_krum: epsilon must be a number > 0"):
        fang_krum(epsilon=0.0)
    with pytest.raises(ValueError, match="fang_krum: colluding must be True or False"):
        fang_krum(colluding=1)
    with pytest.raises(ValueError, match="fang_krum: num_byzantine must be an integer >= 0"):
        fang_krum(num_byzantine=-1)
    with pytest.raises(
        ValueError, match="fang_krum: Krum needs n > 2f \\+ 2 clients per round; got n=10, num_byzantine f=4"
    ):
        fang_krum(num_byzantine=4).requirement(10, 1)
    fang_krum().requirement(10, 3)


def test_fang_krum_defeats_krum_small():
    """20 clients, 4 malicious, 12 rounds (measured: Krum 0.759 -> 0.014 under fang_krum)."""
    clean = accuracy(attack="none", aggregator="krum")
    assert clean > 0.6
    assert accuracy(attack="fang_krum", aggregator="krum") < clean - 0.2


@pytest.mark.slow
def test_fang_attacks_defeat_their_rules_full_size():
    """100 clients, 20 malicious, 30 rounds (measured: Krum 0.789 -> 0.083 under fang_krum;
    trimmed mean 0.895 -> 0.771 and median 0.890 -> 0.876 under fang_trim)."""
    full = dict(num_clients=100, clients_per_round=100, num_malicious=20, rounds=30, eval_every=30, local_steps=None)
    clean = accuracy(attack="none", aggregator="krum", **full)
    assert accuracy(attack="fang_krum", aggregator="krum", **full) < clean - 0.2
    clean = accuracy(attack="none", aggregator="trimmed_mean", **full)
    assert accuracy(attack="fang_trim", aggregator="trimmed_mean", **full) < clean - 0.05
    clean = accuracy(attack="none", aggregator="median", **full)
    assert accuracy(attack="fang_trim", aggregator="median", **full) < clean
