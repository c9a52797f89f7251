"""fljax.allocator: the restart under tcmalloc happens exactly when it should, with the same command line."""

import os
import subprocess
import sys

import pytest

from fljax import allocator


class Exec(Exception):
    """Raised by the stand-in for os.execve."""


@pytest.fixture
def execve(monkeypatch):
    """Records os.execve's arguments instead of replacing the test process."""
    calls = []

    def fake(path, argv, env):
        calls.append((path, argv, env))
        raise Exec

    monkeypatch.setattr(os, "execve", fake)
    monkeypatch.delenv(allocator.SWITCH, raising=False)
    monkeypatch.delenv("FLJAX_TCMALLOC_RESTARTED", raising=False)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "experiments.run", "--rounds=3"])
    monkeypatch.setattr(sys, "platform", "linux")
    return calls


def test_restarts_the_same_command_line_with_tcmalloc_preloaded(execve, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    with pytest.raises(Exec):
        allocator.restart_with_tcmalloc()
    ((path, argv, env),) = execve
    assert path == sys.executable and argv == [sys.executable, "-m", "experiments.run", "--rounds=3"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"  # the user's preloads kept, after
    assert env["FLJAX_TCMALLOC_RESTARTED"] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


@pytest.mark.parametrize(
    "case",
    ["switched off", "restarted already", "loaded already", "not installed", "not Linux"],
)
def test_does_nothing_when_it_should_not_restart(execve, monkeypatch, case):
    if case == "switched off":
        monkeypatch.setenv(allocator.SWITCH, "0")
    elif case == "restarted already":  # a preload that failed must not loop
        monkeypatch.setenv("FLJAX_TCMALLOC_RESTARTED", "1")
    elif case == "not Linux":
        monkeypatch.setattr(sys, "platform", "darwin")
    elif case == "loaded already":
        monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    else:
        monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    allocator.restart_with_tcmalloc()
    assert execve == []


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no tcmalloc on this system (libtcmalloc-minimal4)")
def test_a_real_restart_runs_the_program_once_more_under_tcmalloc(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(
        "import sys\n"
        "from fljax import allocator\n"
        "print('start', allocator.tcmalloc_loaded(), flush=True)\n"
        "allocator.restart_with_tcmalloc()\n"
        "print('main', allocator.tcmalloc_loaded(), sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (allocator.SWITCH, "LD_PRELOAD")}
    out = subprocess.run([sys.executable, str(script), "a", "b"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["start False", "start True", "main True ['a', 'b']"], out.stderr
    off = subprocess.run(
        [sys.executable, str(script)], env={**env, allocator.SWITCH: "0"}, capture_output=True, text=True, check=True
    )
    assert off.stdout.splitlines() == ["start False", "main False []"]
