"""The contracts of ``fljax.types``, checked over every entry of every registry, so that a rule or
an attack is covered the day it is registered:

* an aggregator's ``info["weights"]`` are finite, non-negative and sum to 1, its aggregate is a
  finite ``[d]`` vector;
* a model attack is the identity in a round without malicious clients and leaves the honest rows
  bit for bit; a data attack keeps shapes and dtypes, has a success test iff its entry says it
  is targeted, and inside a round is the identity without malicious clients and leaves the
  honest clients' updates bit for bit (so do the attacks that change the malicious training);
* every state is a named type (``EmptyState`` without state), and the state an update returns has
  the structure, shapes and dtypes of the one it got: a second call does not recompile;
* jit and vmap over a seed axis agree: the same program batched over seeds gives each seed's run.

Sizes are small (n = 8 clients, d = 6) and each entry's checks share one compiled program (the
seeds one by one and vmapped, in one ``jax.jit``) to keep CI fast.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax.aggregators import PREAGGREGATORS, REGISTRY, mean, with_preaggregation
from fljax.attacks import DATA_ATTACKS, MODEL_ATTACKS
from fljax.experiment import RUN_FIXED
from fljax.types import AggregationContext, Aggregator, AttackContext, EmptyState

N, D, SEEDS = 8, 6, 2
MALICIOUS = jnp.array([True, False, False, True, False, False, False, False])
NUM_CLASSES = 10
TABULAR = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)

# The value of every required (or run-filled) factory parameter by name. A new component whose
# factory needs another one fails here, naming it: add a plausible value.
ARGUMENTS = dict(num_byzantine=1, num_clients=N, max_norm=1.0, noise_std=0.1, clip_radius=1.0, learning_threshold=2,
                 num_classes=NUM_CLASSES, target_label=1, trigger_features="0,1", attack_steps=4)


def build(registry, name, **fixed):
    return registry.build(name, fixed=dict(ARGUMENTS, **fixed))


def keys(seed: int):
    return jax.random.split(jax.random.PRNGKey(seed), SEEDS)


def counting(step):
    """``step`` and the list its traces append to (one entry per compilation)."""
    traces = []

    def counted(*args):
        traces.append(None)
        return step(*args)

    return counted, traces


def one_program(step, batched_axes):
    """One jitted program: ``step`` for each seed on its own, and vmapped over the seeds."""

    def program(ks, *rest):
        single = [step(ks[i], *rest) for i in range(SEEDS)]
        return single, jax.vmap(step, in_axes=(0,) + batched_axes)(ks, *rest)

    return jax.jit(program)


def assert_seeds_agree(single, batched):
    for i, one in enumerate(single):
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], rtol=1e-5, atol=1e-6, equal_nan=True)


def assert_same_types(state, new_state):
    """The state an update returns is the one it got, up to values: no retracing in a scan."""
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert (np.shape(a), jnp.result_type(a), getattr(a, "weak_type", False)) == (
            np.shape(b), jnp.result_type(b), getattr(b, "weak_type", False))


def assert_named_state(state):
    assert isinstance(state, tuple) and hasattr(type(state), "_fields"), (
        f"a state is a named type (EmptyState without state), got {type(state).__name__}")


# ----------------------------------------------------------------------------- aggregators


def _rule_step(rule: Aggregator):
    def step(key, state):
        k_u, k_w, k_ctx, k_ref = jax.random.split(key, 4)
        updates = 0.5 + jax.random.normal(k_u, (N, D))
        ctx = AggregationContext(weights=jax.random.randint(k_w, (N,), 1, 5).astype(jnp.float32), key=k_ctx,
                                 client_ids=jnp.arange(N), params=jnp.zeros(D),
                                 reference=0.5 + jax.random.normal(k_ref, (D,)))
        out, new_state, info = rule.update(updates, state, ctx)
        return out, info["weights"], new_state

    return step


RULES = [("rule", name) for name in sorted(REGISTRY)] + [("pre-aggregation", name) for name in sorted(PREAGGREGATORS)]


@pytest.mark.parametrize("kind, name", RULES, ids=[f"{k}:{n}" for k, n in RULES])
def test_aggregator_contract(kind, name):
    rule = build(REGISTRY, name) if kind == "rule" else with_preaggregation(mean(), build(PREAGGREGATORS, name))
    rule.requirement(N)
    state = rule.init(jnp.zeros(D))
    assert_named_state(state)
    step, traces = counting(_rule_step(rule))
    program = one_program(step, (None,))
    single, batched = program(keys(0), state)
    assert_seeds_agree(single, batched)
    for out, weights, new_state in single:
        weights = np.asarray(weights)
        assert np.all(np.isfinite(out)) and np.shape(out) == (D,)
        assert weights.shape == (N,) and np.all(np.isfinite(weights)) and np.all(weights >= 0), weights
        assert abs(weights.sum() - 1.0) < 1e-5, weights.sum()
        assert_same_types(state, new_state)
    traced = len(traces)
    program(keys(1), single[0][2])  # the state the update returned: same program
    assert len(traces) == traced


# ----------------------------------------------------------------------------- model attacks


def _attack_step(attack):
    context_rule = mean()

    def step(key, state, malicious):
        k_u, k_a = jax.random.split(key)
        updates = 0.5 + jax.random.normal(k_u, (N, D))
        ctx = AttackContext(params=jnp.zeros(D), weights=jnp.ones(N), round=jnp.zeros((), jnp.int32),
                            aggregator=context_rule, agg_state=context_rule.init(jnp.zeros(D)), client_ids=jnp.arange(N))
        out, new_state = attack.update(updates, malicious, state, k_a, ctx)
        return updates, out, new_state

    return step


@pytest.mark.parametrize("name", sorted(MODEL_ATTACKS))
def test_model_attack_contract(name):
    attack = build(MODEL_ATTACKS, name)
    attack.requirement(N, 2)
    state = attack.init(jnp.zeros(D))
    assert_named_state(state)
    step, traces = counting(_attack_step(attack))
    program = one_program(step, (None, None))
    single, batched = program(keys(0), state, MALICIOUS)
    assert_seeds_agree(single, batched)
    for updates, out, new_state in single:
        updates, out = np.asarray(updates), np.asarray(out)
        assert out.shape == updates.shape and out.dtype == updates.dtype
        np.testing.assert_array_equal(out[~MALICIOUS], updates[~MALICIOUS])  # honest rows, bit for bit
        assert_same_types(state, new_state)
    traced = len(traces)
    quiet, _ = program(keys(1), single[0][2], jnp.zeros(N, bool))  # no malicious client; the returned state
    assert len(traces) == traced
    for updates, out, _ in quiet:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(updates))  # the identity


# ----------------------------------------------------------------------------- data attacks


def _data_inputs(name):
    """A batch kind the attack takes: tabular rows for an attack built from training rows, 8x8
    images otherwise."""
    if "x_train" in DATA_ATTACKS[name].parameters():
        return (5,), dict(x_train=TABULAR, input_shape=(5,))
    return (8, 8, 1), dict(input_shape=(8, 8, 1))


@pytest.mark.parametrize("name", sorted(DATA_ATTACKS))
def test_data_attack_contract(name):
    shape, fixed = _data_inputs(name)
    attack = build(DATA_ATTACKS, name, **fixed)
    assert (attack.targeted is not None) == DATA_ATTACKS[name].targeted

    def step(key):
        k_x, k_y, k_p = jax.random.split(key, 3)
        x = jax.random.uniform(k_x, (12,) + shape)
        y = jax.random.randint(k_y, (12,), 0, NUM_CLASSES)
        mask = jnp.arange(12) < 9  # 3 padding rows
        px, py = attack.poison(x, y, mask, k_p, jnp.int32(1))
        return x, y, px, py

    step, traces = counting(step)
    program = one_program(step, ())
    single, batched = program(keys(0))
    assert_seeds_agree(single, batched)
    for x, y, px, py in single:
        assert (px.shape, px.dtype, py.shape, py.dtype) == (x.shape, x.dtype, y.shape, y.dtype)
        if attack.targeted is not None:
            tx, ty, valid = attack.targeted(x, y)
            assert (tx.shape, ty.shape, valid.shape, valid.dtype) == (x.shape, y.shape, y.shape, jnp.bool_)
    program(keys(1))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- inside a round


class Probe(NamedTuple):
    """The probe rule's state: the updates it received, one row per client id."""

    updates: jax.Array


def probe_rule(n: int) -> Aggregator:
    """The mean, keeping the round's updates (sorted by client id) as its state."""

    def init(params):
        return Probe(jnp.zeros((n, params.shape[0]), params.dtype))

    def update(updates, state, context):
        rows = updates[jnp.argsort(context.client_ids)]
        return jnp.mean(updates, 0), Probe(rows), {"weights": jnp.full(updates.shape[0], 1.0 / updates.shape[0])}

    return Aggregator(init=init, update=update)


CLIENTS, PER_CLIENT, BAD = 6, 4, 2


def _round_updates(shape, data_attack=None, model_attack=None, malicious_update=None):
    """The clients' updates (rows by id) of one round with ``num_malicious`` 0 and ``BAD``, and
    of the clean round, as one program: ``(honest-only, attacked, clean)``."""
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(CLIENTS * PER_CLIENT,) + shape).astype(np.float32)
    y = np.tile([5, 3, 1, 7], CLIENTS)  # every client holds the source class 5 of label_flip
    from tests.helpers import make_data
    data = make_data([list(range(c * PER_CLIENT, (c + 1) * PER_CLIENT)) for c in range(CLIENTS)], x, y)
    model = fljax.models.get("logreg", shape, NUM_CLASSES)
    client = fljax.fedavg(fljax.classification_loss(model.apply), optax.sgd(0.5), local_steps=2, batch_size=2)
    rounds = [fljax.make_round(client, probe_rule(CLIENTS), clients_per_round=CLIENTS, num_malicious=m, jit=False,
                               data_attack=attack_data, model_attack=attack_model, malicious_client_update=update)
              for m, attack_data, attack_model, update in ((0, data_attack, model_attack, malicious_update),
                                                           (BAD, data_attack, model_attack, malicious_update),
                                                           (0, None, None, None))]
    params = model.init(jax.random.PRNGKey(0))

    @jax.jit
    def run(key):
        return [r.step(r.init(params), data, key)[0].agg_state.updates for r in rounds]

    return [np.asarray(u) for u in run(jax.random.PRNGKey(3))]


def _assert_round_contract(honest_only, attacked, clean):
    np.testing.assert_array_equal(honest_only, clean)  # no malicious client: the attack changes nothing
    np.testing.assert_array_equal(attacked[BAD:], clean[BAD:])  # the honest clients' updates, bit for bit
    assert not np.array_equal(attacked[:BAD], clean[:BAD])  # (and the attack did act on the malicious ones)


@pytest.mark.parametrize("name", sorted(DATA_ATTACKS))
def test_data_attack_in_a_round_touches_the_malicious_clients_only(name):
    shape, fixed = _data_inputs(name)
    fixed = dict(fixed, x_train=TABULAR) if shape == (5,) else fixed
    _assert_round_contract(*_round_updates(shape, data_attack=build(DATA_ATTACKS, name, **fixed)))


LOCAL_TRAINING = sorted(name for name, entry in MODEL_ATTACKS.items() if entry.local_training is not None)


@pytest.mark.parametrize("name", LOCAL_TRAINING)
def test_malicious_training_in_a_round_touches_the_malicious_clients_only(name):
    model = fljax.models.get("logreg", (8, 8, 1), NUM_CLASSES)
    loss = fljax.classification_loss(model.apply)
    update = MODEL_ATTACKS.build_local_training(name, fixed=dict(loss_fn=loss, optimizer=optax.sgd(0.5), local_steps=2,
                                                                 local_epochs=None, batch_size=2, protocol="fedavg"))
    backdoor = build(DATA_ATTACKS, "backdoor", input_shape=(8, 8, 1))
    _assert_round_contract(*_round_updates((8, 8, 1), data_attack=backdoor, model_attack=build(MODEL_ATTACKS, name),
                                           malicious_update=update))


# ----------------------------------------------------------------------------- the registries


def test_every_registry_entry_is_a_named_documented_function_and_names_do_not_collide():
    for registry in (REGISTRY, PREAGGREGATORS, DATA_ATTACKS, MODEL_ATTACKS):
        for name, entry in registry.items():
            assert entry.name == name and entry.kind == registry.kind
            for factory in (entry.factory, entry.local_training):
                if factory is not None:
                    assert factory.__name__ != "<lambda>" and factory.__doc__, (name, factory)
    assert not set(REGISTRY) & set(PREAGGREGATORS) and not set(DATA_ATTACKS) & set(MODEL_ATTACKS)
    assert set(ARGUMENTS) >= set(RUN_FIXED) - {"input_shape", "x_train", "server_lr", "target_loss"}
