"""Multi-host runs that survive faults, with real processes joined by ``jax.distributed`` over
127.0.0.1 (2 processes x 2 CPU devices, Gloo collectives; nothing of JAX mocked):

* a checkpointed ``--distributed`` run of the runner is killed mid-run (SIGKILL to process 1);
  process 0 says in one line what happened and how to resume, and exits at once; restarted
  with the same command, the run ends exactly where an uninterrupted run ends;
* JAX's own abort of a survivor (process 0, the coordinator, lost; or a process lost while
  the survivor waits outside any collective, found by the heartbeat timeout) becomes that one
  line under ``multihost.supervise``, with no crash dump;
* a preemption notice (SIGTERM to one process) stops every process at the same step;
* a workdir that the processes do not share, or different configs, are refused by every
  process before any work.

Killing a process means SIGKILL to its supervisor: the worker dies with it, as on a lost host.
The runner's handling of a preemption and of a checkpoint written on another topology is
checked in-process at the end (one process cannot be preempted in sync with others).
"""

import json
import os
import re
import signal
import sys
import time

import pytest

from experiments.run import run_experiment
from fljax import checkpoint as checkpoint_lib
from fljax import multihost
from fljax.experiment import ExperimentConfig, build
from tests.helpers import ROOT, finish, free_port, kill_leftovers, popen, start_processes, subprocess_env

# 12 blocks of one round, a checkpoint after every 2nd; server momentum and a randomized attack
# make the optimizer state and the PRNG key matter. 8 clients per round over 4 devices.
FLAGS = [
    "--dataset=synthetic:mnist",
    "--model=logreg",
    "--num_clients=12",
    "--clients_per_round=8",
    "--num_malicious=3",
    "--attack=gaussian(std=3.0)",
    "--aggregator=median",
    "--protocol=fedsgd",
    "--client_lr=0.3",
    "--rounds=12",
    "--eval_every=1",
    "--server_momentum=0.5",
    "--seed=3",
    "--cpu_cores=2",
    "--heartbeat_timeout=10",
    "--quiet",
]
RUN = [sys.executable, "-m", "experiments.run", *FLAGS]
TIMING = ("seconds", "compile_seconds", "rounds_per_second")
DUMP = ("Fatal Python error", "Check failure", "Traceback", "terminate called", "\nE1", "\nF1")


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    kill_leftovers()  # a failed test's processes (a worker dies with its supervisor)


def steps(workdir):
    """Committed checkpoint steps (orbax's temporary folders excluded)."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


GLOO = re.compile(
    r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. Expected number of connected peer ranks is : \d*"
)


def messages(text):
    """What a process said, less Gloo's connection notices (which its threads print interleaved)."""
    return [line for line in GLOO.sub("", text).splitlines() if line.strip() and not line.strip().isdigit()]


def results(path):
    """A results file as comparable text: timings and the checkpoint record left out, NaN == NaN."""
    with open(path) as f:
        res = json.load(f)
    res.pop("checkpoint", None)
    for key in TIMING:
        res["final"].pop(key)
    return json.dumps(res, sort_keys=True)


def stop_one(procs, victim, sig, condition, what, timeout=300):
    """Once ``condition()`` holds, sends ``sig`` to process ``victim``; returns the seconds from
    then until every other process had exited, and every ``(returncode, stdout, stderr)``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), f"a process ended before {what}: {finish(procs)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    procs[victim].send_signal(sig)
    sent = time.monotonic()
    others = [p for i, p in enumerate(procs) if i != victim]
    while any(p.poll() is None for p in others) and time.monotonic() < sent + 120:
        time.sleep(0.01)
    return time.monotonic() - sent, finish(procs, timeout=60)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL to process 1 mid-run: process 0 exits at once with one line and EXIT_RESUMABLE;
    the same command again resumes and ends with an uninterrupted run's results, bit for bit."""
    baseline = start_processes(RUN, 2, 2, extra=lambda i: [f"--output={tmp_path / f'baseline{i}.json'}"])
    workdir, out = str(tmp_path / "work"), tmp_path / "out.json"
    command = lambda: start_processes(RUN + ["--checkpoint_every=2", f"--workdir={workdir}", f"--output={out}"], 2, 2)

    seconds, outs = stop_one(
        command(), 1, signal.SIGKILL, lambda: max(steps(workdir), default=0) >= 4, "the checkpoint after round 4"
    )
    (rc0, out0, err0), (rc1, _, _) = outs
    assert rc1 == -signal.SIGKILL and rc0 == multihost.EXIT_RESUMABLE, outs
    said = messages(err0)
    assert len(said) == 1 and said[0].startswith(multihost.LOST), err0
    # Gloo's "Connection reset by peer" at once in a collective; in a save's barrier, the heartbeat timeout.
    assert said[0].startswith(
        (
            f"{multihost.LOST}: another process closed its connections (Gloo ",
            f"{multihost.LOST}: process 1 stopped sending heartbeats (",
        )
    ), said[0]
    assert "(seen by process 0 of 2)" in said[0]
    done = max(steps(workdir))  # one round per block
    assert f"restart every process with the same command to resume from {workdir} after round {done}" in said[0]
    assert seconds < 10 + 10, seconds  # --heartbeat_timeout=10 bounds it
    print(f"\nprocess 1 killed after round {done}: process 0 exited {seconds:.2f} s later ({said[0][31:100]}...)")
    assert 4 <= done < 12 and not out.exists() and messages(out0) == []

    outs = finish(command())
    assert [rc for rc, _, _ in outs] == [0, 0], outs
    assert not any(d in out + err for _, out, err in outs for d in DUMP), outs
    assert messages(outs[1][1] + outs[1][2]) == []  # process 1 prints nothing
    assert [rc for rc, _, _ in finish(baseline)] == [0, 0] and not (tmp_path / "baseline1.json").exists()
    expected = results(tmp_path / "baseline0.json")
    assert json.loads(expected)["evals"]["round"] == list(range(1, 13))
    assert results(out) == expected
    assert results(os.path.join(workdir, "results.json")) == expected
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "results.json"]  # the probe is gone
    assert json.loads((tmp_path / "out.json").read_text())["checkpoint"]["resumed_after_blocks"] == done


# One process of a 2-process run (argv: address, process id, heartbeat timeout, folder, mode):
# it initializes jax.distributed, says it is ready, then
#   sleep:       waits outside any collective;
#   preempt:     counts steps, asking multihost.preemption_point at each, and prints where it stops;
#   checkpoint:  opens a RunCheckpointer (config {"rounds": 3}) in <folder>/work<process id>, as if
#                the processes did not share storage, then one in <folder>/work with the config
#                {"rounds": 3 + process id}, printing each refusal.
WORKER = """
import os, sys, time
from fljax import multihost, sharding
address, process, timeout, folder, mode = sys.argv[1:]
multihost.die_with_supervisor()
sharding.initialize_distributed(address, 2, int(process), heartbeat_timeout=int(timeout))
import jax
assert jax.device_count() == 4
open(os.path.join(folder, "ready" + process), "w").close()
if mode == "sleep":
    time.sleep(300)
elif mode == "preempt":
    for step in range(1, 10**6):
        if multihost.preemption_point(step):
            print("stopped at", step, flush=True)
            sys.exit(multihost.EXIT_RESUMABLE)
        time.sleep(0.02)
else:
    from fljax.checkpoint import CheckpointError, RunCheckpointer
    for workdir, rounds in (("work" + process, 3), ("work", 3 + int(process))):
        try:
            RunCheckpointer(os.path.join(folder, workdir), {"rounds": rounds})
        except CheckpointError as e:
            print(e, flush=True)
"""
SUPERVISOR = """
import sys
from fljax import multihost
worker = [sys.executable, "-c", sys.argv[1]] + sys.argv[2:]
sys.exit(multihost.supervise(lambda: "restart to resume", int(sys.argv[3]), command=worker))
"""


def start_workers(folder, mode, supervised=True):
    """Process 0 and 1 running ``WORKER`` in ``mode`` (under ``SUPERVISOR`` when ``supervised``),
    with a 5 s heartbeat timeout."""
    address = f"127.0.0.1:{free_port()}"
    head = [sys.executable, "-c", SUPERVISOR] if supervised else [sys.executable, "-c"]
    return [
        popen(head + [WORKER, address, str(i), "5", str(folder), mode], cwd=ROOT, env=subprocess_env(2))
        for i in range(2)
    ]


def ready(folder):
    return lambda: all((folder / f"ready{i}").exists() for i in range(2))


@pytest.mark.parametrize(
    "victim, said, bound",
    [
        (0, "process 0, which runs the coordination service, is gone (seen by process 1)", 10),
        (1, "process 1 stopped sending heartbeats (seen by process 0)", 5 + 10),
    ],
    ids=["coordinator_lost", "heartbeat_timeout"],
)
def test_jax_abort_of_a_survivor_becomes_one_line(tmp_path, victim, said, bound):
    """JAX aborts a survivor itself (SIGABRT, a native stack trace, Python's fault dump): at once
    when process 0, which runs the coordination service, is lost; after the heartbeat timeout
    (5 s here) when process 1 is lost while process 0 waits outside any collective. The
    supervisor prints one line instead and exits with EXIT_RESUMABLE."""
    seconds, outs = stop_one(start_workers(tmp_path, "sleep"), victim, signal.SIGKILL, ready(tmp_path), "both workers")
    survivor = outs[1 - victim]
    assert outs[victim][0] == -signal.SIGKILL
    assert survivor[0] == multihost.EXIT_RESUMABLE, survivor
    assert messages(survivor[2]) == [f"{multihost.LOST}: {said}; restart to resume"], survivor[2]
    assert seconds < bound, seconds
    print(f"\nprocess {victim} killed: the survivor exited {seconds:.2f} s later")


def test_preemption_notice_stops_every_process_at_the_same_step(tmp_path):
    """SIGTERM to one process (JAX's preemption service catches it) makes ``preemption_point``
    true on both processes at one common step."""
    _, outs = stop_one(
        start_workers(tmp_path, "preempt", supervised=False), 1, signal.SIGTERM, ready(tmp_path), "both workers"
    )
    assert [rc for rc, _, _ in outs] == [multihost.EXIT_RESUMABLE] * 2, outs
    stops = [out.split() for _, out, _ in outs]
    assert stops[0] == stops[1] and stops[0][:2] == ["stopped", "at"] and int(stops[0][2]) > 1, outs


def test_unshared_workdir_and_different_configs_are_refused_everywhere(tmp_path):
    """Each process in its own folder (as on hosts without shared storage): both refuse, naming
    the process that cannot see process 0's files. One folder, two configs: both refuse."""
    outs = finish(start_workers(tmp_path, "checkpoint", supervised=False))
    assert [rc for rc, _, _ in outs] == [0, 0], outs
    for _, out, _ in outs:
        unshared, different = messages(out)
        assert "must be on storage every process sees" in unshared and "process(es) 1 cannot see" in unshared, out
        assert "process(es) 1 run another config than process 0" in different, out
    assert not (tmp_path / "work" / "config.json").exists()  # refused before anything was recorded


# ---- the runner's side, in-process ----------------------------------------------------------

SMALL = dict(
    dataset="synthetic:mnist",
    model="logreg",
    num_clients=10,
    clients_per_round=8,
    num_malicious=2,
    attack="gaussian(std=3.0)",
    aggregator="median",
    rounds=5,
    eval_every=1,
    protocol="fedsgd",
    server_momentum=0.9,
)


def comparable(res):
    res = json.loads(json.dumps(res))
    res.pop("checkpoint", None)
    for key in TIMING:
        res["final"].pop(key)
    return json.dumps(res, sort_keys=True)


def test_preempted_run_checkpoints_there_and_resumes_exactly_on_another_topology(tmp_path, monkeypatch):
    """A preemption notice agreed on after block 2 (``preemption_point`` true there): the run
    saves that block although --checkpoint_every=3 would not, and stops with a message saying
    where and how to resume. The checkpoint claims 2 processes with 4 devices; resumed here (1
    process, 1 device) the run says so and ends with the uninterrupted results."""
    exp = build(ExperimentConfig(**SMALL))
    reference = comparable(run_experiment(exp, lambda m: None))
    monkeypatch.setattr(multihost, "preemption_point", lambda step: step == 2)
    monkeypatch.setattr(checkpoint_lib, "topology", lambda: {"processes": 2, "devices": 4, "platform": "cpu"})
    workdir = str(tmp_path / "w")
    with pytest.raises(
        multihost.Preempted,
        match=rf"every process stopped after round 2; restart every process with "
        rf"the same command to resume from {workdir} after round 2$",
    ):
        run_experiment(exp, lambda m: None, workdir=workdir, checkpoint_every=3)
    monkeypatch.undo()
    said = []
    resumed = run_experiment(exp, said.append, workdir=workdir, checkpoint_every=3)
    assert resumed["checkpoint"]["resumed_after_blocks"] == 2
    notice = [m for m in said if m.startswith("notice:")]
    assert notice == [
        "notice: the checkpoint was written on 2 process(es) with 4 cpu device(s) in all, this run has "
        "1 process(es) with 1 cpu device(s) in all: the remaining rounds split the cohort over these "
        "devices, so sums over devices may round differently from an uninterrupted run in the last bits"
    ]
    assert comparable(resumed) == reference
    assert checkpoint_lib.newest_round(workdir) == 5


def test_resume_hint_names_the_newest_committed_checkpoint(tmp_path):
    assert "without --workdir the run cannot resume" in checkpoint_lib.resume_hint(None)
    assert checkpoint_lib.resume_hint(str(tmp_path)) == (
        f"{tmp_path} holds no checkpoint yet: restart every process with the same command to start the run again"
    )
    for step, round_ in ((2, 4), (3, 6)):
        os.makedirs(tmp_path / "checkpoints" / str(step) / "meta")
        checkpoint_lib.write_json_atomic(
            str(tmp_path / "checkpoints" / str(step) / "meta" / "metadata"), {"round": round_}
        )
    os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1")  # uncommitted: ignored
    os.makedirs(tmp_path / "checkpoints" / "5")  # unreadable: the one before counts
    assert checkpoint_lib.resume_hint(str(tmp_path)).endswith(f"resume from {tmp_path} after round 6")


# ---- the supervisor's relay, with stand-in workers (no JAX in them) --------------------------

NATIVE_E = "E1128 07:26:02.160665   25650 coordination_service_agent.cc:289] Polled an error from coordination service"
FATAL = (
    "F1128 07:26:02.161322   25661 client.h:80] Terminating process because the JAX distributed service detected "
    "fatal errors. absl::Status: UNAVAILABLE: Task 1 heartbeat timeout.\n*** Check failure stack trace: ***\n"
    "    @     0x7f9042440634  absl::log_internal::LogMessage::SendToLog()\nFatal Python error: Aborted\n"
)


@pytest.mark.parametrize(
    "script, status, said",
    [
        # JAX's abort: the native lines before it and its dump are dropped, one line says what happened
        (
            f"say('working'); say({NATIVE_E!r}); say({FATAL!r}); os.abort()",
            multihost.EXIT_RESUMABLE,
            ["working", f"{multihost.LOST}: process 1 stopped sending heartbeats (seen by process 3); HINT"],
        ),
        # the worker said it first (then JAX aborted it): no second line
        (
            f"say({multihost.LOST + ': x'!r}); say({FATAL!r}); os.abort()",
            multihost.EXIT_RESUMABLE,
            [f"{multihost.LOST}: x"],
        ),
        (f"say({multihost.LOST + ': x'!r}); os._exit(75)", multihost.EXIT_RESUMABLE, [f"{multihost.LOST}: x"]),
        # killed by another signal: said so, status 128 + signal
        (
            "say('working'); os.kill(os.getpid(), signal.SIGKILL)",
            128 + 9,
            ["working", "error: process 3: the worker was killed by SIGKILL; HINT"],
        ),
        # anything else is relayed as it is, native lines included, and the status passed on
        (f"say({NATIVE_E!r}); say('done'); sys.exit(2)", 2, [NATIVE_E, "done"]),
    ],
    ids=["jax_abort", "said_then_aborted", "said_then_exited", "killed", "relayed"],
)
def test_supervisor_relays_output_and_summarizes_an_abort(capfd, script, status, said):
    worker = [
        sys.executable,
        "-c",
        "import os, signal, sys\ndef say(text): sys.stderr.write(text + '\\n'); sys.stderr.flush()\n" + script,
    ]
    assert multihost.supervise(lambda: "HINT", 3, command=worker) == status
    out, err = capfd.readouterr()
    assert err.splitlines() == said
