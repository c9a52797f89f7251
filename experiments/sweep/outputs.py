"""Writes a sweep's outputs: results.json / .csv / .md, history.csv and the heatmaps."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from experiments import run as run_lib
from experiments.configs import SweepSpec
from experiments.sweep.heatmaps import heatmap_figure
from experiments.sweep.tables import _slice_name, markdown, slices, write_csv, write_history_csv
from fljax.experiment import config_dict, scoped

if TYPE_CHECKING:
    from experiments.sweep.runner import SweepResult


def write_outputs(result: SweepResult) -> list[str]:
    """Writes results.json / .csv / .md, history.csv, the heatmaps (and seed_vmap.json)."""
    import matplotlib.pyplot as plt

    out = result.output_dir
    os.makedirs(out, exist_ok=True)
    payload = {
        "spec": _spec_dict(result.spec),
        "timing": result.timing,
        "seed_vmap": result.seed_vmap,
        "invalid": result.invalid,
        "cells": result.cells,
    }
    run_lib.write_json_atomic(os.path.join(out, "results.json"), payload)
    if result.seed_vmap:
        run_lib.write_json_atomic(os.path.join(out, "seed_vmap.json"), result.seed_vmap)
    write_csv(result, os.path.join(out, "results.csv"))
    write_history_csv(result, os.path.join(out, "history.csv"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result))
    paths = []
    for s in slices(result.spec):
        fig = heatmap_figure(result, s)
        paths.append(os.path.join(out, f"heatmap_{_slice_name(s)}.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _spec_dict(spec: SweepSpec) -> dict:
    d = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("attack_settings", "aggregator_settings")}
    d["base"] = config_dict(scoped(spec.base, notice=lambda m: None, refuse_unused=False))
    return d
