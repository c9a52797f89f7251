"""The sweep's tables: slices of the grid, attack x aggregator matrices of a metric, the
Markdown report and the CSV files (final metrics per cell; per-round history)."""

from __future__ import annotations

import csv
import itertools
import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from experiments.configs import SweepSpec
from experiments.sweep.grid import AXES, _label, expand

if TYPE_CHECKING:
    from experiments.sweep.runner import SweepResult


def slices(spec: SweepSpec) -> list[dict]:
    """The heatmap / table slices: every (malicious fraction, partition, extra-axis values)."""
    keys = ["malicious_fraction", "partition"] + list(spec.grid)
    values = [[float(f) for f in spec.malicious_fractions], list(spec.partitions)] + list(spec.grid.values())
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _slice_name(s: dict) -> str:
    return _label("__".join(f"{k}-{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in s.items()))


def _slice_title(s: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("malicious_fraction", "partition"))
    return f"{s['malicious_fraction']:.0%} malicious, {s['partition']}" + (f", {extra}" if extra else "")


def matrix(result: SweepResult, s: dict, metric: str):
    """``(attacks, aggregators, mean [A, G], std [A, G])`` of ``metric`` in slice ``s`` (NaN where
    a cell is missing, invalid or lacks the metric)."""
    attacks = expand(result.spec.attacks, "attack")
    rules = expand(result.spec.aggregators, "aggregator")
    mean = np.full((len(attacks), len(rules)), np.nan)
    std = np.full_like(mean, np.nan)
    for r in result.cells:
        if all(r["cell"].get(k) == v for k, v in s.items()) and metric in r["final"]:
            i, j = attacks.index(r["cell"]["attack"]), rules.index(r["cell"]["aggregator"])
            mean[i, j], std[i, j] = r["final"][metric]["mean"], r["final"][metric]["std"]
    return attacks, rules, mean, std


def _fmt(stats: Optional[dict]) -> str:
    if not stats or stats["mean"] is None or math.isnan(stats["mean"]):
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown(result: SweepResult) -> str:
    """The sweep as Markdown: setup, timing, then per slice an accuracy table (and an attack
    success rate table), attack rows x aggregator columns, mean ± std over seeds."""
    spec, t = result.spec, result.timing
    base = spec.base
    lines = [f"# Sweep: {base.dataset} / {base.model}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [
        f"{base.num_clients} clients ({base.clients_per_round} per round), {base.rounds} rounds of {base.protocol}, "
        f"seeds {', '.join(map(str, spec.seeds))} (one {t['seed_execution']} program per cell; data partition "
        f"seed {base.seed}). "
        "Entries: mean ± std over seeds of the final evaluation"
        + (
            f" (each seed's mean over its last {spec.final_evaluations} evaluations)."
            if spec.final_evaluations > 1
            else "."
        ),
        "",
        f"Wall time {t['wall_seconds']:.1f} s on {t['backend']}: {t['computed']} cells computed "
        f"({t['run_seconds']:.1f} s running, {t['compile_seconds']:.1f} s compiling; {t['programs_compiled']} programs "
        f"compiled, {t['programs_reused']} reused), {t['skipped']} already done, {t['invalid']} invalid.",
        "",
    ]
    if result.seed_vmap:
        v = result.seed_vmap
        lines += [
            f"Seeds in one {v['seed_execution']} program vs one by one ({len(v['seeds'])} seeds, {v['cell']['attack']} vs "
            f"{v['cell']['aggregator']}, {v['cell']['rounds']} rounds): {v['vmap_seconds']:.2f} s vs "
            f"{v['sequential_seconds']:.2f} s, {v['speedup']:.2f}x ({v['saved_seconds']:.2f} s saved; compile "
            f"{v['vmap_compile_seconds']:.1f} s vs {v['single_compile_seconds']:.1f} s).",
            "",
        ]
    for s in slices(spec):
        name = _slice_name(s)
        lines += [f"## {_slice_title(s)}", ""]
        for metric, title in (
            ("accuracy", "Test accuracy"),
            ("attack_success_rate", "Attack success rate"),
            (
                "source_recall",
                "Source-class recall (targeted label flip) / accuracy on triggered "
                "inputs (backdoors): the attack's test examples classified as their "
                "true label",
            ),
            ("detection_tpr", "Detection TPR (malicious clients flagged, mean over rounds)"),
            ("detection_fpr", "Detection FPR (honest clients flagged, mean over rounds)"),
        ):
            attacks, rules, _, _ = matrix(result, s, metric)
            rows = {
                (r["cell"]["attack"], r["cell"]["aggregator"]): r["final"].get(metric)
                for r in result.cells
                if all(r["cell"].get(k) == v for k, v in s.items())
            }
            if not any(v for v in rows.values()):
                continue
            attacks = [a for a in attacks if any(rows.get((a, g)) for g in rules)]  # e.g. no ASR of untargeted attacks
            lines += [f"{title}:", "", "| attack | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join(_fmt(rows.get((a, g))) for g in rules) + " |" for a in attacks]
            lines.append("")
        lines += [f"![{_slice_title(s)}](heatmap_{name}.png)", ""]
    if result.invalid:
        lines += ["## Cells that cannot run", ""] + [f"- `{i['name']}`: {i['reason']}" for i in result.invalid] + [""]
    return "\n".join(lines)


def _csv_axes(result: SweepResult) -> list[str]:
    return list(AXES) + ["num_malicious"] + list(result.spec.grid)


def write_csv(result: SweepResult, path: str) -> None:
    """One row per cell: axes, then ``<metric>_mean`` / ``<metric>_std`` of every final metric."""
    metrics = sorted({m for r in result.cells for m in r["final"]})
    header = (
        _csv_axes(result)
        + ["seeds"]
        + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        + ["seconds", "compile_seconds", "program", "cell_file"]
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in result.cells:
            row = [r["cell"].get(k, r.get(k)) for k in _csv_axes(result)] + [" ".join(map(str, r["seeds"]))]
            for m in metrics:
                stats = r["final"].get(m, {"mean": "", "std": ""})
                row += [stats["mean"], stats["std"]]
            row += [
                r["timing"]["seconds"],
                r["timing"]["compile_seconds"],
                r["timing"]["program"],
                f"cells/{r['name']}.json",
            ]
            w.writerow(row)


def write_history_csv(result: SweepResult, path: str) -> None:
    """One row per cell x seed x round: the round's metrics, and the evaluation metrics on the
    rounds that ended with an evaluation (empty elsewhere)."""
    round_metrics = sorted({m for r in result.cells for m in r["history"]})
    eval_metrics = sorted({m for r in result.cells for m in r["evals"] if m not in ("round", "finite")})
    axes = _csv_axes(result)
    columns = [f"round_{m}" if m in axes else m for m in round_metrics]  # e.g. the cohort's num_malicious
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell"] + axes + ["seed", "round"] + columns + eval_metrics)
        for r in result.cells:
            axes = [r["cell"].get(k, r.get(k)) for k in _csv_axes(result)]
            at_eval = {rnd: i for i, rnd in enumerate(r["evals"]["round"])}
            for si, seed in enumerate(r["seeds"]):
                num_rounds = len(next(iter(r["history"].values()))[si])
                for t in range(num_rounds):
                    e = at_eval.get(t + 1)
                    row = [r["name"]] + axes + [seed, t + 1]
                    row += [r["history"][m][si][t] if m in r["history"] else "" for m in round_metrics]
                    row += [r["evals"][m][si][e] if e is not None and m in r["evals"] else "" for m in eval_metrics]
                    w.writerow(row)
