"""The prepared accelerator check, at its CPU size: it runs with only what a bare GPU machine has,
and every figure it writes is consistent with the others (not just present)."""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments.flute import WORKLOADS as FLUTE_WORKLOADS
from fljax.aggregators import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The GPU machine has neither mlxtend nor tensorflow-datasets: the check must not import them.
NO_EXTRAS = (
    "import sys, runpy; sys.modules['mlxtend'] = None; sys.modules['tensorflow_datasets'] = None; "
    "sys.argv = ['device_check'] + sys.argv[1:]; runpy.run_module('experiments.device_check', "
    "run_name='__main__')"
)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    proc = subprocess.run(
        [sys.executable, "-c", NO_EXTRAS, f"--output_dir={out}", "--small"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6)


def test_every_section_is_written(check):
    results, markdown = check
    assert list(results["sections"]) == ["device", "rounds", "torch", "kernels", "rules", "run", "flute"]
    seconds = results["section_seconds"]  # where the check's minutes go, section by section
    assert list(seconds) == list(results["sections"]) and all(s >= 0 for s in seconds.values())
    assert sum(seconds.values()) <= results["elapsed_s"] + 1
    device = results["device"]
    assert device["backend"] == "cpu" and device["fp32_peak_tflops"] > 0 and device["jax"]
    assert f"# fljax device check: {device['device_kind']} (cpu)" in markdown
    for title in ("Rounds: mlp", "Rules on a 8-client round", "Whole runs: 3 rounds", "FLUTE's workloads"):
        assert title in markdown
    assert results["targets"].startswith("not evaluated on CPU")


def test_round_figures_are_consistent(check):
    results, _ = check
    config = results["config"]
    assert config["flops_per_client"] == 6 * config["mlp_params"] * config["local_steps"] * config["batch_size"]
    rows = results["sections"]["rounds"]
    measured = [r for r in rows if "round_s" in r]
    assert {(r["clients"], r["execution"]) for r in measured} >= {
        (n, e) for n in (4, 8) for e in ("vmap", "sequential")
    }
    for r in measured:
        n, s = r["clients"], r["round_s"]
        assert s > 0 and r["compile_s"] > 0
        assert close(r["rounds_per_s"], 1 / s) and close(r["clients_per_s"], n / s)
        assert close(r["tflops"], n * config["flops_per_client"] / s / 1e12)
        assert r["program_bytes"] > 0


def test_rules_cover_the_registry_and_shares_add_up(check):
    results, _ = check
    rows = {r["rule"]: r for r in results["sections"]["rules"]}
    round_s = next(
        r["round_s"] for r in results["sections"]["rounds"] if r["clients"] == 8 and r["execution"] == "sequential"
    )
    assert set(REGISTRY) <= set(rows)
    for name in REGISTRY:
        r = rows[name]
        assert r["seconds"] > 0 and close(r["share_of_round"], r["seconds"] / (round_s + r["seconds"]))
        assert close(r["x_mean"], r["seconds"] / rows["mean"]["seconds"])


def test_torch_ratio_and_whole_runs(check):
    results, _ = check
    for r in results["sections"]["torch"]:
        if "skipped" not in r:
            assert close(r["speedup"], r["torch_round_s"] / r["fljax_round_s"])
    for r in results["sections"]["run"]:
        assert r["finite"] and 0 <= r["final_accuracy"] <= 1 and close(r["total_s"], r["compile_s"] + r["run_s"])
        assert r["rounds"] == 3 and r["clients_per_round"] == 8
    flute = {r["workload"]: r for r in results["sections"]["flute"]}
    assert flute["lr_mnist"]["rounds"] >= 2 and flute["cnn_femnist"]["finite"]
    assert set(flute) == set(FLUTE_WORKLOADS)
    for name, row in flute.items():  # each workload ran, or says why not
        assert row.get("finite") or row.get("skipped", "").startswith("--small: "), (name, row)
    assert flute["lr_mnist"]["finite"] and flute["cnn_femnist"]["final_accuracy"] >= 0


def test_kernels_are_checked_against_references(check):
    results, _ = check
    rows = {r["kernel"]: r for r in results["sections"]["kernels"]}
    assert rows["median ranks (kth_smallest_and_largest)"]["max_abs_error_vs_sort"] == 0.0
    assert rows["trimmed mean, k = n/5"]["max_abs_error_vs_sort"] < 1e-6
    chosen = [r for r in rows.values() if r.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["max_rel_distance_error"] < 1e-5
