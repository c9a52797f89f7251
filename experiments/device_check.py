"""The prepared accelerator check: every speed figure of a device from one command.

    python -m experiments.device_check --output_dir=results/device_check          # ~6 min on one H100
    python -m experiments.device_check --output_dir=/tmp/device_check --small     # CPU-sized (CI runs it)

Writes ``device_check.json`` (every figure) and ``device_check.md`` (the same as tables) to
``--output_dir``, both rewritten after every section, so a check cut short keeps what it measured.
It imports only what a bare GPU machine has (jax, flax, optax, chex, numpy; torch when present),
installs nothing and trains on synthetic data of the real shapes. Sections, in order:

1. ``device``: backend, device, versions, the measured matmul peak (fp32 and the default precision).
2. ``rounds``: the MLP round (784-200-200-10, 199,210 params; ``--local_steps`` x batch
   ``--batch_size`` per client; FedAvg + mean) at each ``--scales`` cohort size under each client
   execution (``vmap``, ``chunked`` with 10 chunks, ``sequential``): compile seconds, round ms,
   rounds/s, clients/s, TFLOP/s (6 x params x examples), the compiled program's memory and the
   device's peak memory so far; at ``--rule_scale`` also under ``--precision=fp32`` and
   ``--mixed_precision``. A strategy whose round would take over ``--max_round_s`` (projected
   from the last scale) is skipped, and says so.
3. ``torch``: the same round as a plain PyTorch per-client loop on the same device at
   ``--torch_scales``, and fljax's default execution's speed-up over it.
4. ``kernels``: the rules' kernels checked on this device: the order-statistics kernel against a
   full sort (exact), the Gram matrix of the distances under each matmul algorithm (time, error).
5. ``rules``: every registered rule on a ``--rule_scale``-client round's real updates: ms, x the
   mean, share of the round (rule / (default round + rule)); ``torch.median`` beside them.
6. ``run``: whole runs of ``--run_rounds`` rounds at ``--rule_scale`` clients per round (20%
   label flippers against the mean and the median, evaluated every 10 rounds), compile included.
7. ``flute``: FLUTE's published workloads (population / clients per round / rounds) with
   fljax's whole-run time, compile included, beside FLUTE's and FedML's (their GPU times, from
   FLUTE's README); workloads whose model fljax lacks are listed as not run.

The targets of the speed issue are checked at the end on an accelerator (``targets``).
``--budget_s`` bounds the check: an item that would overrun it is skipped and listed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import fljax
from experiments import flute
from experiments.flute import whole_run
from experiments.timing import (
    INPUT_SHAPE,
    NUM_CLASSES,
    build_aggregator,
    matmul_peak,
    model_access,
    now,
    round_updates,
    synthetic_data,
    table,
    time_aggregator,
    torch_median_seconds,
    torch_mlp_round,
    torch_version,
)
from fljax.aggregators import REGISTRY

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string("output_dir", None, "folder for device_check.json and device_check.md", required=True)
    flags.DEFINE_bool("small", False, "CPU-sized version: tiny cohorts, model and runs (what CI runs)")
    flags.DEFINE_list("sections", list(SECTIONS), "sections to run, in this order")
    flags.DEFINE_list("scales", None, "cohort sizes of the rounds section (default 10,100,1000,10000; small 4,8)")
    flags.DEFINE_integer("rule_scale", None, "cohort of the rules and run sections (default 1000; small 8)")
    flags.DEFINE_list("torch_scales", None, "cohorts of the PyTorch loop (default 100,1000; small 4)")
    flags.DEFINE_integer("local_steps", None, "local SGD steps per client (default 18; small 2)")
    flags.DEFINE_integer("batch_size", 32, "examples per local step", lower_bound=1)
    flags.DEFINE_integer("run_rounds", None, "rounds of the whole-run section (default 30; small 3)")
    flags.DEFINE_list(
        "executions",
        ["vmap", "chunked", "sequential"],
        "client executions of the rounds section (chunked runs 10 chunks per round)",
    )
    flags.DEFINE_bool(
        "precision_variants",
        True,
        "also time the default execution at --rule_scale with --precision=fp32 and with --mixed_precision",
    )
    flags.DEFINE_float("max_round_s", 3.0, "skip a strategy whose projected round time exceeds this", lower_bound=0)
    flags.DEFINE_float("budget_s", 420.0, "stop starting new items after this many seconds", lower_bound=1)


SECTIONS = ("device", "rounds", "torch", "kernels", "rules", "run", "flute")
SMALL_SHRINK = 1000  # --small: FLUTE's populations and rounds / 1000 (10 clients, 2 rounds)
SMALL_FLUTE_SKIPS = {  # --small runs on CPUs, in CI: what would take minutes there
    "resnet18_gn_cifar100": "--small: ResNet-18 (11M parameters) trains for minutes on a CPU; run without --small",
    "rnn_shakespeare": "--small: a 2x256 LSTM over 80 characters takes ~0.5 s a step on a CPU; run without --small",
}
EXAMPLES_PER_CLIENT = 600
CLIENT_LR = 0.05


class Check:
    """The check's results and its time budget; ``save`` writes both files."""

    def __init__(self, output_dir: str, budget_s: float):
        self.output_dir, self.budget_s, self.start = output_dir, budget_s, now()
        self.results: dict = {"sections": {}, "skipped": []}
        self.markdown: list[str] = []
        os.makedirs(output_dir, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (now() - self.start)

    def skip(self, what: str, reason: str) -> dict:
        self.results["skipped"].append(f"{what}: {reason}")
        return {"skipped": reason}

    def add(self, section: str, rows, text: str) -> None:
        self.results["sections"][section] = rows
        self.markdown.append(text)
        print(text, flush=True)
        self.save()

    def save(self) -> None:
        self.results["elapsed_s"] = round(now() - self.start, 1)
        for name, text in (
            ("device_check.json", json.dumps(self.results, indent=1, default=float)),
            ("device_check.md", self.render()),
        ):
            path = os.path.join(self.output_dir, name)
            with open(path + ".tmp", "w") as f:
                f.write(text + "\n")
            os.replace(path + ".tmp", path)

    def render(self) -> str:
        info = self.results.get("device", {})
        head = [
            f"# fljax device check: {info.get('device_kind', '?')} ({info.get('backend', '?')})",
            "",
            f"Command: `{self.results.get('command', '')}`; {self.results['elapsed_s']} s in all.",
            "```",
        ]
        tail = ["```"]
        if self.results["skipped"]:
            tail += ["", "Skipped:", *[f"- {s}" for s in self.results["skipped"]]]
        return "\n".join(head + self.markdown + tail)


def fmt_bytes(b: Optional[float]) -> str:
    return "" if b is None else f"{b / 2**30:.2f} GiB"


def program_bytes(compiled) -> Optional[int]:
    """Arguments + outputs + temporaries (less aliased) of a compiled program, as XLA reports."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def device_peak_bytes() -> Optional[int]:
    """The device's peak bytes in use so far in this process (None where not reported, e.g. CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def repeat_timing(fn: Callable[[], object], first_s: float, target_s: float = 2.0, most: int = 5) -> float:
    """Median seconds over as many repeats (1..most) of ``fn`` as fit in ``target_s``."""
    repeats = int(min(most, max(1, target_s // max(first_s, 1e-6))))
    times = []
    for _ in range(repeats):
        start = now()
        jax.block_until_ready(fn())
        times.append(now() - start)
    return float(np.median(times))


def error_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


class Workload:
    """The MLP round of the benchmark: model, params, client update, FLOPs per client."""

    def __init__(self, small: bool, local_steps: int, batch_size: int):
        hidden = (32, 32) if small else (200, 200)
        module = fljax.models.MLP(num_classes=NUM_CLASSES, hidden=hidden)
        dummy = jnp.zeros((1, *INPUT_SHAPE), jnp.float32)
        self.apply = lambda p, x: module.apply({"params": p}, x)
        self.params = module.init(jax.random.PRNGKey(0), dummy)["params"]
        self.num_params = fljax.models.num_params(self.params)
        self.local_steps, self.batch_size = local_steps, batch_size
        self.flops_per_client = 6 * self.num_params * local_steps * batch_size

    def client_update(self, precision: str = "default", mixed: bool = False):
        apply = fljax.precision.mixed_precision(self.apply) if mixed else self.apply
        update = fljax.fedavg(
            fljax.classification_loss(apply),
            optax.sgd(CLIENT_LR),
            local_steps=self.local_steps,
            batch_size=self.batch_size,
        )
        return fljax.precision.with_matmul_precision(update, precision)


def measure_round(client_update, params, data, n: int, execution: str, chunk: int, aggregator=None) -> dict:
    """Compiles (ahead of time) and times one round; returns its figures."""
    aggregator = REGISTRY["mean"]() if aggregator is None else aggregator
    rnd = fljax.make_round(client_update, aggregator, clients_per_round=n, execution=execution, chunk_size=chunk)
    state, key = rnd.init(params), jax.random.PRNGKey(1)
    start = now()
    compiled = rnd.step.lower(state, data, key).compile()
    compile_s = now() - start
    box = [state]

    def run():
        box[0], _ = compiled(box[0], data, key)
        return box[0].params

    start = now()
    jax.block_until_ready(run())
    first_s = now() - start
    seconds = repeat_timing(run, first_s)
    return {
        "compile_s": round(compile_s, 2),
        "round_s": seconds,
        "program_bytes": program_bytes(compiled),
        "device_peak_bytes": device_peak_bytes(),
    }


def section_device(check: Check, small: bool) -> None:
    import chex
    import flax
    import jaxlib

    device = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "chex": chex.__version__,
        "numpy": np.__version__,
        "torch": torch_version() or "not importable",
        "fljax": fljax.__version__,
    }
    repeats = 3 if small else 5
    info["fp32_peak_tflops"] = matmul_peak(repeats) / 1e12
    info["default_precision_peak_tflops"] = matmul_peak(repeats, jax.lax.Precision.DEFAULT) / 1e12
    check.results["device"] = info
    rows = [[k, str(v if not isinstance(v, float) else round(v, 3))] for k, v in info.items()]
    check.add(
        "device", info, table("Device and versions (peaks: best square jnp.dot of float32 inputs)", ["", "value"], rows)
    )


def section_rounds(check: Check, work: Workload, scales: list[int], rule_scale: int, small: bool) -> None:
    rows, out, last = [], [], {}
    default = fljax.client.default_execution()
    for n in scales:
        data = synthetic_data(n, EXAMPLES_PER_CLIENT)
        chunk = max(1, n // 10)
        specs = [
            (f"chunked:{chunk}" if e == "chunked" else e, e, chunk if e == "chunked" else 8, "default", False)
            for e in FLAGS.executions
        ]
        if n == rule_scale and FLAGS.precision_variants:
            specs += [
                (f"{default} --precision=fp32", default, 8, "fp32", False),
                (f"{default} --mixed_precision", default, 8, "default", True),
            ]
        for label, execution, chunk, precision, mixed in specs:
            base = {"clients": n, "execution": label}
            projected = last.get(execution, 0.0) * n
            if projected > FLAGS.max_round_s and precision == "default" and not mixed:
                out.append(
                    {
                        **base,
                        **check.skip(
                            f"rounds {label} at {n}",
                            f"projected {projected:.1f} s per round > --max_round_s={FLAGS.max_round_s}",
                        ),
                    }
                )
                rows.append([str(n), label, "skipped", f"projected {projected:.1f} s/round", "", "", "", "", ""])
                continue
            if check.left() < 10 + 3 * projected:
                out.append({**base, **check.skip(f"rounds {label} at {n}", "time budget")})
                continue
            try:
                r = measure_round(work.client_update(precision, mixed), work.params, data, n, execution, chunk)
            except Exception as e:  # out of memory, say: reported, the check goes on
                out.append({**base, "error": error_line(e)})
                rows.append([str(n), label, "failed", error_line(e)[:60], "", "", "", "", ""])
                continue
            s = r["round_s"]
            if precision == "default" and not mixed:
                last[execution] = s / n
            tflops = n * work.flops_per_client / s / 1e12
            r.update(base, rounds_per_s=1 / s, clients_per_s=n / s, tflops=tflops)
            out.append(r)
            rows.append(
                [
                    str(n),
                    label,
                    f"{r['compile_s']:.1f}",
                    f"{s * 1e3:.1f}",
                    f"{1 / s:.2f}",
                    f"{n / s:.0f}",
                    f"{tflops:.3f}",
                    fmt_bytes(r["program_bytes"]),
                    fmt_bytes(r["device_peak_bytes"]),
                ]
            )
        del data
    title = (
        f"Rounds: mlp ({work.num_params:,} params), clients x {work.local_steps} steps x batch "
        f"{work.batch_size}, FedAvg + mean; TFLOP/s at 6 x params x examples; default execution: {default}"
    )
    check.add(
        "rounds",
        out,
        table(
            title,
            [
                "clients",
                "execution",
                "compile s",
                "round ms",
                "rounds/s",
                "clients/s",
                "TFLOP/s",
                "program mem",
                "device peak",
            ],
            rows,
        ),
    )


def default_round(check: Check, n: int) -> Optional[dict]:
    """This run's measured round at n under the default execution (and default precision)."""
    label = fljax.client.default_execution()
    for r in check.results["sections"].get("rounds", []):
        if r["clients"] == n and r["execution"] == label and "round_s" in r:
            return r
    return None


def section_torch(check: Check, work: Workload, scales: list[int]) -> None:
    import_ok = torch_version() is not None
    if not import_ok:
        check.add("torch", [check.skip("torch", "torch is not importable")], "\nPyTorch loop: torch is not importable")
        return
    import torch

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    data = synthetic_data(max(scales), EXAMPLES_PER_CLIENT)
    one_round = torch_mlp_round(
        data,
        work.params,
        local_steps=work.local_steps,
        batch_size=work.batch_size,
        lr=CLIENT_LR,
        device=device,
        threads=0 if device != "cpu" else 1,
    )
    one_round(min(scales))  # warm-up (CUDA context, kernels)
    out, rows = [], []
    for n in scales:
        if check.left() < 30:
            out.append({"clients": n, **check.skip(f"torch at {n}", "time budget")})
            continue
        first = one_round(n)
        seconds = first if first > 2.0 else float(np.median([first] + [one_round(n) for _ in range(2)]))
        fl = default_round(check, n)
        ratio = seconds / fl["round_s"] if fl else None
        out.append(
            {
                "clients": n,
                "device": device,
                "torch_round_s": seconds,
                "fljax_round_s": fl and fl["round_s"],
                "fljax_execution": fl and fl["execution"],
                "speedup": ratio,
            }
        )
        rows.append(
            [
                str(n),
                f"{seconds * 1e3:.1f}",
                f"{fl['round_s'] * 1e3:.1f}" if fl else "not measured",
                f"{ratio:.1f}x" if ratio else "",
            ]
        )
    check.add(
        "torch",
        out,
        table(
            f"PyTorch per-client loop on {device} ({torch_version(0 if device != 'cpu' else 1)}; "
            "fp32 matmuls, no TF32) vs fljax's default execution",
            ["clients", "torch round ms", "fljax round ms", "fljax speed-up"],
            rows,
        ),
    )


def cohort_updates(check: Check, work: Workload, n: int) -> jax.Array:
    """The ``[n, d]`` updates of an n-client round (computed once per check)."""
    cache = check.__dict__.setdefault("updates", {})
    if n not in cache:
        cache[n] = round_updates(work.client_update(), work.params, synthetic_data(n, EXAMPLES_PER_CLIENT), n)
    return cache[n]


def section_kernels(check: Check, work: Workload, n: int) -> None:
    """The rules' kernels on this device, against references: the order-statistics kernel
    against a full sort, which it must equal exactly,
    and the Gram matrix of the pairwise distances under each matmul algorithm (time and worst
    relative distance error against float64 on the host)."""
    from fljax.aggregators import _common, order_statistics

    x = cohort_updates(check, work, n)
    out, rows = [], []
    k_med, k_trim = (n - 1) // 2, n // 5
    by_sort = jax.jit(lambda x: jnp.sort(x, axis=0))
    s = by_sort(x)
    kth = jax.jit(lambda x: order_statistics.kth_smallest_and_largest(x, k_med))
    trimmed = jax.jit(lambda x: order_statistics.trimmed_mean_with_shares(x, k_trim)[0])
    for label, fn, reference in (
        ("median ranks (kth_smallest_and_largest)", lambda: kth(x), lambda: (s[k_med], s[n - 1 - k_med])),
        ("trimmed mean, k = n/5", lambda: trimmed(x), lambda: jnp.mean(s[k_trim : n - k_trim], axis=0)),
    ):
        error = max(float(jnp.max(jnp.abs(g - w))) for g, w in zip(jax.tree.leaves(fn()), jax.tree.leaves(reference())))
        seconds = timed_s(fn)
        out.append({"kernel": label, "seconds": seconds, "max_abs_error_vs_sort": error})
        rows.append([label, f"{seconds * 1e3:.2f}", f"{error:.2e}"])
    rows.append(["jnp.sort(axis=0)", f"{timed_s(lambda: by_sort(x)) * 1e3:.2f}", "reference"])
    centered = x - s[k_med]
    host = np.asarray(centered, np.float64)
    reference = host @ host.T
    sq = np.diag(reference)
    ref_dist = sq[:, None] + sq[None, :] - 2 * reference
    off = ~np.eye(n, dtype=bool)
    chosen = _common._gram_precision(jax.default_backend())
    presets = jax.lax.DotAlgorithmPreset
    variants = {
        "HIGHEST": jax.lax.Precision.HIGHEST,
        "BF16_BF16_F32_X3": presets.BF16_BF16_F32_X3,
        "TF32_TF32_F32_X3": presets.TF32_TF32_F32_X3,
        "DEFAULT (one pass)": jax.lax.Precision.DEFAULT,
    }
    for name, precision in variants.items():
        label = f"gram {name}" + (" (fljax's choice)" if precision == chosen else "")
        try:
            dot = jax.jit(lambda a, p=precision: jnp.dot(a, a.T, precision=p))
            g = np.asarray(dot(centered), np.float64)
        except Exception as e:  # not supported on this backend
            out.append({"kernel": label, "error": error_line(e)})
            rows.append([label, "unsupported", ""])
            continue
        d = np.diag(g)
        dist = d[:, None] + d[None, :] - 2 * g
        error = float(np.max(np.abs(dist - ref_dist)[off] / np.maximum(ref_dist[off], 1e-30)))
        seconds = timed_s(lambda: dot(centered))  # noqa: B023
        out.append(
            {"kernel": label, "seconds": seconds, "max_rel_distance_error": error, "chosen": precision == chosen}
        )
        rows.append([label, f"{seconds * 1e3:.2f}", f"{error:.2e} (distances)"])
    check.add(
        "kernels",
        out,
        table(
            f"Kernels of the rules on a {n}-client round's updates [{n}, {x.shape[1]:,}] "
            "(errors: order statistics vs a full sort; Gram distances vs float64)",
            ["kernel", "ms", "max error"],
            rows,
        ),
    )


def timed_s(fn: Callable[[], object]) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    jax.block_until_ready(fn())
    return repeat_timing(fn, 0.0, target_s=1.0, most=5)


def section_rules(check: Check, work: Workload, n: int) -> None:
    updates = cohort_updates(check, work, n)
    fl = default_round(check, n)
    round_s = fl["round_s"] if fl else float("nan")
    out, rows, mean_s = [], [], None
    for name in ["mean"] + sorted(set(REGISTRY) - {"mean"}):
        if check.left() < 15:
            out.append({"rule": name, **check.skip(f"rule {name}", "time budget")})
            continue
        aggregator, reason = build_aggregator(name, n)
        if aggregator is None:
            out.append({"rule": name, **check.skip(f"rule {name}", reason)})
            continue
        try:
            first, seconds = time_aggregator(aggregator, updates, 3, model_access(work.apply, work.params, INPUT_SHAPE))
        except Exception as e:  # a rule that fails to trace or run is reported, not fatal
            out.append({"rule": name, "error": error_line(e)})
            rows.append([name, "failed", error_line(e)[:60], "", ""])
            continue
        mean_s = seconds if name == "mean" else mean_s
        share = seconds / (round_s + seconds)
        out.append(
            {
                "rule": name,
                "compile_first_s": first,
                "seconds": seconds,
                "x_mean": seconds / mean_s,
                "share_of_round": share,
            }
        )
        rows.append([name, f"{first:.1f}", f"{seconds * 1e3:.2f}", f"{seconds / mean_s:.1f}", f"{100 * share:.1f}%"])
    torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    seconds = torch_median_seconds(np.asarray(updates), 3, torch_device) if torch_version() else None
    if seconds is not None:
        out.append({"rule": f"torch.median(dim=0) on {torch_device}", "seconds": seconds})
        rows.append(
            [
                f"torch.median(dim=0), {torch_device}",
                "",
                f"{seconds * 1e3:.2f}",
                f"{seconds / mean_s:.1f}" if mean_s else "",
                "",
            ]
        )
    check.add(
        "rules",
        out,
        table(
            f"Rules on a {n}-client round's updates [{n}, {work.num_params:,}]; the round's "
            f"local training takes {round_s * 1e3:.1f} ms; share = rule / (round + rule)",
            ["rule", "compile+1st s", "ms", "x mean", "share"],
            rows,
        ),
    )


def section_run(check: Check, work: Workload, n: int, rounds: int) -> None:
    population = 10 * n
    data = synthetic_data(population, EXAMPLES_PER_CLIENT)
    init = lambda key: work.params
    out, rows = [], []
    for name in ("mean", "median"):
        if check.left() < 30:
            out.append({"rule": name, **check.skip(f"run {name}", "time budget")})
            continue
        try:
            r = whole_run(
                work.client_update(),
                work.apply,
                init,
                data,
                per_round=n,
                rounds=rounds,
                aggregator=REGISTRY[name](),
                eval_every=min(10, rounds),
                num_malicious=population // 5,
            )
        except Exception as e:
            out.append({"rule": name, "error": error_line(e)})
            continue
        out.append({"rule": name, "population": population, "clients_per_round": n, "rounds": rounds, **r})
        rows.append(
            [
                name,
                f"{r['compile_s']:.1f}",
                f"{r['run_s']:.2f}",
                f"{r['total_s']:.1f}",
                f"{r['rounds_per_s']:.2f}",
                f"{r['final_accuracy']:.3f}",
            ]
        )
    check.add(
        "run",
        out,
        table(
            f"Whole runs: {rounds} rounds x {n} of {population} clients (20% label flippers), "
            "evaluated every 10 rounds, one XLA program; random labels, so accuracy ~0.1",
            ["rule", "compile s", "run s", "total s", "rounds/s", "accuracy"],
            rows,
        ),
    )


def section_flute(check: Check, small: bool) -> None:
    rows = []
    for name in flute.WORKLOADS:
        if check.left() < 60 and not small:
            rows.append({"workload": name, **check.skip(f"flute {name}", "time budget")})
            continue
        if small and name in SMALL_FLUTE_SKIPS:
            rows.append({"workload": name, **check.skip(f"flute {name}", SMALL_FLUTE_SKIPS[name])})
            continue
        try:
            row = flute.run_workload(name, shrink=SMALL_SHRINK if small else 1)
        except Exception as e:  # reported, the check goes on
            row = {"workload": name, "error": error_line(e)}
        if "skipped" in row:
            check.skip(f"flute {name}", row["skipped"])
        rows.append(row)
    device = check.results.get("device", {}).get("device_kind", jax.devices()[0].device_kind)
    check.add("flute", rows, flute.rows_table(rows, device, SMALL_SHRINK if small else 1))


def evaluate_targets(check: Check, rule_scale: int) -> None:
    """The speed issue's accelerator targets, each with the measured value."""
    sections, targets = check.results["sections"], []
    if jax.default_backend() == "cpu":
        check.results["targets"] = "not evaluated on CPU (the accelerator targets; CPU ones: experiments/benchmark.py)"
        return
    big = [r for r in sections.get("rounds", []) if r.get("clients", 0) >= 1000 and "tflops" in r]
    if big:
        best = max(big, key=lambda r: r["tflops"])
        targets.append(
            (
                "MLP round >= 25 TFLOP/s at >= 1,000 clients",
                f"{best['tflops']:.1f} ({best['execution']}, {best['clients']})",
                best["tflops"] >= 25,
            )
        )
    for r in sections.get("torch", []):
        if r.get("clients") == 1000 and r.get("speedup"):
            targets.append(
                ("fljax >= 1000x the PyTorch loop at 1,000 clients", f"{r['speedup']:.0f}x", r["speedup"] >= 1000)
            )
    shares = [r for r in sections.get("rules", []) if "share_of_round" in r]
    if shares:
        worst = max(shares, key=lambda r: r["share_of_round"])
        over = [r["rule"] for r in shares if r["share_of_round"] > 0.2]
        targets.append(
            (
                f"each rule <= 20% of the round at {rule_scale} clients",
                f"worst {worst['rule']} {100 * worst['share_of_round']:.0f}%; over: {', '.join(over) or 'none'}",
                not over,
            )
        )
    tenk = [r for r in sections.get("rounds", []) if r.get("clients") == 10000 and r["execution"].startswith("chunked")]
    if tenk:
        targets.append(
            (
                "10,000 clients per round fit with chunked execution",
                "ran" if "round_s" in tenk[0] else tenk[0].get("error", tenk[0].get("skipped", "")),
                "round_s" in tenk[0],
            )
        )
    check.results["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets]
    check.add(
        "targets",
        check.results["targets"],
        table(
            "Targets (speed issue)",
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "NO"] for t, m, ok in targets],
        ),
    )


def main(argv) -> None:
    del argv
    small = FLAGS.small
    pick = lambda value, full, tiny: value if value is not None else (tiny if small else full)
    scales = [int(s) for s in pick(FLAGS.scales, ["10", "100", "1000", "10000"], ["4", "8"])]
    rule_scale = pick(FLAGS.rule_scale, 1000, 8)
    torch_scales = [int(s) for s in pick(FLAGS.torch_scales, ["100", "1000"], ["4"])]
    bad = set(FLAGS.executions) - {"vmap", "chunked", "sequential", "parallel", "auto"}
    if bad:
        raise app.UsageError(
            f"--executions: unknown {', '.join(sorted(bad))}; valid: vmap, chunked, sequential, parallel, auto"
        )
    unknown = set(FLAGS.sections) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"--sections: unknown {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}")
    if min(scales) < 1 or rule_scale < 5 or min(torch_scales) < 1:
        raise app.UsageError("--scales and --torch_scales must be >= 1 and --rule_scale >= 5 (Bulyan needs n >= 4f+3)")
    check = Check(FLAGS.output_dir, FLAGS.budget_s)
    check.results["command"] = " ".join(["python -m experiments.device_check"] + sys.argv[1:])
    work = Workload(small, pick(FLAGS.local_steps, 18, 2), FLAGS.batch_size)
    check.results["config"] = {
        "small": small,
        "scales": scales,
        "rule_scale": rule_scale,
        "torch_scales": torch_scales,
        "local_steps": work.local_steps,
        "batch_size": work.batch_size,
        "examples_per_client": EXAMPLES_PER_CLIENT,
        "mlp_params": work.num_params,
        "flops_per_client": work.flops_per_client,
    }
    steps = {
        "device": lambda: section_device(check, small),
        "rounds": lambda: section_rounds(check, work, scales, rule_scale, small),
        "torch": lambda: section_torch(check, work, torch_scales),
        "kernels": lambda: section_kernels(check, work, rule_scale),
        "rules": lambda: section_rules(check, work, rule_scale),
        "run": lambda: section_run(check, work, rule_scale, pick(FLAGS.run_rounds, 30, 3)),
        "flute": lambda: section_flute(check, small),
    }
    check.results["section_seconds"] = {}
    for name in SECTIONS:
        if name in FLAGS.sections:
            t0 = time.perf_counter()
            steps[name]()
            check.results["section_seconds"][name] = round(time.perf_counter() - t0, 1)
    evaluate_targets(check, rule_scale)
    check.save()
    print(
        f"\nwrote {os.path.join(FLAGS.output_dir, 'device_check.json')} and device_check.md "
        f"({check.results['elapsed_s']} s)"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
