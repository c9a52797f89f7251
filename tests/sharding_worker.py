"""Sharded vs unsharded rounds on 8 CPU devices; run as a script by tests/test_sharding.py.

The device count must be fixed before JAX is imported, so the test runs this file in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and reads the JSON it
prints on its last line: for each case the largest difference between the sharded and the
unsharded computation, facts about the compiled program, and the validation errors. The model
and data are tiny (a 5x4 linear classifier on 64 random examples) to keep compilation short.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fljax  # noqa: E402
from fljax import aggregators, attacks, sharding  # noqa: E402
from fljax.aggregators._common import normalize  # noqa: E402
from fljax.types import AggregationContext  # noqa: E402

NUM_CLASSES = 4
RULES = {
    "mean": aggregators.mean(),
    "median": aggregators.median(),
    "trimmed_mean": aggregators.trimmed_mean(num_byzantine=2),
    "krum": aggregators.krum(num_byzantine=2),
}


def max_diff(a, b) -> float:
    """Largest absolute difference over two pytrees of arrays (NaN in both counts 0)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    out = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y)), initial=0.0)))
    return out


def tiny_problem():
    """A linear classifier and a 32-client population over 64 random examples."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = np.argmax(x[:, :NUM_CLASSES] + 0.3 * rng.normal(size=(64, NUM_CLASSES)), axis=1).astype(np.int32)
    counts = rng.integers(1, 5, size=32).astype(np.int32)  # unequal clients, padded to 4
    table = rng.integers(0, 64, size=(32, 4)).astype(np.int32)
    data = fljax.FederatedData(
        jnp.asarray(x), jnp.asarray(y), jnp.asarray(table), jnp.asarray(counts), jnp.asarray(x), jnp.asarray(y)
    )
    apply = lambda p, xb: xb @ p["w"] + p["b"]
    update = fljax.fedavg(fljax.classification_loss(apply), optax.sgd(0.5), local_steps=2, batch_size=2)
    init = lambda key: {"w": 0.1 * jax.random.normal(key, (5, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)}
    return data, apply, update, init


def main() -> dict:
    devices = jax.device_count()
    data, apply, update, init = tiny_problem()
    out = {"devices": devices}

    # Whole runs (rounds under lax.scan, evaluation folded in) with local training sharded.
    evaluate = fljax.make_evaluate(apply)
    runs = {}
    # 16 clients: 2 per device; 12 clients: padded to 16 (copies of the last client, dropped).
    for label, execution, shard, n in (
        ("reference16", "sequential", False, 16),
        ("sequential", "sequential", True, 16),
        ("reference12", "sequential", False, 12),
        ("vmap_padded", "vmap", True, 12),
        ("parallel_padded", "parallel", False, 12),
    ):
        rnd = fljax.make_round(
            update,
            RULES["median"],
            clients_per_round=n,
            num_malicious=6,
            data_attack=attacks.label_flip(num_classes=NUM_CLASSES, source=1, target=2),
            execution=execution,
            shard_clients=shard,
            jit=False,
        )
        train = fljax.make_train(rnd, data, init, evaluate, num_rounds=3, eval_every=2)
        state, history = train(jax.random.PRNGKey(7))
        runs[label] = (state.server.params, history)
        if label == "sequential":
            text = jax.jit(lambda k: train.run(train.init(k))).lower(jax.random.PRNGKey(7)).as_text()  # noqa: B023
            out["hlo"] = {
                "manual_clients": 'manual_axes={"clients"}' in text,
                "partitions": f"mhlo.num_partitions = {devices}" in text,
            }
    out["moved"] = max_diff(runs["reference16"][0], init(jax.random.split(jax.random.PRNGKey(7))[0]))
    out["runs"] = {}
    for label, ref in (
        ("sequential", "reference16"),
        ("vmap_padded", "reference12"),
        ("parallel_padded", "reference12"),
    ):
        (p, h), (ref_p, ref_h) = runs[label], runs[ref]
        out["runs"][label] = {"params_diff": max_diff(ref_p, p), "history_diff": max_diff(ref_h, h)}

    # Every rule on a sharded [n, d] update matrix (XLA inserts the collectives) vs unsharded.
    updates = jax.random.normal(jax.random.PRNGKey(3), (16, 40)) * jnp.linspace(0.5, 3.0, 40)
    updates = updates.at[:3].multiply(20.0)  # outliers the robust rules must drop
    context = AggregationContext(
        weights=jnp.arange(1.0, 17.0),
        key=jax.random.PRNGKey(4),
        client_ids=jnp.arange(16),
        params=jnp.zeros(40),
        reference=jnp.zeros(40),
    )
    mesh = sharding.client_mesh()

    def aggregate_all(u, shard):
        out = {}
        for rows in (16, 12):  # 2 rows per device, and an uneven split (12 rows over 8 devices)
            v, ctx = u[:rows], jax.tree.map(lambda a: a[:rows] if a.shape[:1] == (16,) else a, context)  # noqa: B023
            if shard:
                v = sharding.constrain_clients(v, mesh)
            out.update({(name, rows): rule.update(v, (), ctx)[0] for name, rule in RULES.items()})
        return out

    plain = jax.jit(lambda u: aggregate_all(u, False))(updates)
    sharded = jax.jit(lambda u: aggregate_all(u, True))(jax.device_put(updates, sharding.client_sharding(mesh)))
    out["aggregators"] = {
        name: {
            "diff": max(max_diff(plain[name, r], sharded[name, r]) for r in (16, 12)),
            "scale": float(jnp.max(jnp.abs(plain[name, 16]))),
        }
        for name in RULES
    }
    out["aggregators"]["mean"]["expected_diff"] = max_diff(
        plain["mean", 16], np.asarray(normalize(context.weights)) @ np.asarray(updates, np.float64)
    )

    errors = {}
    for label, make in {
        "mesh_axis": lambda: fljax.make_round(
            update,
            RULES["mean"],
            clients_per_round=16,
            shard_clients=jax.sharding.Mesh(np.asarray(jax.devices()), ("x",)),
        ),
    }.items():
        try:
            make()
            errors[label] = None
        except ValueError as e:
            errors[label] = str(e)
    out["errors"] = errors
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
