"""The adaptive attack: optimised through mean / median / trimmed mean / Krum, the objective never
ends below its starting point's, constraints hold, honest rows stay, and it runs inside a round."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.aggregators import krum, mean, median, trimmed_mean
from fljax.attacks import AdaptiveState, adaptive, triggered_loss
from fljax.attacks.untargeted import alie_z
from fljax.experiment import ExperimentConfig, attacker_examples, build
from fljax.types import AttackContext, DataAttack
from tests.helpers import make_data, squared_loss

N, D, F = 12, 30, 3
KEY = jax.random.PRNGKey(0)
UPDATES = 1.0 + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (N, D))
MAL = jnp.arange(N) < F
RULES = {
    "mean": mean(),
    "median": median(),
    "trimmed_mean": trimmed_mean(num_byzantine=F),
    "krum": krum(num_byzantine=F),
}


@functools.lru_cache(maxsize=None)
def compiled(rule_name, **kwargs):
    """The attack's update for one rule, jitted once and reused across tests (compiles are slow)."""
    attack, rule = adaptive(**kwargs), RULES[rule_name]
    ctx = AttackContext(
        params=jnp.zeros(D),
        weights=jnp.ones(N),
        round=jnp.zeros((), jnp.int32),
        aggregator=rule,
        agg_state=rule.init(jnp.zeros(D)),
        client_ids=jnp.arange(N),
    )
    return jax.jit(lambda u, m: attack.update(u, m, attack.init(jnp.zeros(D)), KEY, ctx))


def run(rule_name, updates=UPDATES, malicious=MAL, **kwargs):
    out, state = compiled(rule_name, **kwargs)(updates, malicious)
    return np.asarray(out), AdaptiveState(*map(float, state))


def honest_stats(known=~MAL):
    h = np.asarray(UPDATES)[np.asarray(known)]
    mu = h.mean(0)
    return h, mu, mu / np.linalg.norm(mu)


def untargeted(rule_name, out):
    """-<agg - mu, mu/||mu||>, computed independently of the attack's code."""
    _, mu, u = honest_stats()
    return -float((np.asarray(fljax.aggregate(RULES[rule_name], jnp.asarray(out))) - mu) @ u)


def ball(z, r):
    return z * min(1.0, r / np.linalg.norm(z))


def start_points():
    """The candidate starting points by hand: ALIE, IPM (-0.1 mu), -mu, the attackers' own mean,
    each projected onto ||z|| <= the largest honest norm."""
    h, mu, _ = honest_stats()
    r = np.linalg.norm(h, axis=1).max()
    z = float(alie_z(N, F))  # n = 12, f = 3: s = 4, z = Phi^-1(5 / 9)
    assert z == pytest.approx(0.139710, abs=1e-5)
    own = np.asarray(UPDATES)[:F].mean(0)
    return {
        name: ball(p, r)
        for name, p in {"alie": mu + z * h.std(0), "ipm": -0.1 * mu, "negative_mean": -mu, "own": own}.items()
    }


def with_rows(z):
    return np.where(np.asarray(MAL)[:, None], z, np.asarray(UPDATES))


@pytest.mark.parametrize("name", list(RULES))
def test_objective_never_ends_below_the_start_and_constraint_holds(name):
    out, state = run(name, attack_steps=30, init_point="alie")
    before = untargeted(name, with_rows(start_points()["alie"]))
    after = untargeted(name, out)
    assert state.objective_init == pytest.approx(before, abs=1e-4)
    assert state.objective == pytest.approx(after, abs=1e-4)
    assert after >= before - 1e-4
    h, _, _ = honest_stats()
    mal = out[np.asarray(MAL)]
    np.testing.assert_array_equal(out[~np.asarray(MAL)], np.asarray(UPDATES)[~np.asarray(MAL)])
    np.testing.assert_array_equal(mal, np.broadcast_to(mal[0], mal.shape))
    assert np.linalg.norm(mal[0]) <= np.linalg.norm(h, axis=1).max() * (1 + 1e-5)


@pytest.mark.parametrize("name", ["mean", "trimmed_mean", "krum", "median"])
def test_ascent_moves_the_alie_point(name):
    """ALIE's point sits next to the honest mean; the gradient ascent must push the aggregate away."""
    _, state = run(name, attack_steps=30, init_point="alie")
    assert state.objective > state.objective_init + 0.5


def test_best_start_is_the_best_candidate_for_the_rule():
    _, state = run("krum", attack_steps=30)
    by_hand = max(untargeted("krum", with_rows(p)) for p in start_points().values())
    assert state.objective_init == pytest.approx(by_hand, abs=1e-4)
    assert state.objective >= state.objective_init


def test_optimum_under_mean_with_a_norm_constraint_is_minus_the_radius_along_mu():
    """agg is linear in z, so max -<z, u> s.t. ||z|| <= r is z = -r u."""
    h, mu, u = honest_stats()
    out, _ = run("mean", attack_steps=30, init_point="alie")
    r = np.linalg.norm(h, axis=1).max()
    np.testing.assert_allclose(out[0], -r * u, atol=2e-2 * r)


def test_distance_constraint_optimum_under_mean_is_mu_minus_the_radius_along_mu():
    """max -<z, u> s.t. ||z - mu|| <= r is z = mu - r u."""
    out, state = run("mean", attack_steps=30, constraint="distance")
    h, mu, u = honest_stats()
    r = np.linalg.norm(h - mu, axis=1).max()
    assert np.linalg.norm(out[0] - mu) <= r * (1 + 1e-5)
    np.testing.assert_allclose(out[0], mu - r * u, atol=2e-2 * r)
    assert state.objective >= state.objective_init


def test_noop_without_malicious_clients():
    out, state = run("median", malicious=jnp.zeros(N, bool), attack_steps=30, init_point="alie")
    np.testing.assert_array_equal(out, UPDATES)
    assert state == (0.0, 0.0)  # AdaptiveState(objective_init, objective)


def test_partial_knowledge_uses_only_the_attackers_own_benign_updates():
    out, _ = run("mean", attack_steps=20, knowledge="partial")
    own = np.asarray(UPDATES)[np.asarray(MAL)]
    assert np.linalg.norm(out[0]) <= np.linalg.norm(own, axis=1).max() * (1 + 1e-5)
    np.testing.assert_array_equal(out[~np.asarray(MAL)], np.asarray(UPDATES)[~np.asarray(MAL)])
    assert untargeted("mean", out) > 0  # still pushes the real aggregate against the honest direction


def test_targeted_objective_lowers_the_attackers_loss_after_the_server_step():
    target = jnp.linspace(-1.0, 1.0, D)
    loss = lambda p: jnp.sum((p - target) ** 2)
    out, state = run("mean", objective="targeted", target_loss=loss, attack_steps=60, constraint="none")
    after = float(loss(fljax.aggregate(mean(), jnp.asarray(out))))  # params = 0, server_lr = 1
    assert state.objective == pytest.approx(-after, rel=1e-4)
    assert after < 0.05 * -state.objective_init


def test_custom_optimizer_and_explicit_rule():
    out, state = run("mean", attack_steps=30, optimizer=optax.adam(0.05), rule=RULES["krum"])
    assert state.objective >= state.objective_init
    assert state.objective == pytest.approx(untargeted("krum", out), abs=1e-4)


def test_in_a_jitted_round_against_krum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    data = make_data([[2 * i, 2 * i + 1] for i in range(8)], x, y)
    client = fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=2, batch_size=2)
    rnd = fljax.make_round(
        client, krum(num_byzantine=2), clients_per_round=7, num_malicious=3, model_attack=adaptive(attack_steps=10)
    )
    state = rnd.init({"w": jnp.zeros(3)})
    for i in range(3):
        state, metrics = rnd.step(state, data, jax.random.PRNGKey(i))
        assert bool(metrics["finite"])
        if int(metrics["num_malicious"]) > 0:
            assert float(state.attack_state.objective) >= float(state.attack_state.objective_init)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(objective="chaos"), "adaptive: objective must be one of untargeted, deviation, targeted, got 'chaos'"),
        (dict(constraint="box"), "adaptive: constraint must be one of max_norm, distance, none"),
        (dict(init_point="zero"), "adaptive: init_point must be one of best, alie"),
        (dict(knowledge="some"), "adaptive: knowledge must be one of full, partial"),
        (dict(attack_steps=-1), "adaptive: attack_steps must be an integer >= 0, got -1"),
        (dict(attack_lr=0.0), "adaptive: attack_lr must be a number > 0"),
        (dict(objective="targeted"), "adaptive: objective 'targeted' needs target_loss"),
    ],
)
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adaptive(**kwargs)


def test_runner_passes_settings_by_name():
    small = dict(dataset="digits", num_clients=10, clients_per_round=7, num_malicious=2, rounds=1, attack="adaptive")
    with pytest.raises(ValueError, match="adaptive: constraint must be one of"):
        build(ExperimentConfig(constraint="cube", **small))
    exp = build(ExperimentConfig(aggregator="trimmed_mean", attack_steps=3, attack_knowledge="partial", **small))
    assert exp.round is not None


def test_triggered_loss_is_the_cross_entropy_of_the_counted_triggered_examples():
    x = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    y = np.array([0, 1, 2, 1], np.int32)
    # a toy success test: inputs + 1, target label 2, only examples whose label is not 2 count
    attack = DataAttack(
        poison=lambda x, y, m, k, a: (x, y), targeted=lambda x, y: (x + 1.0, jnp.full_like(y, 2), y != 2)
    )
    apply = lambda p, x: x @ p["w"]  # logits [B, 3]
    w = np.array([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], np.float32)
    loss = triggered_loss(apply, lambda flat: {"w": flat.reshape(2, 3)}, attack, x, y)
    logits = (x + 1.0) @ w
    ce = np.log(np.exp(logits).sum(1)) - logits[:, 2]
    assert float(loss(jnp.asarray(w.ravel()))) == pytest.approx(ce[[0, 1, 3]].mean(), rel=1e-5)
    with pytest.raises(ValueError, match="needs a targeted data attack"):
        triggered_loss(apply, None, DataAttack(poison=attack.poison), x, y)
    with pytest.raises(ValueError, match="none of the attacker's examples counts"):
        triggered_loss(apply, None, attack, x[2:3], y[2:3])


def test_runner_targeted_objective_needs_a_targeted_data_attack_and_reads_the_attackers_examples():
    small = dict(
        dataset="digits",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        rounds=1,
        attack="adaptive",
        objective="targeted",
        aggregator="median",
        attack_steps=3,
    )
    with pytest.raises(ValueError, match=r"adaptive\(objective='targeted'\) needs a targeted data attack before it"):
        build(ExperimentConfig(**small))
    with pytest.raises(ValueError, match="needs a targeted data attack"):
        build(ExperimentConfig(data_attack="label_flip_all", **small))
    exp = build(ExperimentConfig(data_attack="backdoor", target_class=0, trigger_size=2, **small))
    x, y = attacker_examples(exp.data, 2)
    ids = np.concatenate([np.asarray(exp.data.client_indices)[c, : int(exp.data.client_counts[c])] for c in (0, 1)])
    np.testing.assert_array_equal(y, np.asarray(exp.data.y)[ids[:256]])  # capped at ATTACKER_EXAMPLES
    state, history = jax.jit(exp.train.run)(exp.train.init(KEY), exp.data)
    assert np.isfinite(np.asarray(history.evals["accuracy"])).all()
    # the attacker's objective (minus its triggered loss after the step) never ends below its start
    assert float(state.server.attack_state.objective) >= float(state.server.attack_state.objective_init)
