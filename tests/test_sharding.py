"""The cohort's client axis on a device mesh: sharded runs equal unsharded ones on 8 CPU devices
(in a subprocess, so this process keeps one device), validation, and the --distributed wiring."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fljax import sharding
from tests.helpers import ROOT, finish, kill_leftovers, start_processes
from tests.helpers import subprocess_env as _subprocess_env


@pytest.fixture(scope="module")
def eight_devices():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "sharding_worker.py")],
        cwd=ROOT,
        env=_subprocess_env(8),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_worker_saw_eight_devices_and_a_per_device_program(eight_devices):
    assert eight_devices["devices"] == 8
    # local training is a manual computation over the 'clients' axis, the program has 8 partitions
    assert eight_devices["hlo"] == {"manual_clients": True, "partitions": True}


@pytest.mark.parametrize("case", ["sequential", "vmap_padded", "parallel_padded"])
def test_sharded_run_equals_unsharded_run(eight_devices, case):
    """Whole runs (3 rounds of median with label flippers, evaluation folded in) give the same
    params and history with local training split over 8 devices as on one device: 16 clients
    (2 per device, sequential), 12 clients (padded to 16, vmap on each device), and 12 clients
    under ``execution="parallel"`` (pmap over the 8 devices, no mesh sharding)."""
    assert eight_devices["moved"] > 0.05  # the run trains (a broken round would leave params at init)
    case = eight_devices["runs"][case]
    assert case["params_diff"] <= 1e-6 and case["history_diff"] <= 1e-6, case


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean", "krum"])
def test_rules_on_sharded_updates_equal_unsharded(eight_devices, rule):
    case = eight_devices["aggregators"][rule]
    assert case["scale"] > 0.1
    assert case["diff"] <= 1e-6 * (1.0 + case["scale"]), case
    if rule == "mean":  # and both equal the float64 weighted mean
        assert case["expected_diff"] <= 1e-5


def test_mesh_without_a_clients_axis_is_rejected_by_name(eight_devices):
    err = eight_devices["errors"]
    assert "axis named 'clients'" in err["mesh_axis"] and "('x',)" in err["mesh_axis"]


def test_padded_cohort_and_mesh_arguments():
    mesh = sharding.client_mesh(jax.devices()[:1])
    assert sharding.num_shards(mesh) == 1 and sharding.padded_cohort(7, mesh) == 7  # one device: no padding
    with pytest.raises(ValueError, match="clients_per_round must be an integer >= 1, got 0"):
        sharding.padded_cohort(0, mesh)
    with pytest.raises(ValueError, match="shard_clients must be a bool or a jax.sharding.Mesh, got 'yes'"):
        sharding.resolve_mesh("yes")
    assert sharding.resolve_mesh(False) is None and sharding.resolve_mesh(True).axis_names == ("clients",)
    with pytest.raises(ValueError, match="client_mesh: devices must hold at least one device"):
        sharding.client_mesh([])


def test_replicate_places_every_leaf_whole():
    mesh = sharding.client_mesh()
    tree = {"a": np.arange(6.0).reshape(2, 3), "b": jax.numpy.ones(4)}
    out = sharding.replicate(tree, mesh)
    for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        assert leaf.sharding.is_fully_replicated
        np.testing.assert_array_equal(leaf, ref)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator_address="node0"), "--coordinator_address must be 'host:port'"),
        (dict(num_processes=0), "--num_processes must be an integer >= 1"),
        (dict(num_processes=2, process_id=2), r"--process_id must be an integer in 0..num_processes-1=1"),
        (dict(process_id=-1), r"--process_id must be an integer in 0..num_processes-1 "),
        (dict(heartbeat_timeout=0), r"--heartbeat_timeout must be an integer >= 1 \(seconds\), got 0"),
    ],
)
def test_initialize_distributed_validates_before_calling_jax(monkeypatch, kwargs, message):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    with pytest.raises(ValueError, match=message):
        sharding.initialize_distributed(**kwargs)
    assert calls == []


def test_runner_distributed_flag_calls_initialize_first_with_the_given_arguments(monkeypatch):
    """``--distributed`` calls jax.distributed.initialize with the coordinator flags, before the
    experiment is built, and turns on --shard_clients; the coordinator flags need --distributed."""
    from experiments import run as runner
    from fljax.experiment import ExperimentConfig

    events = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: events.append(("initialize", kw)))

    def fake_build(config):
        events.append(("build", config.shard_clients))
        raise ValueError("stop after build")

    monkeypatch.setattr(runner, "build", fake_build)
    argv = [
        "run",
        "--distributed",
        "--coordinator_address=10.0.0.1:1234",
        "--num_processes=4",
        "--process_id=3",
        "--heartbeat_timeout=20",
        "--dataset=digits",
    ]
    runner.FLAGS.unparse_flags()
    try:
        runner.FLAGS(argv)
        assert runner.main(["run"]) == 2  # the fake build's error, reported like any bad setting
        assert events == [
            (
                "initialize",
                {
                    "coordinator_address": "10.0.0.1:1234",
                    "num_processes": 4,
                    "process_id": 3,
                    "heartbeat_timeout_seconds": 20,
                },
            ),
            ("build", True),
        ]
        events.clear()
        runner.FLAGS.unparse_flags()
        runner.FLAGS(["run", "--distributed"])  # auto-detection (TPU pods, Slurm): all three unset
        assert runner.main(["run"]) == 2
        assert events == [
            (
                "initialize",
                {
                    "coordinator_address": None,
                    "num_processes": None,
                    "process_id": None,
                    "heartbeat_timeout_seconds": 100,
                },
            ),
            ("build", True),
        ]
        events.clear()
        runner.FLAGS.unparse_flags()
        runner.FLAGS(["run", "--num_processes=2"])
        with pytest.raises(ValueError, match="--num_processes applies only with --distributed"):
            runner.start_distributed(ExperimentConfig())
        runner.FLAGS.unparse_flags()
        runner.FLAGS(["run", "--heartbeat_timeout=5"])
        with pytest.raises(ValueError, match="--heartbeat_timeout applies only with --distributed"):
            runner.start_distributed(ExperimentConfig())
        runner.FLAGS.unparse_flags()
        runner.FLAGS(["run", "--distributed", "--shard_clients=false"])
        with pytest.raises(ValueError, match="needs --shard_clients"):
            runner.start_distributed(ExperimentConfig())
        assert events == []
    finally:
        runner.FLAGS.unparse_flags()


@pytest.mark.slow
def test_two_process_run_equals_single_process_run(tmp_path):
    """A real multi-process run on this machine: 2 processes x 2 CPU devices joined through
    jax.distributed (gloo collectives) give exactly the single-process results."""
    args = [
        sys.executable,
        "-m",
        "experiments.run",
        "--dataset=digits",
        "--model=logreg",
        "--num_clients=16",
        "--clients_per_round=8",
        "--num_malicious=4",
        "--rounds=3",
        "--eval_every=2",
        "--local_steps=2",
        "--quiet",
    ]
    procs = start_processes(args, 2, 2, extra=lambda i: [f"--output={tmp_path / f'p{i}.json'}"])
    try:
        outs = finish(procs, timeout=900)
    finally:
        kill_leftovers()
    assert [rc for rc, _, _ in outs] == [0, 0], [err[-2000:] for _, _, err in outs]
    assert not (tmp_path / "p1.json").exists()  # only process 0 writes --output
    single = subprocess.run(
        args + [f"--output={tmp_path / 's.json'}"],
        cwd=ROOT,
        env=_subprocess_env(1),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi, ref = (json.loads((tmp_path / name).read_text()) for name in ("p0.json", "s.json"))
    assert multi["config"]["shard_clients"] is True
    np.testing.assert_allclose(multi["evals"]["accuracy"], ref["evals"]["accuracy"], atol=1e-6)
    np.testing.assert_allclose(multi["history"]["update_norm"], ref["history"]["update_norm"], rtol=1e-5)
