"""Rules and malicious local trainings under the CPU default execution (``parallel``: ``pmap``
over 2 CPU devices), run as a script by tests/test_client.py: the cases named on the command
line, or every registered rule and local-training attack.

``use_cpu_cores`` must run before JAX starts, hence the subprocess. Prints, as JSON on its last
line, the default execution it saw and per case whether two rounds finished with finite params,
and how far the parallel round's params are from the sequential round's (same clients, same keys),
and whether the parallel round split the rule's coordinates over the devices (every input is
wide enough here: ``column_split.MIN_COLUMNS`` is lowered to 1, so the split is what is compared).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fljax  # noqa: E402

fljax.use_cpu_cores(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from experiments.timing import build_aggregator  # noqa: E402
from fljax import attacks  # noqa: E402
from fljax.aggregators import REGISTRY, column_split  # noqa: E402

LIBRARY_MIN_COLUMNS = column_split.MIN_COLUMNS
column_split.MIN_COLUMNS = 1  # the tiny model's 15 coordinates split too (7 + 7, one unsplit)

NUM_CLASSES, N = 3, 11  # 11 clients over 2 devices: one padding client; Bulyan's n >= 4f + 3 with f = 2


def tiny():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.argmax(x[:, :NUM_CLASSES], axis=1).astype(np.int32)
    table = rng.integers(0, 60, size=(20, 6)).astype(np.int32)
    counts = rng.integers(2, 7, size=20).astype(np.int32)
    data = fljax.FederatedData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(table), jnp.asarray(counts), jnp.asarray(x), jnp.asarray(y)
    )
    apply = lambda p, xb: xb @ p["kernel"] + p["bias"]  # flax's names: rules that read the model find its output layer
    params = {
        "kernel": 0.1 * jax.random.normal(jax.random.PRNGKey(0), (4, NUM_CLASSES)),
        "bias": jnp.zeros(NUM_CLASSES),
    }
    return data, apply, params


def two_rounds(rnd, params, data):
    state = rnd.init(params)
    for r in range(2):
        state, _ = rnd.step(state, data, jax.random.PRNGKey(r))
    return jax.block_until_ready(state.params)


def round_pair(kwargs, update, apply, params, data):
    """Two rounds under each execution, and whether the parallel one split its rule's columns."""
    rounds = {
        e: fljax.make_round(update, clients_per_round=N, execution=e, model_apply=apply, **kwargs)
        for e in ("auto", "sequential")
    }
    finals = {e: two_rounds(rnd, params, data) for e, rnd in rounds.items()}
    auto = rounds["auto"]
    traced = str(jax.make_jaxpr(lambda s: auto.step(s, data, jax.random.PRNGKey(0)))(auto.init(params)))
    return finals, "'columns'" in traced


RUN_CASE = "run:backdoor+adaptive(objective='targeted')"
"""A whole jitted run (``fljax.experiment.build``, evaluated every round) whose attack
differentiates through the attackers' training: several client maps in one program; under
``pmap`` one once failed ("Context mesh ... should match the mesh of sharding ...")."""


def whole_runs():
    """RUN_CASE's final params under each execution, at the library's split threshold (this small
    model's rule runs unsplit, the case that failed), and False: its columns are not split."""
    from fljax.experiment import ExperimentConfig, build

    config = dict(
        dataset="digits",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        rounds=1,
        aggregator="median",
        attack="backdoor(target_label=0, trigger_size=2)+adaptive(objective='targeted', attack_steps=2)",
    )
    finals = {}
    column_split.MIN_COLUMNS = LIBRARY_MIN_COLUMNS
    try:
        for e in ("auto", "sequential"):
            exp = build(ExperimentConfig(execution=e, **config))
            state, _ = jax.jit(exp.train.run)(exp.train.init(jax.random.PRNGKey(0)), exp.data)
            finals[e] = jax.block_until_ready(state.server.params)
    finally:
        column_split.MIN_COLUMNS = 1
    return finals, False


def main():
    data, apply, params = tiny()
    loss = fljax.classification_loss(apply)
    update = fljax.fedavg(loss, optax.sgd(0.3), local_steps=2, batch_size=3)
    cases = {name: dict(aggregator=build_aggregator(name, N)[0]) for name in sorted(REGISTRY)}
    optimizer = optax.sgd(0.3)
    for name, entry in attacks.MODEL_ATTACKS.items():
        if entry.local_training is None:
            continue
        cases[f"attack:{name}"] = dict(
            aggregator=REGISTRY["median"](),
            num_malicious=6,
            data_attack=attacks.label_flip(NUM_CLASSES, source=0, target=1),
            malicious_client_update=entry.local_training(loss, optimizer, local_steps=2, batch_size=3),
        )
    wanted = sys.argv[1:] or [*cases, RUN_CASE]
    out = {"default_execution": fljax.client.default_execution(), "devices": jax.local_device_count(), "cases": {}}
    for name in wanted:
        result = {}
        try:
            if name == RUN_CASE:
                finals, result["columns_split"] = whole_runs()
            else:
                finals, result["columns_split"] = round_pair(cases[name], update, apply, params, data)
            leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(finals["auto"])]
            result["finite"] = all(bool(np.all(np.isfinite(a))) for a in leaves)
            result["diff"] = max(
                float(np.max(np.abs(a - np.asarray(b, np.float64))))
                for a, b in zip(leaves, jax.tree.leaves(finals["sequential"]))
            )
        except Exception as e:  # reported by name; the test fails on it
            result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        out["cases"][name] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()
