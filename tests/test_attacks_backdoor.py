"""Backdoor data attacks: hand-checked trigger pixels, fractions, labels, DBA tiling, the tabular
trigger, build-time validation, and end-to-end success against the mean on mnist5k."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from experiments.run import run_experiment
from fljax.aggregators import mean
from fljax.attacks import backdoor, dba, feature_trigger
from fljax.attacks.backdoor import num_poisoned, percentile_values
from fljax.experiment import ExperimentConfig, build
from tests.helpers import make_data

KEY = jax.random.PRNGKey(0)


def real(y_or_count):
    """The mask of a batch whose entries are all real examples."""
    return jnp.ones(y_or_count if isinstance(y_or_count, int) else len(y_or_count), bool)


def _batch(b=5, shape=(8, 8, 2), seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.0, 0.5, (b, *shape)), jnp.float32), jnp.arange(b, dtype=jnp.int32) % 10


def test_backdoor_square_pixels_fraction_and_labels_by_hand():
    x, y = _batch()
    attack = backdoor(target_label=7, trigger_size=3, trigger_value=0.9, poison_fraction=0.4, input_shape=(8, 8, 2))
    px, py = attack.poison(x, y, real(y), KEY, 0)
    expected = np.array(x)
    expected[:2, 5:8, 5:8, :] = 0.9  # round(0.4 * 5) = 2 rows; 3x3 block flush with the bottom-right corner
    np.testing.assert_array_equal(px, expected)
    np.testing.assert_array_equal(py, [7, 7, 2, 3, 4])


def test_plus_pattern_and_explicit_position_by_hand():
    x, y = jnp.zeros((1, 6, 7, 1)), jnp.array([1])
    px, _ = backdoor(0, trigger_size=3, trigger_pattern="plus", trigger_position="1,2", poison_fraction=1.0).poison(
        x, y, real(y), KEY, 0
    )
    expected = np.zeros((6, 7), np.float32)
    expected[2, 2:5] = expected[1:4, 3] = 1.0
    np.testing.assert_array_equal(px[0, :, :, 0], expected)
    px, _ = backdoor(0, trigger_size=2, trigger_position="center", poison_fraction=1.0).poison(x, y, real(y), KEY, 0)
    expected = np.zeros((6, 7), np.float32)
    expected[2:4, 2:4] = 1.0
    np.testing.assert_array_equal(px[0, :, :, 0], expected)


@pytest.mark.parametrize("fraction,batch,count", [(0.5, 5, 3), (0.5, 4, 2), (0.1, 32, 3), (1.0, 7, 7), (0.01, 10, 0)])
def test_number_of_poisoned_examples(fraction, batch, count):
    assert num_poisoned(fraction, batch) == count
    x, y = jnp.zeros((batch, 4, 4, 1)), jnp.full((batch,), 3)
    px, py = backdoor(1, trigger_size=2, poison_fraction=fraction).poison(x, y, real(y), KEY, 0)
    assert int(jnp.sum(py == 1)) == count
    assert int(jnp.sum(jnp.any(px != 0, axis=(1, 2, 3)))) == count


def test_backdoor_success_test_stamps_every_input_and_masks_the_target_class():
    x, y = _batch(b=4)
    y = jnp.array([7, 1, 7, 2])
    xt, yt, valid = backdoor(7, trigger_size=2, trigger_value=1.0).targeted(x, y)
    expected = np.array(x)
    expected[:, 6:, 6:, :] = 1.0
    np.testing.assert_array_equal(xt, expected)
    np.testing.assert_array_equal(yt, 7)
    np.testing.assert_array_equal(valid, [False, True, False, True])


@pytest.mark.parametrize("size,parts,pattern", [(4, 4, "square"), (4, 3, "square"), (5, 2, "plus"), (3, 9, "square")])
def test_dba_parts_tile_the_global_trigger_exactly(size, parts, pattern):
    shape = (10, 9, 3)
    zeros = jnp.zeros((1, *shape))
    attack = dba(0, num_parts=parts, trigger_size=size, trigger_pattern=pattern, poison_fraction=1.0, input_shape=shape)
    glob, _, _ = backdoor(0, trigger_size=size, trigger_pattern=pattern).targeted(zeros, jnp.array([1]))
    xt, _, _ = attack.targeted(zeros, jnp.array([1]))
    np.testing.assert_array_equal(xt, glob)  # DBA's success test uses the FULL global trigger
    stamps = np.stack(
        [np.asarray(attack.poison(zeros, jnp.array([1]), real(1), KEY, a)[0][0]) > 0 for a in range(parts)]
    )
    assert np.all(stamps.sum(0) <= 1)  # disjoint
    np.testing.assert_array_equal(stamps.any(0), np.asarray(glob[0]) > 0)  # union = global trigger
    sizes = stamps.reshape(parts, -1).sum(1) // shape[2]
    assert sizes.max() - sizes.min() <= 1 and sizes.min() >= 1


def test_dba_square_of_side_four_in_four_parts_gives_one_row_bars():
    attack = dba(0, num_parts=4, trigger_size=4, poison_fraction=1.0)
    zeros = jnp.zeros((1, 28, 28, 1))
    for a in range(4):
        px = np.asarray(attack.poison(zeros, jnp.array([1]), real(1), KEY, a)[0][0, :, :, 0])
        expected = np.zeros((28, 28))
        expected[24 + a, 24:28] = 1.0
        np.testing.assert_array_equal(px, expected)


def test_dba_attacker_uses_part_id_mod_num_parts_with_a_traced_id():
    attack = dba(0, num_parts=3, trigger_size=3, poison_fraction=1.0)
    zeros, y = jnp.zeros((1, 6, 6, 1)), jnp.array([2])
    stamp = jax.jit(lambda a: attack.poison(zeros, y, real(y), KEY, a)[0])
    for a in range(7):
        np.testing.assert_array_equal(stamp(a), stamp(a % 3))
    assert not np.array_equal(stamp(0), stamp(1))


def test_feature_trigger_sets_exactly_the_chosen_features():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
    y = jnp.array([0, 0, 1, 0])
    attack = feature_trigger(1, trigger_features="1,4", trigger_values="2.5,-3", poison_fraction=0.5, input_shape=(6,))
    px, py = attack.poison(x, y, real(y), KEY, 0)
    expected = np.array(x)
    expected[:2, 1], expected[:2, 4] = 2.5, -3.0
    np.testing.assert_array_equal(px, expected)
    np.testing.assert_array_equal(py, [1, 1, 1, 0])
    xt, yt, valid = attack.targeted(x, y)
    expected = np.array(x)
    expected[:, 1], expected[:, 4] = 2.5, -3.0
    np.testing.assert_array_equal(xt, expected)
    np.testing.assert_array_equal(valid, [True, True, False, True])


def test_feature_trigger_percentile_values():
    x_train = np.arange(200, dtype=np.float32).reshape(100, 2)  # columns 0,2,...,198 and 1,3,...,199
    attack = feature_trigger(0, trigger_features=[1], trigger_percentile=99.0, x_train=x_train, input_shape=(2,))
    np.testing.assert_allclose(percentile_values(x_train, [1], 99.0), [np.percentile(x_train[:, 1], 99.0)])
    px, _ = attack.poison(jnp.zeros((1, 2)), jnp.array([1]), real(1), KEY, 0)
    np.testing.assert_allclose(px, [[0.0, np.percentile(x_train[:, 1], 99.0)]], rtol=1e-6)


@pytest.mark.parametrize(
    "factory,kwargs,message",
    [
        (
            backdoor,
            dict(trigger_size=9, input_shape=(8, 8, 1)),
            r"backdoor: a 9x9 square trigger .* does not fit 8x8 images; trigger_size must be in 1..8",
        ),
        (
            backdoor,
            dict(trigger_size=3, trigger_position="6,2", input_shape=(8, 8, 1)),
            r"backdoor: .* at '6,2' .* does not fit 8x8",
        ),
        (backdoor, dict(input_shape=(30,)), r"backdoor: needs image inputs \[H, W, C\], got examples of shape \(30,\)"),
        (backdoor, dict(trigger_size=0), r"backdoor: trigger_size must be an integer >= 1, got 0"),
        (backdoor, dict(trigger_pattern="star"), r"backdoor: trigger_pattern must be one of square, plus, got 'star'"),
        (
            backdoor,
            dict(trigger_pattern="plus", trigger_size=2),
            r"backdoor: a plus trigger needs trigger_size >= 3, got 2",
        ),
        (backdoor, dict(trigger_position="middle"), r"backdoor: trigger_position must be one of bottom_right"),
        (backdoor, dict(poison_fraction=0.0), r"backdoor: poison_fraction must be in \(0, 1\], got 0.0"),
        (backdoor, dict(poison_fraction=1.5), r"backdoor: poison_fraction must be in \(0, 1\], got 1.5"),
        (backdoor, dict(trigger_value=float("nan")), r"backdoor: trigger_value must be a finite number"),
        (backdoor, dict(num_classes=2), r"backdoor: target_label must be an integer in 0..1, got 3"),
        (dba, dict(num_parts=17, trigger_size=4), r"dba: num_parts must be an integer in 1..16, got 17"),
        (
            feature_trigger,
            dict(trigger_features=[0, 40], trigger_values=1.0, input_shape=(30,)),
            r"feature_trigger: trigger_features must be in 0..29",
        ),
        (
            feature_trigger,
            dict(trigger_features=[0, 0], trigger_values=1.0),
            r"feature_trigger: trigger_features must be distinct",
        ),
        (
            feature_trigger,
            dict(trigger_features=[0, 1], trigger_values=[1.0, 2.0, 3.0]),
            r"feature_trigger: trigger_values must be one finite number or one per feature \(2\)",
        ),
        (feature_trigger, dict(trigger_features=[0]), r"feature_trigger: give trigger_values, or x_train"),
        (
            feature_trigger,
            dict(trigger_features=[0], trigger_values=1.0, input_shape=(8, 8, 1)),
            r"feature_trigger: needs tabular inputs \[F\]",
        ),
    ],
)
def test_bad_hyper_parameters_fail_at_build_time(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(3, **kwargs)


def test_round_is_unchanged_when_no_malicious_client_is_sampled():
    """Clients 0 (malicious) .. 5; cohorts of 2: rounds that sample client 0 differ from the clean
    round, the others are bit-identical (the DBA part is picked from the traced client id)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 5, 5, 1)).astype(np.float32)
    data = make_data([list(range(i * 4, i * 4 + 4)) for i in range(6)], x, rng.integers(0, 3, 24))
    model = fljax.models.get("logreg", (5, 5, 1), 3)
    client = fljax.fedsgd(fljax.classification_loss(model.apply), optax.sgd(0.5))
    state = fljax.make_round(client, mean(), clients_per_round=2).init(model.init(KEY))
    attacked = fljax.make_round(
        client, mean(), clients_per_round=2, num_malicious=1, data_attack=dba(0, num_parts=2, trigger_size=2)
    )
    clean = fljax.make_round(client, mean(), clients_per_round=2, num_malicious=1)
    seen = set()
    for i in range(8):
        (s1, m1), (s0, _) = (
            attacked.step(state, data, jax.random.PRNGKey(i)),
            clean.step(state, data, jax.random.PRNGKey(i)),
        )
        same = np.array_equal(s1.params["Dense_0"]["kernel"], s0.params["Dense_0"]["kernel"])
        assert same == (int(m1["num_malicious"]) == 0)
        seen.add(same)
    assert seen == {True, False}


def test_runner_validates_triggers_and_pairs_before_compiling():
    small = dict(num_clients=10, clients_per_round=5, num_malicious=2, rounds=1, aggregator="mean")
    with pytest.raises(ValueError, match="backdoor: a 9x9 square trigger"):
        build(
            ExperimentConfig(
                dataset="digits", attack="none", data_attack="backdoor", target_class=3, trigger_size=9, **small
            )
        )
    with pytest.raises(ValueError, match="--data_attack: --attack=label_flip is a data attack already"):
        build(ExperimentConfig(dataset="digits", attack="label_flip", data_attack="backdoor", **small))
    with pytest.raises(ValueError, match="--data_attack: unknown data attack 'trojan'"):
        build(ExperimentConfig(dataset="digits", attack="none", data_attack="trojan", **small))
    with pytest.raises(ValueError, match="backdoor: needs image inputs"):
        build(ExperimentConfig(dataset="breast_cancer", attack="backdoor", target_class=1, **small))


def test_feature_trigger_end_to_end_on_breast_cancer():
    config = ExperimentConfig(
        dataset="breast_cancer",
        model="logreg",
        attack="feature_trigger",
        trigger_features="5,15,25",
        target_class=1,
        num_clients=10,
        clients_per_round=10,
        num_malicious=3,
        aggregator="mean",
        rounds=40,
        eval_every=20,
        local_steps=5,
        local_epochs=None,
        client_lr=0.5,
    )
    results = run_experiment(build(config), log=lambda *a: None)
    asr = results["evals"]["attack_success_rate"]
    assert len(asr) == 2 and asr[-1] > 0.85  # ~0.15 for the same run without attackers
    assert results["final"]["accuracy"] > 0.95


def _mnist_backdoor(data_attack, num_malicious, model, rounds, **extra):
    config = ExperimentConfig(
        dataset="mnist5k",
        model=model,
        attack="none",
        data_attack=data_attack,
        target_class=0,
        num_clients=20,
        clients_per_round=20,
        num_malicious=num_malicious,
        aggregator="mean",
        rounds=rounds,
        eval_every=rounds // 2,
        local_steps=10,
        local_epochs=None,
        **extra,
    )
    return run_experiment(build(config), log=lambda *a: None)


@pytest.mark.parametrize("data_attack,rounds", [("backdoor", 8), ("dba", 16)])
def test_backdoor_and_dba_succeed_against_mean_on_mnist5k_small(data_attack, rounds):
    results = _mnist_backdoor(data_attack, 6, "logreg", rounds)
    asr = results["evals"]["attack_success_rate"]
    assert len(asr) == 2  # reported at every evaluation
    assert asr[-1] > 0.85 and results["final"]["accuracy"] > 0.85


@pytest.mark.slow
@pytest.mark.parametrize("data_attack,rounds", [("backdoor", 20), ("dba", 30)])
def test_backdoor_and_dba_succeed_against_mean_on_mnist5k_full(data_attack, rounds):
    clean = _mnist_backdoor(data_attack, 0, "mlp", rounds)
    attacked = _mnist_backdoor(data_attack, 6, "mlp", rounds)
    assert clean["final"]["attack_success_rate"] < 0.1
    assert attacked["final"]["attack_success_rate"] > 0.9
    assert attacked["final"]["accuracy"] > 0.88 and attacked["final"]["accuracy"] > clean["final"]["accuracy"] - 0.03
