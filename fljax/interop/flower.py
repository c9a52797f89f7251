"""Any fljax rule as the aggregation of a Flower server (``flwr.serverapp.strategy``).

Needs ``pip install fljax[flower]`` (flwr >= 1.21, the Message API; tested with 1.21.0, 1.30.0 and
1.42.0, and in a real SuperLink / SuperNode deployment with 1.42.0)::

    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    import fljax
    from fljax.interop.flower import FljaxStrategy

    app = ServerApp()


    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FljaxStrategy(fljax.aggregators.trimmed_mean(num_byzantine=1), min_available_nodes=5)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=10)

``FljaxStrategy`` is Flower's ``FedAvg`` (same sampling, messages, keys, evaluation) with its
model aggregation replaced: the clients reply with their trained models, as for FedAvg; the
strategy turns them into updates (reply minus the model it sent), flattens them once into an
``[n, d]`` matrix, runs the jitted fljax rule, and adds the aggregate to the global model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fljax.interop import numpy as fnp
from fljax.interop.layout import Layout
from fljax.interop.session import Session
from fljax.types import Aggregator


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as a dict name -> NumPy array (one deserialization per array)."""
    return {name: array.numpy() for name, array in record.items()}


class FljaxStrategy(FedAvg):
    """Flower's FedAvg with the model aggregation done by any ``fljax.Aggregator``.

    Each training round:

    1. the replies without an error are checked: exactly one ``ArrayRecord`` with the names and
       shapes of the model sent, one ``MetricRecord`` holding ``weighted_by_key``; a reply that
       fails is dropped (logged, counted in ``fljax-dropped``) instead of stopping the server;
       if fewer replies remain than the rule needs (Krum's ``n > 2f + 2``), the round is skipped
       and the model kept (logged, ``fljax-skipped``); a cohort too small as configured raises
       in ``configure_train``, before anything is sent;
    2. updates ``x_i = reply_i - global`` are packed into one ``[n, d]`` float32 matrix;
    3. the rule runs jitted through a ``fljax.interop.Session``, which keeps its state across
       rounds and maps Flower's node ids to stable population ids ``0, 1, ...`` in order of
       first appearance (the rows of FoolsGold's / AFA's / CONTRA's per-client state);
       ``context.weights`` are the replies' example counts (a non-finite or negative count
       counts as 0), ``context.params`` the flat global model;
    4. the new global model is ``global + aggregate``, cast back to each array's dtype
       (integer arrays such as BatchNorm's ``num_batches_tracked`` rounded).

    The round's ``MetricRecord`` holds Flower's weighted average of the clients' metrics plus
    ``fljax-node-ids`` and ``fljax-weights`` (each aggregated client's effective weight in the
    aggregate, summing to 1), ``fljax-excluded`` (how many got weight 0) and ``fljax-dropped``.

    Args:
      aggregator: any ``fljax.Aggregator``, including ``with_preaggregation(rule, ...)``.
      seed: seed of the rule's randomness (the r-th aggregation, from 0, uses ``fold_in(PRNGKey(seed), r)``).
      reference_fn: for rules with ``needs_reference`` (FLTrust):
        ``reference_fn(server_round, arrays) -> ArrayRecord``, the server's model after training
        on its own root data from ``arrays``; its update is ``context.reference``.
      **kwargs: ``FedAvg``'s arguments (``fraction_train``, ``min_available_nodes``,
        ``weighted_by_key``, ...).

    Attributes:
      session: the ``Session`` (``session.state``: the rule's state; ``session.population``:
        node id -> population id).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        seed: int = 0,
        reference_fn: Optional[Callable[[int, ArrayRecord], ArrayRecord]] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.session = Session(aggregator, seed=seed)
        if aggregator.needs_reference and reference_fn is None:
            raise ValueError(
                "FljaxStrategy: the rule reads the server's reference update (e.g. FLTrust): "
                "pass reference_fn(server_round, arrays) -> ArrayRecord"
            )
        self.reference_fn = reference_fn
        self._sent: Optional[tuple[int, ArrayRecord]] = None

    def summary(self) -> None:
        log(INFO, "\t├──> fljax rule: %s", self.session.aggregator.update.__qualname__.split(".")[0])
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's, remembering the model sent (the replies' updates are relative to it); a cohort
        too small for the rule is a configuration error, raised before anything is sent."""
        self._sent = (server_round, arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if messages:
            try:
                self.session.aggregator.requirement(len(messages))
            except ValueError as err:
                raise ValueError(
                    f"{err} [FljaxStrategy samples {len(messages)} nodes in round {server_round}: "
                    "raise fraction_train or min_train_nodes]"
                ) from None
        return messages

    def _usable(self, msg: Message, layout: Layout) -> tuple[Optional[dict], float, str]:
        """``(arrays, weight, why_not)`` of one reply; ``arrays`` is None when it cannot be used."""
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return None, 0.0, "expected exactly one ArrayRecord and one MetricRecord"
        weight = next(iter(content.metric_records.values())).get(self.weighted_by_key)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return None, 0.0, f"MetricRecord lacks a numeric {self.weighted_by_key!r}"
        try:
            arrays = record_to_numpy(next(iter(content.array_records.values())))
            layout.leaves(arrays, "reply")
        except (ValueError, TypeError) as err:
            return None, 0.0, str(err)
        return arrays, float(weight), ""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Aggregates the replies' models with the fljax rule (see the class docstring)."""
        if self._sent is None or self._sent[0] != server_round:
            raise ValueError(
                f"FljaxStrategy: aggregate_train of round {server_round} needs the model that "
                "configure_train sent in that round"
            )
        replies = list(replies)
        valid = [msg for msg in replies if not msg.has_error()]
        for msg in replies:
            if msg.has_error():
                log(INFO, "FljaxStrategy: error in the reply of node %d: %s", msg.metadata.src_node_id, msg.error)
        log(INFO, "aggregate_train: Received %s results and %s failures", len(valid), len(replies) - len(valid))
        if not valid:
            return None, None
        global_arrays = record_to_numpy(self._sent[1])
        layout = Layout.of(global_arrays)
        kept, weights, node_ids, dropped = [], [], [], 0
        for msg in valid:
            node = msg.metadata.src_node_id
            arrays, weight, why = self._usable(msg, layout)
            if arrays is None:
                log(WARNING, "FljaxStrategy: dropped the reply of node %d: %s", node, why)
                dropped += 1
                continue
            if not math.isfinite(weight) or weight < 0:
                log(WARNING, "FljaxStrategy: node %d reported %s=%r, counted as 0", node, self.weighted_by_key, weight)
                weight = 0.0
            kept.append((msg, arrays))
            weights.append(weight)
            node_ids.append(node)
        if not kept:
            return None, MetricRecord({"fljax-dropped": dropped})
        try:
            self.session.aggregator.requirement(len(kept))
        except ValueError as err:  # replies lost on the way: keep the model rather than stop the server
            log(WARNING, "FljaxStrategy: round %d skipped, the global model is unchanged: %s", server_round, err)
            return None, MetricRecord(
                {"fljax-node-ids": [int(node) for node in node_ids], "fljax-dropped": dropped, "fljax-skipped": 1}
            )

        # the global model at its own precision (float32 models stay float32), updates in JAX's float
        base = fnp.pack([global_arrays], layout, np.result_type(np.float32, *layout.dtypes), where="global model")[0]
        updates = fnp.pack([arrays for _, arrays in kept], layout, minus=base, where="reply")
        reference = None
        if self.session.aggregator.needs_reference:
            own = record_to_numpy(self.reference_fn(server_round, self._sent[1]))
            reference = fnp.pack([own], layout, minus=base, where="reference_fn's model")[0]
        aggregate, info = self.session(updates, weights, node_ids, params=base, reference=reference)
        new = fnp.unpack(base + np.asarray(aggregate).astype(base.dtype), layout)
        arrays = ArrayRecord({name: Array(a) for name, a in new.items()})

        effective = [float(w) for w in info["weights"]]
        excluded = [node for node, w in zip(node_ids, effective) if w == 0.0]
        if excluded:
            log(INFO, "FljaxStrategy: round %d excluded nodes %s", server_round, excluded)
        contents = [msg.content for (msg, _), w in zip(kept, weights) if w > 0]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else MetricRecord()
        metrics["fljax-node-ids"] = [int(node) for node in node_ids]
        metrics["fljax-weights"] = effective
        metrics["fljax-excluded"] = len(excluded)
        metrics["fljax-dropped"] = dropped
        return arrays, metrics
