"""The threat model: knowledge (full vs partial statistics), attack schedules, collusion, and the
runner's flags for them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fljax
from fljax.attacks import MODEL_ATTACKS, scheduled, zero
from fljax.attacks.threat import ball_offsets, masked_mean_std, observed_rows
from fljax.experiment import ExperimentConfig, build_attacks
from fljax.types import AttackContext, ModelAttack
from tests.helpers import make_data

U = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]])
MAL = jnp.array([True, False, False])
KEY0 = jax.random.PRNGKey(0)
KNOWING = ["ipm", "alie", "fang_krum", "fang_trim", "min_max", "min_sum"]


def ctx(n, d, round_):
    return AttackContext(jnp.zeros(d), jnp.ones(n), jnp.asarray(round_, jnp.int32), None, None, jnp.arange(n))


def test_observed_rows_and_masked_statistics():
    np.testing.assert_array_equal(observed_rows(MAL, "full"), [False, True, True])
    np.testing.assert_array_equal(observed_rows(MAL, "partial"), [True, False, False])
    u = U.at[0].set(jnp.nan)  # rows outside the mask may hold anything
    mu, sd = masked_mean_std(u, ~MAL)
    np.testing.assert_allclose(mu, [4.0, 5.0])
    np.testing.assert_allclose(sd, [1.0, 1.0])  # population std
    mu, sd = masked_mean_std(u, jnp.zeros(3, bool))
    np.testing.assert_array_equal(mu, [0.0, 0.0])
    np.testing.assert_array_equal(sd, [0.0, 0.0])


@pytest.mark.parametrize("name", KNOWING)
def test_partial_knowledge_ignores_honest_rows_and_full_knowledge_ignores_the_attackers_own(name):
    u = jax.random.normal(jax.random.PRNGKey(0), (10, 8)) + 0.2
    mal = jnp.arange(10) < 4
    other = u + 3.0 * jax.random.normal(jax.random.PRNGKey(1), u.shape)
    new_honest = jnp.where(mal[:, None], u, other)
    new_own = jnp.where(mal[:, None], other, u)

    def crafted(knowledge):  # one compile per knowledge, run on the three cohorts at once
        attack = MODEL_ATTACKS[name](knowledge=knowledge)
        one = lambda x: fljax.apply_attack(attack, x, mal, jax.random.PRNGKey(2))[:4]
        return np.asarray(jax.jit(jax.vmap(one))(jnp.stack([u, new_honest, new_own])))

    partial, partial_new_honest, partial_new_own = crafted("partial")
    np.testing.assert_allclose(partial_new_honest, partial, rtol=1e-5, atol=1e-6)
    assert not np.allclose(partial_new_own, partial)
    full, _, full_new_own = crafted("full")
    np.testing.assert_allclose(full_new_own, full, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full, partial)


def counting(attack: ModelAttack) -> ModelAttack:
    """``attack`` with a state counting the calls that really ran."""
    return ModelAttack(
        init=lambda p: jnp.zeros((), jnp.int32), update=lambda u, m, s, k, c: (attack.update(u, m, (), k, c)[0], s + 1)
    )


@pytest.mark.parametrize(
    "kwargs, active",
    [
        (dict(), range(10)),
        (dict(start_round=2, every=3), [2, 5, 8]),
        (dict(start_round=4, single_shot=True), [4]),
        (dict(rounds=[1, 7, 7]), [1, 7]),
    ],
)
def test_schedule_attacks_only_in_the_chosen_rounds(kwargs, active):
    attack = scheduled(counting(zero()), **kwargs)
    step = jax.jit(lambda s, r: attack.update(U, MAL, s, jax.random.PRNGKey(0), ctx(3, 2, r)))
    state = attack.init(jnp.zeros(2))
    for r in range(10):
        out, state = step(state, r)
        expected = np.asarray(U).copy()
        if r in active:
            expected[0] = 0.0
        np.testing.assert_array_equal(out, expected)
    assert int(state) == len(list(active))  # the state only moves in attacked rounds


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="scheduled: start_round must be an integer >= 0, got -1"):
        scheduled(zero(), start_round=-1)
    with pytest.raises(ValueError, match="scheduled: every must be an integer >= 1, got 0"):
        scheduled(zero(), every=0)
    with pytest.raises(ValueError, match="scheduled: single_shot must be True or False"):
        scheduled(zero(), single_shot="yes")
    with pytest.raises(ValueError, match="scheduled: rounds must be a non-empty list"):
        scheduled(zero(), rounds=[])


def test_ball_offsets_stay_within_the_radius():
    off = np.asarray(ball_offsets(jax.random.PRNGKey(0), 50, 7, 0.1))
    norms = np.linalg.norm(off, axis=1)
    assert np.all(norms <= 0.1 + 1e-7) and norms.max() > 0.05 and len(set(norms)) == 50


def attack_from(**overrides):
    config = dataclasses.replace(ExperimentConfig(num_clients=10, clients_per_round=10, num_malicious=2), **overrides)
    return build_attacks(config, num_classes=10)


def test_runner_flags_reach_the_attack():
    _, ipm_partial = attack_from(attack="ipm", attack_scale=2.0, attack_knowledge="partial")
    mal = jnp.array([True, False, True])
    np.testing.assert_allclose(fljax.apply_attack(ipm_partial, U, mal)[0], [-6.0, -4.0])  # -2 * mean of rows 0, 2
    _, alie_fixed = attack_from(attack="alie", alie_z=1.0)
    np.testing.assert_allclose(fljax.apply_attack(alie_fixed, U, MAL)[0], [5.0, 6.0])  # mu + 1 * sigma
    _, mimic_first = attack_from(attack="mimic", mimic_choice="first")
    np.testing.assert_array_equal(fljax.apply_attack(mimic_first, U, MAL)[0], [3.0, 4.0])
    with pytest.raises(ValueError, match="--attack_knowledge does not apply to --attack=sign_flip"):
        attack_from(attack="sign_flip", attack_knowledge="partial")
    with pytest.raises(ValueError, match="min_max: direction must be one of"):
        attack_from(attack="min_max", attack_direction="diagonal")
    with pytest.raises(ValueError, match="fang_trim: b must be a number > 1"):
        attack_from(attack="fang_trim", fang_b=0.5)
    with pytest.raises(ValueError, match="--attack_colluding must be a boolean"):
        attack_from(attack="fang_krum", attack_colluding="yes")
    with pytest.raises(ValueError, match="fang_krum: colluding must be a boolean"):  # the scoped form, checked the same
        attack_from(attack="fang_krum(colluding='yes')")


def test_runner_schedule_flags_schedule_the_attack():
    _, attack = attack_from(attack="zero", attack_start_round=3, attack_every=2)
    out = [np.asarray(attack.update(U, MAL, (), jax.random.PRNGKey(0), ctx(3, 2, r))[0])[0] for r in range(7)]
    np.testing.assert_array_equal(out, [[1, -2], [1, -2], [1, -2], [0, 0], [1, -2], [0, 0], [1, -2]])
    assert [bool(attack.active(r)) for r in range(7)] == [False, False, False, True, False, True, False]
    # a data attack alone is scheduled through a no-op model attack carrying the schedule
    poison, carrier = attack_from(attack="label_flip", attack_start_round=2, attack_single_shot=True)
    assert poison is not None and [bool(carrier.active(r)) for r in range(4)] == [False, False, True, False]
    np.testing.assert_array_equal(carrier.update(U, MAL, (), KEY0, ctx(3, 2, 2))[0], U)
    with pytest.raises(ValueError, match="scheduled: every must be an integer >= 1"):
        attack_from(attack="zero", attack_every=0)
    with pytest.raises(
        ValueError, match="--continuous_data_poisoning applies only to a model attack paired with a data attack"
    ):
        attack_from(attack="model_replacement", data_attack="backdoor", continuous_data_poisoning=True)


def test_scheduled_nan_updates_reach_the_round_only_when_scheduled_small():
    from experiments.run import run_experiment
    from fljax.experiment import build

    config = ExperimentConfig(
        dataset="digits",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        rounds=6,
        eval_every=6,
        local_steps=1,
        attack="nan",
        aggregator="median",
        attack_start_round=1,
        attack_every=2,
    )
    history = run_experiment(build(config), log=lambda m: None)["history"]
    assert history["nonfinite_updates"] == [0, 2, 0, 2, 0, 2]


# ---- Which clients are malicious is independent of the data (issue 12, item 1) ----

MIX_LABELS = np.repeat(np.arange(10), 400)  # 4,000 examples sorted by label, like the embedded files
PARTITION_CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.3}),
    ("shards", {"shards_per_client": 2}),
    ("bias", {"p": 0.5}),
    ("bias", {"p": 0.9}),
    ("natural", {}),
]
# natural clients whose order follows their data: 200 writers of growing size (1 to 30 examples) cut from the
# label-sorted examples, so the writer's number tells its labels and its size
WRITERS = np.repeat(np.arange(200), np.diff((np.linspace(0, 1, 201) ** 1.5 * 4000).astype(int)))


def _mix(indices, counts, clients):
    """Label shares and mean example count of the pooled examples of ``clients``."""
    own = np.concatenate([indices[c, : counts[c]] for c in clients])
    return np.bincount(MIX_LABELS[own], minlength=10) / max(len(own), 1), counts[clients].mean()


@pytest.mark.parametrize("method, kw", PARTITION_CASES)
def test_malicious_ids_hold_the_same_label_mix_as_honest_ones(method, kw):
    """The runner's malicious clients are ids 0..m-1 (100 clients, 20 malicious): over 30 seeds
    their pooled label shares (and example counts) must match the honest clients' within sampling
    error (|t| < 5 per label). Before the fix the bias partition gave ids 0..19 exactly groups 0
    and 1 (~27% of labels 0 and 1 each, against ~5% for honest clients)."""
    from fljax.data import natural, partition

    mal, hon = np.arange(20), np.arange(20, 100)
    diffs, count_diffs = [], []
    for seed in range(30):
        key = jax.random.PRNGKey(seed)
        if method == "natural":
            idx, counts = natural(key, WRITERS, 100)
        else:
            idx, counts = partition(key, MIX_LABELS, 100, method, num_classes=10, **kw)
        (m_mix, m_count), (h_mix, h_count) = _mix(idx, counts, mal), _mix(idx, counts, hon)
        diffs.append(m_mix - h_mix)
        count_diffs.append(m_count - h_count)
    for d in (np.asarray(diffs), np.asarray(count_diffs)[:, None]):
        t = d.mean(0) / (d.std(0, ddof=1) / np.sqrt(len(d)) + 1e-12)
        assert np.all(np.abs(t) < 5), (method, kw, np.round(d.mean(0), 3), np.round(t, 1))


# ---- A data attack poisons a share of the REAL examples of each batch (issue 12, item 2) ----


def _recorder(n: int) -> fljax.Aggregator:
    """The mean, keeping each client's last update in its state (row = population id)."""

    def update(u, state, ctx):
        return jnp.mean(u, 0), state.at[ctx.client_ids].set(u), {"weights": jnp.full(n, 1.0 / n)}

    return fljax.Aggregator(init=lambda p: jnp.zeros((n, p.shape[0])), update=update)


def _counting_loss(target: int):
    """Summed over the real examples (not averaged): ``w0 * [y == target] + w1 * sum(x)``, so the
    client's negative gradient counts the real examples labelled ``target`` (w0) and sums their
    inputs (w1): with clean inputs all zero, the stamped trigger pixels."""

    def loss(params, batch, key=None):
        per = params["w"][0] * (batch.y == target) + params["w"][1] * jnp.sum(batch.x.reshape(len(batch.y), -1), 1)
        return jnp.sum(jnp.where(batch.mask, per, 0.0))

    return loss


SIZES = (3, 12)  # a small and a large client: FedSGD pads the small one to 12
TRIGGERS = {
    "backdoor": lambda: fljax.attacks.backdoor(0, trigger_size=2, poison_fraction=0.5),
    "dba": lambda: fljax.attacks.dba(0, num_parts=2, trigger_size=2, poison_fraction=0.5),
    "feature_trigger": lambda: fljax.attacks.feature_trigger(
        0, trigger_features="0,2", trigger_values=1.0, poison_fraction=0.5
    ),
}


# CI covers each trigger and each protocol once; --runslow the other three pairs.
@pytest.mark.parametrize(
    "name,protocol",
    [
        ("backdoor", "fedavg"),
        ("dba", "fedsgd"),
        ("feature_trigger", "fedavg"),
        *(
            pytest.param(n, p, marks=pytest.mark.slow)
            for n, p in (("backdoor", "fedsgd"), ("dba", "fedavg"), ("feature_trigger", "fedsgd"))
        ),
    ],
)
def test_poison_fraction_is_a_share_of_the_real_examples_of_each_batch(name, protocol):
    """Two malicious clients with 3 and 12 examples, fraction 0.5. FedSGD (one batch padded to 12):
    round(0.5 * 3) = 2 and 6 poisoned; FedAvg with batches of 8 (1 epoch: batches of 3, and of 8 + 4):
    2, and 4 + 2 = 6. Before the fix the fraction was taken of the padded batch: 3 (all) and 6 under
    FedSGD, 3 (all) and 4 + 4 = 8 under FedAvg."""
    from fljax.client import fedavg, fedsgd

    attack = TRIGGERS[name]()
    shape = (5,) if name == "feature_trigger" else (6, 6, 1)
    total = sum(SIZES)
    data = make_data(
        [list(range(SIZES[0])), list(range(SIZES[0], total))], np.zeros((total, *shape)), np.ones(total, np.int32)
    )
    loss = _counting_loss(target=0)
    update = (
        fedsgd(loss, optax.sgd(1.0))
        if protocol == "fedsgd"
        else fedavg(loss, optax.sgd(1.0), local_epochs=1, batch_size=8)
    )
    rnd = fljax.make_round(update, _recorder(2), clients_per_round=2, num_malicious=2, data_attack=attack)
    state = rnd.step(rnd.init({"w": jnp.zeros(2)}), data, jax.random.PRNGKey(0))[0]
    counts, pixels = -np.asarray(state.agg_state).T  # per client: poisoned real examples, their stamped pixel sum
    np.testing.assert_array_equal(counts, [2, 6])
    one = jnp.zeros((1, *shape))
    stamp = [float(jnp.sum(attack.poison(one, jnp.ones(1, jnp.int32), jnp.ones(1, bool), KEY0, c)[0])) for c in (0, 1)]
    np.testing.assert_allclose(pixels, counts * np.asarray(stamp))
    assert min(stamp) > 0


def test_poisoned_rows_skip_padding_wherever_it_sits():
    from fljax.attacks.backdoor import poisoned_rows

    mask = jnp.array([False, True, True, False, True, True, True, False])  # 5 real examples
    np.testing.assert_array_equal(poisoned_rows(0.5, mask), [False, True, True, False, True, False, False, False])
    np.testing.assert_array_equal(poisoned_rows(1.0, mask), mask)
    np.testing.assert_array_equal(poisoned_rows(0.5, jnp.zeros(4, bool)), [False] * 4)


# ---- A schedule gates the WHOLE attack (issue 12, item 4) ----


def _scheduled_rounds(num_malicious, rounds=3, continuous=False):
    """Per round, every client's update (row = id) under a backdoor + PGD attack (poisoned data,
    PGD local training, boosted PGD sends) scheduled for round 2 only."""
    from fljax.attacks import backdoor, pgd, pgd_training
    from fljax.client import classification_loss, fedavg

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (48, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, 48)
    data = make_data([list(range(i, 48, 6)) for i in range(6)], x, y)
    loss = classification_loss(lambda p, xb: xb.reshape(len(xb), -1) @ p["w"] + p["b"])
    honest = fedavg(loss, optax.sgd(0.5), local_steps=3, batch_size=4)
    rnd = fljax.make_round(
        honest,
        _recorder(6),
        clients_per_round=6,
        num_malicious=num_malicious,
        data_attack=backdoor(0, trigger_size=2, poison_fraction=0.5),
        model_attack=scheduled(pgd(norm_bound=0.05, gamma=3.0), start_round=2, single_shot=True),
        malicious_client_update=pgd_training(loss, optax.sgd(0.5), norm_bound=0.05, local_steps=3, batch_size=4),
        continuous_data_poisoning=continuous,
    )
    state = rnd.init({"w": jnp.zeros((36, 4)), "b": jnp.zeros(4)})
    out = []
    for _ in range(rounds):
        state, metrics = rnd.step(state, data, KEY0)
        out.append((np.asarray(state.agg_state), int(metrics["num_attacking"])))
    return out


def test_before_the_attack_round_malicious_clients_train_and_send_exactly_what_honest_ones_would():
    """Clients 0, 1 are malicious, their attack scheduled for round 2 (single shot). In rounds 0 and
    1 every update equals the honest run's bit for bit: no poisoned batches, no PGD training, no
    boost. Before the fix the data attack and the PGD training ran in every round."""
    attacked, honest = _scheduled_rounds(2), _scheduled_rounds(0)
    for r in (0, 1):
        np.testing.assert_array_equal(attacked[r][0], honest[r][0])
        assert attacked[r][1] == 0
    assert attacked[2][1] == 2
    assert not np.allclose(attacked[2][0][:2], honest[2][0][:2])  # round 2: the attack
    np.testing.assert_allclose(np.linalg.norm(attacked[2][0][:2], axis=1), 3.0 * 0.05, rtol=1e-4)  # PGD ball, boosted
    np.testing.assert_array_equal(attacked[2][0][2:], honest[2][0][2:])  # honest clients untouched
    # opt-in: continuous data poisoning keeps poisoning the malicious clients' batches before round 2
    continuous = _scheduled_rounds(2, rounds=1, continuous=True)
    assert continuous[0][1] == 2 and not np.allclose(continuous[0][0][:2], honest[0][0][:2])
    np.testing.assert_array_equal(continuous[0][0][2:], honest[0][0][2:])


def test_runner_schedule_gates_the_data_attack_and_local_training_small():
    """Through ``build``: model replacement + backdoor training, single shot in round 2, leaves the
    global model of rounds 0 and 1 exactly where an honest run puts it."""
    from fljax.experiment import build

    base = dict(
        dataset="digits",
        model="logreg",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        local_steps=2,
        rounds=3,
        aggregator="mean",
    )
    attacked = build(
        ExperimentConfig(
            **base,
            attack="pgd",
            data_attack="backdoor",
            target_class=3,
            trigger_size=2,
            norm_bound=0.1,
            attack_start_round=2,
            attack_single_shot=True,
        )
    )
    honest = build(ExperimentConfig(**base, attack="none"))
    params = []
    for exp in (attacked, honest):
        step = jax.jit(exp.round.step)
        state = exp.round.init(exp.model.init(KEY0))
        trace = []
        for _ in range(3):
            state, _ = step(state, exp.data, KEY0)
            trace.append(ravel_pytree(state.params)[0])
        params.append(trace)
    for r in (0, 1):
        np.testing.assert_array_equal(params[0][r], params[1][r])
    assert not np.allclose(params[0][2], params[1][2])
