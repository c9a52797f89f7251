"""Determinism: the same config and seed give identical results (parameters bit for bit,
metrics exactly) on the same machine, through the runner and through ``train(key)``; different
seeds give different results; every client execution strategy computes the same run up to
float rounding."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments.run import run_experiment
from fljax.experiment import ExperimentConfig, build

# Random cohorts (6 of 10), a Dirichlet partition, a randomized attack and local minibatches:
# every source of randomness of a run is in play.
CONFIG = dict(
    dataset="digits",
    model="logreg",
    num_clients=10,
    clients_per_round=6,
    num_malicious=2,
    partition="dirichlet",
    dirichlet_alpha=0.5,
    attack="gaussian",
    attack_scale=2.0,
    aggregator="trimmed_mean",
    num_byzantine=1,
    rounds=4,
    eval_every=2,
    local_steps=2,
    batch_size=16,
    server_momentum=0.5,
    seed=11,
    execution="sequential",
)
TIMING = ("seconds", "compile_seconds", "rounds_per_second")
quiet = lambda msg: None


def experiment(**overrides):
    return build(ExperimentConfig(**dict(CONFIG, **overrides)))


@pytest.fixture(scope="module")
def exp():
    return experiment()


def flat(params):
    return np.asarray(ravel_pytree(params)[0])


def comparable(results):
    results = json.loads(json.dumps(results))  # as the JSON file holds them
    for key in TIMING:
        results["final"].pop(key)
    return json.dumps(results, sort_keys=True)  # NaN == NaN as text


def test_train_is_bitwise_reproducible(exp):
    key = jax.random.PRNGKey(5)
    state_a, hist_a = exp.train(key)
    state_b, hist_b = exp.train(key)
    np.testing.assert_array_equal(flat(state_b.server.params), flat(state_a.server.params))
    for a, b in zip(jax.tree.leaves(state_b), jax.tree.leaves(state_a)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(hist_b), jax.tree.leaves(hist_a)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_different_seeds_give_different_runs(exp):
    state_a, hist_a = exp.train(jax.random.PRNGKey(5))
    state_b, hist_b = exp.train(jax.random.PRNGKey(6))
    assert not np.array_equal(flat(state_a.server.params), flat(state_b.server.params))
    assert not np.array_equal(np.asarray(hist_a.rounds["update_norm"]), np.asarray(hist_b.rounds["update_norm"]))


def test_runner_is_reproducible_and_seed_dependent(exp):
    """The runner (``run_experiment``, what the CLI runs) twice: identical JSON. Another seed for
    the run (same data partition, so the same compiled blocks): different results. That separate
    processes agree too is checked by tests/test_resume.py (an uninterrupted CLI run against a
    chain of killed and resumed ones)."""
    first = run_experiment(exp, quiet)
    assert comparable(run_experiment(exp, quiet)) == comparable(first)
    other_seed = exp._replace(config=dataclasses.replace(exp.config, seed=12))
    other = run_experiment(other_seed, quiet)
    assert other["history"]["update_norm"] != first["history"]["update_norm"]
    assert other["evals"]["loss"] != first["evals"]["loss"]


def test_execution_strategies_agree(exp):
    """vmap, chunked vmap (chunks of 4, the last one short) and sequential train the same
    clients with the same keys: the runs agree to float rounding."""
    key = jax.random.PRNGKey(5)
    ref_state, ref_hist = exp.train(key)
    for execution in ("vmap", "chunked"):
        state, hist = experiment(execution=execution, **({"chunk_size": 4} if execution == "chunked" else {})).train(
            key
        )
        np.testing.assert_allclose(
            flat(state.server.params), flat(ref_state.server.params), rtol=1e-4, atol=1e-5, err_msg=execution
        )
        for name in ("accuracy", "loss"):
            np.testing.assert_allclose(
                np.asarray(hist.evals[name]),
                np.asarray(ref_hist.evals[name]),
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{execution} {name}",
            )
        np.testing.assert_allclose(
            np.asarray(hist.rounds["update_norm"]),
            np.asarray(ref_hist.rounds["update_norm"]),
            rtol=1e-4,
            err_msg=execution,
        )
        np.testing.assert_array_equal(
            np.asarray(hist.rounds["num_malicious"]), np.asarray(ref_hist.rounds["num_malicious"])
        )
