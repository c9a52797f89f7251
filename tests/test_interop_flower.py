"""fljax.interop.flower: any fljax rule as a Flower ServerApp strategy.

In-process tests drive Flower's own strategy loop (``Strategy.start``) through a Grid whose
nodes are Python functions; the deployment test starts a real SuperLink and SuperNodes on
127.0.0.1 (insecure) and runs a Flower App on them with ``flwr run``.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="fljax.interop.flower needs Flower: pip install 'fljax[flower]'")

from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

import fljax  # noqa: E402
from fljax.aggregators import clip, fltrust, foolsgold, krum, mean, median, with_preaggregation  # noqa: E402
from fljax.interop.flower import FljaxStrategy  # noqa: E402

NODES = [2**64 - 11, 7, 2**63 + 5, 123456789, 42]  # Flower's node ids are random uint64
TARGET = np.arange(6, dtype=np.float32).reshape(2, 3)


try:
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # older Flower builds messages without the running task's ids
    TaskIdentity = None


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message constructor reads the running task's ids, which the ServerApp process
    gets from the SuperLink; set them for the in-process tests."""
    if TaskIdentity is None:
        yield
        return
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class LocalGrid(Grid):
    """A Grid whose nodes are one function ``answer(node_id, arrays, server_round) -> content``
    (``arrays``: the model sent, as NumPy; ``None``: no reply); ``sampled`` lists each round's cohort."""

    def __init__(self, answer):
        self.answer, self.sampled = answer, []

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):
        raise NotImplementedError("LocalGrid answers in send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("LocalGrid answers in send_and_receive")

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if train:
            self.sampled.append([m.metadata.dst_node_id for m in train])
        replies = []
        for m in messages:
            if m.metadata.message_type != MessageType.TRAIN:  # evaluation: a count, no model
                replies.append(Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=m))
                continue
            arrays = {k: v.numpy() for k, v in m.content["arrays"].items()}
            content = self.answer(m.metadata.dst_node_id, arrays, m.content["config"]["server-round"])
            if content is not None:  # None: the reply is lost
                replies.append(Message(content, reply_to=m))
        return replies


def reply(arrays: dict, num_examples=10) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        }
    )


def honest_step(node, g):
    """An honest client moves halfway to its target (the TARGET plus a small per-node shift)."""
    return 0.5 * (TARGET + 0.01 * NODES.index(node) - g)


def sign_flipping(attacker):
    def answer(node, arrays, _):
        step = honest_step(node, arrays["w"])
        return reply({"w": arrays["w"] + (-10.0 * step if node == attacker else step)})

    return answer


def run(strategy, answer, initial, rounds):
    grid = LocalGrid(answer)
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}), num_rounds=rounds
    )
    return {k: v.numpy() for k, v in result.arrays.items()}, result.train_metrics_clientapp, grid


def test_median_strategy_follows_the_honest_clients_and_records_who_was_excluded():
    attacker, rounds = NODES[2], 3
    start = {"w": np.zeros((2, 3), np.float32)}
    model, metrics, _ = run(FljaxStrategy(median(), fraction_evaluate=0.0), sign_flipping(attacker), start, rounds)
    g = honest = start["w"]
    for _ in range(rounds):  # by hand: the coordinate-wise median of the five updates
        g = g + np.median(np.stack([(-10.0 if n == attacker else 1.0) * honest_step(n, g) for n in NODES]), axis=0)
        honest = honest + np.mean([honest_step(n, honest) for n in NODES if n != attacker], axis=0)
    np.testing.assert_allclose(model["w"], g, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(model["w"] - honest) < 0.01 * np.linalg.norm(honest)
    for r in range(1, rounds + 1):
        weights = dict(zip(metrics[r]["fljax-node-ids"], metrics[r]["fljax-weights"]))
        assert set(weights) == set(NODES) and weights[attacker] == 0.0
        assert abs(sum(weights.values()) - 1.0) < 1e-6 and metrics[r]["fljax-excluded"] >= 1

    fedavg, _, _ = run(FedAvg(fraction_evaluate=0.0), sign_flipping(attacker), start, rounds)
    assert np.linalg.norm(fedavg["w"] - honest) > 50 * np.linalg.norm(model["w"] - honest)


def test_mean_rule_matches_flowers_fedavg_and_weights_by_example_counts():
    counts = dict(zip(NODES, [10, 30, 5, 55, 0]))
    updates = {n: np.full((2, 3), i + 1.0, np.float32) for i, n in enumerate(NODES)}

    def answer(node, arrays, _):
        return reply({"w": arrays["w"] + updates[node]}, num_examples=counts[node])

    start = {"w": np.ones((2, 3), np.float32)}
    model, metrics, _ = run(FljaxStrategy(mean(), fraction_evaluate=0.0), answer, start, 1)
    flower, _, _ = run(FedAvg(fraction_evaluate=0.0), answer, start, 1)
    expected = 1.0 + sum(counts[n] * (i + 1.0) for i, n in enumerate(NODES)) / sum(counts.values())
    np.testing.assert_allclose(model["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(model["w"], flower["w"], rtol=1e-6)
    weights = dict(zip(metrics[1]["fljax-node-ids"], metrics[1]["fljax-weights"]))
    for n in NODES:
        assert weights[n] == pytest.approx(counts[n] / 100)
    assert metrics[1]["fljax-excluded"] == 1  # the node that reported 0 examples


def test_pre_aggregation_clips_each_update_before_the_rule():
    attacker = NODES[1]
    counts = dict(zip(NODES, [10, 20, 30, 40, 50]))

    def answer(node, arrays, _):
        step = honest_step(node, arrays["w"])
        return reply({"w": arrays["w"] + (-10.0 * step if node == attacker else step)}, num_examples=counts[node])

    rule = with_preaggregation(mean(), clip(max_norm=1.0))
    start = {"w": np.full((2, 3), 3.0, np.float32)}  # not zero: the rule must see updates, not models
    model, metrics, _ = run(FljaxStrategy(rule, fraction_evaluate=0.0), answer, start, 1)
    updates = {n: (-10.0 if n == attacker else 1.0) * honest_step(n, start["w"]) for n in NODES}
    clipped = {n: u / max(1.0, np.linalg.norm(u)) for n, u in updates.items()}  # by hand
    expected = start["w"] + sum(counts[n] * clipped[n] for n in NODES) / sum(counts.values())
    np.testing.assert_allclose(model["w"], expected, rtol=1e-5)
    weights = dict(zip(metrics[1]["fljax-node-ids"], metrics[1]["fljax-weights"]))
    # per original client: count x clip factor, normalized (the attacker's update is the longest)
    factors = {n: counts[n] / max(1.0, np.linalg.norm(updates[n])) for n in NODES}
    for n in NODES:
        assert weights[n] == pytest.approx(factors[n] / sum(factors.values()), rel=1e-5)
    assert min(weights, key=weights.get) == attacker


def test_stateful_rule_state_follows_node_ids_across_sampled_cohorts():
    random.seed(0)  # Flower samples the cohort with the random module
    rng = np.random.default_rng(0)
    sent = {(n, r): rng.normal(size=(2, 3)).astype(np.float32) for n in NODES for r in range(1, 5)}

    def answer(node, arrays, r):
        return reply({"w": arrays["w"] + sent[node, r]})

    strategy = FljaxStrategy(foolsgold(num_clients=len(NODES)), fraction_train=0.6, fraction_evaluate=0.0)
    _, metrics, grid = run(strategy, answer, {"w": np.zeros((2, 3), np.float32)}, 4)
    assert all(len(c) == 3 for c in grid.sampled) and len({tuple(sorted(c)) for c in grid.sampled}) > 1
    population = strategy.session.population
    assert sorted(population.values()) == list(range(len(population)))
    for node, row in population.items():  # FoolsGold's history row of a node: the sum of its updates
        total = sum(sent[node, r].ravel() for r, cohort in enumerate(grid.sampled, 1) if node in cohort)
        np.testing.assert_allclose(np.asarray(strategy.session.state.history)[row], total, rtol=1e-5, atol=1e-6)
    assert set(population) == {n for c in grid.sampled for n in c}
    assert [len(metrics[r]["fljax-weights"]) for r in range(1, 5)] == [3, 3, 3, 3]


def test_malformed_replies_are_dropped_and_bad_counts_count_as_zero():
    good, nan_count, bad_shape = NODES[0], NODES[1], NODES[2]

    def answer(node, arrays, _):
        if node == bad_shape:
            return reply({"w": np.zeros((3, 3), np.float32)})
        if node == nan_count:
            return reply({"w": arrays["w"] + 100.0}, num_examples=float("nan"))
        return reply({"w": arrays["w"] + (1.0 if node == good else 2.0)}, num_examples=10)

    model, metrics, _ = run(
        FljaxStrategy(mean(), fraction_evaluate=0.0), answer, {"w": np.zeros((2, 3), np.float32)}, 1
    )
    np.testing.assert_allclose(model["w"], (1.0 + 2.0 + 2.0) / 3)  # nan_count's update got weight 0
    assert metrics[1]["fljax-dropped"] == 1 and len(metrics[1]["fljax-node-ids"]) == 4
    weights = dict(zip(metrics[1]["fljax-node-ids"], metrics[1]["fljax-weights"]))
    assert weights[nan_count] == 0.0 and bad_shape not in weights


def test_a_nan_model_from_an_attacker_leaves_the_median_finite():
    def answer(node, arrays, _):
        return reply({"w": arrays["w"] + (np.nan if node == NODES[0] else honest_step(node, arrays["w"]))})

    model, metrics, _ = run(
        FljaxStrategy(median(), fraction_evaluate=0.0), answer, {"w": np.zeros((2, 3), np.float32)}, 2
    )
    assert np.all(np.isfinite(model["w"]))
    assert dict(zip(metrics[2]["fljax-node-ids"], metrics[2]["fljax-weights"]))[NODES[0]] == 0.0


def test_integer_and_float64_arrays_keep_their_dtype():
    def answer(node, arrays, _):
        i = NODES.index(node)
        return reply({"w": arrays["w"] + i * 0.25, "count": arrays["count"] + i})

    start = {"w": np.ones(3, np.float64), "count": np.array(7, np.int64)}
    model, _, _ = run(FljaxStrategy(median(), fraction_evaluate=0.0), answer, start, 1)
    assert model["w"].dtype == np.float64 and model["count"].dtype == np.int64 and model["count"].shape == ()
    np.testing.assert_allclose(model["w"], 1.5)
    assert model["count"] == 9


def test_fltrust_reads_the_servers_reference_model():
    rng = np.random.default_rng(5)
    updates = {n: rng.normal(size=4).astype(np.float32) for n in NODES}
    own = np.array([1.0, 0.5, -0.5, 0.0], np.float32)

    def reference_fn(server_round, arrays):
        return ArrayRecord({"w": Array(arrays["w"].numpy() + own)})

    def answer(node, arrays, _):
        return reply({"w": arrays["w"] + updates[node]})

    with pytest.raises(ValueError, match="reference_fn"):
        FljaxStrategy(fltrust())
    strategy = FljaxStrategy(fltrust(), reference_fn=reference_fn, fraction_evaluate=0.0)
    model, metrics, _ = run(strategy, answer, {"w": np.zeros(4, np.float32)}, 1)
    order = metrics[1]["fljax-node-ids"]
    expected = fljax.aggregate(
        fltrust(), jnp.asarray(np.stack([updates[n] for n in order])), reference=jnp.asarray(own)
    )
    np.testing.assert_allclose(model["w"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model["w"], 0.0)


def test_aggregate_train_needs_the_model_sent_this_round():
    with pytest.raises(ValueError, match="configure_train"):
        FljaxStrategy(median()).aggregate_train(1, [])


def test_a_cohort_too_small_for_the_rule_raises_before_sending_and_lost_replies_skip_the_round():
    # targets on a line at 0, 1, 3, 7, 15 (x 0.01): Krum's score (squared distances to the
    # n - f - 2 = 2 nearest others) is smallest for the node at 1, with no tie
    offsets = dict(zip(NODES, [0.0, 0.01, 0.03, 0.07, 0.15]))

    def step(node, g):
        return 0.5 * (TARGET + offsets[node] - g)

    def answer(node, arrays, r):
        if r == 2 and node == NODES[0]:  # this node's reply is lost in round 2: 4 < Krum's 5
            return None
        return reply({"w": arrays["w"] + step(node, arrays["w"])})

    with pytest.raises(ValueError, match=r"krum: needs n > 2f \+ 2.*samples 4 nodes in round 1"):
        run(
            FljaxStrategy(krum(num_byzantine=1), fraction_train=0.8, fraction_evaluate=0.0),
            answer,
            {"w": np.zeros((2, 3), np.float32)},
            1,
        )
    model, metrics, _ = run(
        FljaxStrategy(krum(num_byzantine=1), fraction_evaluate=0.0), answer, {"w": np.zeros((2, 3), np.float32)}, 3
    )
    assert metrics[2]["fljax-skipped"] == 1 and len(metrics[2]["fljax-node-ids"]) == 4
    assert "fljax-skipped" not in metrics[1] and "fljax-skipped" not in metrics[3]
    g = np.zeros((2, 3))
    for _ in (1, 3):  # round 2 kept the model
        g = g + step(NODES[1], g)
    np.testing.assert_allclose(model["w"], g, rtol=1e-5)
    for r in (1, 3):
        assert dict(zip(metrics[r]["fljax-node-ids"], metrics[r]["fljax-weights"]))[NODES[1]] == 1.0


# ---------------------------------------------------------------------------- a real Flower deployment

APP_PYPROJECT = """\
[project]
name = "fljax-flower-test"
version = "1.0.0"
description = "fljax's median against Flower's FedAvg under a sign-flipping client"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fljax"

[tool.flwr.app.components]
serverapp = "sign_flip_app:server"
clientapp = "sign_flip_app:client"

[tool.flwr.app.config]
out = "{out}"
fedavg-rounds = {fedavg_rounds}
fljax-rounds = {fljax_rounds}
nodes = {nodes}
"""

APP_MODULE = '''\
"""A Flower App: honest clients step halfway to a target; partition 0 sends -10x its step."""
import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    w = msg.content["arrays"]["w"].numpy()
    step = 0.5 * (np.arange(6, dtype=np.float32).reshape(2, 3) + 0.01 * pid - w)
    new = w + (-10.0 * step if pid == 0 else step)
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(new)}), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    import fljax
    from flwr.serverapp.strategy import FedAvg
    from fljax.interop.flower import FljaxStrategy

    cfg = context.run_config
    start = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))})
    kw = dict(fraction_evaluate=0.0, min_available_nodes=cfg["nodes"], min_train_nodes=cfg["nodes"])
    fedavg = FedAvg(**kw).start(grid=grid, initial_arrays=start, num_rounds=cfg["fedavg-rounds"])
    robust = FljaxStrategy(fljax.aggregators.median(), **kw)
    result = robust.start(grid=grid, initial_arrays=start, num_rounds=cfg["fljax-rounds"])
    with open(cfg["out"], "w") as f:
        json.dump({"fedavg": fedavg.arrays["w"].numpy().tolist(), "fljax": result.arrays["w"].numpy().tolist(),
                   "metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
                   "population": {str(k): v for k, v in robust.session.population.items()}}, f)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def _stop(procs: list) -> None:
    """Ends the process groups the test started (each process and the children it spawned):
    SIGTERM to all, then SIGKILL to any still running after 10 s."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in running:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_deployment(tmp_path: Path, nodes: int, fedavg_rounds: int, fljax_rounds: int) -> tuple[dict, list[int]]:
    """Starts a SuperLink and ``nodes`` SuperNodes on 127.0.0.1 (insecure), runs the App with
    ``flwr run``, stops everything; returns the ServerApp's JSON and the SuperNodes' ids."""
    version = tuple(int(p) for p in flwr.__version__.split(".")[:2])
    if version < (1, 42):  # the SuperLink / SuperNode flags below (one HTTP port each) are 1.42's
        pytest.skip(f"the deployment test drives the flwr 1.42 command line; found flwr {flwr.__version__}")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists():
        pytest.skip(f"Flower's executables are not in {bin_dir}")
    app, home = tmp_path / "app", tmp_path / "flwr-home"
    app.mkdir()
    home.mkdir()
    out = tmp_path / "result.json"
    (app / "pyproject.toml").write_text(
        APP_PYPROJECT.format(out=out, fedavg_rounds=fedavg_rounds, fljax_rounds=fljax_rounds, nodes=nodes)
    )
    (app / "sign_flip_app.py").write_text(APP_MODULE)
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        "JAX_PLATFORMS": "cpu",
    }
    procs, logs = [], []
    try:

        def start(args, log_name):
            log = open(tmp_path / log_name, "w")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
                )
            )

        start(
            [
                str(bin_dir / "flower-superlink"),
                "--insecure",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        _wait_for_port(port, 60)
        for i in range(nodes):
            start(
                [
                    str(bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"partition-id={i}",
                ],
                f"supernode{i}.log",
            )
        done = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(app), "local", "--stream"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.exists(), f"the ServerApp wrote no result:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
    finally:
        _stop(procs)
        for log in logs:
            log.close()
    node_ids = [
        int(re.search(r"SuperNode ID: (\d+)", (tmp_path / f"supernode{i}.log").read_text()).group(1))
        for i in range(nodes)
    ]
    return json.loads(out.read_text()), node_ids


def check_deployment(tmp_path, nodes, fedavg_rounds, fljax_rounds):
    """Partition 0 sends -10x its honest step: fljax's median stays within 1% of Flower's FedAvg
    over the honest clients alone, FedAvg over all is off by more than half the model, and the
    attacker's SuperNode gets weight 0 in every round under its own stable population id."""
    result, node_ids = run_deployment(tmp_path, nodes, fedavg_rounds, fljax_rounds)
    target = np.arange(6, dtype=np.float32).reshape(2, 3)
    honest = [np.zeros((2, 3))]
    for _ in range(max(fedavg_rounds, fljax_rounds)):  # FedAvg over the honest clients alone
        g = honest[-1]
        honest.append(g + np.mean([0.5 * (target + 0.01 * p - g) for p in range(1, nodes)], axis=0))
    fljax_gap = np.linalg.norm(np.array(result["fljax"]) - honest[fljax_rounds])
    fedavg_gap = np.linalg.norm(np.array(result["fedavg"]) - honest[fedavg_rounds])
    assert fljax_gap < 0.01 * np.linalg.norm(honest[fljax_rounds]), result
    assert fedavg_gap > 0.5 * np.linalg.norm(honest[fedavg_rounds]), result
    attacker = node_ids[0]
    assert sorted(int(k) for k in result["population"]) == sorted(node_ids)
    for r in map(str, range(1, fljax_rounds + 1)):
        weights = dict(zip(result["metrics"][r]["fljax-node-ids"], result["metrics"][r]["fljax-weights"]))
        assert set(weights) == set(node_ids) and weights[attacker] == 0.0


def test_real_deployment_median_stays_with_the_honest_clients_while_fedavg_does_not(tmp_path):
    """A SuperLink and 3 SuperNodes on 127.0.0.1: one FedAvg round, two fljax median rounds."""
    check_deployment(tmp_path, nodes=3, fedavg_rounds=1, fljax_rounds=2)


@pytest.mark.slow
def test_real_deployment_five_supernodes_three_rounds_each(tmp_path):
    check_deployment(tmp_path, nodes=5, fedavg_rounds=3, fljax_rounds=3)
