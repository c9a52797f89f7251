"""Experiments from a flat config: the bridge between the runner's flags and the library.

``ExperimentConfig`` lists every setting (the runner turns each field into an absl flag of the
same name); ``build(config)`` validates it all before anything is compiled and returns the data,
the model, the round and the run. Hyper-parameters of rules and attacks are passed by name: a
factory argument called ``num_byzantine`` or ``num_selected`` takes the config field of that name.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import typing
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax import models as models_lib
from fljax.client import EXECUTIONS, classification_loss, fedavg, fedsgd
from fljax.data import METHODS, NATURAL_DATASETS, FederatedData, check_name, federate, load
from fljax.metrics import make_evaluate
from fljax.models import Model
from fljax.precision import PRECISIONS, mixed_precision, with_matmul_precision
from fljax.rounds import Round, make_round
from fljax.train import Train, make_train


def _field(default, help: str, **kwargs):
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass
class ExperimentConfig:
    """Every setting of one experiment. The defaults are the README's default experiment: a
    targeted label-flipping attack by 20 of 100 clients on mnist5k against the median."""

    dataset: str = _field("mnist5k", "mnist5k, digits, breast_cancer (embedded); fashion_mnist, mnist (IDX files, else TFDS); "
                                     "cifar10, cifar100, emnist or tfds:<name> (TFDS); femnist, shakespeare (LEAF JSON, "
                                     "natural clients); synthetic:<name> (a random stand-in of that name's shapes)")
    data_dir: Optional[str] = _field(None, "where the data is: TFDS's data directory (default ~/tensorflow_datasets), the "
                                           "four IDX files (fashion_mnist default: /usr/share/datasets/fashion-mnist from "
                                           "apt-get install dataset-fashion-mnist), or LEAF's data directory (train/, test/)")
    model: str = _field("mlp", f"one of {', '.join(models_lib.MODELS)}")
    partition: str = _field("iid", f"one of {', '.join(METHODS)} (natural: the dataset's own writers / roles, for "
                                   f"{', '.join(NATURAL_DATASETS)} and their synthetic stand-ins)")
    dirichlet_alpha: float = _field(0.5, "Dirichlet concentration for --partition=dirichlet (> 0)")
    bias: float = _field(0.5, "Fang et al.'s bias p for --partition=bias, in [0, 1]")
    shards_per_client: int = _field(2, "shards per client for --partition=shards")
    num_clients: int = _field(100, "clients in the population")
    clients_per_round: int = _field(100, "clients sampled each round (1..num_clients)")
    num_malicious: int = _field(20, "malicious clients in the population (ids 0..num_malicious-1)")
    attack: str = _field("label_flip", "attack name (see fljax.attacks)")
    attack_scale: float = _field(10.0, "attack strength: the scale of sign_flip, the std of gaussian, the epsilon of ipm")
    source_class: int = _field(5, "label_flip: the class whose labels are flipped")
    target_class: int = _field(3, "label_flip: the class they are flipped to; backdoor/dba/feature_trigger: target_label")
    data_attack: Optional[str] = _field(None, "data attack combined with the model attack --attack (e.g. --attack=model_replacement --data_attack=backdoor)")
    trigger_size: Optional[int] = _field(None, "backdoor/dba: side of the pixel pattern (default 4)")
    trigger_position: Optional[str] = _field(None, "backdoor/dba: bottom_right (default), bottom_left, top_right, top_left, center or 'row,col'")
    trigger_pattern: Optional[str] = _field(None, "backdoor/dba: square (default) or plus")
    trigger_value: Optional[float] = _field(None, "backdoor/dba: value of the trigger pixels (default 1.0)")
    poison_fraction: Optional[float] = _field(None, "backdoor/dba/feature_trigger: share of the real examples of each malicious batch poisoned (padding never counts), in (0, 1] (default 0.5)")
    num_parts: Optional[int] = _field(None, "dba: local triggers the global trigger is split into (default 4)")
    trigger_features: Optional[str] = _field(None, "feature_trigger: feature indices, e.g. '0,1,2'")
    trigger_values: Optional[str] = _field(None, "feature_trigger: one value or one per feature, e.g. '3' (default: --trigger_percentile)")
    trigger_percentile: Optional[float] = _field(None, "feature_trigger: percentile of each feature's training values (default 99)")
    gamma: Optional[float] = _field(None, "model_replacement/constrain_and_scale/pgd/neurotoxin: boost factor (default n/eta, 1 for pgd/neurotoxin)")
    alpha: Optional[float] = _field(None, "constrain_and_scale: weight of the task loss vs the distance to the global model, in (0, 1] (default 0.7)")
    norm_bound: Optional[float] = _field(None, "pgd: radius of the L2 ball ||w - G|| <= norm_bound (default 1)")
    mask_ratio: Optional[float] = _field(None, "neurotoxin: share of coordinates the attacker may change, in (0, 1] (default 0.95)")
    objective: Optional[str] = _field(None, "adaptive: untargeted (default), deviation, or targeted (with --data_attack: "
                                            "the attacker's loss on its own triggered examples after the server step)")
    constraint: Optional[str] = _field(None, "adaptive: max_norm (default), distance or none")
    attack_steps: Optional[int] = _field(None, "adaptive: optimisation steps (default 50)")
    attack_lr: Optional[float] = _field(None, "adaptive: step size as a fraction of the constraint radius (default 0.25)")
    init_point: Optional[str] = _field(None, "adaptive: best (default), alie, ipm, negative_mean or own")
    attack_knowledge: Optional[str] = _field(None, "full or partial: which benign updates a model attack's statistics come from (honest ones, or the attackers' own; default full)")
    attack_colluding: Optional[bool] = _field(None, "fang_krum / fang_trim: identical (true) or distinct per-attacker (false) crafted updates (default: as in the paper)")
    attack_direction: Optional[str] = _field(None, "min_max / min_sum perturbation: unit_vec, sign or std (default unit_vec)")
    alie_z: Optional[float] = _field(None, "alie: fixed z (std devs from the mean; default: the paper's z from n and the round's f)")
    fang_b: Optional[float] = _field(None, "fang_trim: interval factor b (> 1, default 2)")
    mimic_choice: Optional[str] = _field(None, "mimic: honest client copied, max_variance or first (default max_variance)")
    gamma_init: Optional[float] = _field(None, "min_max / min_sum: first gamma of the halving search (> 0, default 10)")
    attack_start_round: int = _field(0, "the attack acts from this round on (0-based); before, malicious clients behave honestly")
    attack_every: int = _field(1, "the attack acts every k rounds from --attack_start_round")
    attack_single_shot: bool = _field(False, "the attack acts in --attack_start_round only (Bagdasaryan et al.'s single shot)")
    continuous_data_poisoning: bool = _field(False, "with an attack schedule and --data_attack: keep poisoning the malicious "
                                                    "clients' data in every round (the schedule then gates the model attack "
                                                    "and the attack's local training only)")
    aggregator: str = _field("median", "aggregation rule (see fljax.aggregators)")
    num_byzantine: Optional[int] = _field(None, "f the rule tolerates (default: num_malicious scaled to clients_per_round)")
    num_selected: Optional[int] = _field(None, "multi_krum: updates averaged (default n - f)")
    kappa: Optional[float] = _field(None, "foolsgold: confidence kappa of the logit re-weighting (> 0, default 1)")
    feature_importance: Optional[bool] = _field(None, "foolsgold: weight history similarity by |global params| (default false)")
    xi: Optional[float] = _field(None, "afa: initial slack xi_0 of the median +/- xi*std thresholds (>= 0, default 2)")
    delta_xi: Optional[float] = _field(None, "afa: slack added to xi after each filtering pass (>= 0, default 0.5)")
    prior_alpha: Optional[float] = _field(None, "afa: alpha_0 of each client's Beta reputation prior (> 0, default 3)")
    prior_beta: Optional[float] = _field(None, "afa: beta_0 of each client's Beta reputation prior (> 0, default 3)")
    block_threshold: Optional[float] = _field(None, "afa: block a client when P(p_good > 0.5) < this, in [0, 1) (default 0.05)")
    top_k: Optional[int] = _field(None, "contra: k of the top-k mean cosine similarity (default max(1, num_byzantine))")
    similarity_threshold: Optional[float] = _field(None, "contra: tau, top-k similarity above which reputation falls, in [0, 1] (default 0.5)")
    reputation_delta: Optional[float] = _field(None, "contra: reputation change per round, in (0, 1] (default 0.1)")
    noise_lambda: Optional[float] = _field(None, "flame: Gaussian noise std as a multiple of the median norm (>= 0, default 0.001)")
    min_cluster_size: Optional[int] = _field(None, "flame: admitted majority cluster's least size, n//2+1..n (default n//2+1)")
    num_iterations: Optional[int] = _field(None, "iterations of an iterative rule (cluster_filter: 2-means Lloyd steps, default 10; centered_clipping: L, default 1; rfa: Weiszfeld steps T, default 3; dnc: subsampling passes, default 5)")
    pre_aggregation: Optional[str] = _field(None, "comma list of pre-aggregations applied in order before --aggregator: bucketing, nnm, clip (e.g. bucketing,nnm)")
    max_norm: Optional[float] = _field(None, "norm_clipping / weak_dp / clip pre-aggregation: clipping norm M (> 0, required by them)")
    noise_std: Optional[float] = _field(None, "weak_dp: std of the Gaussian noise added to the aggregate (>= 0, required)")
    clip_radius: Optional[float] = _field(None, "centered_clipping: clipping radius tau around the last aggregate (> 0, required)")
    bucket_size: Optional[int] = _field(None, "bucketing pre-aggregation: updates averaged per bucket s (>= 1, default 2)")
    nu: Optional[float] = _field(None, "geometric_median / rfa: Weiszfeld smoothing nu (> 0, default 1e-6)")
    tol: Optional[float] = _field(None, "geometric_median: relative step tolerance of the Weiszfeld loop (> 0, default 1e-5)")
    max_iter: Optional[int] = _field(None, "geometric_median: Weiszfeld iteration cap (>= 1, default 100)")
    subsample_dim: Optional[int] = _field(None, "dnc: coordinates b sampled per pass (>= 1, capped at d, default 10000)")
    filter_frac: Optional[float] = _field(None, "dnc: filtering fraction c, each pass removes floor(c*f) updates (> 0, default 1)")
    norm_lower_bound: Optional[float] = _field(None, "signguard: lower bound L of ||x_i|| / median norm (> 0, default 0.1)")
    norm_upper_bound: Optional[float] = _field(None, "signguard: upper bound R of ||x_i|| / median norm (> L, default 3)")
    coordinate_fraction: Optional[float] = _field(None, "signguard: fraction of coordinates for the sign statistics, in (0, 1] (default 0.1)")
    learning_threshold: Optional[int] = _field(None, "rlr: sign-agreement threshold theta, in 1..clients_per_round (required)")
    protocol: str = _field("fedavg", "fedavg (local steps) or fedsgd (one full-batch gradient)")
    rounds: int = _field(30, "federated rounds")
    local_steps: Optional[int] = _field(None, "fedavg local steps per round (overrides local_epochs when set)")
    local_epochs: Optional[int] = _field(2, "fedavg local epochs per round")
    batch_size: int = _field(32, "local batch size")
    client_lr: float = _field(0.3, "client SGD learning rate")
    client_momentum: float = _field(0.0, "client SGD momentum")
    server_lr: float = _field(1.0, "server SGD learning rate (1 = FedAvg)")
    server_momentum: float = _field(0.0, "server SGD momentum (FedAvgM)")
    seed: int = _field(0, "PRNG seed of the partition, the model init and the run")
    eval_every: int = _field(5, "evaluate every k rounds (and after the last)")
    execution: str = _field("auto", f"client execution, one of {', '.join(EXECUTIONS)}")
    chunk_size: int = _field(8, "clients per chunk for --execution=chunked")
    shard_clients: bool = _field(False, "split each round's cohort over all visible devices (every process's with --distributed); a cohort that is not a multiple of the device count is padded")
    precision: str = _field("default", f"matmul precision of client training, one of {', '.join(PRECISIONS)} (default: the backend's own)")
    mixed_precision: bool = _field(False, "client forward/backward in bfloat16 with float32 master params and float32 updates")


class Experiment(NamedTuple):
    config: ExperimentConfig
    data: FederatedData
    model: Model
    round: Round
    train: Train
    num_classes: int


def aggregator_names() -> list[str]:
    return sorted(aggregators_lib.REGISTRY)


def attack_names() -> list[str]:
    return sorted(set(attacks_lib.DATA_ATTACKS) | set(attacks_lib.MODEL_ATTACKS))


def effective_num_byzantine(config: ExperimentConfig) -> int:
    """``--num_byzantine``, or by default the expected malicious clients per round:
    ``round(num_malicious * clients_per_round / num_clients)``."""
    if config.num_byzantine is not None:
        return config.num_byzantine
    return int(round(config.num_malicious * config.clients_per_round / config.num_clients))


def _call_with_config(what: str, name: str, factory: Callable, values: dict[str, Any]):
    """Calls ``factory`` with the config values named like its parameters (None = its default)."""
    params = inspect.signature(factory).parameters
    kwargs = {k: values[k] for k in params if k in values and values[k] is not None}
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(ExperimentConfig)}
        detail = "; ".join(f"--{m}" + (f" ({helps[m]})" if helps.get(m) else "") for m in missing)
        raise ValueError(f"{what} {name}: missing setting(s) {', '.join('--' + m for m in missing)}: "
                         f"{name} has no default for them, so they must be given: {detail}")
    return factory(**kwargs)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)"}


def check_types(config) -> None:
    """Every field holds the type its annotation declares (``Optional[X]``: X or None): a
    string where a number is due, a bool where an integer is due, a float where an integer is
    due, a NaN or an infinity anywhere is reported by name before any comparison could raise
    ``TypeError``. Fields with other annotations are left to their own checks."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        kind, value = hints.get(field.name), getattr(config, field.name)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = type(None) in typing.get_args(kind)
        base = args[0] if len(args) == 1 else (kind if not typing.get_args(kind) else None)
        if base not in _TYPE_NAMES:
            continue
        expected = _TYPE_NAMES[base] + (" or unset (None)" if optional else "")
        if value is None:
            _check(optional, f"--{field.name} must be {expected}, got None")
            continue
        if base is bool:
            ok = isinstance(value, bool)
        elif base is int:
            ok = _is_int(value)
        elif base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            expected = "a finite number" + (" or unset (None)" if optional else "")
        else:
            ok = isinstance(value, str)
        _check(ok, f"--{field.name} must be {expected}, got {value!r} ({type(value).__name__})")


def validate(config: ExperimentConfig) -> None:
    """Checks every setting that needs no data; raises ``ValueError`` naming the flag."""
    c = config
    check_types(c)
    for name in ("num_clients", "clients_per_round", "rounds", "batch_size", "eval_every", "chunk_size"):
        v = getattr(c, name)
        _check(_is_int(v) and v >= 1, f"--{name} must be an integer >= 1, got {v!r}")
    _check(_is_int(c.num_malicious) and 0 <= c.num_malicious <= c.num_clients,
           f"--num_malicious must be an integer in 0..num_clients={c.num_clients}, got {c.num_malicious!r}")
    _check(c.clients_per_round <= c.num_clients,
           f"--clients_per_round must be in 1..num_clients={c.num_clients}, got {c.clients_per_round}")
    for name in ("client_lr", "server_lr"):
        v = getattr(c, name)
        _check(isinstance(v, (int, float)) and v > 0, f"--{name} must be > 0, got {v!r}")
    for name in ("client_momentum", "server_momentum"):
        v = getattr(c, name)
        _check(isinstance(v, (int, float)) and 0 <= v < 1, f"--{name} must be in [0, 1), got {v!r}")
    _check(c.dirichlet_alpha > 0, f"--dirichlet_alpha must be > 0, got {c.dirichlet_alpha!r}")
    _check(0 <= c.bias <= 1, f"--bias must be in [0, 1], got {c.bias!r}")
    _check(c.partition in METHODS, f"--partition: unknown partition {c.partition!r}; valid: {', '.join(METHODS)}")
    _check(c.model in models_lib.MODELS, f"--model: unknown model {c.model!r}; valid: {', '.join(models_lib.MODELS)}")
    _check(c.execution in EXECUTIONS, f"--execution: unknown client execution {c.execution!r}; valid: {', '.join(EXECUTIONS)}")
    _check(c.precision in PRECISIONS, f"--precision: unknown matmul precision {c.precision!r}; valid: {', '.join(PRECISIONS)}")
    _check(c.protocol in ("fedavg", "fedsgd"), f"--protocol must be fedavg or fedsgd, got {c.protocol!r}")
    _check(c.aggregator in aggregators_lib.REGISTRY,
           f"--aggregator: unknown aggregator {c.aggregator!r}; valid: {', '.join(aggregator_names())}")
    _check(c.attack in attack_names(), f"--attack: unknown attack {c.attack!r}; valid: {', '.join(attack_names())}")
    _check(c.data_attack is None or c.data_attack in attacks_lib.DATA_ATTACKS,
           f"--data_attack: unknown data attack {c.data_attack!r}; valid: {', '.join(sorted(attacks_lib.DATA_ATTACKS))}")
    _check(c.data_attack is None or c.attack not in attacks_lib.DATA_ATTACKS,
           f"--data_attack: --attack={c.attack} is a data attack already; pair a data attack with a model attack "
           "(e.g. --attack=model_replacement --data_attack=backdoor)")
    if c.num_byzantine is not None:
        _check(_is_int(c.num_byzantine) and 0 <= c.num_byzantine < c.clients_per_round,
               f"--num_byzantine must be an integer in 0..clients_per_round-1={c.clients_per_round - 1}, got {c.num_byzantine!r}")
    if c.protocol == "fedavg":
        _check(c.local_steps is not None or c.local_epochs is not None,
               "--local_steps or --local_epochs: give one (local_steps wins when both are set)")
        for name in ("local_steps", "local_epochs"):
            v = getattr(c, name)
            _check(v is None or (_is_int(v) and v >= 1), f"--{name} must be an integer >= 1, got {v!r}")
    _check(isinstance(c.attack_scale, (int, float)) and c.attack_scale > 0, f"--attack_scale must be > 0, got {c.attack_scale!r}")
    _check(0 <= c.seed < 2**32, f"--seed must be an integer in 0..2**32-1 (jax.random.PRNGKey's range), got {c.seed!r}")
    check_name(c.dataset, "--dataset")
    natural = tuple(NATURAL_DATASETS) + tuple(f"synthetic:{n}" for n in NATURAL_DATASETS)
    _check(c.partition != "natural" or c.dataset in natural,
           f"--partition=natural needs a dataset with natural clients ({', '.join(natural)}), got --dataset={c.dataset}")
    _check(c.data_dir is None or os.path.isdir(c.data_dir),
           f"--data_dir must be an existing directory (or unset for the default location), got {c.data_dir!r}")
    _check(c.shards_per_client >= 1, f"--shards_per_client must be an integer >= 1, got {c.shards_per_client!r}")
    for name in ("source_class", "target_class"):
        v = getattr(c, name)
        _check(v >= 0, f"--{name} must be a class index >= 0, got {v!r}")
    _check(c.num_selected is None or 1 <= c.num_selected <= c.clients_per_round,
           f"--num_selected must be in 1..clients_per_round={c.clients_per_round} (or unset), got {c.num_selected!r}")


def build_aggregator(config: ExperimentConfig):
    values = dict(dataclasses.asdict(config), num_byzantine=effective_num_byzantine(config))
    aggregator = _call_with_config("aggregator", config.aggregator, aggregators_lib.REGISTRY[config.aggregator], values)
    if not config.pre_aggregation:
        return aggregator
    pre = []
    for name in (part.strip() for part in config.pre_aggregation.split(",")):
        _check(name in aggregators_lib.PREAGGREGATORS, f"--pre_aggregation: unknown pre-aggregation {name!r}; "
               f"valid: {', '.join(sorted(aggregators_lib.PREAGGREGATORS))} (comma list, applied in order)")
        pre.append(_call_with_config("pre-aggregation", name, aggregators_lib.PREAGGREGATORS[name], values))
    return aggregators_lib.with_preaggregation(aggregator, *pre)


ATTACKER_EXAMPLES = 256
"""Most examples of the malicious clients that the targeted adaptive attack's loss reads."""


def attacker_examples(data: FederatedData, num_malicious: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``ATTACKER_EXAMPLES`` training examples held by the malicious clients (ids
    ``0..num_malicious-1``), in client order."""
    indices = np.asarray(data.client_indices)[:num_malicious]
    counts = np.asarray(data.client_counts)[:num_malicious]
    own = np.concatenate([row[:n] for row, n in zip(indices, counts)] + [np.zeros(0, np.int64)])[:ATTACKER_EXAMPLES]
    return np.asarray(data.x)[own], np.asarray(data.y)[own]


def partition_in_program(config: ExperimentConfig) -> bool:
    """Whether the run's program holds partition-dependent constants, so that programs of
    different partitions cannot be shared: the targeted adaptive attack's loss closes over the
    malicious clients' examples."""
    return config.attack == "adaptive" and config.objective == "targeted"


def build_attacks(config: ExperimentConfig, num_classes: int, x_train=None, *, model: Optional[Model] = None,
                  data: Optional[FederatedData] = None):
    """``(data_attack or None, model_attack or None)`` for ``config.attack`` and ``config.data_attack``;
    ``x_train`` (the training inputs) gives triggers the input shape to validate against.
    ``model`` and ``data`` give ``--objective=targeted`` its loss (``attacks.triggered_loss``
    on the malicious clients' examples); without them (a check of the settings only) that
    objective is a constant."""
    values = dict(dataclasses.asdict(config), num_classes=num_classes, source=config.source_class,
                  target=config.target_class, num_byzantine=effective_num_byzantine(config),
                  target_label=config.target_class, x_train=x_train,
                  input_shape=None if x_train is None else tuple(x_train.shape[1:]))
    name = config.attack
    factory = attacks_lib.DATA_ATTACKS.get(name) or attacks_lib.MODEL_ATTACKS[name]
    for field, param in _ATTACK_FLAGS.items():  # --attack_knowledge -> knowledge=..., a set flag must apply
        values[param] = getattr(config, field)
        _check(values[param] is None or param in inspect.signature(factory).parameters,
               f"--{field} does not apply to attack {name}")
    users = [f for f in (factory, attacks_lib.DATA_ATTACKS.get(config.data_attack), attacks_lib.LOCAL_TRAINING.get(name)) if f]
    for flag in _TARGETED_FLAGS:  # a set trigger / targeted / adaptive flag must apply to one of the attacks
        _check(getattr(config, flag) is None or any(flag in inspect.signature(f).parameters for f in users),
               f"--{flag} does not apply to --attack={name}" + (f" --data_attack={config.data_attack}" if config.data_attack else ""))
    schedule = (config.attack_start_round, config.attack_every, config.attack_single_shot)
    _check(not config.continuous_data_poisoning or (config.data_attack is not None and schedule != (0, 1, False)),
           "--continuous_data_poisoning applies only to a model attack paired with a --data_attack and scheduled with "
           "--attack_start_round / --attack_every / --attack_single_shot")
    if name in attacks_lib.DATA_ATTACKS:  # a schedule rides on a no-op model attack, which make_round reads
        data_attack = _call_with_config("attack", name, attacks_lib.DATA_ATTACKS[name], values)
        return data_attack, None if schedule == (0, 1, False) else attacks_lib.scheduled(attacks_lib.no_attack(), *schedule)
    paired = None if config.data_attack is None else _call_with_config(
        "data attack", config.data_attack, attacks_lib.DATA_ATTACKS[config.data_attack], values)
    if name == "adaptive" and config.objective == "targeted":
        _check(paired is not None and paired.targeted is not None,
               "--objective=targeted: the adaptive attack needs a targeted --data_attack (backdoor, dba, feature_trigger "
               "or label_flip) whose success test defines the attacker's loss")
        values["target_loss"] = lambda flat_params: jnp.zeros((), flat_params.dtype)
        if model is not None and data is not None:
            _, unravel = ravel_pytree(model.init(jax.random.PRNGKey(0)))
            values["target_loss"] = attacks_lib.triggered_loss(model.apply, unravel, paired,
                                                               *attacker_examples(data, config.num_malicious))
    strength = attacks_lib.STRENGTH.get(name)
    if strength is not None:
        values[strength] = config.attack_scale
    attack = _call_with_config("attack", name, attacks_lib.MODEL_ATTACKS[name], values)
    return paired, attack if schedule == (0, 1, False) else attacks_lib.scheduled(attack, *schedule)


_ATTACK_FLAGS = {"attack_knowledge": "knowledge", "attack_colluding": "colluding", "attack_direction": "direction",
                 "alie_z": "z", "fang_b": "b", "mimic_choice": "choice"}
"""Config fields that set an attack parameter of another name (the threat model's options)."""

_TARGETED_FLAGS = ("trigger_size", "trigger_position", "trigger_pattern", "trigger_value", "poison_fraction", "num_parts",
                   "trigger_features", "trigger_values", "trigger_percentile", "gamma", "alpha", "norm_bound", "mask_ratio",
                   "objective", "constraint", "attack_steps", "attack_lr", "init_point")
"""Config fields of the backdoor, targeted and adaptive attacks (same name as the factory parameter)."""


def build_malicious_training(config: ExperimentConfig, loss_fn, optimizer):
    """The malicious clients' local training for attacks that change it (``attacks.LOCAL_TRAINING``:
    constrain_and_scale, pgd, neurotoxin), built from the honest loss and optimizer; else None."""
    factory = attacks_lib.LOCAL_TRAINING.get(config.attack)
    if factory is None:
        return None
    values = dict(dataclasses.asdict(config), loss_fn=loss_fn, optimizer=optimizer)
    return _call_with_config("attack", config.attack, factory, values)


def build(config: ExperimentConfig) -> Experiment:
    """Validates ``config``, loads and partitions the data, and builds the round and the run."""
    validate(config)
    aggregator = build_aggregator(config)  # fails on bad hyper-parameters before loading data
    aggregator.requirement(config.clients_per_round)
    dataset = load(config.dataset, seed=config.seed, data_dir=config.data_dir)
    _check(config.num_clients <= len(dataset.y_train),
           f"--num_clients must be at most the {len(dataset.y_train)} training examples of {config.dataset}, got {config.num_clients}")
    if config.partition == "shards":
        _check(config.num_clients * config.shards_per_client <= len(dataset.y_train),
               f"--shards_per_client: num_clients * shards_per_client must be at most the {len(dataset.y_train)} training "
               f"examples of {config.dataset} (no empty shards), got {config.num_clients} * {config.shards_per_client}")
    key = jax.random.PRNGKey(config.seed)
    k_part, k_run = jax.random.split(key)
    data = federate(dataset, config.num_clients, config.partition, key=k_part, alpha=config.dirichlet_alpha,
                    p=config.bias, shards_per_client=config.shards_per_client)
    model = models_lib.get(config.model, dataset.x_train.shape[1:], dataset.num_classes)
    data_attack, model_attack = build_attacks(config, dataset.num_classes, dataset.x_train, model=model, data=data)
    if model_attack is not None:
        model_attack.requirement(config.clients_per_round, effective_num_byzantine(config))
    loss_fn = classification_loss(mixed_precision(model.apply) if config.mixed_precision else model.apply)
    client_opt = optax.sgd(config.client_lr, momentum=config.client_momentum or None)
    if config.protocol == "fedsgd":
        client_update = fedsgd(loss_fn, optax.sgd(config.client_lr))
    else:
        epochs = None if config.local_steps is not None else config.local_epochs
        client_update = fedavg(loss_fn, client_opt, local_steps=config.local_steps,
                               local_epochs=epochs, batch_size=config.batch_size)
    malicious_update = build_malicious_training(config, loss_fn, client_opt)
    client_update = with_matmul_precision(client_update, config.precision)
    if malicious_update is not None:
        malicious_update = with_matmul_precision(malicious_update, config.precision)
    if config.attack == "none":  # the malicious clients behave honestly (unless --data_attack): no attack to score
        model_attack = None
    round_ = make_round(client_update, aggregator, clients_per_round=config.clients_per_round,
                        num_malicious=config.num_malicious, data_attack=data_attack, model_attack=model_attack,
                        malicious_client_update=malicious_update,
                        server_optimizer=optax.sgd(config.server_lr, momentum=config.server_momentum or None),
                        execution=config.execution, chunk_size=config.chunk_size, jit=False,
                        shard_clients=config.shard_clients, num_byzantine=effective_num_byzantine(config),
                        continuous_data_poisoning=config.continuous_data_poisoning)
    evaluate = make_evaluate(model.apply, data_attack)
    train = make_train(round_, data, model.init, evaluate, num_rounds=config.rounds, eval_every=config.eval_every)
    return Experiment(config, data, model, round_, train, dataset.num_classes)
