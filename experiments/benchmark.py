"""Throughput of fljax rounds and aggregation rules, measured side by side in one run.

    python -m experiments.benchmark                              # ~3 minutes on a 2-core CPU
    python -m experiments.benchmark --clients_per_round=10,100,1000 --executions=vmap,sequential
    python -m experiments.benchmark --aggregators=all --large --torch=false

Prints, for each cohort size in ``--clients_per_round``:

1. Rounds of the MLP workload (``fljax.models.get('mlp', (28, 28, 1), 10)``, 784-200-200-10,
   199,210 parameters; ``--local_steps`` steps of ``--batch_size`` per client; FedAvg with the
   mean aggregator on synthetic MNIST-shaped data) under each client execution strategy:
   round time, rounds/s, clients/s and achieved TFLOP/s, counted as 6 x parameters x examples
   processed, next to the fp32 matmul peak measured in the same run.
2. The same round as a plain PyTorch per-client loop (``--torch``; skipped if torch is absent).
3. Each aggregation rule (``--aggregators``, names of ``fljax.aggregators.REGISTRY``, built with
   ``num_byzantine`` = 20% of n where the factory takes one) on the round's ``[n, d]`` updates,
   next to the clients' local training time and ``torch.median`` (``--large`` adds
   ``[1000, 1,000,000]`` random updates).

Figures are medians over ``--repeats`` runs after one compile run; compile times are reported.
This is a script, never a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import copy
import inspect
import os
import platform
import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax.flatten_util import ravel_pytree

import fljax
from fljax.aggregators import REGISTRY

FLAGS = flags.FLAGS
flags.DEFINE_list("clients_per_round", ["100"], "cohort sizes n to measure (the scale table)")
flags.DEFINE_integer("local_steps", 18, "local SGD steps per client per round")
flags.DEFINE_integer("batch_size", 32, "examples per local step")
flags.DEFINE_integer("examples_per_client", 600, "examples each synthetic client holds (MNIST / 100)")
flags.DEFINE_integer("repeats", 5, "timed runs per measurement (after one compile run)")
flags.DEFINE_list("executions", ["vmap", "chunked:10", "sequential", "parallel"],
                  "client execution strategies: vmap, sequential, parallel, auto, chunked:<clients per chunk>")
flags.DEFINE_integer("cpu_cores", 0, "CPU cores exposed as JAX devices for --executions=parallel "
                     "(fljax.use_cpu_cores); 0: every core this process may use", lower_bound=0)
flags.DEFINE_list("aggregators", ["mean", "median", "trimmed_mean", "krum"],
                  "REGISTRY names to time on the round's updates, or 'all'")
flags.DEFINE_bool("torch", True, "also time the round as a plain PyTorch per-client loop, and torch.median")
flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads for the PyTorch round (0: torch's default); on a "
                     "small shared CPU multi-threaded torch steps of this size can stall for tens of ms each")
flags.DEFINE_bool("large", False, "also time the aggregators on random [1000, 1000000] updates")
flags.DEFINE_float("client_lr", 0.05, "local SGD learning rate")

INPUT_SHAPE, NUM_CLASSES, POOL = (28, 28, 1), 10, 10_000


def _now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], object], repeats: int, best: bool = False) -> tuple[float, float]:
    """``(first call seconds (compile + run), median (or best) seconds of the next repeats)``."""
    start = _now()
    jax.block_until_ready(fn())
    first = _now() - start
    times = []
    for _ in range(repeats):
        start = _now()
        jax.block_until_ready(fn())
        times.append(_now() - start)
    return first, min(times) if best else statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Prints a plain text table."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(f"\n{title}\n{line(header)}\n{line(['-' * w for w in widths])}")
    for row in rows:
        print(line(row))


def matmul_peak(repeats: int) -> float:
    """Measured fp32 matmul FLOP/s: the best of ``repeats`` square ``jnp.dot`` at ``Precision.HIGHEST``."""
    size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    dot = jax.jit(lambda a: jnp.dot(a, a, precision=jax.lax.Precision.HIGHEST))
    _, seconds = timed(lambda: dot(a), repeats, best=True)
    return 2 * size ** 3 / seconds


def synthetic_data(num_clients: int, examples_per_client: int) -> fljax.FederatedData:
    """MNIST-shaped random examples in a shared pool; each client holds random indices."""
    rng = np.random.default_rng(0)
    x = rng.random((POOL, *INPUT_SHAPE), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, POOL).astype(np.int32)
    indices = rng.integers(0, POOL, (num_clients, examples_per_client)).astype(np.int32)
    counts = np.full(num_clients, examples_per_client, np.int32)
    return fljax.FederatedData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices), jnp.asarray(counts),
                               jnp.asarray(x[:1000]), jnp.asarray(y[:1000]))


def parse_execution(spec: str) -> tuple[str, int]:
    """``'chunked:10'`` -> ``('chunked', 10)``; other strategies -> ``(name, 8)``."""
    name, _, chunk = spec.partition(":")
    return name, int(chunk) if chunk else 8


def build_aggregator(name: str, n: int):
    """``(aggregator, None)`` or ``(None, reason)``: the REGISTRY factory called with the
    arguments it takes among ``num_byzantine`` (20% of n) and benchmark values of the others."""
    f = n // 5
    known = {"num_byzantine": f, "num_clients": n, "max_norm": 1.0, "noise_std": 1e-3, "clip_radius": 1.0,
             "learning_threshold": f + 1}
    factory = REGISTRY.get(name)
    if factory is None:
        return None, f"not in REGISTRY ({', '.join(sorted(REGISTRY))})"
    try:
        params = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in known.items() if k in params}
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing:
            return None, f"needs {', '.join(missing)}"
        aggregator = factory(**kwargs)
        aggregator.requirement(n)
        return aggregator, None
    except Exception as e:  # report and go on: other rules are still measured
        return None, f"{type(e).__name__}: {e}"


def time_aggregator(aggregator, updates: jax.Array, repeats: int) -> tuple[float, float]:
    """``aggregator.update`` on ``updates [n, d]`` under jit, as a round calls it."""
    n, d = updates.shape
    flat_params = jnp.zeros(d, updates.dtype)
    context = fljax.AggregationContext(weights=jnp.full(n, 600.0, updates.dtype), key=jax.random.PRNGKey(0),
                                       client_ids=jnp.arange(n), params=flat_params,
                                       reference=jnp.mean(updates[: max(1, n // 10)], axis=0))
    state = aggregator.init(flat_params)
    step = jax.jit(lambda u, s: (lambda out: (out[0], out[2]["weights"]))(aggregator.update(u, s, context)))
    return timed(lambda: step(updates, state), repeats)


def torch_median_seconds(updates: np.ndarray, repeats: int) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.array(updates))
    times = []
    for _ in range(repeats + 1):
        start = _now()
        torch.median(x, dim=0)
        times.append(_now() - start)
    return statistics.median(times[1:])


def torch_round_seconds(data: fljax.FederatedData, init_params, n: int, repeats: int) -> Optional[tuple[float, str]]:
    """One FedAvg round as a plain PyTorch loop: per client, copy the global MLP, run the local
    SGD steps on its batches, keep the delta; average; apply. Returns ``(seconds, version)``."""
    try:
        import torch
    except ImportError:
        return None
    default_threads = torch.get_num_threads()
    if FLAGS.torch_threads:
        torch.set_num_threads(FLAGS.torch_threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 200), torch.nn.ReLU(),
                                torch.nn.Linear(200, 200), torch.nn.ReLU(), torch.nn.Linear(200, NUM_CLASSES))
    with torch.no_grad():  # same initial weights as the fljax model (flax kernels are [in, out])
        dense = [init_params[f"Dense_{i}"] for i in range(3)]
        for layer, p in zip([model[1], model[3], model[5]], dense):
            layer.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    x = torch.from_numpy(np.array(data.x))
    y = torch.from_numpy(np.array(data.y)).long()
    indices = torch.from_numpy(np.array(data.client_indices)).long()
    local = copy.deepcopy(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    steps, batch = FLAGS.local_steps, FLAGS.batch_size

    def one_round():
        global_params = [p.detach().clone() for p in model.parameters()]
        total = [torch.zeros_like(p) for p in global_params]
        for client in range(n):
            with torch.no_grad():
                for p, g in zip(local.parameters(), global_params):
                    p.copy_(g)
            optimizer = torch.optim.SGD(local.parameters(), lr=FLAGS.client_lr)
            mine = indices[client]
            order = mine[torch.randperm(len(mine), generator=generator)]
            for t in range(steps):
                idx = order[(t * batch) % len(order):][:batch]
                optimizer.zero_grad()
                loss_fn(local(x[idx]), y[idx]).backward()
                optimizer.step()
            with torch.no_grad():
                for acc, p, g in zip(total, local.parameters(), global_params):
                    acc += p - g
        with torch.no_grad():
            for p, acc in zip(model.parameters(), total):
                p += acc / n

    times = []
    for _ in range(repeats + 1):
        start = _now()
        one_round()
        times.append(_now() - start)
    version = f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    torch.set_num_threads(default_threads)
    return statistics.median(times[1:]), version


def benchmark_cohort(n: int, model, params, peak: float) -> None:
    """All three tables for one cohort size n."""
    repeats = FLAGS.repeats
    data = synthetic_data(n, FLAGS.examples_per_client)
    loss_fn = fljax.classification_loss(model.apply)
    client_update = fljax.fedavg(loss_fn, optax.sgd(FLAGS.client_lr), local_steps=FLAGS.local_steps,
                                 batch_size=FLAGS.batch_size)
    num_params = fljax.models.num_params(params)
    examples = n * FLAGS.local_steps * FLAGS.batch_size
    flops = 6 * num_params * examples

    # 1. Rounds per client execution strategy.
    rows, round_seconds = [], {}
    for spec in FLAGS.executions:
        execution, chunk = parse_execution(spec)
        try:
            rnd = fljax.make_round(client_update, REGISTRY["mean"](), clients_per_round=n, execution=execution,
                                   chunk_size=chunk)
        except ValueError as e:
            rows.append([spec, f"skipped: {e}"] + [""] * 6)
            continue
        state = [rnd.init(params)]

        def run():
            state[0], metrics = rnd.step(state[0], data, jax.random.PRNGKey(1))
            return state[0].params

        first, seconds = timed(run, repeats)
        round_seconds[spec] = seconds
        rows.append([spec, f"{first:.1f}", f"{seconds * 1e3:.0f}", f"{1 / seconds:.2f}", f"{n / seconds:.0f}",
                     f"{flops / seconds / 1e12:.4f}", f"{100 * flops / seconds / peak:.1f}%"])
    table(f"Rounds: mlp ({num_params:,} params), {n} clients x {FLAGS.local_steps} steps x batch {FLAGS.batch_size} "
          f"({examples:,} examples, {flops / 1e9:.1f} GFLOP at 6 x params x examples), FedAvg + mean",
          ["execution", "compile+1st s", "round ms", "rounds/s", "clients/s", "TFLOP/s", "of peak"], rows)
    best = min(round_seconds, key=round_seconds.get) if round_seconds else None

    # 2. The same round in plain PyTorch.
    if FLAGS.torch:
        result = torch_round_seconds(data, params, n, max(1, repeats // 2))
        if result is None:
            print("\nPyTorch round: skipped (torch is not importable)")
        else:
            seconds, version = result
            rows = [["torch per-client loop", f"{seconds * 1e3:.0f}", f"{flops / seconds / 1e12:.4f}", "1.00"]]
            rows += [[f"fljax {spec}", f"{s * 1e3:.0f}", f"{flops / s / 1e12:.4f}", f"{s / seconds:.2f}"]
                     for spec, s in round_seconds.items()]
            table(f"PyTorch round ({version}) vs fljax", ["implementation", "round ms", "TFLOP/s", "time / torch"], rows)

    # 3. Aggregators on this round's updates.
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    cohort = jnp.arange(n)

    def one_client(client, key):
        client_data = fljax.ClientData(data.x, data.y, data.client_indices[client], data.client_counts[client])
        return ravel_pytree(client_update(params, client_data, key))[0]

    updates = jax.jit(lambda c, k: fljax.client.map_clients(lambda a: one_client(*a), (c, k), "auto"))(cohort, keys)
    train_seconds = round_seconds.get(best, float("nan"))
    time_aggregators(f"Aggregators on this round's updates [{n}, {updates.shape[1]:,}]; local training (the "
                     f"{best} round) takes {train_seconds * 1e3:.0f} ms", updates, train_seconds)


def time_aggregators(title: str, updates: jax.Array, train_seconds: float) -> None:
    """One aggregator table: each rule's time, relative to the mean, and share of the round."""
    n = updates.shape[0]
    names = sorted(REGISTRY) if FLAGS.aggregators == ["all"] else FLAGS.aggregators
    results, skipped = {}, []
    for name in names:
        aggregator, reason = build_aggregator(name, n)
        if aggregator is None:
            skipped.append(f"{name} ({reason})")
            continue
        try:
            results[name] = time_aggregator(aggregator, updates, FLAGS.repeats)
        except Exception as e:  # a rule that fails to trace or run is reported, not fatal
            skipped.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    mean_seconds = results.get("mean", (None, None))[1]
    rows = []
    for name, (first, seconds) in results.items():
        ratio = f"{seconds / mean_seconds:.1f}" if mean_seconds else ""
        share = f"{100 * seconds / (seconds + train_seconds):.1f}%" if np.isfinite(train_seconds) else ""
        rows.append([name, f"{first:.1f}", f"{seconds * 1e3:.1f}", ratio, share])
    if FLAGS.torch:
        seconds = torch_median_seconds(np.asarray(updates), FLAGS.repeats)
        if seconds is not None:
            ratio = f"{seconds / mean_seconds:.1f}" if mean_seconds else ""
            import torch
            rows.append([f"torch.median(dim=0), {torch.get_num_threads()} thr", "", f"{seconds * 1e3:.1f}", ratio, ""])
    table(title, ["aggregator", "compile+1st s", "ms", "x mean", "of round"], rows)
    if skipped:
        print("skipped: " + "; ".join(skipped))


def main(argv) -> None:
    del argv
    fljax.use_cpu_cores(FLAGS.cpu_cores or None)
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"({jax.device_count()} device(s)); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    peak = matmul_peak(FLAGS.repeats)
    print(f"fp32 matmul peak (jnp.dot, Precision.HIGHEST): {peak / 1e12:.3f} TFLOP/s")
    model = fljax.models.get("mlp", INPUT_SHAPE, NUM_CLASSES)
    params = model.init(jax.random.PRNGKey(0))
    for n in [int(c) for c in FLAGS.clients_per_round]:
        benchmark_cohort(n, model, params, peak)
    if FLAGS.large:
        updates = jax.random.normal(jax.random.PRNGKey(3), (1000, 1_000_000), jnp.float32) * 1e-2
        time_aggregators("Aggregators on random updates [1000, 1,000,000]", updates, float("nan"))


if __name__ == "__main__":
    app.run(main)
