"""Small builders shared by the tests: tiny linear models, hand-made federated data, and real
processes (subprocess environments with a given CPU device count, free ports, multi-process runs
of the runner joined by ``jax.distributed`` over 127.0.0.1)."""

from __future__ import annotations

import os
import random
import socket
import subprocess

import jax.numpy as jnp
import numpy as np

from fljax.client import Batch
from fljax.data.federated import FederatedData

SMALL_RUN = dict(
    dataset="mnist5k",
    num_clients=20,
    clients_per_round=20,
    num_malicious=4,
    local_steps=2,
    rounds=12,  # compiling is most of a run this size; 12 rounds keep each test's margin (in its docstring)
    eval_every=12,
    aggregator="mean",
    execution="sequential",
)
"""The attack tests' small end-to-end run: mnist5k, 20 clients of which 4 malicious, 12 rounds."""


def final_accuracy(**overrides) -> float:
    """The runner's final test accuracy of ``SMALL_RUN`` with ``overrides``."""
    from experiments.run import run_experiment
    from fljax.experiment import ExperimentConfig, build

    config = ExperimentConfig(**dict(SMALL_RUN, **overrides))
    return run_experiment(build(config), log=lambda m: None)["final"]["accuracy"]


def squared_loss(params, batch: Batch, key=None):
    """0.5 * mean over real examples of (x . w - y)^2 for a linear model ``{"w": [d]}``."""
    err = batch.x @ params["w"] - batch.y
    m = batch.mask.astype(err.dtype)
    return 0.5 * jnp.sum(m * err**2) / jnp.maximum(jnp.sum(m), 1.0)


def make_data(client_rows: list[list[int]], x, y, x_test=None, y_test=None, pad_index: int = 0) -> FederatedData:
    """``FederatedData`` whose client c holds examples ``client_rows[c]``, padded with ``pad_index``."""
    width = max(len(r) for r in client_rows)
    table = np.full((len(client_rows), width), pad_index, np.int32)
    for c, r in enumerate(client_rows):
        table[c, : len(r)] = r
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    return FederatedData(
        x,
        y,
        jnp.asarray(table),
        jnp.asarray([len(r) for r in client_rows], jnp.int32),
        x if x_test is None else x_test,
        y if y_test is None else y_test,
    )


_JITTED_UPDATES = {}


def aggregate_once(rule, x, weights=None, key=0):
    """One jitted ``rule.update`` on ``x [n, d]`` from the rule's initial state (compiled once per
    rule object): ``(aggregate, info)`` as numpy. ``weights`` default to ones, the key to
    ``PRNGKey(key)``, client ids to ``0..n-1``, params and reference to zeros."""
    import jax

    import fljax

    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    ctx = fljax.AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(key),
        client_ids=jnp.arange(n),
        params=jnp.zeros(d),
        reference=jnp.zeros(d),
    )
    update = _JITTED_UPDATES.setdefault(id(rule), (rule, jax.jit(rule.update)))[1]
    out, _, info = update(x, rule.init(jnp.zeros(d)), ctx)
    return np.asarray(out), jax.tree.map(np.asarray, info)


# ---- real processes -------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int, **extra) -> dict:
    """The environment of a subprocess that sees ``devices`` CPU devices and imports this checkout."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A TCP port free on every local address, chosen at random below the ephemeral range (where
    the kernel never hands out ports by itself, so an outgoing connection cannot take it between
    this check and the coordinator's bind; another test picking the same one is a 1-in-10,000
    chance, and a port in use is skipped)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        try:
            for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")):
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("free_port: no free port found")


_STARTED: list = []


def popen(command: list, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` with text pipes for stdout and stderr, remembered for ``kill_leftovers``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    _STARTED.append(proc)
    return proc


def kill_leftovers() -> None:
    """SIGKILLs every process ``popen`` started that still runs (a failed test's), and forgets them."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _STARTED.clear()


def start_processes(command: list, num_processes: int, devices: int, *, port=None, extra=lambda i: [], env=None):
    """Starts ``command`` (e.g. ``[python, -m, experiments.run, ...flags]``) as process 0..n-1 of
    one ``--distributed`` run over 127.0.0.1, each with ``devices`` CPU devices; returns the
    ``Popen`` objects (stdout and stderr as text pipes)."""
    port = port or free_port()
    dist = ["--distributed", f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
    env = subprocess_env(devices, **(env or {}))
    return [
        popen(command + dist + [f"--process_id={i}"] + list(extra(i)), cwd=ROOT, env=env) for i in range(num_processes)
    ]


def finish(procs, timeout: float = 300) -> list:
    """Waits for every process; ``[(returncode, stdout, stderr)]``."""
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
