"""The experiment runner end to end: JSON contents, summary, and the core issue's claims."""

import json
import os
import subprocess
import sys

import pytest

from experiments.run import run_experiment, summary_table
from fljax.experiment import ExperimentConfig, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(**overrides):
    return run_experiment(build(ExperimentConfig(**overrides)), log=lambda m: None)


def test_cli_writes_results_json_and_prints_a_table(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "--dataset=digits",
            "--num_clients=20",
            "--clients_per_round=10",
            "--num_malicious=4",
            "--rounds=4",
            "--eval_every=2",
            "--local_steps=2",
            f"--output={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "attack success rate" in proc.stdout
    res = json.loads(out.read_text())
    assert res["config"]["aggregator"] == "median" and res["config"]["rounds"] == 4
    assert len(res["history"]["detection_tpr"]) == 4 and res["evals"]["round"] == [2, 4]
    for key in (
        "accuracy",
        "loss",
        "attack_success_rate",
        "detection_tpr",
        "detection_fpr",
        "seconds",
        "compile_seconds",
        "rounds_per_second",
    ):
        assert key in res["final"]
    assert 0 <= res["final"]["accuracy"] <= 1


def test_cli_rejects_bad_flags_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--aggregator=krum", "--num_byzantine=60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "krum: needs n > 2f + 2" in proc.stderr and "Traceback" not in proc.stderr


SMALL = dict(
    dataset="digits",
    num_clients=30,
    clients_per_round=30,
    num_malicious=6,
    rounds=12,
    eval_every=12,
    local_steps=4,
    client_lr=0.3,
)


def test_sign_flip_breaks_mean_but_not_robust_rules_small():
    clean = run(**SMALL, attack="none", aggregator="mean")["final"]["accuracy"]
    assert clean > 0.8
    broken = run(**SMALL, attack="sign_flip(scale=10.0)", aggregator="mean")["final"]["accuracy"]
    assert broken < 0.5
    for rule in ("median", "trimmed_mean", "krum"):
        acc = run(**SMALL, attack="sign_flip(scale=10.0)", aggregator=rule)["final"]["accuracy"]
        assert acc > 0.7, rule


def test_summary_mentions_divergence():
    res = run(**SMALL, attack="sign_flip(scale=10.0)", aggregator="mean")
    res["final"].update(diverged=True, diverged_round=3)
    assert "DIVERGED" in summary_table(res)


@pytest.mark.slow
def test_core_claims_on_mnist5k():
    """The core issue's 'done means' on mnist5k with the defaults (100 clients, 20 malicious)."""
    assert run(attack="none", aggregator="mean")["final"]["accuracy"] >= 0.90
    assert run(attack="sign_flip(scale=10.0)", aggregator="mean")["final"]["accuracy"] < 0.5
    for rule in ("median", "trimmed_mean", "krum"):
        assert run(attack="sign_flip(scale=10.0)", aggregator=rule)["final"]["accuracy"] > 0.8, rule
    asr_mean = run(attack="label_flip", aggregator="mean")["final"]["attack_success_rate"]
    for rule in ("median", "trimmed_mean", "krum"):
        assert run(attack="label_flip", aggregator=rule)["final"]["attack_success_rate"] < asr_mean, rule
