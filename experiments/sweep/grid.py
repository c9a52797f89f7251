"""The grid: a sweep's cells (every combination of its axes) as scoped configs with stable
names, and the checks that need no compiling."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence

from experiments.configs import SweepSpec, replace_fields
from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax import flat_settings
from fljax import spec as spec_lib
from fljax.data import METHODS, load
from fljax.experiment import (
    APPLIES_WITH,
    DEFAULTS,
    ExperimentConfig,
    attack_names,
    build_aggregator,
    build_attacks,
    config_dict,
    effective_num_byzantine,
    inapplicable,
    scoped,
    validate,
)

FORMAT_VERSION = 3
"""Version of the cell files; a file of another version is recomputed. 2: partitions shuffle
the client order, poisoning counts real examples only, schedules gate the whole attack and
detection is measured against each rule's own treatment (issue 12): version 1 numbers differ.
3: ``diverged_round`` and the evaluations' rounds are 1-based (issue 17), as the progress."""

PARTITION_FIELDS = ("partition", "dirichlet_alpha", "bias", "shards_per_client")
"""Config fields that only shape the data partition: cells differing only in these can share a
compiled program (``build`` hands the partition to ``federate`` alone; the program reads it as
an argument)."""

_PARTITION_PARAMS = {
    "dirichlet": ("dirichlet_alpha", float),
    "bias": ("bias", float),
    "shards": ("shards_per_client", int),
}
AXES = ("attack", "aggregator", "malicious_fraction", "partition")


class Cell(NamedTuple):
    """One grid point: its axis values (``attack``, ``aggregator``: their specs in canonical
    text; ``malicious_fraction``, ``partition`` and the extra ``grid`` fields), its full
    (scoped) config and a stable file name."""

    axes: dict
    config: ExperimentConfig
    name: str


def partition_settings(spec: str) -> dict:
    """``iid`` | ``dirichlet[:alpha]`` | ``bias[:p]`` | ``shards[:per_client]`` | ``natural`` -> config
    overrides."""
    name, _, value = str(spec).partition(":")
    if name not in METHODS:
        raise ValueError(
            f"--partitions: unknown partition {spec!r}; valid: iid, dirichlet:<alpha>, bias:<p>, shards:<k>, natural"
        )
    settings: dict[str, Any] = {"partition": name}
    if value:
        if name not in _PARTITION_PARAMS:
            raise ValueError(f"--partitions: {name} takes no parameter, got {spec!r}")
        field, kind = _PARTITION_PARAMS[name]
        try:
            settings[field] = kind(value)
        except ValueError:
            raise ValueError(
                f"--partitions: {spec!r}: {value!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
    return settings


def _names(value: str, kind: str) -> list[str]:
    """The component names of an axis value (an attack or aggregator chain)."""
    return [t.name for t in spec_lib.parse(value, f"--{kind}s")]


def _registered(kind: str) -> list[str]:
    return attack_names() if kind == "attack" else aggregators_lib.REGISTRY.names()


def expand(values: Sequence[str], kind: str) -> list[str]:
    """An axis's values as canonical spec text (``"all"`` expands to every registered attack /
    rule, sorted); duplicates dropped, order kept. Components and arguments are checked."""
    out: list[str] = []
    for value in values:
        for v in _registered(kind) if value == "all" else [value]:
            text = getattr(scoped(ExperimentConfig(**{kind: v}), notice=lambda m: None), kind)
            if text not in out:
                out.append(text)
    return out


def _missing_of(value: str, kind: str) -> list[str]:
    """The unregistered components of one axis value, as ``kind name (in value)``, with the
    registered names close to it (a typo): ``attack sign_flp (did you mean sign_flip?)``."""
    if value == "all":
        return []
    registries = (
        (attacks_lib.DATA_ATTACKS, attacks_lib.MODEL_ATTACKS)
        if kind == "attack"
        else (aggregators_lib.PREAGGREGATORS, aggregators_lib.REGISTRY)
    )
    missing = [n for n in _names(value, kind) if not any(n in r for r in registries)]
    out = []
    for n in missing:
        close = difflib.get_close_matches(n, [name for r in registries for name in r], n=3)
        notes = ([f"in {value}"] if value != n else []) + ([f"did you mean {' or '.join(close)}?"] if close else [])
        out.append(f"{kind} {n}" + (f" ({'; '.join(notes)})" if notes else ""))
    return out


def missing_names(spec: SweepSpec) -> list[str]:
    """Attacks and aggregators the spec's axes name (in their chains too) that are not
    registered (``all`` excluded)."""
    return [m for a in spec.attacks for m in _missing_of(a, "attack")] + [
        m for g in spec.aggregators for m in _missing_of(g, "aggregator")
    ]


def check_registered(spec: SweepSpec, allow_missing: bool = False, log=print) -> SweepSpec:
    """Raises ``ValueError`` listing every unregistered attack / aggregator of ``spec`` (or, with
    ``allow_missing``, drops their cells with a warning)."""
    missing = missing_names(spec)
    if not missing:
        return spec
    pending = f" (the preset marks as pending: {', '.join(spec.pending)})" if spec.pending else ""
    if not allow_missing:
        typos = all("did you mean" in m for m in missing)  # then fixing the names is the way, not skipping them
        raise ValueError(
            f"not registered in fljax: {', '.join(missing)}{pending}. Registered attacks: "
            f"{', '.join(attack_names())}; aggregators: {', '.join(aggregators_lib.REGISTRY.names())}; "
            f"pre-aggregations: {', '.join(aggregators_lib.PREAGGREGATORS.names())}."
            + ("" if typos else " Pass --allow_missing to sweep the registered part only.")
        )
    log(f"warning: skipping unregistered {', '.join(missing)}{pending}")
    return dataclasses.replace(
        spec,
        attacks=[a for a in spec.attacks if not _missing_of(a, "attack")],
        aggregators=[g for g in spec.aggregators if not _missing_of(g, "aggregator")],
    )


def _label(value) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(value)).strip("-")


def cell_key(config: ExperimentConfig, seeds: Sequence[int]) -> str:
    """A hash of everything a cell's result depends on (its config, its seeds, the file format)."""
    payload = json.dumps(
        {"config": config_dict(config), "seeds": list(seeds), "version": FORMAT_VERSION}, sort_keys=True, default=str
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _notice_once(seen: set, log: Callable):
    def notice(message: str) -> None:
        if message not in seen:
            seen.add(message)
            log(f"notice: {message}")

    return notice


def make_cells(spec: SweepSpec, log: Callable = lambda message: None) -> list[Cell]:
    """Every combination of the axes, in axis order (attacks slowest), as scoped configs
    (``log`` gets the deprecation notices of a base with flat settings, once each)."""
    attacks = expand(spec.attacks, "attack")
    rules = expand(spec.aggregators, "aggregator")
    grid = dict(spec.grid)
    clash = sorted(set(grid) & set(AXES + PARTITION_FIELDS + ("attack", "aggregator", "num_malicious")))
    flat = sorted(set(grid) & set(flat_settings.FIELDS))
    if flat:
        raise ValueError(
            f"--grid: {', '.join(flat)} {'is a' if len(flat) == 1 else 'are'} deprecated flat component "
            f"setting{'s' if len(flat) > 1 else ''}: vary the component through its specs instead, e.g. "
            "--aggregators='krum,bucketing(bucket_size=2)+krum' or --attacks='gaussian(std=1.0),gaussian(std=10.0)'"
        )
    if clash:
        raise ValueError(
            f"grid axes {', '.join(clash)} are set by the sweep's own axes (--attacks, --aggregators, "
            "--malicious_fractions, --partitions)"
        )
    for frac in spec.malicious_fractions:
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
            raise ValueError(f"--malicious_fractions must be numbers in [0, 1], got {frac!r}")
    partitions = {p: partition_settings(p) for p in spec.partitions}
    for s in spec.seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise ValueError(f"--seeds must be integers in 0..2**32-1, got {s!r}")
    if len(set(spec.seeds)) != len(spec.seeds) or not spec.seeds:
        raise ValueError(f"--seeds must be distinct and non-empty, got {list(spec.seeds)}")
    cells, given, notice = [], [], _notice_once(set(), log)
    for attack, rule, frac, part, *extra in itertools.product(
        attacks, rules, spec.malicious_fractions, spec.partitions, *grid.values()
    ):
        axes = dict(
            attack=attack, aggregator=rule, malicious_fraction=float(frac), partition=part, **dict(zip(grid, extra))
        )
        overrides = dict(
            attack=attack,
            aggregator=rule,
            num_malicious=int(round(frac * spec.base.num_clients)),
            **partitions[part],
            **dict(zip(grid, extra)),
        )
        config = replace_fields(spec.base, overrides, f"cell {axes}")
        given.append(config)
        # The shared base's settings that do not apply to this cell (the base's dirichlet_alpha in
        # an iid cell, its flat --kappa in a median cell) are left out of it; check_unused refuses
        # those that apply to no cell.
        config = dataclasses.replace(config, **{n: DEFAULTS[n] for n in inapplicable(config)})
        config = scoped(config, notice=notice, refuse_unused=False)
        label = "__".join([attack, rule, f"m{frac:g}", part] + [f"{k}-{v}" for k, v in zip(grid, extra)])
        cells.append(Cell(axes, config, f"{_label(label)}__{cell_key(config, spec.seeds)}"))
    check_unused(given, cells)
    return cells


def check_unused(configs: Sequence[ExperimentConfig], cells: Sequence[Cell]) -> None:
    """Refuses a setting that applies to no cell of the sweep, by the rule of the single run
    (``fljax.experiment.check_applicable``, ``fljax.flat_settings.not_taken``): ``configs`` are
    the cells' configs as given, ``cells`` the cells."""
    for name, (other, value) in APPLIES_WITH.items():
        if any(name in inapplicable(c) for c in configs) and not any(getattr(c, other) == value for c in configs):
            raise ValueError(f"--{name} does not apply to any cell: it applies only with --{other}={value}")
    for name in flat_settings.given(configs[0]) if configs else ():
        if name in ("data_attack", "pre_aggregation"):  # components themselves: every cell takes them
            continue
        on = flat_settings.on(name)
        if not any(
            flat_settings.param_of(name, term) for cell in cells for term in spec_lib.parse(getattr(cell.config, on))
        ):
            raise ValueError(flat_settings.not_taken(name, f"any cell's --{on}"))


_NUM_CLASSES: dict = {}


def check_cell(config: ExperimentConfig) -> Optional[str]:
    """Why the cell cannot run (the build-time check's message), or None. Each dataset is
    loaded once for these checks (its class count and inputs are cached)."""
    try:
        validate(config)
        build_aggregator(config).requirement(config.clients_per_round)
        if (config.dataset, config.data_dir) not in _NUM_CLASSES:
            ds = load(config.dataset, seed=config.seed, data_dir=config.data_dir)
            _NUM_CLASSES[(config.dataset, config.data_dir)] = (ds.num_classes, ds.x_train)
        num_classes, x = _NUM_CLASSES[(config.dataset, config.data_dir)]
        _, model_attack = build_attacks(config, num_classes, x)
        if model_attack is not None:
            model_attack.requirement(config.clients_per_round, effective_num_byzantine(config))
    except (ValueError, TypeError) as e:
        return str(e)
    return None
