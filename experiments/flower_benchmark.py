"""What ``fljax.interop.flower.FljaxStrategy`` costs per round next to Flower's own strategies.

    python -m experiments.flower_benchmark                      # ~2 minutes on a 2-core CPU
    python -m experiments.flower_benchmark --clients=10,100 --layers=3072,2048,2048,2048,10

Needs ``pip install fljax[flower]``. For each cohort size in ``--clients``, builds the reply
Messages of ``n`` clients (an MLP of ``--layers``, float32, one ``Array`` per weight and bias,
random example counts) and times ``aggregate_train`` of the server strategy, side by side:

- Flower's ``FedAvg`` / ``FedMedian`` / ``FedTrimmedAvg(beta=0.2)`` / ``Krum`` and
  ``FljaxStrategy`` with fljax's ``mean`` / ``median`` / ``trimmed_mean(beta=0.2)`` / ``krum``
  (the same rules; the largest difference between the two new models is printed, a check that
  they agree), then rules Flower does not ship (FoolsGold, FLAME, NNM + Krum);
- for each fljax strategy, the rule alone (the jitted ``Session`` call on the packed ``[n, d]``
  updates); the last row times the adapter alone, with a rule that returns the first update:
  deserializing and packing the replies, the call, unpacking and serializing the new model.

Figures are medians over ``--repeats`` rounds on fresh replies (building the replies is not
timed); the fljax strategy's first round, which compiles the rule, is reported apart. This is a
script, never a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

import fljax
from experiments.timing import table
from fljax.aggregators import flame, foolsgold, krum, mean, median, nnm, trimmed_mean, with_preaggregation

FLAGS = flags.FLAGS
flags.DEFINE_list("clients", ["10", "100"], "cohort sizes n (replies per round)")
flags.DEFINE_list("layers", ["784", "200", "200", "10"], "MLP widths of the model (784-200-200-10: 199,210 parameters)")
flags.DEFINE_integer("repeats", 7, "timed rounds per strategy (after one untimed warm-up round)")
flags.DEFINE_integer("seed", 0, "seed of the replies")


class _Nodes:
    """The part of a Flower Grid that ``FedAvg.configure_train`` reads: the connected node ids."""

    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def _set_task_identity():
    """Flower >= 1.40 builds Messages from the running task's ids, which a SuperLink sets for a
    ServerApp; set them for this single process (older Flower has no such ids)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        return
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def mlp_model(widths: list[int], rng) -> dict[str, np.ndarray]:
    model = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        model[f"layer{i}.weight"] = (rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32)
        model[f"layer{i}.bias"] = np.zeros(b, np.float32)
    return model


def replies_factory(strategy, model, n, rng):
    """Sends ``model`` with the strategy's ``configure_train`` to n nodes, returns a function
    building fresh replies (the model plus a random update, a random example count)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    node_ids = [int(x) for x in rng.integers(1, 2**62, size=n)]
    sent = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(
            1, ArrayRecord({k: Array(v) for k, v in model.items()}), ConfigRecord(), _Nodes(node_ids)
        )
    }
    updates = [{k: (0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in model.items()} for _ in node_ids]
    counts = rng.integers(10, 1000, size=n)

    def replies():
        return [
            Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({k: Array(model[k] + u[k]) for k in model}),
                        "metrics": MetricRecord({"num-examples": int(c)}),
                    }
                ),
                reply_to=sent[node],
            )
            for node, u, c in zip(node_ids, updates, counts)
        ]

    return replies


def time_strategy(strategy, model, n, seed):
    """``(first round s, median round s, new model)`` of ``strategy.aggregate_train``."""
    replies = replies_factory(strategy, model, n, np.random.default_rng(seed))
    times, out = [], None
    for _ in range(FLAGS.repeats + 1):
        batch = replies()
        start = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, batch)
        times.append(time.perf_counter() - start)
        out = {k: v.numpy() for k, v in arrays.items()}
    return times[0], statistics.median(times[1:]), out


def time_rule_alone(strategy, model, n, seed):
    """Median seconds of the jitted rule on the packed ``[n, d]`` updates (the Session call)."""
    from fljax.interop import numpy as fnp
    from fljax.interop.layout import Layout

    rng = np.random.default_rng(seed)
    layout = Layout.of(model)
    x = fnp.pack([{k: 0.01 * rng.normal(size=v.shape) for k, v in model.items()} for _ in range(n)], layout)
    weights = rng.integers(10, 1000, size=n)
    session, times = strategy.session, []
    ids = list(session.population)[:n] or None
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        out, _ = session(x, weights, ids)
        out.block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_update() -> fljax.Aggregator:
    """A rule that costs nothing: the first client's update. Through ``FljaxStrategy`` it times
    the adapter alone (deserializing and packing the replies, the jitted call, unpacking and
    serializing the new model)."""

    def update(x, state, context):
        return x[0], state, {"weights": jax.nn.one_hot(0, x.shape[0], dtype=x.dtype)}

    return fljax.Aggregator(init=lambda params: (), update=update)


def main(argv):
    del argv
    import flwr
    from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

    from fljax.interop.flower import FljaxStrategy

    _set_task_identity()
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower logs every round at INFO
    widths = [int(w) for w in FLAGS.layers]
    model = mlp_model(widths, np.random.default_rng(FLAGS.seed))
    d = sum(v.size for v in model.values())
    print(
        f"flwr {flwr.__version__}, fljax {fljax.__version__}, jax {jax.__version__} on {jax.default_backend()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); "
        f"model {'-'.join(FLAGS.layers)}: {d:,} parameters in {len(model)} arrays"
    )
    kw = dict(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
    for n in (int(c) for c in FLAGS.clients):
        f = max(1, n // 5)
        pairs = [
            ("mean / FedAvg", FedAvg(**kw), mean()),
            ("median / FedMedian", FedMedian(**kw), median()),
            ("trimmed_mean(beta=0.2) / FedTrimmedAvg", FedTrimmedAvg(beta=0.2, **kw), trimmed_mean(beta=0.2)),
            (f"krum(f={f}) / Krum", Krum(num_malicious_nodes=f, **kw), krum(num_byzantine=f)),
            ("foolsgold", None, foolsgold(num_clients=n)),
            ("flame", None, flame()),
            (f"nnm(f={f}) + krum", None, with_preaggregation(krum(num_byzantine=f), nnm(num_byzantine=f))),
            ("(adapter alone: first update)", None, first_update()),
        ]
        fedavg_s, rows = None, []
        for name, flower_strategy, rule in pairs:
            flower_s, same, agree = "-", "-", "-"
            if flower_strategy is not None:
                _, seconds, flower_model = time_strategy(flower_strategy, model, n, FLAGS.seed)
                fedavg_s = fedavg_s or seconds
                flower_s = seconds
            strategy = FljaxStrategy(rule, **kw)
            first, seconds, fljax_model = time_strategy(strategy, model, n, FLAGS.seed)
            rule_s = time_rule_alone(strategy, model, n, FLAGS.seed)
            if flower_strategy is not None:
                same = f"{seconds / flower_s:.2f}"
                agree = f"{max(np.max(np.abs(fljax_model[k] - flower_model[k])) for k in model):.1e}"
                flower_s = f"{flower_s * 1e3:.1f}"
            rows.append(
                [
                    name,
                    flower_s,
                    f"{seconds * 1e3:.1f}",
                    f"{rule_s * 1e3:.1f}",
                    f"{first:.2f}",
                    same,
                    f"{seconds / fedavg_s:.2f}",
                    agree,
                ]
            )
        print(
            table(
                f"aggregate_train per round, n={n} clients, d={d:,} (ms, medians of {FLAGS.repeats} rounds)",
                [
                    "rule / Flower's",
                    "Flower ms",
                    "fljax ms",
                    "rule alone ms",
                    "fljax 1st s",
                    "x Flower same",
                    "x FedAvg",
                    "max |diff|",
                ],
                rows,
            )
        )


if __name__ == "__main__":
    app.run(main)
