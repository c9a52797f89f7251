"""Peak host memory of federated runs against population size, cohort size and client execution.

    python -m experiments.memory                       # the default table (up to 100,000 clients)
    python -m experiments.memory --num_clients=100000 --clients_per_round=1000 --executions=chunked,vmap

Each configuration runs in a fresh process (the peak resident set size, ``VmHWM``, only ever
grows), which builds a synthetic population of ``--num_clients`` clients over mnist5k's 4,000
training images (each client holds ``examples_per_client/2 .. examples_per_client`` of them,
drawn independently: the images are shared through the index table, never copied per client),
compiles an evaluation block of ``--rounds`` rounds like the runner and runs it. The table
gives, per configuration: the index table's and the ``[cohort, d]`` update matrix's sizes, the
process's resident memory after loading the data (``base``) and its peak over the run, the
compile time and the seconds per round.

What costs memory (d = model parameters, n = clients per round, C = population, B = batch):
* the population: ``C x max_n`` int32 indices (100,000 x 50: 20 MB) plus the shared examples;
* the cohort's ``[n, d]`` float32 updates, and the rule's work on them (a sort for median and
  trimmed mean, an ``[n, n]`` Gram matrix for Krum): O(n d), whatever the execution;
* local training: ``sequential`` O(d + B), ``chunked`` O(chunk (d + B)), ``vmap`` O(n (d + B)).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so that importing it defines none)."""
    flags.DEFINE_list("num_clients", ["1000", "10000", "100000"], "population sizes")
    flags.DEFINE_list("clients_per_round", ["100", "1000"], "cohort sizes (skipped when larger than the population)")
    flags.DEFINE_list("executions", ["chunked"], "client executions: sequential, chunked, vmap")
    flags.DEFINE_string(
        "aggregator", "median", "aggregation rule (its default hyper-parameters, num_byzantine=n/10 where it needs one)"
    )
    flags.DEFINE_string("model", "mlp", "logreg, mlp (784-200-200-10, d=199,210) or cnn")
    flags.DEFINE_integer(
        "examples_per_client", 50, "largest client's examples (the index table's width)", lower_bound=1
    )
    flags.DEFINE_integer("rounds", 3, "rounds per configuration (one evaluation block)", lower_bound=1)
    flags.DEFINE_integer("local_steps", 2, "local SGD steps per client", lower_bound=1)
    flags.DEFINE_integer("batch_size", 32, "local batch size", lower_bound=1)
    flags.DEFINE_integer("chunk_size", 8, "clients per chunk for --executions=chunked", lower_bound=1)
    flags.DEFINE_string("output", None, "also write the rows as JSON here")
    flags.DEFINE_bool("child", False, "internal: measure one configuration in this process and print it as JSON")


def proc_status_mb(field: str) -> float:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def synthetic_population(dataset, num_clients: int, examples_per_client: int, key: jax.Array):
    """``FederatedData`` with ``num_clients`` clients over ``dataset``'s training examples: client
    c holds ``count_c`` ~ U{ceil(m/2) .. m} examples drawn uniformly (with replacement) from all
    training examples, m = ``examples_per_client``; rows are padded with 0 past ``count_c``."""
    from fljax.data import FederatedData

    k_count, k_rows = jax.random.split(key)
    counts = jax.random.randint(k_count, (num_clients,), (examples_per_client + 1) // 2, examples_per_client + 1)
    rows = jax.random.randint(k_rows, (num_clients, examples_per_client), 0, len(dataset.y_train))
    rows = jnp.where(jnp.arange(examples_per_client)[None, :] < counts[:, None], rows, 0).astype(jnp.int32)
    return FederatedData(
        jnp.asarray(dataset.x_train),
        jnp.asarray(dataset.y_train),
        rows,
        counts.astype(jnp.int32),
        jnp.asarray(dataset.x_test),
        jnp.asarray(dataset.y_test),
    )


def measure(num_clients: int, clients_per_round: int, execution: str) -> dict:
    """Builds, compiles and runs one configuration in this process; returns its row."""
    import fljax
    from fljax.aggregators import REGISTRY
    from fljax.experiment import _call_with_config

    dataset = fljax.data.mnist5k()
    data = synthetic_population(dataset, num_clients, FLAGS.examples_per_client, jax.random.PRNGKey(0))
    jax.block_until_ready(data)
    base = proc_status_mb("VmRSS")
    model = fljax.models.get(FLAGS.model, dataset.x_train.shape[1:], dataset.num_classes)
    update = fljax.fedavg(
        fljax.classification_loss(model.apply),
        optax.sgd(0.1),
        local_steps=FLAGS.local_steps,
        batch_size=FLAGS.batch_size,
    )
    values = {"num_byzantine": clients_per_round // 10, "num_clients": num_clients}
    aggregator = _call_with_config("aggregator", FLAGS.aggregator, REGISTRY[FLAGS.aggregator], values)
    rnd = fljax.make_round(
        update,
        aggregator,
        clients_per_round=clients_per_round,
        execution=execution,
        chunk_size=FLAGS.chunk_size,
        jit=False,
    )
    train = fljax.make_train(
        rnd, data, model.init, fljax.make_evaluate(model.apply), num_rounds=FLAGS.rounds, eval_every=FLAGS.rounds
    )
    state = train.init(jax.random.PRNGKey(1))
    d = fljax.models.num_params(state.server.params)
    t0 = time.perf_counter()
    block = train.run_block.lower(state, data, num_rounds=FLAGS.rounds).compile()
    compile_s = time.perf_counter() - t0
    compile_peak = proc_status_mb("VmHWM")
    analysis = block.memory_analysis()  # XLA's own plan: scratch buffers of the compiled block
    temp_mb = float("nan") if analysis is None else analysis.temp_size_in_bytes / 2**20
    t0 = time.perf_counter()
    state, _, evals = block(state, data)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    return {
        "num_clients": num_clients,
        "clients_per_round": clients_per_round,
        "execution": execution,
        "aggregator": FLAGS.aggregator,
        "model": FLAGS.model,
        "d": d,
        "table_mb": data.client_indices.nbytes / 2**20,
        "updates_mb": clients_per_round * d * 4 / 2**20,
        "base_mb": base,
        "xla_temp_mb": temp_mb,
        "compile_peak_mb": compile_peak,
        "peak_mb": proc_status_mb("VmHWM"),
        "compile_s": compile_s,
        "s_per_round": seconds / FLAGS.rounds,
        "accuracy": float(evals["accuracy"]),
    }


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    head = (
        "clients",
        "per round",
        "execution ",
        "index table",
        "updates [n,d]",
        "base RSS",
        "XLA temp",
        "peak (compile)",
        "peak RSS",
        "compile",
        "s/round",
    )
    lines = [" | ".join(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['num_clients']:>7} | {r['clients_per_round']:>9} | {r['execution']:<10} | {r['error']}")
            continue
        lines.append(
            f"{r['num_clients']:>7} | {r['clients_per_round']:>9} | {r['execution']:<10} | "
            f"{r['table_mb']:>8.1f} MB | {r['updates_mb']:>10.0f} MB | {r['base_mb']:>5.0f} MB | "
            f"{r['xla_temp_mb']:>5.0f} MB | "
            f"{r['compile_peak_mb']:>11.0f} MB | "
            f"{r['peak_mb']:>5.0f} MB | {r['compile_s']:>5.1f} s | {r['s_per_round']:>7.2f}"
        )
    return "\n".join(lines)


def _ints(name: str) -> list[int]:
    try:
        values = [int(v) for v in getattr(FLAGS, name)]
    except ValueError:
        raise app.UsageError(
            f"--{name} must be a comma-separated list of integers, got {getattr(FLAGS, name)!r}"
        ) from None
    if any(v < 1 for v in values):
        raise app.UsageError(f"--{name} must hold integers >= 1, got {values}")
    return values


def main(argv) -> None:
    from fljax.aggregators import REGISTRY
    from fljax.client import EXECUTIONS

    populations, cohorts = _ints("num_clients"), _ints("clients_per_round")
    bad = [e for e in FLAGS.executions if e not in EXECUTIONS]
    if bad:
        raise app.UsageError(f"--executions: unknown client execution(s) {bad}; valid: {', '.join(EXECUTIONS)}")
    if FLAGS.aggregator not in REGISTRY:
        raise app.UsageError(
            f"--aggregator: unknown aggregator {FLAGS.aggregator!r}; valid: {', '.join(sorted(REGISTRY))}"
        )
    if FLAGS.child:
        print(json.dumps(measure(populations[0], cohorts[0], FLAGS.executions[0])))
        return
    shared = [
        f"--{name}={getattr(FLAGS, name)}"
        for name in ("aggregator", "model", "examples_per_client", "rounds", "local_steps", "batch_size", "chunk_size")
    ]
    rows = []
    print(
        f"fljax memory: model {FLAGS.model}, {FLAGS.aggregator}, {FLAGS.local_steps} local steps of batch "
        f"{FLAGS.batch_size}, {FLAGS.rounds} rounds, backend {jax.default_backend()}",
        flush=True,
    )
    for c in populations:
        for n in cohorts:
            if n > c:
                continue
            for execution in FLAGS.executions:
                cmd = [
                    sys.executable,
                    "-m",
                    "experiments.memory",
                    "--child",
                    f"--num_clients={c}",
                    f"--clients_per_round={n}",
                    f"--executions={execution}",
                    *shared,
                ]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                )
                if proc.returncode == 0:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                else:  # e.g. killed by the kernel's OOM killer (-9)
                    tail = (proc.stderr.strip().splitlines() or [""])[-1][:120]
                    row = {
                        "num_clients": c,
                        "clients_per_round": n,
                        "execution": execution,
                        "error": f"failed (exit {proc.returncode}): {tail}",
                    }
                rows.append(row)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
