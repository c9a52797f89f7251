"""Crash safety: a run killed with SIGKILL at any moment resumes to exactly the results of an
uninterrupted run.

One workdir, five real ``python -m experiments.run`` processes killed with SIGKILL in turn,
each resuming what the previous one left:
  1. from outside, while compiling: the config is recorded, no checkpoint exists yet;
  2. in the middle of a block: right after block 3's program was dispatched, before its
     results were fetched (between two checkpoints, so a finished block is lost too);
  3. right after a save committed;
  4. in the middle of a save: orbax has written the whole checkpoint into its temporary folder
     but not yet renamed it into place;
  5. from outside, the moment the resumed run's first checkpoint folder appears;
then a sixth process finishes the run, and its results JSON must equal an uninterrupted run's
bit for bit (timings aside); the finished workdir then recomputes nothing, and refuses another
config. Faults inside a process are injected by a tiny wrapper around the runner (``FAULT``
below) that patches the library, so the runner carries no test hooks. In-process tests check
the checkpoint module itself (bitwise round trips, typed keys, refusals, atomic JSON).
"""

import dataclasses
import glob
import json
import os
import signal
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.run import run_experiment
from fljax import checkpoint as checkpoint_lib
from fljax.checkpoint import CheckpointError, RunCheckpointer
from fljax.experiment import ExperimentConfig, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 8 blocks of 1 round, a checkpoint after every 2nd block (steps 2, 4, 6, 8). Server momentum
# and a randomized attack make the optimizer state and the key matter.
FLAGS = [
    "--dataset=digits",
    "--model=logreg",
    "--num_clients=12",
    "--clients_per_round=10",
    "--num_malicious=3",
    "--attack=gaussian(std=3.0)",
    "--aggregator=median",
    "--protocol=fedsgd",
    "--client_lr=0.3",
    "--rounds=8",
    "--eval_every=1",
    "--server_momentum=0.5",
    "--seed=3",
]

# Runs the real runner after patching the library to SIGKILL the process at one point:
#   mid_block:N   after the N-th block was dispatched, before its results are fetched
#   mid_save:N    in the N-th save of this process, before orbax commits it (renames it into place)
#   after_save:N  right after the N-th save of this process committed
FAULT = r"""
import os, signal, sys
point, count = os.environ["FLJAX_FAULT"].split(":")
count = int(count)
seen = [0]

def hit():
    seen[0] += 1
    if seen[0] == count:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

import jax
from fljax import checkpoint as checkpoint_lib
if point == "mid_block":
    original_get = jax.device_get
    def device_get(x):
        if sys._getframe(1).f_globals.get("__name__") == "experiments.run":
            hit()
        return original_get(x)
    jax.device_get = device_get
elif point == "mid_save":
    from orbax.checkpoint._src.path import atomicity
    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self, *args, **kwargs):
        if self.get().parent.name == "checkpoints":  # the step folder, after its items
            hit()
        return await original_finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
elif point == "after_save":
    original_save = checkpoint_lib.RunCheckpointer.save
    def save(self, *args, **kwargs):
        original_save(self, *args, **kwargs)
        hit()
    checkpoint_lib.RunCheckpointer.save = save
else:
    raise SystemExit("unknown fault " + point)

from absl import app
from experiments import run
app.run(lambda argv: sys.exit(run.main(argv)), flags_parser=run.parse_flags)
"""

TIMING = ("seconds", "compile_seconds", "rounds_per_second")


# The processes share JAX's persistent compilation cache: the first one compiles the block, the
# others load the same executable (what they would compile anyway), which saves most of each
# process's CPU time.
COMPILATION_CACHE = {}


def _env(fault=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **COMPILATION_CACHE)
    env.pop("FLJAX_FAULT", None)
    if fault:
        env["FLJAX_FAULT"] = fault
    return env


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    COMPILATION_CACHE.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    yield
    COMPILATION_CACHE.clear()


def _command(fault, extra):
    if fault:
        return [sys.executable, "-c", FAULT, *FLAGS, *extra]
    return [sys.executable, "-m", "experiments.run", *FLAGS, *extra]


def run_to_end(extra, fault=None):
    proc = subprocess.run(
        _command(fault, extra), cwd=ROOT, env=_env(fault), capture_output=True, text=True, timeout=300
    )
    return proc


def killed_by_fault(extra, fault):
    proc = run_to_end(extra, fault)
    assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode, proc.stdout, proc.stderr)
    return proc


def kill_when(extra, condition, what):
    """Starts the runner and SIGKILLs it from outside as soon as ``condition()`` holds."""
    proc = subprocess.Popen(
        _command(None, extra), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    try:
        while not condition():
            assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def steps(workdir):
    """Committed checkpoint steps (orbax's temporary folders excluded)."""
    return sorted(
        int(os.path.basename(p))
        for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
        if os.path.basename(p).isdigit()
    )


def temporaries(workdir):
    return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def results(path):
    with open(path) as f:
        res = json.load(f)
    res.pop("checkpoint", None)
    for key in TIMING:
        res["final"].pop(key)
    return res


def assert_same(a, b):
    # NaN != NaN in Python: compare the JSON texts (NaN is written as NaN on both sides).
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_killed_inside_a_save_and_resumed_ends_exactly_as_an_uninterrupted_run_small(tmp_path):
    """CI's version of the test below: one real process dies inside its second save (checkpoint
    2 committed, 4 not), the next resumes after round 2, ignores the uncommitted folder and ends
    with exactly the uninterrupted run's results."""
    baseline_out = tmp_path / "baseline.json"
    baseline = subprocess.Popen(
        _command(None, [f"--output={baseline_out}", "--quiet"]),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir, out = str(tmp_path / "work"), tmp_path / "out.json"
    extra = [f"--workdir={workdir}", "--checkpoint_every=2", f"--output={out}"]
    proc = killed_by_fault(extra, "mid_save:2")
    assert "round    4/8" in proc.stdout and steps(workdir) == [2] and temporaries(workdir)
    proc = run_to_end(extra)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {os.path.abspath(workdir)} after round 2 (2/8 blocks done)" in proc.stdout
    noise = [line for line in proc.stderr.splitlines() if "metadata" in line.lower() or "orbax" in line.lower()]
    assert not noise, noise  # a resume that goes well is quiet (no orbax "metadata file does not exist")
    assert not temporaries(workdir)
    assert baseline.wait(timeout=300) == 0, baseline.stderr.read()
    baseline.stderr.close()
    assert_same(results(out), results(baseline_out))


@pytest.mark.slow
def test_killed_five_times_at_every_kind_of_point_resumes_exactly(tmp_path):
    """One workdir, interrupted five times (so also "interrupted and resumed twice"), each
    resume checked against what the previous kill left behind; the uninterrupted baseline runs
    alongside in another process."""
    baseline_out = tmp_path / "baseline.json"
    baseline = subprocess.Popen(
        _command(None, [f"--output={baseline_out}", "--quiet"]),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workdir, out = str(tmp_path / "work"), tmp_path / "out.json"
    extra = [f"--workdir={workdir}", "--checkpoint_every=2", f"--output={out}"]
    # 1: killed from outside while compiling: the config is recorded, no checkpoint exists.
    kill_when(extra, lambda: os.path.exists(os.path.join(workdir, "config.json")), "the workdir's config")
    assert steps(workdir) == []
    # 2: starts from scratch, dies in the middle of block 3 (checkpoint 2 committed, 4 not yet).
    proc = killed_by_fault(extra, "mid_block:3")
    assert "resumed from" not in proc.stdout and "round    2/8" in proc.stdout
    assert steps(workdir) == [2]
    # 3: resumes after round 2 and dies right after its first save (checkpoint 4) committed.
    proc = killed_by_fault(extra, "after_save:1")
    assert "after round 2 (2/8 blocks done)" in proc.stdout
    assert steps(workdir) == [2, 4]
    # 4: resumes after round 4 and dies inside its first save (6), before orbax commits it.
    proc = killed_by_fault(extra, "mid_save:1")
    assert "after round 4 (4/8 blocks done)" in proc.stdout
    assert temporaries(workdir), "the kill was meant to leave an uncommitted checkpoint folder"
    assert steps(workdir) == [2, 4]
    # 5: resumes after round 4 (the uncommitted 6 is ignored) and is killed from outside the
    # moment its first checkpoint appears.
    kill_when(extra, lambda: max(steps(workdir)) > 4, "a new checkpoint")
    committed = steps(workdir)
    assert not out.exists()
    # 6: resumes from the newest committed checkpoint and ends.
    proc = run_to_end(extra)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {os.path.abspath(workdir)} after round {max(committed)}" in proc.stdout
    assert not temporaries(workdir)
    assert baseline.wait(timeout=300) == 0, baseline.stderr.read()
    baseline.stderr.close()
    expected = results(baseline_out)
    assert len(expected["history"]["finite"]) == 8 and expected["evals"]["round"] == list(range(1, 9))
    assert_same(results(out), expected)
    assert_same(results(os.path.join(workdir, "results.json")), expected)
    # The finished workdir: the same run recomputes nothing and gives the same results ...
    config = ExperimentConfig(**{f[2:].split("=", 1)[0]: _flag_value(f) for f in FLAGS})
    again = run_experiment(build(config), lambda m: None, workdir=workdir)
    assert again["checkpoint"]["resumed_after_blocks"] == 8
    again.pop("checkpoint")
    for key in TIMING:
        again["final"].pop(key)
    assert_same(json.loads(json.dumps(again)), expected)
    # ... and another config is refused by the CLI with status 2 and no traceback.
    proc = run_to_end([f"--workdir={workdir}", "--quiet", "--rounds=9", "--client_lr=0.1"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "different config" in proc.stderr and "--rounds: recorded 8, now 9" in proc.stderr
    assert "--client_lr: recorded 0.3, now 0.1" in proc.stderr


def _flag_value(flag):
    name, value = flag[2:].split("=", 1)
    kind = type(getattr(ExperimentConfig(), name))
    return kind(value) if kind in (int, float) else value


# ---- in-process checks of the checkpoint module --------------------------------------------

SMALL = dict(
    dataset="digits",
    model="logreg",
    num_clients=10,
    clients_per_round=8,
    num_malicious=2,
    attack="sign_flip",
    aggregator="trimmed_mean",
    num_byzantine=2,
    rounds=5,
    eval_every=2,
    protocol="fedsgd",
    server_momentum=0.9,
)


@pytest.fixture(scope="module")
def small():
    """One experiment for the in-process tests (its compiled blocks are cached across them)."""
    return build(ExperimentConfig(**SMALL))


class Crash(Exception):
    pass


def test_in_process_crash_after_each_save_resumes_exactly(small, tmp_path, monkeypatch):
    """Blocks of 2, 2, 1 rounds; the run 'crashes' after every save and is resumed each time."""
    quiet = lambda msg: None
    reference = run_experiment(small, quiet)
    original = RunCheckpointer.save

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Crash()

    monkeypatch.setattr(RunCheckpointer, "save", save_then_crash)
    workdir = str(tmp_path / "w")
    for expected in (1, 2, 3):
        with pytest.raises(Crash):
            run_experiment(small, quiet, workdir=workdir)
        assert max(steps(workdir)) == expected
    monkeypatch.setattr(RunCheckpointer, "save", original)
    resumed = run_experiment(small, quiet, workdir=workdir)
    assert resumed["checkpoint"]["resumed_after_blocks"] == 3
    for res in (reference, resumed):
        res.pop("checkpoint", None)
        for key in TIMING:
            res["final"].pop(key)
    assert_same(resumed, reference)


def test_checkpoint_round_trips_the_full_state_bitwise(small, tmp_path):
    state = small.train.init(jax.random.PRNGKey(7))
    state, _, _ = small.train.run_block(state, small.data, num_rounds=2)
    history = {
        "rounds": {"loss": np.array([1.5, np.nan], np.float32), "finite": np.array([True, False])},
        "evals": {"accuracy": np.array([0.25], np.float32)},
        "eval_rounds": np.array([2]),
    }
    ckpt = RunCheckpointer(str(tmp_path), dataclasses.asdict(small.config))
    assert ckpt.restore(state) is None
    ckpt.save(1, state, history, {"round": 2, "note": float("nan")})
    restored = ckpt.restore(small.train.init(jax.random.PRNGKey(0)))
    assert restored.step == 1 and restored.meta["round"] == 2 and restored.meta["note"] == "nan"
    assert jax.tree.structure(restored.state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(restored.history["rounds"]["loss"], history["rounds"]["loss"])
    assert restored.history["rounds"]["finite"].dtype == np.bool_


def test_typed_prng_keys_round_trip(tmp_path):
    state = {"key": jax.random.key(5), "w": np.arange(3.0, dtype=np.float32)}
    ckpt = RunCheckpointer(str(tmp_path), {"a": 1})
    ckpt.save(1, state, {"x": np.zeros(1)}, {})
    restored = ckpt.restore({"key": jax.random.key(0), "w": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(jax.random.key_data(restored.state["key"]), jax.random.key_data(state["key"]))
    assert jax.random.uniform(restored.state["key"]) == jax.random.uniform(state["key"])


def test_incompatible_checkpoint_and_config_are_refused(tmp_path):
    ckpt = RunCheckpointer(str(tmp_path), {"a": 1, "b": [1, 2]})
    ckpt.save(1, {"w": np.zeros(3, np.float32)}, {"x": np.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="state leaf 0 has shape"):
        ckpt.restore({"w": np.zeros(4, np.float32)})
    with pytest.raises(CheckpointError, match="holds 1 state arrays, this run has 2"):
        ckpt.restore({"w": np.zeros(3, np.float32), "v": np.zeros(1)})
    RunCheckpointer(str(tmp_path), {"a": 1, "b": (1, 2)})  # same config after a JSON round trip
    with pytest.raises(CheckpointError, match=r"--a: recorded 1, now 2; --c: recorded '<absent>', now 3"):
        RunCheckpointer(str(tmp_path), {"a": 2, "b": [1, 2], "c": 3})
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="--workdir must be a directory"):
        RunCheckpointer(str(tmp_path / "file"), {})


def test_write_json_atomic_never_leaves_partial_files(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    checkpoint_lib.write_json_atomic(str(path), {"a": 1})

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_lib.json, "dump", broken_dump)
    with pytest.raises(OSError):
        checkpoint_lib.write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_write_json_atomic_honours_the_umask(tmp_path, umask, mode):
    """Results, sweep cells and a workdir's config are readable by colleagues as ``open`` would
    make them (mkstemp alone gives 0600)."""
    old = os.umask(umask)
    try:
        checkpoint_lib.write_json_atomic(str(tmp_path / "r.json"), {"a": 1})
        assert os.umask(umask) == umask  # the umask is left as it was
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == mode
