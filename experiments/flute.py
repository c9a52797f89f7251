"""FLUTE's published whole-run workloads, run by fljax: the comparison with the simulators.

    python -m experiments.flute                                  # every workload fljax has a model for
    python -m experiments.flute --workloads=lr_mnist --output=results/flute.json

FLUTE's README (microsoft/msrflute) times whole runs of four workloads on a GPU against FedML
0.7.303 (``../shared/PAPERS.md``): population / clients per round / rounds. fljax runs each as
one XLA program (``make_train``: every round, FedAvg with the mean, one evaluation at the end)
on synthetic data of the real shapes (the datasets are not offline here), and reports the
whole-run time with compilation, beside theirs. Local work per client: one epoch of batch 32
over its examples (the population's share of the dataset); FLUTE's configs may differ, so the
comparison is of orders of magnitude. Workloads whose model fljax lacks are listed, not run.
``experiments/device_check.py`` runs the same on an accelerator.
"""

from __future__ import annotations

import json
import platform

import jax
import optax
from absl import app, flags

import fljax
from experiments.timing import now, synthetic_data, table
from fljax.aggregators import REGISTRY
from fljax.allocator import restart_with_tcmalloc

WORKLOADS = {
    "lr_mnist": dict(
        model="logreg",
        shape=(28, 28, 1),
        classes=10,
        population=1000,
        per_round=10,
        rounds=100,
        examples=60_000,
        flute_s=95.0,
        fedml_s=189.0,
    ),
    "cnn_femnist": dict(
        model="cnn",
        shape=(28, 28, 1),
        classes=62,
        population=3400,
        per_round=10,
        rounds=1500,
        examples=680_000,
        flute_s=502.0,
        fedml_s=20992.0,
    ),
    "resnet18_gn_cifar100": dict(
        model="resnet18",
        shape=(32, 32, 3),
        classes=100,
        population=500,
        per_round=10,
        rounds=4000,
        examples=50_000,
        flute_s=6121.0,
        fedml_s=57336.0,
    ),
    "rnn_shakespeare": dict(
        model="char_lstm",
        shape=(80,),
        classes=80,
        population=715,
        per_round=10,
        rounds=1200,
        examples=4_226_158,
        flute_s=1310.0,
        fedml_s=24381.0,
    ),
}
"""FLUTE's README: model, example shape and classes (synthetic data), population, clients per
round, rounds, training examples in all, and the whole-run seconds of FLUTE and FedML."""

LOCAL_WORK = "1 local epoch of batch 32 per client (FLUTE's configs may differ)"


def whole_run(
    client_update,
    apply,
    init,
    data,
    *,
    per_round: int,
    rounds: int,
    aggregator,
    eval_every: int,
    num_malicious: int = 0,
    num_classes: int = 10,
) -> dict:
    """Compiles (ahead of time) and runs a whole run (``make_train``) once: compile and run
    seconds, rounds/s, final test accuracy. ``num_malicious`` clients flip labels 5 -> 3."""
    attack = fljax.attacks.label_flip(num_classes, source=5 % num_classes, target=3 % num_classes)
    rnd = fljax.make_round(
        client_update,
        aggregator,
        clients_per_round=per_round,
        num_malicious=num_malicious,
        data_attack=attack if num_malicious else None,
        jit=False,
    )
    train = fljax.make_train(rnd, data, init, fljax.make_evaluate(apply), num_rounds=rounds, eval_every=eval_every)
    key = jax.random.PRNGKey(0)
    start = now()
    compiled = jax.jit(lambda k: train(k)).lower(key).compile()
    compile_s = now() - start
    start = now()
    _, history = jax.block_until_ready(compiled(key))
    run_s = now() - start
    return {
        "compile_s": compile_s,
        "run_s": run_s,
        "total_s": compile_s + run_s,
        "rounds_per_s": rounds / run_s,
        "final_accuracy": float(history.evals["accuracy"][-1]),
        "finite": bool(history.evals["finite"][-1]),
    }


def run_workload(name: str, shrink: int = 1) -> dict:
    """One workload's whole run; ``shrink`` divides the population and the rounds (and gives each
    client one local step), for a quick check. Returns the row, or ``{"skipped": reason}``."""
    w = WORKLOADS[name]
    row = {"workload": name, "flute_s": w["flute_s"], "fedml_s": w["fedml_s"]}
    if w["model"] not in fljax.models.MODELS:
        return {**row, "skipped": f"model {w['model']!r} not in fljax yet"}
    population, rounds, examples = w["population"], w["rounds"], w["examples"]
    if shrink > 1:
        population, rounds = max(w["per_round"], population // shrink), max(2, rounds // shrink)
        examples = population * 32
    per_client = max(1, examples // population)
    data = synthetic_data(
        population,
        per_client,
        input_shape=w["shape"],
        num_classes=w["classes"],
        pool=min(examples, 60_000),
        seed=1,
        tokens=w["model"] in fljax.models.SEQUENCE_MODELS,
    )
    model = fljax.models.get(w["model"], w["shape"], w["classes"])
    update = fljax.fedavg(fljax.classification_loss(model.apply), optax.sgd(0.05), local_epochs=1, batch_size=32)
    result = whole_run(
        update,
        model.apply,
        model.init,
        data,
        per_round=w["per_round"],
        rounds=rounds,
        aggregator=REGISTRY["mean"](),
        eval_every=rounds,
        num_classes=w["classes"],
    )
    return {
        **row,
        "population": population,
        "clients_per_round": w["per_round"],
        "rounds": rounds,
        "examples_per_client": per_client,
        "local": LOCAL_WORK,
        **result,
    }


def rows_table(rows: list[dict], device: str, shrink: int = 1) -> str:
    """The comparison table of ``run_workload`` rows."""
    lines = []
    for r in rows:
        w = WORKLOADS[r["workload"]]
        shape = f"{r.get('population', w['population'])}/{w['per_round']}/{r.get('rounds', w['rounds'])}"
        theirs = [f"{w['flute_s']:.0f} s", f"{w['fedml_s']:.0f} s"]
        if "total_s" in r:
            lines.append(
                [
                    r["workload"],
                    shape,
                    f"{r['total_s']:.1f} s",
                    f"{r['compile_s']:.1f} s",
                    f"{r['run_s']:.2f} s",
                    *theirs,
                    f"{w['flute_s'] / r['total_s']:.0f}x" if shrink == 1 else "",
                ]
            )
        else:
            lines.append(
                [r["workload"], shape, f"not run: {r.get('skipped', r.get('error', ''))}", "", "", *theirs, ""]
            )
    title = (
        f"FLUTE's workloads on {device}: whole run, compile included, population/per round/rounds; "
        f"{LOCAL_WORK}; synthetic data of the real shapes; FLUTE's and FedML's times are theirs, on their GPU"
        + (f" (population and rounds / {shrink})" if shrink > 1 else "")
    )
    return table(
        title, ["workload", "shape", "fljax total", "compile", "run", "FLUTE", "FedML", "FLUTE / fljax"], lines
    )


def main(argv) -> None:
    del argv
    fljax.use_cpu_cores()
    FLAGS = flags.FLAGS
    names = list(WORKLOADS) if FLAGS.workloads == ["all"] else FLAGS.workloads
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise app.UsageError(f"--workloads: unknown {', '.join(sorted(unknown))}; valid: {', '.join(WORKLOADS)}, all")
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}; {platform.machine()})"
    rows = [run_workload(name, FLAGS.shrink) for name in names]
    print(rows_table(rows, device, FLAGS.shrink))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump({"device": device, "rows": rows}, f, indent=1)


def define_flags() -> None:
    flags.DEFINE_list("workloads", ["all"], f"workloads to run: {', '.join(WORKLOADS)}, or all")
    flags.DEFINE_integer("shrink", 1, "divide population and rounds by this (a quick check)", lower_bound=1)
    flags.DEFINE_string("output", None, "also write the rows as JSON here")


if __name__ == "__main__":
    define_flags()
    restart_with_tcmalloc()  # the command line again under tcmalloc where the system has it (FLJAX_TCMALLOC=0: not)
    app.run(main)
