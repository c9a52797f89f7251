"""The contracts of ``fljax.types``, checked over every entry of every registry, so that a rule or
an attack is covered the day it is registered:

* an aggregator's ``info["weights"]`` are finite, non-negative and sum to 1 (or are all 0, with a
  zero aggregate, when the rule accepts no one), its aggregate is a finite ``[d]`` vector;
* a model attack is the identity in a round without malicious clients and leaves the honest rows
  bit for bit; a data attack keeps shapes and dtypes and has a success test iff its entry says
  it is targeted; inside a round, a data attack (and an attack that changes the malicious
  training) is the identity without malicious clients and leaves the honest clients' updates bit
  for bit (one entry of each in CI, every entry with --runslow);
* every state is a named type (``EmptyState`` without state), and the state an update returns has
  the structure, shapes and dtypes of the one it got; a second call does not retrace;
* vmap over a seed axis keeps the seeds apart (each seed's row is the same with the seeds
  reversed), and, with --runslow, agrees with the program jitted for one seed.

Sizes are small (n = 8 clients, d = 6) and the inputs are drawn by numpy outside the programs:
in CI each entry compiles one program (vmapped over the seeds) and calls it again with new
values, ~0.5 s of CPU per entry.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import fljax
from fljax.aggregators import PREAGGREGATORS, REGISTRY, mean, with_preaggregation
from fljax.attacks import DATA_ATTACKS, MODEL_ATTACKS
from fljax.experiment import RUN_FIXED
from fljax.types import AggregationContext, Aggregator, AttackContext, ModelAccess
from tests.helpers import make_data

N, D, SEEDS = 8, 6, 2
MALICIOUS = np.array([True, False, False, True, False, False, False, False])
NUM_CLASSES = 10
TABULAR = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)

# The value of every required (or run-filled) factory parameter by name. A new component whose
# factory needs another one fails here, naming it: add a plausible value.
ARGUMENTS = dict(
    num_byzantine=1,
    num_clients=N,
    max_norm=1.0,
    noise_std=0.1,
    clip_radius=1.0,
    learning_threshold=2,
    num_classes=NUM_CLASSES,
    target_label=1,
    trigger_features="0,1",
    attack_steps=4,
)


def build(registry, name, **fixed):
    return registry.build(name, fixed=dict(ARGUMENTS, **fixed))


def seed_inputs(seed: int, **shapes):
    """One array per ``name=(shape, kind)`` for each of the ``SEEDS`` seeds ``[SEEDS, *shape]``
    (drawn by numpy: the random draws stay out of the compiled programs), plus their keys."""
    rng = np.random.default_rng(seed)
    draw = {
        "normal": lambda s: 0.5 + rng.normal(size=s),
        "uniform": lambda s: rng.uniform(size=s),
        "count": lambda s: rng.integers(1, 5, size=s),
        "label": lambda s: rng.integers(0, NUM_CLASSES, size=s),
    }
    out = {
        name: draw[kind]((SEEDS,) + shape).astype(np.int32 if kind == "label" else np.float32)
        for name, (shape, kind) in shapes.items()
    }
    return dict(out, key=jax.random.split(jax.random.PRNGKey(seed), SEEDS))


def programs(step, batched: dict):
    """``step`` vmapped over the seeds (``batched``: the arguments with a seed axis, as
    ``{name: True}``; the others are shared) and jitted, with the list its traces append to."""
    traces = []

    def counted(**kwargs):
        traces.append(None)
        return step(**kwargs)

    def vmapped(**kwargs):
        names = list(kwargs)
        axes = tuple(0 if batched.get(n) else None for n in names)
        return jax.vmap(lambda *a: counted(**dict(zip(names, a))), in_axes=axes)(*kwargs.values())

    return jax.jit(counted), jax.jit(vmapped), traces


def rows(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def run_seeds(vmapped, inputs: dict, batched: dict):
    """Each seed's output of the vmapped program; called again with the seeds reversed (the same
    shapes: no retrace), each seed's row must come out the same (no seed sees another's)."""
    out = vmapped(**inputs)
    flipped = vmapped(**{k: (v[::-1] if batched.get(k) else v) for k, v in inputs.items()})
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(flipped)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b)[::-1], rtol=1e-5, atol=1e-6, equal_nan=True)
    return [rows(out, i) for i in range(SEEDS)]


def assert_jit_agrees(single, vmapped_outputs, inputs: dict, batched: dict):
    """The single-seed program gives each seed's row of the vmapped one."""
    for i, row in enumerate(vmapped_outputs):
        one = single(**{k: (v[i] if batched.get(k) else v) for k, v in inputs.items()})
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(row)):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6, equal_nan=True)


def assert_same_types(state, new_state):
    """The state an update returns is the one it got, up to values: no retracing in a scan."""
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert (np.shape(a), jnp.result_type(a), getattr(a, "weak_type", False)) == (
            np.shape(b),
            jnp.result_type(b),
            getattr(b, "weak_type", False),
        )


def assert_named_state(state):
    assert isinstance(state, tuple) and hasattr(type(state), "_fields"), (
        f"a state is a named type (EmptyState without state), got {type(state).__name__}"
    )


# ----------------------------------------------------------------------------- aggregators


def tiny_model() -> ModelAccess:
    """A logistic regression of 2 inputs and 2 classes (D = 6 parameters), for rules that read the
    model (``Aggregator.needs_model``), as ``make_round`` would supply it."""
    model = fljax.models.get("logreg", (2,), 2)
    flat, unravel = ravel_pytree(model.init(jax.random.PRNGKey(0)))
    assert flat.shape == (D,)
    return ModelAccess(unravel=unravel, apply=model.apply, inputs=jax.ShapeDtypeStruct((2,), jnp.float32))


def _rule_step(rule: Aggregator):
    model = tiny_model() if rule.needs_model else None

    def step(updates, weights, reference, key, state):
        ctx = AggregationContext(
            weights=weights, key=key, client_ids=jnp.arange(N), params=jnp.zeros(D), reference=reference, model=model
        )
        out, new_state, info = rule.update(updates, state, ctx)
        return out, info["weights"], new_state

    return step


RULES = [("rule", name) for name in sorted(REGISTRY)] + [("pre-aggregation", name) for name in sorted(PREAGGREGATORS)]
RULE_INPUTS = dict(updates=((N, D), "normal"), weights=((N,), "count"), reference=((D,), "normal"))
RULE_SEEDED = dict(updates=True, weights=True, reference=True, key=True)


def _rule_case(kind, name):
    rule = build(REGISTRY, name) if kind == "rule" else with_preaggregation(mean(), build(PREAGGREGATORS, name))
    rule.requirement(N)
    state = rule.init(jnp.zeros(D))
    return _rule_step(rule), dict(seed_inputs(0, **RULE_INPUTS), state=state), RULE_SEEDED


@pytest.mark.parametrize("kind, name", RULES, ids=[f"{k}:{n}" for k, n in RULES])
def test_aggregator_contract(kind, name):
    step, inputs, seeded = _rule_case(kind, name)
    state = inputs["state"]
    assert_named_state(state)
    _, vmapped, traces = programs(step, seeded)
    for out, weights, new_state in run_seeds(vmapped, inputs, seeded):
        assert np.all(np.isfinite(out)) and np.shape(out) == (D,)
        assert weights.shape == (N,) and np.all(np.isfinite(weights)) and np.all(weights >= 0), weights
        # they sum to 1, or a rule that accepts no one (DeepSight's rejected clusters) gives all 0 and a zero aggregate
        assert abs(weights.sum() - 1.0) < 1e-5 or (weights.sum() == 0 and not out.any()), (weights.sum(), out)
        assert_same_types(state, new_state)  # what a scan over rounds feeds back: the same program
    assert len(traces) == 1  # the second call (new values) did not retrace


# ----------------------------------------------------------------------------- model attacks


def _attack_step(attack):
    context_rule = mean()

    def step(updates, key, state, malicious):
        ctx = AttackContext(
            params=jnp.zeros(D),
            weights=jnp.ones(N),
            round=jnp.zeros((), jnp.int32),
            aggregator=context_rule,
            agg_state=context_rule.init(jnp.zeros(D)),
            client_ids=jnp.arange(N),
        )
        return attack.update(updates, malicious, state, key, ctx)

    return step


ATTACK_SEEDED = dict(updates=True, key=True)


def _model_attack_case(name):
    attack = build(MODEL_ATTACKS, name)
    attack.requirement(N, 2)
    inputs = dict(seed_inputs(0, updates=((N, D), "normal")), state=attack.init(jnp.zeros(D)), malicious=MALICIOUS)
    return _attack_step(attack), inputs, ATTACK_SEEDED


@pytest.mark.parametrize("name", sorted(MODEL_ATTACKS))
def test_model_attack_contract(name):
    step, inputs, seeded = _model_attack_case(name)
    state = inputs["state"]
    assert_named_state(state)
    _, vmapped, traces = programs(step, seeded)
    for updates, (out, new_state) in zip(inputs["updates"], run_seeds(vmapped, inputs, seeded)):
        assert out.shape == updates.shape and out.dtype == updates.dtype
        np.testing.assert_array_equal(out[~MALICIOUS], updates[~MALICIOUS])  # honest rows, bit for bit
        assert_same_types(state, new_state)
    quiet, _ = vmapped(**dict(inputs, malicious=np.zeros(N, bool)))
    np.testing.assert_array_equal(np.asarray(quiet), inputs["updates"])  # no malicious client: the identity
    assert len(traces) == 1  # three calls, one program


# ----------------------------------------------------------------------------- data attacks


SEQUENCE_LENGTH, VOCABULARY = 40, 82  # token sequences (Shakespeare's vocabulary) for text attacks


def _data_inputs(name):
    """A batch kind the attack takes, as ``(x shape, y shape, fixed)``: tabular rows for an
    attack built from training rows, else the first of 8x8 images and 40-token sequences that
    the attack's factory accepts (each refuses the inputs it does not apply to)."""
    if "x_train" in DATA_ATTACKS[name].parameters():
        return (5,), (), dict(x_train=TABULAR, input_shape=(5,))
    for x_shape, y_shape, fixed in (
        ((8, 8, 1), (), dict(input_shape=(8, 8, 1))),
        ((SEQUENCE_LENGTH,), (SEQUENCE_LENGTH,), dict(input_shape=(SEQUENCE_LENGTH,), num_classes=VOCABULARY)),
    ):
        try:
            build(DATA_ATTACKS, name, **fixed)
        except ValueError:
            continue
        return x_shape, y_shape, fixed
    raise AssertionError(f"{name}: takes neither images nor token sequences")


DATA_SEEDED = dict(x=True, y=True, key=True)


def _data_attack_case(name):
    shape, y_shape, fixed = _data_inputs(name)
    attack = build(DATA_ATTACKS, name, **fixed)
    mask = np.arange(12) < 9  # 3 padding rows

    def step(x, y, key):
        return attack.poison(x, y, mask, key, jnp.int32(1))

    return step, seed_inputs(0, x=((12,) + shape, "uniform"), y=((12,) + y_shape, "label")), DATA_SEEDED, attack


@pytest.mark.parametrize("name", sorted(DATA_ATTACKS))
def test_data_attack_contract(name):
    step, inputs, seeded, attack = _data_attack_case(name)
    assert (attack.targeted is not None) == DATA_ATTACKS[name].targeted
    _, vmapped, traces = programs(step, seeded)
    for x, y, (px, py) in zip(inputs["x"], inputs["y"], run_seeds(vmapped, inputs, seeded)):
        assert (px.shape, px.dtype, py.shape, py.dtype) == (x.shape, x.dtype, y.shape, y.dtype)
        if attack.targeted is not None:
            tx, ty, valid = attack.targeted(x, y)
            assert (tx.shape, ty.shape, valid.shape, valid.dtype) == (x.shape, y.shape, y.shape[:1], jnp.bool_)
    assert len(traces) == 1


# ----------------------------------------------------------------------------- jit vs vmap

CASES = (
    [(f"{k}:{n}", lambda k=k, n=n: _rule_case(k, n)) for k, n in RULES]
    + [(f"model attack:{n}", lambda n=n: _model_attack_case(n)) for n in sorted(MODEL_ATTACKS)]
    + [(f"data attack:{n}", lambda n=n: _data_attack_case(n)[:3]) for n in sorted(DATA_ATTACKS)]
)


@pytest.mark.slow  # a second compilation per entry (~1 s of CPU each); the tests above run each entry vmapped
@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_jit_and_vmap_over_seeds_agree(case):
    step, inputs, seeded = case()
    single, vmapped, _ = programs(step, seeded)
    assert_jit_agrees(single, run_seeds(vmapped, inputs, seeded), inputs, seeded)


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


def _round_setup(shape):
    rng = np.random.default_rng(1)
    if len(shape) == 1 and shape[0] == SEQUENCE_LENGTH:  # token sequences: a bigram model's per-token logits
        text = rng.integers(1, VOCABULARY, size=(CLIENTS * PER_CLIENT, SEQUENCE_LENGTH + 1)).astype(np.int32)
        data = make_data(
            [list(range(c * PER_CLIENT, (c + 1) * PER_CLIENT)) for c in range(CLIENTS)], text[:, :-1], text[:, 1:]
        )
        apply = lambda params, tokens: params["bigram"][tokens.astype(jnp.int32)]
        client = fljax.fedavg(fljax.classification_loss(apply), optax.sgd(0.5), local_steps=2, batch_size=2)
        return data, client, {"bigram": 0.1 * jax.random.normal(jax.random.PRNGKey(0), (VOCABULARY, VOCABULARY))}
    x = rng.uniform(size=(CLIENTS * PER_CLIENT,) + shape).astype(np.float32)
    y = np.tile([5, 3, 1, 7], CLIENTS)  # every client holds the source class 5 of label_flip
    data = make_data([list(range(c * PER_CLIENT, (c + 1) * PER_CLIENT)) for c in range(CLIENTS)], x, y)
    model = fljax.models.get("logreg", shape, NUM_CLASSES)
    client = fljax.fedavg(fljax.classification_loss(model.apply), optax.sgd(0.5), local_steps=2, batch_size=2)
    return data, client, model.init(jax.random.PRNGKey(0))


def _round_program(shape, *settings):
    """The clients' updates (rows by id) of one round per ``(num_malicious, data_attack,
    model_attack, malicious_update)`` of ``settings``, as one program."""
    data, client, params = _round_setup(shape)
    rounds = [
        fljax.make_round(
            client,
            probe_rule(CLIENTS),
            clients_per_round=CLIENTS,
            num_malicious=m,
            jit=False,
            data_attack=attack_data,
            model_attack=attack_model,
            malicious_client_update=update,
        )
        for m, attack_data, attack_model, update in settings
    ]
    run = jax.jit(lambda key: [r.step(r.init(params), data, key)[0].agg_state.updates for r in rounds])
    return [np.asarray(u) for u in run(jax.random.PRNGKey(3))]


def _round_updates(shape, data_attack=None, model_attack=None, malicious_update=None):
    """``(honest-only, attacked, clean)``: the updates of the round with the attack and
    ``num_malicious`` 0, then ``BAD``, and of the clean round, in one program (two programs may
    round differently in the last bit)."""
    attack = (data_attack, model_attack, malicious_update)
    return _round_program(shape, (0, *attack), (BAD, *attack), (0, None, None, None))


def _assert_round_contract(honest_only, attacked, clean):
    np.testing.assert_array_equal(honest_only, clean)  # no malicious client: the attack changes nothing
    np.testing.assert_array_equal(attacked[BAD:], clean[BAD:])  # the honest clients' updates, bit for bit
    assert not np.array_equal(attacked[:BAD], clean[:BAD])  # (and the attack did act on the malicious ones)


def one_in_ci(names, representative):
    """``names`` as parameters, all but ``representative`` marked slow: what a round checks here is
    ``make_round``'s masking of the malicious clients, the same for every entry (a round compiles
    three rounds with a model, ~2 s of CPU each)."""
    return [pytest.param(n, marks=() if n == representative else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", one_in_ci(sorted(DATA_ATTACKS), "backdoor"))
def test_data_attack_in_a_round_touches_the_malicious_clients_only(name):
    shape, _, fixed = _data_inputs(name)
    fixed = dict(fixed, x_train=TABULAR) if shape == (5,) else fixed
    _assert_round_contract(*_round_updates(shape, data_attack=build(DATA_ATTACKS, name, **fixed)))


LOCAL_TRAINING = sorted(name for name, entry in MODEL_ATTACKS.items() if entry.local_training is not None)


@pytest.mark.parametrize("name", one_in_ci(LOCAL_TRAINING, "pgd"))
def test_malicious_training_in_a_round_touches_the_malicious_clients_only(name):
    model = fljax.models.get("logreg", (8, 8, 1), NUM_CLASSES)
    loss = fljax.classification_loss(model.apply)
    update = MODEL_ATTACKS.build_local_training(
        name,
        fixed=dict(
            loss_fn=loss, optimizer=optax.sgd(0.5), local_steps=2, local_epochs=None, batch_size=2, protocol="fedavg"
        ),
    )
    backdoor = build(DATA_ATTACKS, "backdoor", input_shape=(8, 8, 1))
    _assert_round_contract(
        *_round_updates(
            (8, 8, 1), data_attack=backdoor, model_attack=build(MODEL_ATTACKS, name), malicious_update=update
        )
    )


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
