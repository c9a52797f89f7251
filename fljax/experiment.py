"""Experiments from one config: the bridge between the runner's flags and the library.

``ExperimentConfig`` holds the run's shared settings flat (data, partition, model, population and
malicious count, ``num_byzantine``, protocol, rounds, execution, seed) and each component as a
spec (``fljax.spec``): a registered name with its own keyword arguments. ``aggregator`` is the
rule after its pre-aggregations, ``attack`` the model attack after the data attack it pairs
with, each chain joined by ``+``::

    ExperimentConfig(
        aggregator="bucketing(bucket_size=2)+krum(num_byzantine=2)",
        attack="backdoor(target_label=0)+model_replacement(gamma=5.0)",
    )

The factories' signatures hold the defaults; the run fills the parameters it owns (``RUN_FIXED``:
the population, the dataset's classes and inputs, the server's learning rate) and ``num_byzantine``
(the run's f, which a spec may override). ``build(config)`` validates everything before anything
is compiled. The flat per-component settings of the previous release (``--kappa``,
``--attack_scale``, ``--data_attack``, ...; ``fljax.flat_settings``) work for one more release:
``scoped(config)`` moves them into the specs, with a notice naming the replacement.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax import flat_settings
from fljax import models as models_lib
from fljax import momentum as momentum_lib
from fljax.client import EXECUTIONS, classification_loss, fedavg, fedsgd
from fljax.data import (
    MALICIOUS_DATA,
    METHODS,
    NATURAL_DATASETS,
    Dataset,
    FederatedData,
    check_name,
    federate,
    federate_honest,
    load,
)
from fljax.metrics import make_evaluate, with_rule_metrics
from fljax.models import Model
from fljax.precision import PRECISIONS, mixed_precision, with_matmul_precision
from fljax.rounds import Round, make_round
from fljax.spec import Spec, chain_text, parse
from fljax.train import Train, make_train
from fljax.types import PyTree


def _field(default, help: str, **kwargs):
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass
class ExperimentConfig(flat_settings.FlatSettings):
    """Every setting of one experiment. The defaults are the README's default experiment: a
    targeted label-flipping attack by 20 of 100 clients on mnist5k against the median.

    The fields inherited from ``fljax.flat_settings.FlatSettings`` are the deprecated flat
    settings of the previous release, unset by default (see ``scoped``)."""

    dataset: str = _field(
        "mnist5k",
        "mnist5k, digits, breast_cancer (embedded); fashion_mnist, mnist (IDX files, else TFDS); "
        "cifar10, cifar100, emnist or tfds:<name> (TFDS); femnist, shakespeare (LEAF JSON, "
        "natural clients); synthetic:<name> (a random stand-in of that name's shapes)",
    )
    data_dir: Optional[str] = _field(
        None,
        "where the data is: TFDS's data directory (default ~/tensorflow_datasets), the "
        "four IDX files (fashion_mnist default: /usr/share/datasets/fashion-mnist from "
        "apt-get install dataset-fashion-mnist), or LEAF's data directory (train/, test/)",
    )
    train_examples: Optional[int] = _field(
        None,
        "train on this many of the dataset's training examples, a random subset drawn with --seed "
        "(default: all of them): the data-size ablations of the reproductions",
    )
    model: str = _field("mlp", f"one of {', '.join(models_lib.MODELS)}")
    partition: str = _field(
        "iid",
        f"one of {', '.join(METHODS)} (natural: the dataset's own writers / roles, for "
        f"{', '.join(NATURAL_DATASETS)} and their synthetic stand-ins)",
    )
    dirichlet_alpha: float = _field(0.5, "Dirichlet concentration for --partition=dirichlet (> 0)")
    bias: float = _field(0.5, "Fang et al.'s bias p for --partition=bias, in [0, 1]")
    shards_per_client: int = _field(2, "shards per client for --partition=shards")
    num_clients: int = _field(100, "clients in the population")
    clients_per_round: int = _field(100, "clients sampled each round (1..num_clients)")
    num_malicious: int = _field(20, "malicious clients in the population (ids 0..num_malicious-1)")
    malicious_data: str = _field(
        "share",
        "what the malicious clients hold: share (their share of --partition, like any client) or iid "
        "(--partition deals all the data over the honest clients; each malicious one holds an IID sample "
        "of an honest client's size: Karimireddy et al. 2022's code)",
    )
    num_byzantine: Optional[int] = _field(
        None,
        "f the rule (and an attack that simulates one) assumes, unless its "
        "spec sets num_byzantine (default: num_malicious scaled to clients_per_round)",
    )
    aggregator: str = _field(
        "median",
        "the aggregation rule: a spec name(arg=value, ...), after the pre-aggregations "
        "it takes, joined by '+' and applied left to right",
        component=True,
    )
    attack: str = _field(
        "label_flip(source=5, target=3)",
        "what the malicious clients do: a model or a data attack, or a data attack then the model "
        "attack it pairs with, joined by '+'; none: no attack",
        component=True,
    )
    attack_start_round: int = _field(
        0,
        "the attack acts from this round index on (0-based: index 0 is what progress and "
        "results call round 1); before, malicious clients behave honestly",
    )
    attack_every: int = _field(1, "the attack acts every k rounds from --attack_start_round")
    attack_single_shot: bool = _field(
        False, "the attack acts in --attack_start_round only (Bagdasaryan et al.'s single shot)"
    )
    continuous_data_poisoning: bool = _field(
        False,
        "with an attack schedule and a data attack before the model attack: "
        "keep poisoning the malicious clients' data in every round (the "
        "schedule then gates the model attack and the attack's local "
        "training only)",
    )
    protocol: str = _field("fedavg", "fedavg (local steps) or fedsgd (one full-batch gradient)")
    rounds: int = _field(30, "federated rounds")
    local_steps: Optional[int] = _field(None, "fedavg local steps per round (overrides local_epochs when set)")
    local_epochs: Optional[int] = _field(2, "fedavg local epochs per round")
    batch_size: int = _field(32, "local batch size")
    client_lr: float = _field(0.3, "client SGD learning rate")
    client_momentum: float = _field(0.0, "client SGD momentum")
    worker_momentum: float = _field(
        0.0,
        "worker momentum beta in [0, 1): each client keeps a momentum of its updates "
        "across rounds and sends it (Karimireddy et al. 2021); 0 = off. Not --client_momentum",
    )
    worker_momentum_convention: str = _field(
        "ema",
        "ema (m = beta m + (1 - beta) u, the papers' equations, ByzFL) or "
        "heavy_ball (m = beta m + u, the authors' code): see fljax.momentum",
    )
    server_lr: float = _field(1.0, "server SGD learning rate (1 = FedAvg)")
    server_momentum: float = _field(0.0, "server SGD momentum (FedAvgM)")
    seed: int = _field(0, "PRNG seed of the partition, the model init and the run")
    eval_every: int = _field(5, "evaluate every k rounds (and after the last)")
    execution: str = _field("auto", f"client execution, one of {', '.join(EXECUTIONS)}")
    chunk_size: int = _field(8, "clients per chunk for --execution=chunked")
    shard_clients: bool = _field(
        False,
        "split each round's cohort over all visible devices (every process's with "
        "--distributed); a cohort that is not a multiple of the device count is padded",
    )
    precision: str = _field(
        "default", f"matmul precision of client training, one of {', '.join(PRECISIONS)} (default: the backend's own)"
    )
    mixed_precision: bool = _field(
        False, "client forward/backward in bfloat16 with float32 master params and float32 updates"
    )


SETTINGS = tuple(f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in flat_settings.FIELDS)
"""The config's fields in the scoped form: every setting but the deprecated flat ones."""

DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}
"""Every config field's default value, by name."""


def config_dict(config: ExperimentConfig) -> dict:
    """``config`` as a JSON-ready dict in the scoped form (the deprecated flat fields left out;
    ``scoped`` moves them into the specs first): what results, cell files and checkpoints record."""
    flat = flat_settings.given(config)
    if flat:
        raise ValueError(f"config_dict: --{', --'.join(flat)} set: call scoped(config) first")
    out = {name: getattr(config, name) for name in SETTINGS}
    for name in RECORDED_WHEN_SET:
        if out[name] == DEFAULTS[name]:
            del out[name]
    return out


RECORDED_WHEN_SET = ("train_examples", "malicious_data")
"""Settings added after sweep cell format 3, recorded only away from their defaults: a run that
leaves them there is the run it was before they existed, so its cells and checkpoints keep their
keys."""


RUN_FIXED = {
    "num_clients": "--num_clients",
    "num_classes": "the dataset's classes",
    "input_shape": "the dataset's inputs",
    "x_train": "the dataset's training inputs",
    "server_lr": "--server_lr",
    "target_loss": "the run's model and data",
}
"""Factory parameters the run fills and a spec may not set."""

RUN_DEFAULTS = {"num_byzantine": "<f>"}
"""Factory parameters the run fills unless the spec sets them (``<f>``: the run's f, ``--num_byzantine``)."""


def catalogue(on: str) -> str:
    """The registered components of the ``aggregator`` or ``attack`` chain for ``--help``: one
    ``name(param=default, ...)`` line each, from the factories' signatures (the parameters a
    spec may give; ``<f>``: the run's f, ``<required>``: no default)."""
    hidden = tuple(RUN_FIXED)
    if on == "aggregator":
        groups = [("rules", aggregators_lib.REGISTRY), ("pre-aggregations", aggregators_lib.PREAGGREGATORS)]
    else:
        groups = [("model attacks", attacks_lib.MODEL_ATTACKS), ("data attacks", attacks_lib.DATA_ATTACKS)]
    lines = []
    for title, registry in groups:
        lines.append(f"{title}:")
        for name in registry.names():
            entry = registry[name]
            lines.append("  " + entry.signature_text(RUN_DEFAULTS, hidden) + ("  [targeted]" if entry.targeted else ""))
    return "\n".join(lines)


class Experiment(NamedTuple):
    config: ExperimentConfig
    data: FederatedData
    model: Model
    round: Round
    train: Train
    num_classes: int


def aggregator_names() -> list[str]:
    return aggregators_lib.REGISTRY.names()


def attack_names() -> list[str]:
    return sorted(set(attacks_lib.DATA_ATTACKS) | set(attacks_lib.MODEL_ATTACKS))


def effective_num_byzantine(config: ExperimentConfig) -> int:
    """``--num_byzantine``, or by default the expected malicious clients per round:
    ``round(num_malicious * clients_per_round / num_clients)``."""
    if config.num_byzantine is not None:
        return config.num_byzantine
    return int(round(config.num_malicious * config.clients_per_round / config.num_clients))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- components


class Components(NamedTuple):
    """A config's components, parsed from its chains: the ``pre_aggregations`` and the ``rule``
    of ``--aggregator``; the ``data_attack`` and the ``model_attack`` of ``--attack`` (either may
    be None; ``none`` is the model attack that changes nothing)."""

    pre_aggregations: tuple
    rule: Spec
    data_attack: Optional[Spec]
    model_attack: Optional[Spec]


def _attack_registry(name: str, where: str = "--attack"):
    for registry in (attacks_lib.DATA_ATTACKS, attacks_lib.MODEL_ATTACKS):
        if name in registry:
            return registry
    import difflib

    close = difflib.get_close_matches(name, attack_names(), n=3)
    raise ValueError(
        f"{where}: unknown attack {name!r}"
        + (f" (did you mean {' or '.join(close)}?)" if close else "")
        + f"; valid: {', '.join(attack_names())}"
    )


def attack_chain(specs, where: str = "--attack") -> tuple[Optional[Spec], Optional[Spec]]:
    """``(data attack, model attack)`` of an attack chain (names checked, at most one of each,
    ``none`` alone)."""
    data = [s for s in specs if _attack_registry(s.name, where) is attacks_lib.DATA_ATTACKS]
    model = [s for s in specs if s not in data]
    text = chain_text(specs)
    _check(
        len(data) <= 1 and len(model) <= 1,
        f"{where}: {text!r} names {len(data)} data and {len(model)} model attacks; give at most one of each, the data "
        "attack first (e.g. 'backdoor(target_label=0)+model_replacement')",
    )
    _check(
        not (data and model and model[0].name == "none"),
        f"{where}: {text!r}: none is no attack; write the data attack alone ({data[0] if data else ''})",
    )
    return (data[0] if data else None), (model[0] if model else None)


def aggregator_chain(specs, where: str = "--aggregator") -> tuple[tuple, Spec]:
    """``(pre-aggregations, rule)`` of an aggregator chain: pre-aggregations, then one rule."""
    text = chain_text(specs)
    *pre, rule = specs
    for p in pre:
        if p.name in aggregators_lib.REGISTRY:
            raise ValueError(
                f"{where}: {text!r}: the rule {p.name} must come last, after the pre-aggregations it takes "
                f"(e.g. 'bucketing(bucket_size=2)+krum'); one rule per chain"
            )
        aggregators_lib.PREAGGREGATORS.lookup(p.name, where)
    if rule.name in aggregators_lib.PREAGGREGATORS:
        raise ValueError(
            f"{where}: {text!r} ends with the pre-aggregation {rule.name}: a chain ends with the rule it "
            f"feeds (e.g. '{rule}+median')"
        )
    aggregators_lib.REGISTRY.lookup(rule.name, where)
    return tuple(pre), rule


def components(config: ExperimentConfig) -> Components:
    """The components of a config's ``--aggregator`` and ``--attack`` chains (names checked)."""
    pre, rule = aggregator_chain(parse(config.aggregator, "--aggregator"))
    data, model = attack_chain(parse(config.attack, "--attack"))
    return Components(pre, rule, data, model)


def _canonical(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with its chains in canonical text (data attack first; each argument checked
    against its factory's signature and written as the literal of its type)."""
    c = components(config)
    registries = [(aggregators_lib.PREAGGREGATORS, p, "--aggregator") for p in c.pre_aggregations]
    registries.append((aggregators_lib.REGISTRY, c.rule, "--aggregator"))
    attack = [s for s in (c.data_attack, c.model_attack) if s is not None]
    registries += [(_attack_registry(s.name), s, "--attack") for s in attack]
    fixed = dict.fromkeys(RUN_FIXED)
    checked = [Spec(s.name, tuple(r[s.name].arguments(s, fixed=fixed, where=w).items())) for r, s, w in registries]
    n_rule = len(c.pre_aggregations) + 1
    return dataclasses.replace(config, aggregator=chain_text(checked[:n_rule]), attack=chain_text(checked[n_rule:]))


_NOTICED: set = set()


def _notice(message: str) -> None:
    """A ``FutureWarning``, once per message and process (``build`` reads a config several times)."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        warnings.warn(message, FutureWarning, stacklevel=3)


def scoped(config: ExperimentConfig, notice=_notice, *, refuse_unused: bool = True) -> ExperimentConfig:
    """``config`` in the scoped form: every component a spec in canonical text, the deprecated
    flat settings (``fljax.flat_settings``) moved into the specs they belong to, each with a
    one-line ``notice`` naming its replacement (a ``FutureWarning`` by default). Types are
    checked first, by flag name; unknown components and arguments raise ``ValueError``, and so
    does a flat setting that no component takes (unless ``refuse_unused=False``: a sweep's cell,
    whose base other cells share, ignores it with a notice). A scoped config is returned as it is."""
    check_types(config)
    flat = flat_settings.given(config)
    if flat:
        attack, rule, moved = flat_settings.into_specs(
            config,
            list(parse(config.attack, "--attack")),
            list(parse(config.aggregator, "--aggregator")),
            notice,
            refuse_unused,
        )
        config = dataclasses.replace(
            config, attack=chain_text(attack), aggregator=chain_text(rule), **dict.fromkeys(flat)
        )
    config = _canonical(config)
    for name in flat if flat else ():
        if name in moved:
            where = flat_settings.on(name)
            notice(
                f"--{name} is deprecated: write --{where}='{getattr(config, where)}' (the flat component flags go "
                "in the next release)"
            )
    model = components(config).model_attack
    strength = attacks_lib.MODEL_ATTACKS[model.name].strength if model is not None else None
    if strength is not None and strength not in model.kwargs:
        default = attacks_lib.MODEL_ATTACKS[model.name].parameters()[strength].default
        notice(
            f"--attack={model.name}: {strength} is the factory's default {default!r}; until this release the runner's "
            f"--attack_scale made it 10.0 by default: write {model.name}({strength}=10.0) for that"
        )
    return config


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


APPLIES_WITH = {
    "dirichlet_alpha": ("partition", "dirichlet"),
    "bias": ("partition", "bias"),
    "shards_per_client": ("partition", "shards"),
    "local_steps": ("protocol", "fedavg"),
    "local_epochs": ("protocol", "fedavg"),
    "batch_size": ("protocol", "fedavg"),
    "chunk_size": ("execution", "chunked"),
}
"""Settings that apply only with one value of another: ``setting -> (other, value)``."""


def inapplicable(config: ExperimentConfig, given=()) -> list[str]:
    """The settings of ``APPLIES_WITH`` that ``config`` sets where they do not apply: away from
    their defaults, or named in ``given`` (the flags a command line gives, even at their
    default value), while the setting they go with has another value."""
    return [
        name
        for name, (other, value) in APPLIES_WITH.items()
        if getattr(config, other) != value and (name in given or getattr(config, name) != DEFAULTS[name])
    ]


def check_applicable(config: ExperimentConfig, given=()) -> None:
    """Refuses a setting that does not apply with the others (``inapplicable``), as ``scoped``
    refuses a component's setting that no component takes: one line naming the flag and why,
    e.g. ``--dirichlet_alpha does not apply to --partition=iid: it applies only with
    --partition=dirichlet``."""
    for name in inapplicable(config, given):
        other, value = APPLIES_WITH[name]
        raise ValueError(
            f"--{name} does not apply to --{other}={getattr(config, other)}: it applies only with --{other}={value}"
        )


def validate(config: ExperimentConfig) -> None:
    """Checks every setting that needs no data; raises ``ValueError`` naming the flag."""
    _validate(scoped(config))


def _validate(c: ExperimentConfig) -> None:
    """``validate`` of a scoped config: the shared settings (``scoped`` checked the components)."""
    for name in ("num_clients", "clients_per_round", "rounds", "batch_size", "eval_every", "chunk_size"):
        v = getattr(c, name)
        _check(_is_int(v) and v >= 1, f"--{name} must be an integer >= 1, got {v!r}")
    _check(
        _is_int(c.num_malicious) and 0 <= c.num_malicious <= c.num_clients,
        f"--num_malicious must be an integer in 0..num_clients={c.num_clients}, got {c.num_malicious!r}",
    )
    _check(
        c.clients_per_round <= c.num_clients,
        f"--clients_per_round must be in 1..num_clients={c.num_clients}, got {c.clients_per_round}",
    )
    for name in ("client_lr", "server_lr"):
        v = getattr(c, name)
        _check(isinstance(v, (int, float)) and v > 0, f"--{name} must be > 0, got {v!r}")
    for name in ("client_momentum", "server_momentum", "worker_momentum"):
        v = getattr(c, name)
        _check(isinstance(v, (int, float)) and 0 <= v < 1, f"--{name} must be in [0, 1), got {v!r}")
    _check(
        c.worker_momentum_convention in momentum_lib.CONVENTIONS,
        f"--worker_momentum_convention must be one of {', '.join(momentum_lib.CONVENTIONS)}, "
        f"got {c.worker_momentum_convention!r}",
    )
    _check(
        c.train_examples is None or (_is_int(c.train_examples) and c.train_examples >= 1),
        f"--train_examples must be an integer >= 1 (or unset: all), got {c.train_examples!r}",
    )
    _check(c.dirichlet_alpha > 0, f"--dirichlet_alpha must be > 0, got {c.dirichlet_alpha!r}")
    _check(0 <= c.bias <= 1, f"--bias must be in [0, 1], got {c.bias!r}")
    _check(c.partition in METHODS, f"--partition: unknown partition {c.partition!r}; valid: {', '.join(METHODS)}")
    _check(
        c.malicious_data in MALICIOUS_DATA,
        f"--malicious_data must be one of {', '.join(MALICIOUS_DATA)}, got {c.malicious_data!r}",
    )
    _check(
        c.malicious_data != "iid" or c.partition != "natural",
        "--malicious_data=iid needs a partition of the data to deal over the honest clients, got --partition=natural",
    )
    _check(
        c.malicious_data != "iid" or c.num_malicious < c.num_clients,
        f"--malicious_data=iid needs an honest client to hold the data: --num_malicious in "
        f"0..num_clients-1={c.num_clients - 1}, got {c.num_malicious}",
    )
    _check(c.model in models_lib.MODELS, f"--model: unknown model {c.model!r}; valid: {', '.join(models_lib.MODELS)}")
    _check(
        c.execution in EXECUTIONS,
        f"--execution: unknown client execution {c.execution!r}; valid: {', '.join(EXECUTIONS)}",
    )
    _check(
        c.precision in PRECISIONS,
        f"--precision: unknown matmul precision {c.precision!r}; valid: {', '.join(PRECISIONS)}",
    )
    _check(c.protocol in ("fedavg", "fedsgd"), f"--protocol must be fedavg or fedsgd, got {c.protocol!r}")
    if c.num_byzantine is not None:
        _check(
            _is_int(c.num_byzantine) and 0 <= c.num_byzantine < c.clients_per_round,
            f"--num_byzantine must be an integer in 0..clients_per_round-1={c.clients_per_round - 1}, got {c.num_byzantine!r}",
        )
    if c.protocol == "fedavg":
        _check(
            c.local_steps is not None or c.local_epochs is not None,
            "--local_steps or --local_epochs: give one (local_steps wins when both are set)",
        )
        for name in ("local_steps", "local_epochs"):
            v = getattr(c, name)
            _check(v is None or (_is_int(v) and v >= 1), f"--{name} must be an integer >= 1, got {v!r}")
    _check(0 <= c.seed < 2**32, f"--seed must be an integer in 0..2**32-1 (jax.random.PRNGKey's range), got {c.seed!r}")
    check_name(c.dataset, "--dataset")
    natural = tuple(NATURAL_DATASETS) + tuple(f"synthetic:{n}" for n in NATURAL_DATASETS)
    _check(
        c.partition != "natural" or c.dataset in natural,
        f"--partition=natural needs a dataset with natural clients ({', '.join(natural)}), got --dataset={c.dataset}",
    )
    _check(
        c.data_dir is None or os.path.isdir(c.data_dir),
        f"--data_dir must be an existing directory (or unset for the default location), got {c.data_dir!r}",
    )
    _check(c.shards_per_client >= 1, f"--shards_per_client must be an integer >= 1, got {c.shards_per_client!r}")
    check_applicable(c)


def rule_num_byzantine(config: ExperimentConfig) -> int:
    """The f of the config's rule: its spec's ``num_byzantine``, else the run's."""
    return components(config).rule.kwargs.get("num_byzantine", effective_num_byzantine(config))


def build_aggregator(config: ExperimentConfig):
    """The rule of ``--aggregator`` after its pre-aggregations (``with_preaggregation``)."""
    config = scoped(config)
    c = components(config)
    fixed, defaults = dict(num_clients=config.num_clients), dict(num_byzantine=effective_num_byzantine(config))
    rule = aggregators_lib.REGISTRY.build(c.rule, fixed=fixed, defaults=defaults, where="--aggregator")
    pre = [
        aggregators_lib.PREAGGREGATORS.build(p, fixed=fixed, defaults=defaults, where="--aggregator")
        for p in c.pre_aggregations
    ]
    return aggregators_lib.with_preaggregation(rule, *pre)


ATTACKER_EXAMPLES = 256
"""Most examples of the malicious clients that the targeted adaptive attack's loss reads."""


def attacker_examples(data: FederatedData, num_malicious: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``ATTACKER_EXAMPLES`` training examples held by the malicious clients (ids
    ``0..num_malicious-1``), in client order."""
    indices = np.asarray(data.client_indices)[:num_malicious]
    counts = np.asarray(data.client_counts)[:num_malicious]
    own = np.concatenate([row[:n] for row, n in zip(indices, counts)] + [np.zeros(0, np.int64)])[:ATTACKER_EXAMPLES]
    return np.asarray(data.x)[own], np.asarray(data.y)[own]


def _targeted_adaptive(spec: Optional[Spec]) -> bool:
    return spec is not None and spec.name == "adaptive" and spec.kwargs.get("objective") == "targeted"


def partition_in_program(config: ExperimentConfig) -> bool:
    """Whether the run's program holds partition-dependent constants, so that programs of
    different partitions cannot be shared: the targeted adaptive attack's loss closes over the
    malicious clients' examples."""
    return _targeted_adaptive(components(scoped(config, notice=lambda m: None)).model_attack)


def build_attacks(
    config: ExperimentConfig,
    num_classes: int,
    x_train=None,
    *,
    model: Optional[Model] = None,
    data: Optional[FederatedData] = None,
):
    """``(data_attack or None, model_attack or None)`` of ``--attack``; ``x_train`` (the training
    inputs) gives triggers the input shape to validate against. ``model`` and ``data`` give
    ``adaptive(objective='targeted')`` its loss (``attacks.triggered_loss`` on the malicious
    clients' examples); without them (a check of the settings only) that loss is a constant."""
    config = scoped(config)
    c = components(config)
    schedule = (config.attack_start_round, config.attack_every, config.attack_single_shot)
    _check(
        not config.continuous_data_poisoning
        or (c.data_attack is not None and c.model_attack is not None and schedule != (0, 1, False)),
        "--continuous_data_poisoning applies only to a model attack paired with a data attack "
        "(--attack='<data attack>+<model attack>') and scheduled with --attack_start_round / --attack_every / "
        "--attack_single_shot",
    )
    data_fixed = dict(
        num_classes=num_classes, x_train=x_train, input_shape=None if x_train is None else tuple(x_train.shape[1:])
    )
    data_attack = (
        None
        if c.data_attack is None
        else attacks_lib.DATA_ATTACKS.build(c.data_attack, fixed=data_fixed, where="--attack")
    )
    if c.model_attack is None:  # a data attack alone: a schedule rides on a no-op model attack, which make_round reads
        return data_attack, None if schedule == (0, 1, False) else attacks_lib.scheduled(
            attacks_lib.no_attack(), *schedule
        )
    fixed = dict(server_lr=config.server_lr)
    if _targeted_adaptive(c.model_attack):
        _check(
            c.data_attack is not None and attacks_lib.DATA_ATTACKS[c.data_attack.name].targeted,
            f"--attack={config.attack}: adaptive(objective='targeted') needs a targeted data attack before it "
            f"({', '.join(n for n, e in attacks_lib.DATA_ATTACKS.items() if e.targeted)}; e.g. "
            "--attack=\"backdoor(target_label=0)+adaptive(objective='targeted')\"), whose success test defines the "
            "attacker's loss",
        )
        fixed["target_loss"] = _zero_loss
        if model is not None and data is not None:
            _, unravel = ravel_pytree(model.init(jax.random.PRNGKey(0)))
            fixed["target_loss"] = attacks_lib.triggered_loss(
                model.apply, unravel, data_attack, *attacker_examples(data, config.num_malicious)
            )
    attack = attacks_lib.MODEL_ATTACKS.build(
        c.model_attack, fixed=fixed, where="--attack", defaults=dict(num_byzantine=effective_num_byzantine(config))
    )
    return data_attack, attack if schedule == (0, 1, False) else attacks_lib.scheduled(attack, *schedule)


def _zero_loss(flat_params):
    """The targeted adaptive attack's loss in a check of the settings (no model, no data)."""
    return jnp.zeros((), flat_params.dtype)


def build_malicious_training(config: ExperimentConfig, loss_fn, optimizer):
    """The malicious clients' local training for attacks that change it (their registry
    entry's ``local_training``: constrain_and_scale, pgd, neurotoxin), built from the honest
    loss and optimizer; else None."""
    config = scoped(config)
    model = components(config).model_attack
    if model is None:
        return None
    fixed = dict(
        loss_fn=loss_fn,
        optimizer=optimizer,
        local_steps=config.local_steps,
        local_epochs=config.local_epochs,
        batch_size=config.batch_size,
        protocol=config.protocol,
    )
    return attacks_lib.MODEL_ATTACKS.build_local_training(model, fixed=fixed, where="--attack")


class SettingNotice(UserWarning):
    """A setting ``build`` adjusted, with the reason (the runner prints it as a ``notice:`` line)."""


def clamp_batch_size(config: ExperimentConfig, data: FederatedData) -> ExperimentConfig:
    """``config`` with ``batch_size`` at most the largest client's example count, with a
    ``SettingNotice`` when it was larger. A batch holds at most a client's whole data whatever
    ``batch_size`` says (the rest is masked padding), so the clamp trains on the same batches
    and skips computing the padding, which costs as much as real examples; only the draws a data
    attack makes per batch entry change with the batch's shape. The experiment's config keeps
    the value given."""
    largest = max(1, int(np.max(np.asarray(data.client_counts))))
    if config.protocol != "fedavg" or config.batch_size <= largest:
        return config
    warnings.warn(
        f"--batch_size={config.batch_size} is larger than every client's data (at most {largest} examples): "
        f"each local step takes a client's whole data, run as --batch_size={largest} (no padded steps)",
        SettingNotice,
        stacklevel=3,
    )
    return dataclasses.replace(config, batch_size=largest)


def warn_attacker_pivot(config: ExperimentConfig) -> None:
    """A ``SettingNotice`` when ``monna``'s trusted pivot is a malicious client (ids
    ``0..num_malicious-1``): its default ``pivot=0`` is one whenever there are attackers, which
    studies a compromised pivot, not the rule the paper analyses."""
    rule = components(config).rule
    pivot = rule.kwargs.get("pivot", 0)
    if rule.name == "monna" and pivot < config.num_malicious:
        warnings.warn(
            f"monna(pivot={pivot}) trusts client {pivot}, a malicious one (ids 0..{config.num_malicious - 1}): "
            f"its guarantee needs an honest pivot, e.g. monna(pivot={config.num_malicious})",
            SettingNotice,
            stacklevel=3,
        )


def warn_clip_below_model_norm(config: ExperimentConfig, initial_params: Callable[[], PyTree]) -> None:
    """A ``SettingNotice`` when ``crfl`` clips the global model to under half its initial norm
    in round 1: its defaults are the authors' MNIST bounds (2 growing to 15), and a model that
    starts larger (fljax's MLP: 20.2) is shrunk every round and trains to chance (mnist5k, 30
    rounds: 0.09). ``initial_params()`` is called only for ``crfl``."""
    rule = components(config).rule
    if rule.name != "crfl":
        return
    defaults = {k: p.default for k, p in aggregators_lib.REGISTRY["crfl"].parameters().items()}
    args = {**defaults, **rule.kwargs}
    first = min(args["clip_start"] + args["clip_growth"], args["clip_norm"])  # rho_1
    norm = float(optax.tree.norm(initial_params()))
    if first < norm / 2:
        warnings.warn(
            f"crfl clips the global model to norm {first:g} in round 1 (growing to at most {args['clip_norm']:g}), under "
            f"half the initial {config.model}'s norm (about {norm:.1f}): pass clip_start and clip_norm above it, e.g. "
            f"crfl(clip_start={math.ceil(norm)}.0, clip_norm={2 * math.ceil(norm)}.0)",
            SettingNotice,
            stacklevel=3,
        )


def training_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """``dataset`` with ``size`` of its training examples, drawn without replacement with
    ``seed`` (in their original order); the test split is unchanged."""
    available = len(dataset.y_train)
    _check(
        size <= available,
        f"--train_examples must be in 1..{available} (the training examples of {dataset.name}), got {size}",
    )
    keep = np.sort(np.asarray(jax.random.permutation(jax.random.PRNGKey(seed), available))[:size])
    clients = None if dataset.train_clients is None else dataset.train_clients[keep]
    return dataset._replace(x_train=dataset.x_train[keep], y_train=dataset.y_train[keep], train_clients=clients)


def build(config: ExperimentConfig) -> Experiment:
    """Validates ``config`` (after ``scoped``: the experiment's config is the scoped one), loads
    and partitions the data, and builds the round and the run."""
    config = scoped(config)
    _validate(config)
    aggregator = build_aggregator(config)  # fails on bad hyper-parameters before loading data
    aggregator.requirement(config.clients_per_round)
    warn_attacker_pivot(config)
    dataset = load(config.dataset, seed=config.seed, data_dir=config.data_dir)
    if config.train_examples is not None:
        dataset = training_subset(dataset, config.train_examples, config.seed)
    _check(
        config.num_clients <= len(dataset.y_train),
        f"--num_clients must be at most the {len(dataset.y_train)} training examples of {config.dataset}, got {config.num_clients}",
    )
    if config.partition == "shards":
        _check(
            config.num_clients * config.shards_per_client <= len(dataset.y_train),
            f"--shards_per_client: num_clients * shards_per_client must be at most the {len(dataset.y_train)} training "
            f"examples of {config.dataset} (no empty shards), got {config.num_clients} * {config.shards_per_client}",
        )
    key = jax.random.PRNGKey(config.seed)
    k_part, k_run = jax.random.split(key)
    split = dict(key=k_part, alpha=config.dirichlet_alpha, p=config.bias, shards_per_client=config.shards_per_client)
    if config.malicious_data == "iid":
        data = federate_honest(dataset, config.num_clients, config.num_malicious, config.partition, **split)
    else:
        data = federate(dataset, config.num_clients, config.partition, **split)
    model = models_lib.get(config.model, dataset.x_train.shape[1:], dataset.num_classes)
    warn_clip_below_model_norm(config, lambda: jax.jit(model.init)(k_run))  # any key's norm is about the same
    data_attack, model_attack = build_attacks(config, dataset.num_classes, dataset.x_train, model=model, data=data)
    if model_attack is not None:
        model_attack.requirement(config.clients_per_round, effective_num_byzantine(config))
    loss_fn = classification_loss(mixed_precision(model.apply) if config.mixed_precision else model.apply)
    client_opt = optax.sgd(config.client_lr, momentum=config.client_momentum or None)
    training = clamp_batch_size(config, data)
    if config.protocol == "fedsgd":
        client_update = fedsgd(loss_fn, optax.sgd(config.client_lr))
    else:
        epochs = None if config.local_steps is not None else config.local_epochs
        client_update = fedavg(
            loss_fn, client_opt, local_steps=config.local_steps, local_epochs=epochs, batch_size=training.batch_size
        )
    malicious_update = build_malicious_training(training, loss_fn, client_opt)
    client_update = with_matmul_precision(client_update, config.precision)
    if malicious_update is not None:
        malicious_update = with_matmul_precision(malicious_update, config.precision)
    model_spec = components(config).model_attack
    if (
        model_spec is not None and model_spec.name == "none"
    ):  # the malicious clients behave honestly: no attack to score
        model_attack = None
    round_ = make_round(
        client_update,
        aggregator,
        clients_per_round=config.clients_per_round,
        num_malicious=config.num_malicious,
        data_attack=data_attack,
        model_attack=model_attack,
        malicious_client_update=malicious_update,
        server_optimizer=optax.sgd(config.server_lr, momentum=config.server_momentum or None),
        execution=config.execution,
        chunk_size=config.chunk_size,
        jit=False,
        shard_clients=config.shard_clients,
        num_byzantine=rule_num_byzantine(config),
        continuous_data_poisoning=config.continuous_data_poisoning,
        worker_momentum=(
            momentum_lib.worker_momentum(config.worker_momentum, config.worker_momentum_convention)
            if config.worker_momentum
            else None
        ),
        num_clients=config.num_clients,
        model_apply=model.apply,
    )
    evaluate = with_rule_metrics(make_evaluate(model.apply, data_attack), aggregator, model.apply)
    train = make_train(round_, data, model.init, evaluate, num_rounds=config.rounds, eval_every=config.eval_every)
    return Experiment(config, data, model, round_, train, dataset.num_classes)
