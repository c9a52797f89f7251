"""Throughput of fljax rounds and aggregation rules, measured side by side in one run.

    python -m experiments.benchmark                              # ~3 minutes on a 2-core CPU
    python -m experiments.benchmark --clients_per_round=10,100,1000 --executions=vmap,sequential
    python -m experiments.benchmark --aggregators=all --large --torch=false
    python -m experiments.benchmark --model=cnn --local_steps=1 --conv_impl=xla,auto --aggregators=
        # Fang's CNN, 100 clients x 1 step of batch 32: XLA's convolution vs patches vs PyTorch

Prints, for each cohort size in ``--clients_per_round``:

1. Rounds of the ``--model`` workload (``fljax.models.get(model, shape, classes)`` on synthetic
   data of the shape in ``WORKLOADS``: MNIST's 28x28x1 for mlp (784-200-200-10, 199,210
   parameters), cnn and lenet5, CIFAR-10's 32x32x3 for resnet18, resnet20 and vgg11,
   Shakespeare's 80-character sequences for char_lstm; ``--local_steps`` steps of
   ``--batch_size`` per client; FedAvg with the mean aggregator) under each client execution
   strategy: round time, rounds/s, clients/s and achieved TFLOP/s, counted as 3 x the forward
   pass's matmul and convolution FLOPs (``timing.forward_flops``; about 6 x parameters for the MLP)
   x examples, next to the fp32 matmul peak measured in the same run. ``--conv_impl`` forces
   how convolutions are computed (``fljax.layers``: auto, xla or patches; several compare them).
2. The same round as a plain PyTorch per-client loop (``--torch``; skipped if torch is absent),
   ``timing.torch_round``: the same model in torch.
3. Each aggregation rule (``--aggregators``, names of ``fljax.aggregators.REGISTRY``, built with
   ``num_byzantine`` = 20% of n where the factory takes one) on the round's ``[n, d]`` updates,
   next to the clients' local training time and ``torch.median`` (``--large`` adds
   ``[1000, 1,000,000]`` random updates).

Figures are medians over ``--repeats`` runs after one compile run; compile times are reported.
This is a script, never a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import fljax
from experiments.timing import (
    build_aggregator,
    forward_flops,
    matmul_peak,
    model_access,
    parse_execution,
    round_updates,
    synthetic_data,
    table,
    time_aggregator,
    timed,
    torch_median_seconds,
    torch_round,
    torch_version,
)
from fljax.aggregators import REGISTRY
from fljax.allocator import restart_with_tcmalloc

WORKLOADS = {  # model -> (input shape of one example, classes): the datasets each model is used on
    "logreg": ((28, 28, 1), 10),
    "mlp": ((28, 28, 1), 10),
    "cnn": ((28, 28, 1), 10),
    "lenet5": ((28, 28, 1), 10),
    "resnet18": ((32, 32, 3), 10),
    "resnet20": ((32, 32, 3), 10),
    "vgg11": ((32, 32, 3), 10),
    "char_lstm": ((80,), 80),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "mlp", list(WORKLOADS), "the workload's model (fljax.models.get)")
flags.DEFINE_list(
    "conv_impl",
    ["auto"],
    "how convolutions are computed (fljax.layers: auto, xla, patches); "
    "several: one table row per execution and implementation",
)
flags.DEFINE_list("clients_per_round", ["100"], "cohort sizes n to measure (the scale table)")
flags.DEFINE_integer("local_steps", 18, "local SGD steps per client per round")
flags.DEFINE_integer("batch_size", 32, "examples per local step")
flags.DEFINE_integer("examples_per_client", 600, "examples each synthetic client holds (MNIST / 100)")
flags.DEFINE_integer("repeats", 5, "timed runs per measurement (after one compile run)")
flags.DEFINE_list(
    "executions",
    ["vmap", "chunked:10", "sequential", "parallel"],
    "client execution strategies: vmap, sequential, parallel, auto, chunked:<clients per chunk>",
)
flags.DEFINE_integer(
    "cpu_cores",
    0,
    "CPU cores exposed as JAX devices for --executions=parallel "
    "(fljax.use_cpu_cores); 0: every core this process may use",
    lower_bound=0,
)
flags.DEFINE_list(
    "aggregators",
    ["mean", "median", "trimmed_mean", "krum"],
    "REGISTRY names to time on the round's updates, or 'all' (empty: no aggregator table)",
)
flags.DEFINE_bool("torch", True, "also time the round as a plain PyTorch per-client loop, and torch.median")
flags.DEFINE_integer(
    "torch_threads",
    1,
    "torch.set_num_threads for the PyTorch round (0: torch's default); on a "
    "small shared CPU multi-threaded torch steps of this size can stall for tens of ms each",
)
flags.DEFINE_bool("large", False, "also time the aggregators on random [1000, 1000000] updates")
flags.DEFINE_float("client_lr", 0.05, "local SGD learning rate")


def benchmark_cohort(n: int, models: dict, peak: float) -> None:
    """All three tables for one cohort size n; ``models``: conv implementation -> (model, params)."""
    repeats = FLAGS.repeats
    input_shape, num_classes = WORKLOADS[FLAGS.model]
    data = synthetic_data(
        n,
        FLAGS.examples_per_client,
        input_shape=input_shape,
        num_classes=num_classes,
        tokens=FLAGS.model == "char_lstm",
    )
    model, params = next(iter(models.values()))
    num_params = fljax.models.num_params(params)
    examples = n * FLAGS.local_steps * FLAGS.batch_size
    flops = 3 * forward_flops(model.apply, params, data.x[:1]) * examples

    def make_update(model):
        return fljax.fedavg(
            fljax.classification_loss(model.apply),
            optax.sgd(FLAGS.client_lr),
            local_steps=FLAGS.local_steps,
            batch_size=FLAGS.batch_size,
        )

    # 1. Rounds per client execution strategy (and convolution implementation).
    rows, round_seconds, round_cpu, runners = [], {}, {}, {}
    for spec in FLAGS.executions:
        execution, chunk = parse_execution(spec)
        for impl, (model, params) in models.items():
            label = spec if len(models) == 1 else f"{spec}, conv {impl}"
            try:
                rnd = fljax.make_round(
                    make_update(model), REGISTRY["mean"](), clients_per_round=n, execution=execution, chunk_size=chunk
                )
            except ValueError as e:
                rows.append([label, f"skipped: {e}"] + [""] * 7)
                continue
            state, cpu = [rnd.init(params)], []

            def run(rnd=rnd, state=state, cpu=cpu):  # this iteration's, bound
                start = time.process_time()
                state[0], metrics = rnd.step(state[0], data, jax.random.PRNGKey(1))
                jax.block_until_ready(state[0].params)
                cpu.append(time.process_time() - start)
                return state[0].params

            # The first call compiles; under parallel execution the new state comes back on the
            # pmap's devices and the second call compiles again for it: time from the third on.
            first, _ = timed(run, 1)
            _, seconds = timed(run, repeats)
            cpu_ms = 1e3 * float(np.median(cpu[-repeats:]))
            round_seconds[label], round_cpu[label], runners[label] = seconds, cpu_ms, run
            rows.append(
                [
                    label,
                    f"{first:.1f}",
                    f"{seconds * 1e3:.0f}",
                    f"{cpu_ms:.0f}",
                    f"{1 / seconds:.2f}",
                    f"{n / seconds:.0f}",
                    f"{flops / seconds / 1e12:.4f}",
                    f"{100 * flops / seconds / peak:.1f}%",
                ]
            )
    print(
        table(
            f"Rounds: {FLAGS.model} ({num_params:,} params, input {input_shape}), {n} clients x "
            f"{FLAGS.local_steps} steps x batch {FLAGS.batch_size} ({examples:,} examples, {flops / 1e9:.1f} GFLOP "
            "at 3 x forward matmul FLOPs), FedAvg + mean; CPU ms: the process's CPU time (all threads) per round",
            ["execution", "compile+1st s", "round ms", "CPU ms", "rounds/s", "clients/s", "TFLOP/s", "of peak"],
            rows,
        )
    )
    best = min(round_seconds, key=round_seconds.get) if round_seconds else None

    # 2. The same round in plain PyTorch.
    if FLAGS.torch:
        one_round = torch_round(
            FLAGS.model,
            data,
            params,
            local_steps=FLAGS.local_steps,
            batch_size=FLAGS.batch_size,
            lr=FLAGS.client_lr,
            num_classes=num_classes,
            threads=FLAGS.torch_threads,
        )
        if one_round is None:
            print("\nPyTorch round: skipped (torch is not importable)")
        else:
            # Each PyTorch round is followed by one round of every fljax strategy and the ratios
            # come from these interleaved rounds, so a drift in the machine's speed (seen here:
            # 15% between minutes) moves both sides alike.
            one_round(n)  # warm-up
            walls, cpus, paired = [], [], {label: [] for label in runners}
            for _ in range(max(1, repeats // 2)):
                start = time.process_time()
                walls.append(one_round(n))
                cpus.append(time.process_time() - start)
                for label, run in runners.items():
                    paired[label].append(timed(run, 0)[0])
            seconds, cpu_ms = float(np.median(walls)), 1e3 * float(np.median(cpus))
            interleaved = {label: float(np.median(times)) for label, times in paired.items()}
            version = torch_version(FLAGS.torch_threads)
            rows = [
                [
                    "torch per-client loop",
                    f"{seconds * 1e3:.0f}",
                    f"{cpu_ms:.0f}",
                    f"{flops / seconds / 1e12:.4f}",
                    "1.00",
                    "1.00",
                ]
            ]
            rows += [
                [
                    f"fljax {label}",
                    f"{s * 1e3:.0f}",
                    f"{round_cpu[label]:.0f}",
                    f"{flops / s / 1e12:.4f}",
                    f"{s / seconds:.2f}",
                    f"{seconds / s:.2f}",
                ]
                for label, s in interleaved.items()
            ]
            print(
                table(
                    f"PyTorch round ({version}) vs fljax, {FLAGS.model} (each fljax round timed right after a "
                    "PyTorch one; medians)",
                    ["implementation", "round ms", "CPU ms", "TFLOP/s", "time / torch", "speed-up"],
                    rows,
                )
            )

    # 3. Aggregators on this round's updates.
    if FLAGS.aggregators:
        updates = round_updates(make_update(model), params, data, n)
        train_seconds = round_seconds.get(best, float("nan"))
        time_aggregators(
            f"Aggregators on this round's updates [{n}, {updates.shape[1]:,}]; local training (the "
            f"{best} round) takes {train_seconds * 1e3:.0f} ms",
            updates,
            train_seconds,
            model_access(model.apply, params, data.x.shape[1:], data.x.dtype),
        )


def time_aggregators(title: str, updates: jax.Array, train_seconds: float, model=None) -> None:
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
            results[name] = time_aggregator(aggregator, updates, FLAGS.repeats, model)
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
            rows.append([f"torch.median(dim=0), {torch_version()}", "", f"{seconds * 1e3:.1f}", ratio, ""])
    print(table(title, ["aggregator", "compile+1st s", "ms", "x mean", "of round"], rows))
    if skipped:
        print("skipped: " + "; ".join(skipped))


def main(argv) -> None:
    del argv
    fljax.use_cpu_cores(FLAGS.cpu_cores or None)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
        f"({jax.device_count()} device(s)); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    peak = matmul_peak(FLAGS.repeats)
    print(f"fp32 matmul peak (jnp.dot, Precision.HIGHEST): {peak / 1e12:.3f} TFLOP/s")
    input_shape, num_classes = WORKLOADS[FLAGS.model]
    impls = FLAGS.conv_impl if FLAGS.model in fljax.models.CONV_MODELS else ["auto"]
    models = {}
    for impl in impls:
        kwargs = {"impl": impl} if FLAGS.model in fljax.models.CONV_MODELS else {}
        model = fljax.models.get(FLAGS.model, input_shape, num_classes, **kwargs)
        models[f"{impl} ({fljax.layers.resolve_impl(impl)})" if impl == "auto" else impl] = (
            model,
            model.init(jax.random.PRNGKey(0)),
        )
    for n in [int(c) for c in FLAGS.clients_per_round]:
        benchmark_cohort(n, models, peak)
    if FLAGS.large:
        updates = jax.random.normal(jax.random.PRNGKey(3), (1000, 1_000_000), jnp.float32) * 1e-2
        time_aggregators("Aggregators on random updates [1000, 1,000,000]", updates, float("nan"))


if __name__ == "__main__":
    restart_with_tcmalloc()  # the command line again under tcmalloc where the system has it (FLJAX_TCMALLOC=0: not)
    app.run(main)
