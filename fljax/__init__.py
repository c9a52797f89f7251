"""fljax: poisoning attacks and robust aggregation for federated learning, in JAX.

Client updates, attacks and aggregation rules are pure functions, so a whole federated round
is one jit-compiled XLA program and a whole run is one ``lax.scan``.
"""

from fljax import aggregators, attacks, client, data, metrics, models, momentum, precision, sharding
from fljax.api import aggregate, apply_attack
from fljax.client import Batch, ClientData, classification_loss, fedavg, fedsgd, use_cpu_cores
from fljax.data import FederatedData, federate
from fljax.metrics import make_evaluate
from fljax.rounds import Round, make_round
from fljax.train import History, Train, TrainState, make_train
from fljax.types import AggregationContext, Aggregator, AttackContext, DataAttack, ModelAttack, ServerState

__version__ = "0.1.0"


def __getattr__(name):
    if name == "interop":  # imported on first use: its bridges need PyTorch or Flower
        import importlib

        return importlib.import_module("fljax.interop")
    raise AttributeError(f"module 'fljax' has no attribute {name!r}")


__all__ = [
    "AggregationContext",
    "Aggregator",
    "AttackContext",
    "Batch",
    "ClientData",
    "DataAttack",
    "FederatedData",
    "History",
    "ModelAttack",
    "Round",
    "ServerState",
    "Train",
    "TrainState",
    "aggregate",
    "aggregators",
    "apply_attack",
    "attacks",
    "classification_loss",
    "client",
    "data",
    "fedavg",
    "federate",
    "fedsgd",
    "interop",
    "make_evaluate",
    "make_round",
    "make_train",
    "metrics",
    "models",
    "momentum",
    "precision",
    "sharding",
    "use_cpu_cores",
]
