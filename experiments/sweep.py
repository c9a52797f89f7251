"""Sweeps a grid of poisoned federated experiments: attacks x aggregators x malicious fraction x
non-IID level (x any extra config axis), every cell's seeds run as ONE vmapped XLA program.

    python -m experiments.sweep --attacks='none,sign_flip(scale=10.0),label_flip' \\
        --aggregators='mean,median,krum(num_byzantine=2),bucketing(bucket_size=2)+krum' \\
        --malicious_fractions=0.2 --partitions=iid,dirichlet:0.5 --seeds=0,1,2 --rounds=10 --output_dir=results/grid
    python -m experiments.sweep --config=fang2020 --output_dir=results/fang2020

The attacks and aggregators are specs, as ``--attack`` / ``--aggregator`` of ``experiments.run``
(whose ``--help`` lists every registered one with its arguments): each axis value is a cell's
component with its arguments, chains included. Every ``ExperimentConfig`` field is also a flag
and sets the base of every cell (``--rounds=10``).

Seeds and data: ``--seed`` (the base config's) fixes the data partition and the train/test split
of every cell; ``--seeds`` are the run keys ``jax.random.PRNGKey(s)`` (model init, cohort
sampling, local batches, attack randomness). A cell builds its data once and runs
``jax.vmap(run)(keys)`` over those keys, so seed ``s == --seed`` gives exactly what
``python -m experiments.run --seed=s`` computes for that cell.

``--seed_execution``: how the seeds share that one program: ``vmap`` (batched), ``parallel``
(``pmap``: the seeds split over the local devices, one stream per CPU core, which
``--cpu_cores`` exposes as devices), ``map`` (``lax.map``: one after another, memory of one
seed; each seed's clients then run ``parallel`` over the CPU cores), or ``auto`` (the default:
``map`` on a multi-core CPU, ``vmap`` elsewhere).

Programs: a cell's program takes the federated data as an argument, so cells that differ only
in the partition's values (e.g. ``iid`` and ``shards:2``, whose client tables have equal shapes)
or that repeat a cell reuse the compiled executable instead of compiling again.

Outputs in ``--output_dir``: ``cells/<cell>.json`` (one per cell, written atomically; a rerun
skips every cell whose file is complete and matches its config and seeds, and recomputes a
corrupt or partial one), ``results.json`` and ``results.csv`` (final metrics, mean and std over
seeds, per cell), ``history.csv`` (per-seed per-round and per-evaluation metrics),
``results.md`` (tables and timing) and ``heatmap_<slice>.png`` (accuracy and attack success rate,
attack x aggregator, one figure per malicious fraction / partition / extra-axis value).
``--compare_sequential_seeds`` also times the first cell's seeds run one by one against the
vmapped program (``seed_vmap.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
import typing
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import run as run_lib
from fljax import checkpoint as checkpoint_lib
from experiments.configs import SweepSpec, load_config_file, replace_fields
import fljax
from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax.data import METHODS, load
from fljax import flat_settings
from fljax import spec as spec_lib
from fljax.experiment import (APPLIES_WITH, ExperimentConfig, SettingNotice, aggregator_chain, attack_chain,
                              attack_names, build, build_aggregator, build_attacks, catalogue, config_dict,
                              effective_num_byzantine, inapplicable, partition_in_program, scoped, validate)

FORMAT_VERSION = 2
"""Version of the cell files; a file of another version is recomputed. 2: partitions shuffle
the client order, poisoning counts real examples only, schedules gate the whole attack and
detection is measured against each rule's own treatment (issue 12): version 1 numbers differ."""

PARTITION_FIELDS = ("partition", "dirichlet_alpha", "bias", "shards_per_client")
"""Config fields that only shape the data partition: cells differing only in these can share a
compiled program (``build`` hands the partition to ``federate`` alone; the program reads it as
an argument)."""

_PARTITION_PARAMS = {"dirichlet": ("dirichlet_alpha", float), "bias": ("bias", float),
                     "shards": ("shards_per_client", int)}
AXES = ("attack", "aggregator", "malicious_fraction", "partition")
DEFAULTS = dict(attacks=("none", "sign_flip(scale=10.0)", "label_flip"), aggregators=("mean", "median", "trimmed_mean", "krum"),
                malicious_fractions=(0.2,), partitions=("iid",), seeds=(0, 1, 2))


# ----------------------------------------------------------------------------- the grid


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
        raise ValueError(f"--partitions: unknown partition {spec!r}; valid: iid, dirichlet:<alpha>, bias:<p>, shards:<k>, "
                         "natural")
    settings: dict[str, Any] = {"partition": name}
    if value:
        if name not in _PARTITION_PARAMS:
            raise ValueError(f"--partitions: {name} takes no parameter, got {spec!r}")
        field, kind = _PARTITION_PARAMS[name]
        try:
            settings[field] = kind(value)
        except ValueError:
            raise ValueError(f"--partitions: {spec!r}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
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
        for v in (_registered(kind) if value == "all" else [value]):
            text = getattr(scoped(ExperimentConfig(**{kind: v}), notice=lambda m: None), kind)
            if text not in out:
                out.append(text)
    return out


def _missing_of(value: str, kind: str) -> list[str]:
    """The unregistered components of one axis value, as ``kind name (in value)``, with the
    registered names close to it (a typo): ``attack sign_flp (did you mean sign_flip?)``."""
    if value == "all":
        return []
    registries = ((attacks_lib.DATA_ATTACKS, attacks_lib.MODEL_ATTACKS) if kind == "attack" else
                  (aggregators_lib.PREAGGREGATORS, aggregators_lib.REGISTRY))
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
        m for g in spec.aggregators for m in _missing_of(g, "aggregator")]


def check_registered(spec: SweepSpec, allow_missing: bool = False, log=print) -> SweepSpec:
    """Raises ``ValueError`` listing every unregistered attack / aggregator of ``spec`` (or, with
    ``allow_missing``, drops their cells with a warning)."""
    missing = missing_names(spec)
    if not missing:
        return spec
    pending = f" (the preset marks as pending: {', '.join(spec.pending)})" if spec.pending else ""
    if not allow_missing:
        typos = all("did you mean" in m for m in missing)  # then fixing the names is the way, not skipping them
        raise ValueError(f"not registered in fljax: {', '.join(missing)}{pending}. Registered attacks: "
                         f"{', '.join(attack_names())}; aggregators: {', '.join(aggregators_lib.REGISTRY.names())}; "
                         f"pre-aggregations: {', '.join(aggregators_lib.PREAGGREGATORS.names())}."
                         + ("" if typos else " Pass --allow_missing to sweep the registered part only."))
    log(f"warning: skipping unregistered {', '.join(missing)}{pending}")
    return dataclasses.replace(spec, attacks=[a for a in spec.attacks if not _missing_of(a, "attack")],
                               aggregators=[g for g in spec.aggregators if not _missing_of(g, "aggregator")])


def _label(value) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(value)).strip("-")


def cell_key(config: ExperimentConfig, seeds: Sequence[int]) -> str:
    """A hash of everything a cell's result depends on (its config, its seeds, the file format)."""
    payload = json.dumps({"config": config_dict(config), "seeds": list(seeds), "version": FORMAT_VERSION},
                         sort_keys=True, default=str)
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
        raise ValueError(f"--grid: {', '.join(flat)} {'is a' if len(flat) == 1 else 'are'} deprecated flat component "
                         f"setting{'s' if len(flat) > 1 else ''}: vary the component through its specs instead, e.g. "
                         "--aggregators='krum,bucketing(bucket_size=2)+krum' or --attacks='gaussian(std=1.0),gaussian(std=10.0)'")
    if clash:
        raise ValueError(f"grid axes {', '.join(clash)} are set by the sweep's own axes (--attacks, --aggregators, "
                         "--malicious_fractions, --partitions)")
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
    for attack, rule, frac, part, *extra in itertools.product(attacks, rules, spec.malicious_fractions,
                                                               spec.partitions, *grid.values()):
        axes = dict(attack=attack, aggregator=rule, malicious_fraction=float(frac), partition=part,
                    **dict(zip(grid, extra)))
        overrides = dict(attack=attack, aggregator=rule, num_malicious=int(round(frac * spec.base.num_clients)),
                         **partitions[part], **dict(zip(grid, extra)))
        config = replace_fields(spec.base, overrides, f"cell {axes}")
        given.append(config)
        # The shared base's settings that do not apply to this cell (the base's dirichlet_alpha in
        # an iid cell, its flat --kappa in a median cell) are left out of it; check_unused refuses
        # those that apply to no cell.
        config = dataclasses.replace(config, **{n: _DEFAULTS[n] for n in inapplicable(config)})
        config = scoped(config, notice=notice, refuse_unused=False)
        label = "__".join([attack, rule, f"m{frac:g}", part] + [f"{k}-{v}" for k, v in zip(grid, extra)])
        cells.append(Cell(axes, config, f"{_label(label)}__{cell_key(config, spec.seeds)}"))
    check_unused(given, cells)
    return cells


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}


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
        if not any(flat_settings.param_of(name, term) for cell in cells
                   for term in spec_lib.parse(getattr(cell.config, on))):
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


# ----------------------------------------------------------------------------- programs


SEED_EXECUTIONS = ("auto", "vmap", "map", "parallel")
"""How a cell's seeds run inside its one program: ``vmap`` (batched: one wide program, for
hardware with parallelism to spare), ``map`` (``lax.map``: one seed after another, memory of
one seed; for runs whose batched seeds would not fit), ``parallel`` (the seeds split over the
local devices with ``pmap``, e.g. one seed per CPU core after ``fljax.use_cpu_cores``), or
``auto`` (``resolve_seed_execution``)."""


def resolve_seed_execution(mode: str) -> str:
    """``auto`` -> the fastest measured: on a CPU whose cores are devices (``use_cpu_cores``),
    ``map``, so that each seed's clients run ``parallel`` over every core (no padding, unlike
    seeds split over the cores, and unlike ``vmap``, whose batched small matmuls XLA:CPU runs on
    one core); ``vmap`` elsewhere. Other modes as given."""
    if mode not in SEED_EXECUTIONS + ("single",):
        raise ValueError(f"--seed_execution must be one of {', '.join(SEED_EXECUTIONS)}, got {mode!r}")
    if mode == "auto":
        return "map" if fljax.client.default_execution() == "parallel" else "vmap"
    return mode


def build_cell(config: ExperimentConfig, seed_execution: str = "vmap"):
    """``build(config)`` for a seeds program: under ``vmap`` or ``parallel`` seeds, clients that
    would run ``parallel`` (``pmap`` over the CPU devices) run ``sequential`` instead, since the
    seeds program owns the devices (and a ``pmap`` under the seeds' ``vmap`` was measured ~35x
    slower with median on 2 CPU devices); under ``map`` (one seed at a time) they keep them."""
    execution = config.execution if config.execution != "auto" else fljax.client.default_execution()
    if execution == "parallel" and resolve_seed_execution(seed_execution) in ("vmap", "parallel"):
        config = dataclasses.replace(config, execution="sequential")
    return build(config)


def seeds_program(train, mode: str = "vmap"):
    """The jitted run of ``train`` on several keys: ``(data, keys [S, 2]) -> (diverged_round [S],
    History with a leading seed axis)``; ``mode="single"``: ``(data, key [2])``, no seed axis."""
    mode = resolve_seed_execution(mode)

    def one(data, key):
        state, history = train.run(train.init(key), data)
        return state.diverged_round, history

    if mode == "single":
        return jax.jit(one)
    if mode == "map":
        return jax.jit(lambda data, keys: jax.lax.map(lambda k: one(data, k), keys))
    if mode == "parallel":
        return jax.jit(lambda data, keys: fljax.client.map_clients(lambda k: one(data, k), keys, "parallel"))
    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def _static_key(config: ExperimentConfig, data, keys, mode: str) -> str:
    shared = () if partition_in_program(config) else PARTITION_FIELDS  # else the partition is only the data argument
    fields = {k: v for k, v in config_dict(config).items() if k not in shared}
    shapes = [(tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves((data, keys))]
    return json.dumps([fields, shapes, mode], sort_keys=True, default=str)


class ProgramCache:
    """Compiled cell programs keyed by everything static about them (config less the partition
    fields, the data's shapes, the number of seeds): a cell whose key was seen reuses the
    executable. ``compiled`` / ``reused`` count the two cases."""

    def __init__(self):
        self._programs: dict[str, Any] = {}
        self.compiled = 0
        self.reused = 0

    def get(self, exp, keys, mode: str = "vmap"):
        """``(executable, compile_seconds, shared)`` for ``exp`` run on ``keys`` (see ``seeds_program``)."""
        key = _static_key(exp.config, exp.data, keys, mode)
        if key in self._programs:
            self.reused += 1
            return self._programs[key], 0.0, True
        t0 = time.perf_counter()
        executable = seeds_program(exp.train, mode).lower(exp.data, keys).compile()
        self._programs[key] = executable
        self.compiled += 1
        return executable, time.perf_counter() - t0, False


def _keys(seeds: Sequence[int]):
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def _nan_stats(values) -> dict:
    arr = np.asarray(values, np.float64)
    real = arr[~np.isnan(arr)]
    mean = float(real.mean()) if real.size else float("nan")
    std = float(real.std(ddof=1)) if real.size > 1 else (0.0 if real.size else float("nan"))
    return {"mean": mean, "std": std, "values": arr.tolist()}


def summarize(seeds, diverged_round, history) -> dict:
    """Per-seed arrays of a vmapped run -> the cell's ``final`` / ``evals`` / ``history`` dicts.

    ``final[m]`` holds ``mean``, ``std`` (sample std over seeds, ddof=1; NaN seeds left out) and
    the per-seed ``values``: every evaluation metric at the last evaluation, the detection rates
    averaged over rounds (NaN rounds, e.g. with no malicious client, left out), the number of
    rounds with more attacking clients than f (``rounds_beyond_f``), and ``diverged`` (1 for a
    seed whose global model went non-finite)."""
    rounds, evals = jax.device_get(history.rounds), jax.device_get(history.evals)
    diverged_round = np.asarray(diverged_round)
    final = {k: _nan_stats(np.asarray(v)[:, -1]) for k, v in evals.items() if k != "finite"}
    for k in ("detection_tpr", "detection_fpr"):
        arr = np.asarray(rounds[k], np.float64)
        per_seed = [float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan") for r in arr]
        final[k] = _nan_stats(per_seed)
    # rounds with more attacking clients than f (partial participation), reported, not hidden
    final["rounds_beyond_f"] = _nan_stats(np.asarray(rounds["beyond_f"], np.float64).sum(axis=1))
    final["diverged"] = _nan_stats((diverged_round >= 0).astype(np.float64))
    return {
        "seeds": list(seeds),
        "final": final,
        "diverged_round": [int(r) if r >= 0 else None for r in diverged_round],
        "evals": dict({k: np.asarray(v).tolist() for k, v in evals.items()},
                      round=np.asarray(history.eval_rounds)[0].tolist()),
        "history": {k: np.asarray(v).tolist() for k, v in rounds.items()},
    }


def run_cell(cell: Cell, seeds: Sequence[int], cache: ProgramCache, seed_execution: str = "vmap") -> dict:
    """Builds ``cell`` and runs all ``seeds`` as one program; returns its result dict."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SettingNotice)
        exp = build_cell(cell.config, seed_execution)
    notices = [str(w.message) for w in caught if issubclass(w.category, SettingNotice)]
    for w in caught:
        if not issubclass(w.category, SettingNotice):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    keys = _keys(seeds)
    build_seconds = time.perf_counter() - t0
    program, compile_seconds, shared = cache.get(exp, keys, seed_execution)
    t1 = time.perf_counter()
    diverged_round, history = jax.block_until_ready(program(exp.data, keys))
    seconds = time.perf_counter() - t1
    result = {"version": FORMAT_VERSION, "name": cell.name, "key": cell_key(cell.config, seeds), "cell": cell.axes,
              "num_malicious": cell.config.num_malicious, "config": config_dict(cell.config)}
    result.update(summarize(seeds, diverged_round, history), notices=notices)
    result["timing"] = {"build_seconds": build_seconds, "compile_seconds": compile_seconds, "seconds": seconds,
                        "program": "shared" if shared else "compiled", "backend": jax.default_backend(),
                        "seed_execution": seed_execution,
                        "rounds_per_second": cell.config.rounds * len(seeds) / seconds if seconds > 0 else math.inf}
    return result


def load_cell(path: str, cell: Cell, seeds: Sequence[int]) -> tuple[Optional[dict], str]:
    """``(result, "")`` when ``path`` holds ``cell``'s complete result, else ``(None, why not)``."""
    if not os.path.exists(path):
        return None, "no file"
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(result, dict) or result.get("version") != FORMAT_VERSION:
        return None, "another format version"
    if result.get("config") != config_dict(cell.config) or result.get("seeds") != list(seeds):
        return None, "another config or seeds"
    final = result.get("final")
    if not isinstance(final, dict) or "accuracy" not in final or not all(
            isinstance(v, dict) and len(v.get("values", ())) == len(seeds) for v in final.values()):
        return None, "incomplete"
    if not all(k in result for k in ("evals", "history", "timing", "cell")):
        return None, "incomplete"
    return result, ""


# ----------------------------------------------------------------------------- seeds: vmap vs one by one


def compare_seed_execution(config: ExperimentConfig, seeds: Sequence[int], cache: Optional[ProgramCache] = None,
                           seed_execution: str = "vmap") -> dict:
    """Times one cell's seeds as one program (``seed_execution``, vmap by default) against the
    same seeds run one by one (one compiled single-seed program called per seed; each timed once
    after compiling), and checks that both give the same accuracies."""
    cache = ProgramCache() if cache is None else cache
    exp = build_cell(config, seed_execution)
    keys = _keys(seeds)
    vmapped, vmap_compile, _ = cache.get(exp, keys, seed_execution)
    single, single_compile, _ = cache.get(exp, keys[0], "single")
    t0 = time.perf_counter()
    v_div, v_hist = jax.block_until_ready(vmapped(exp.data, keys))
    vmap_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = [jax.block_until_ready(single(exp.data, k)) for k in keys]
    sequential_seconds = time.perf_counter() - t0
    acc_v = np.asarray(v_hist.evals["accuracy"])
    acc_s = np.stack([np.asarray(h.evals["accuracy"]) for _, h in singles])
    return {"cell": {"attack": config.attack, "aggregator": config.aggregator, "dataset": config.dataset,
                     "model": config.model, "num_clients": config.num_clients,
                     "clients_per_round": config.clients_per_round, "rounds": config.rounds},
            "seeds": list(seeds), "backend": jax.default_backend(), "seed_execution": seed_execution,
            "vmap_seconds": vmap_seconds, "sequential_seconds": sequential_seconds,
            "speedup": sequential_seconds / vmap_seconds if vmap_seconds > 0 else math.inf,
            "saved_seconds": sequential_seconds - vmap_seconds,
            "vmap_compile_seconds": vmap_compile, "single_compile_seconds": single_compile,
            "max_abs_accuracy_difference": float(np.nanmax(np.abs(acc_v - acc_s))) if acc_v.size else 0.0}


# ----------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class SweepResult:
    """What ``run_sweep`` did: every cell's result (grid order), the cells it could not run
    (with the reason), the names of the cells computed now and of those found finished."""

    cells: list
    invalid: list
    computed: list
    skipped: list
    timing: dict
    seed_vmap: Optional[dict]
    output_dir: Optional[str]
    spec: SweepSpec


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)


def fallback_output_dir() -> str:
    """A fresh writable folder for a sweep whose ``output_dir`` failed (``checkpoint.fallback_folders``)."""
    name = f"fljax-sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for folder in checkpoint_lib.fallback_folders():
        path = os.path.join(folder, name)
        try:
            checkpoint_lib.probe_writable(path, "directory")
        except OSError:
            continue
        return path
    raise OSError(f"no writable folder for the sweep's results among {checkpoint_lib.fallback_folders()}")


def run_sweep(spec: SweepSpec, output_dir: Optional[str] = None, *, log: Callable = print, progress: bool = True,
              compare_sequential_seeds: bool = False, allow_missing: bool = False,
              cache: Optional[ProgramCache] = None, seed_execution: str = "auto") -> SweepResult:
    """Runs every cell of ``spec`` (skipping finished ones in ``output_dir``) and writes the
    outputs (see the module docstring) when ``output_dir`` is given. Each cell's seeds run as
    one program (``seed_execution``: ``vmap``, ``parallel``, ``map`` or ``auto``; see
    ``SEED_EXECUTIONS``).

    Raises:
      ValueError: an attack or aggregator is not registered (unless ``allow_missing``), or an
        axis value is malformed. Cells whose settings a rule or attack rejects (e.g. Krum with
        too many Byzantine clients) are reported in ``invalid`` and skipped, not fatal.
    """
    with warnings.catch_warnings():  # the cells' notices go to log once each (make_cells)
        warnings.simplefilter("ignore", FutureWarning)
        return _run_sweep(spec, output_dir, log=log, progress=progress, compare_sequential_seeds=compare_sequential_seeds,
                          allow_missing=allow_missing, cache=cache, seed_execution=seed_execution)


def _run_sweep(spec, output_dir, *, log, progress, compare_sequential_seeds, allow_missing, cache, seed_execution):
    start = time.perf_counter()
    if seed_execution not in SEED_EXECUTIONS:
        raise ValueError(f"--seed_execution must be one of {', '.join(SEED_EXECUTIONS)}, got {seed_execution!r}")
    seed_execution = resolve_seed_execution(seed_execution)
    spec = check_registered(spec, allow_missing, log)
    cells = make_cells(spec, log)
    cache = ProgramCache() if cache is None else cache
    invalid, runnable = [], []
    for cell in cells:
        why = check_cell(cell.config)
        if why:
            invalid.append({"cell": cell.axes, "name": cell.name, "reason": why})
        else:
            runnable.append(cell)
    for item in invalid:
        log(f"cannot run {item['name']}: {item['reason']}")
    cell_dir = os.path.join(output_dir, "cells") if output_dir else None
    seed_vmap = None
    if compare_sequential_seeds and runnable:
        seed_vmap = compare_seed_execution(runnable[0].config, spec.seeds, cache, seed_execution)
        log(f"seeds in one {seed_execution} program vs one by one ({len(spec.seeds)} seeds, cell {runnable[0].name}): "
            f"{seed_vmap['vmap_seconds']:.2f} s vs {seed_vmap['sequential_seconds']:.2f} s "
            f"({seed_vmap['speedup']:.2f}x)")
    results, computed, skipped = [], [], []
    bar = _progress(len(runnable), progress)
    say = bar.write if bar is not None else log
    notice = _notice_once(set(), say)
    for cell in runnable:
        path = os.path.join(cell_dir, cell.name + ".json") if cell_dir else None
        result, why = load_cell(path, cell, spec.seeds) if path else (None, "no output_dir")
        if result is not None:
            skipped.append(cell.name)
        else:
            if path and why != "no file":
                say(f"recomputing {cell.name}: cell file {why}")
            if bar is not None:
                bar.set_postfix_str(f"{cell.axes['attack']} vs {cell.axes['aggregator']}", refresh=True)
            try:
                result = run_cell(cell, spec.seeds, cache, seed_execution)
            except ValueError as e:  # a check that needs the data (e.g. too few examples)
                invalid.append({"cell": cell.axes, "name": cell.name, "reason": str(e)})
                say(f"cannot run {cell.name}: {e}")
                result = None
            if result is not None:
                computed.append(cell.name)
                for message in result["notices"]:
                    notice(message)
                if path:
                    target = os.path.join(output_dir, "cells", cell.name + ".json")
                    try:
                        run_lib.write_json_atomic(target, result)
                    except OSError as e:  # keep every finished cell: go on in a fallback folder
                        output_dir = fallback_output_dir()
                        say(f"error: could not write {target} ({e}); the sweep's new cells and its results go to "
                            f"{output_dir} from now on")
                        run_lib.write_json_atomic(os.path.join(output_dir, "cells", cell.name + ".json"), result)
                f, t = result["final"], result["timing"]
                say(f"{cell.name}: accuracy {f['accuracy']['mean']:.4f} +- {f['accuracy']['std']:.4f}"
                    + (f", ASR {f['attack_success_rate']['mean']:.4f}" if "attack_success_rate" in f else "")
                    + f"  [{t['seconds']:.1f} s run, {t['compile_seconds']:.1f} s compile"
                    + (", shared program" if t["program"] == "shared" else "") + "]")
        if result is not None:
            results.append(result)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    timing = {"wall_seconds": time.perf_counter() - start, "cells": len(cells), "computed": len(computed),
              "skipped": len(skipped), "invalid": len(invalid), "programs_compiled": cache.compiled,
              "programs_reused": cache.reused, "backend": jax.default_backend(), "seed_execution": seed_execution,
              "compile_seconds": sum(r["timing"]["compile_seconds"] for r in results if r["name"] in computed),
              "run_seconds": sum(r["timing"]["seconds"] for r in results if r["name"] in computed)}
    out = SweepResult(results, invalid, computed, skipped, timing, seed_vmap, output_dir, spec)
    if output_dir:
        try:
            write_outputs(out)
        except OSError as e:
            out = dataclasses.replace(out, output_dir=fallback_output_dir())
            log(f"error: could not write the sweep's results to {output_dir} ({e}); they were saved to "
                f"{out.output_dir} instead")
            write_outputs(out)
    log(f"{len(computed)} cells computed, {len(skipped)} already done, {len(invalid)} invalid; "
        f"wall time {timing['wall_seconds']:.1f} s ({timing['programs_compiled']} programs compiled, "
        f"{timing['programs_reused']} reused)")
    return out


# ----------------------------------------------------------------------------- outputs


def slices(spec: SweepSpec) -> list[dict]:
    """The heatmap / table slices: every (malicious fraction, partition, extra-axis values)."""
    keys = ["malicious_fraction", "partition"] + list(spec.grid)
    values = [[float(f) for f in spec.malicious_fractions], list(spec.partitions)] + list(spec.grid.values())
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _slice_name(s: dict) -> str:
    return _label("__".join(f"{k}-{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in s.items()))


def _slice_title(s: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("malicious_fraction", "partition"))
    return f"{s['malicious_fraction']:.0%} malicious, {s['partition']}" + (f", {extra}" if extra else "")


def matrix(result: SweepResult, s: dict, metric: str):
    """``(attacks, aggregators, mean [A, G], std [A, G])`` of ``metric`` in slice ``s`` (NaN where
    a cell is missing, invalid or lacks the metric)."""
    attacks = expand(result.spec.attacks, "attack")
    rules = expand(result.spec.aggregators, "aggregator")
    mean = np.full((len(attacks), len(rules)), np.nan)
    std = np.full_like(mean, np.nan)
    for r in result.cells:
        if all(r["cell"].get(k) == v for k, v in s.items()) and metric in r["final"]:
            i, j = attacks.index(r["cell"]["attack"]), rules.index(r["cell"]["aggregator"])
            mean[i, j], std[i, j] = r["final"][metric]["mean"], r["final"][metric]["std"]
    return attacks, rules, mean, std


def heatmap_figure(result: SweepResult, s: dict):
    """A matplotlib figure for slice ``s``: accuracy and (when any cell has one) attack success
    rate, attack (rows) x aggregator (columns), each cell annotated with mean and std over seeds."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", "test accuracy", "viridis")]
    if any("attack_success_rate" in r["final"] for r in result.cells):
        metrics.append(("attack_success_rate", "attack success rate", "magma_r"))
    attacks, rules, _, _ = matrix(result, s, "accuracy")
    width = 1.2 + 0.95 * len(rules)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 1.0 + 0.55 * len(attacks)), squeeze=False)
    for ax, (metric, title, cmap) in zip(axes[0], metrics):
        _, _, mean, std = matrix(result, s, metric)
        colors = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")  # missing / invalid cells in grey
        image = ax.imshow(np.ma.masked_invalid(mean), cmap=colors, vmin=0.0, vmax=1.0, aspect="auto")
        for i, j in itertools.product(range(len(attacks)), range(len(rules))):
            text = "n/a" if np.isnan(mean[i, j]) else f"{mean[i, j]:.2f}\n±{std[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(mean[i, j]) or (mean[i, j] > 0.5) == (cmap == "viridis") else "white")
        ax.set_xticks(range(len(rules)), rules, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
        ax.set_xlabel("aggregator")
        ax.set_ylabel("attack")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    base = result.spec.base
    fig.suptitle(f"{base.dataset} / {base.model}: {_slice_title(s)} ({len(result.spec.seeds)} seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def _fmt(stats: Optional[dict]) -> str:
    if not stats or stats["mean"] is None or math.isnan(stats["mean"]):
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def markdown(result: SweepResult) -> str:
    """The sweep as Markdown: setup, timing, then per slice an accuracy table (and an attack
    success rate table), attack rows x aggregator columns, mean ± std over seeds."""
    spec, t = result.spec, result.timing
    base = spec.base
    lines = [f"# Sweep: {base.dataset} / {base.model}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [f"{base.num_clients} clients ({base.clients_per_round} per round), {base.rounds} rounds of {base.protocol}, "
              f"seeds {', '.join(map(str, spec.seeds))} (one {t['seed_execution']} program per cell; data partition "
              f"seed {base.seed}). "
              f"Entries: mean ± std over seeds of the final evaluation.", "",
              f"Wall time {t['wall_seconds']:.1f} s on {t['backend']}: {t['computed']} cells computed "
              f"({t['run_seconds']:.1f} s running, {t['compile_seconds']:.1f} s compiling; {t['programs_compiled']} programs "
              f"compiled, {t['programs_reused']} reused), {t['skipped']} already done, {t['invalid']} invalid.", ""]
    if result.seed_vmap:
        v = result.seed_vmap
        lines += [f"Seeds in one {v['seed_execution']} program vs one by one ({len(v['seeds'])} seeds, {v['cell']['attack']} vs "
                  f"{v['cell']['aggregator']}, {v['cell']['rounds']} rounds): {v['vmap_seconds']:.2f} s vs "
                  f"{v['sequential_seconds']:.2f} s, {v['speedup']:.2f}x ({v['saved_seconds']:.2f} s saved; compile "
                  f"{v['vmap_compile_seconds']:.1f} s vs {v['single_compile_seconds']:.1f} s).", ""]
    for s in slices(spec):
        name = _slice_name(s)
        lines += [f"## {_slice_title(s)}", ""]
        for metric, title in (("accuracy", "Test accuracy"), ("attack_success_rate", "Attack success rate"),
                              ("source_recall", "Source-class recall (targeted label flip) / accuracy on triggered "
                                                "inputs (backdoors): the attack's test examples classified as their "
                                                "true label"),
                              ("detection_tpr", "Detection TPR (malicious clients flagged, mean over rounds)"),
                              ("detection_fpr", "Detection FPR (honest clients flagged, mean over rounds)")):
            attacks, rules, _, _ = matrix(result, s, metric)
            rows = {(r["cell"]["attack"], r["cell"]["aggregator"]): r["final"].get(metric)
                    for r in result.cells if all(r["cell"].get(k) == v for k, v in s.items())}
            if not any(v for v in rows.values()):
                continue
            attacks = [a for a in attacks if any(rows.get((a, g)) for g in rules)]  # e.g. no ASR of untargeted attacks
            lines += [f"{title}:", "", "| attack | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
            lines += [f"| {a} | " + " | ".join(_fmt(rows.get((a, g))) for g in rules) + " |" for a in attacks]
            lines.append("")
        lines += [f"![{_slice_title(s)}](heatmap_{name}.png)", ""]
    if result.invalid:
        lines += ["## Cells that cannot run", ""] + [f"- `{i['name']}`: {i['reason']}" for i in result.invalid] + [""]
    return "\n".join(lines)


def _csv_axes(result: SweepResult) -> list[str]:
    return list(AXES) + ["num_malicious"] + list(result.spec.grid)


def write_csv(result: SweepResult, path: str) -> None:
    """One row per cell: axes, then ``<metric>_mean`` / ``<metric>_std`` of every final metric."""
    metrics = sorted({m for r in result.cells for m in r["final"]})
    header = _csv_axes(result) + ["seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + [
        "seconds", "compile_seconds", "program", "cell_file"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in result.cells:
            row = [r["cell"].get(k, r.get(k)) for k in _csv_axes(result)] + [" ".join(map(str, r["seeds"]))]
            for m in metrics:
                stats = r["final"].get(m, {"mean": "", "std": ""})
                row += [stats["mean"], stats["std"]]
            row += [r["timing"]["seconds"], r["timing"]["compile_seconds"], r["timing"]["program"],
                    f"cells/{r['name']}.json"]
            w.writerow(row)


def write_history_csv(result: SweepResult, path: str) -> None:
    """One row per cell x seed x round: the round's metrics, and the evaluation metrics on the
    rounds that ended with an evaluation (empty elsewhere)."""
    round_metrics = sorted({m for r in result.cells for m in r["history"]})
    eval_metrics = sorted({m for r in result.cells for m in r["evals"] if m not in ("round", "finite")})
    axes = _csv_axes(result)
    columns = [f"round_{m}" if m in axes else m for m in round_metrics]  # e.g. the cohort's num_malicious
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell"] + axes + ["seed", "round"] + columns + eval_metrics)
        for r in result.cells:
            axes = [r["cell"].get(k, r.get(k)) for k in _csv_axes(result)]
            at_eval = {rnd: i for i, rnd in enumerate(r["evals"]["round"])}
            for si, seed in enumerate(r["seeds"]):
                num_rounds = len(next(iter(r["history"].values()))[si])
                for t in range(num_rounds):
                    e = at_eval.get(t + 1)
                    row = [r["name"]] + axes + [seed, t + 1]
                    row += [r["history"][m][si][t] if m in r["history"] else "" for m in round_metrics]
                    row += [r["evals"][m][si][e] if e is not None and m in r["evals"] else "" for m in eval_metrics]
                    w.writerow(row)


def write_outputs(result: SweepResult) -> list[str]:
    """Writes results.json / .csv / .md, history.csv, the heatmaps (and seed_vmap.json)."""
    import matplotlib.pyplot as plt

    out = result.output_dir
    os.makedirs(out, exist_ok=True)
    payload = {"spec": _spec_dict(result.spec), "timing": result.timing, "seed_vmap": result.seed_vmap,
               "invalid": result.invalid, "cells": result.cells}
    run_lib.write_json_atomic(os.path.join(out, "results.json"), payload)
    if result.seed_vmap:
        run_lib.write_json_atomic(os.path.join(out, "seed_vmap.json"), result.seed_vmap)
    write_csv(result, os.path.join(out, "results.csv"))
    write_history_csv(result, os.path.join(out, "history.csv"))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result))
    paths = []
    for s in slices(result.spec):
        fig = heatmap_figure(result, s)
        paths.append(os.path.join(out, f"heatmap_{_slice_name(s)}.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _spec_dict(spec: SweepSpec) -> dict:
    d = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("attack_settings", "aggregator_settings")}
    d["base"] = config_dict(scoped(spec.base, notice=lambda m: None, refuse_unused=False))
    return d


# ----------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS  # --config and every ExperimentConfig field are defined by experiments.run
flags.DEFINE_string("attacks", None, "comma list of --attack specs of experiments.run (chains included), or 'all': "
                    f"e.g. 'none,sign_flip(scale=10.0),backdoor(target_label=0)+pgd' (default: {','.join(DEFAULTS['attacks'])}). "
                    f"The registered ones, with their factories' defaults:\n{catalogue('attack')}")
flags.DEFINE_string("aggregators", None, "comma list of --aggregator specs of experiments.run (chains included), or "
                    "'all': e.g. 'median,krum(num_byzantine=2),bucketing(bucket_size=2)+krum' (default: "
                    f"{','.join(DEFAULTS['aggregators'])}). The registered ones, with their factories' defaults:\n"
                    f"{catalogue('aggregator')}")
flags.DEFINE_list("malicious_fractions", None, "shares of malicious clients in the population (default: 0.2)")
flags.DEFINE_list("partitions", None, "iid, dirichlet:<alpha>, bias:<p>, shards:<per client> (default: iid)")
flags.DEFINE_list("seeds", None, "run keys, vmapped in one program per cell (default: 0,1,2); --seed fixes the data partition")
flags.DEFINE_multi_string("grid", [], "an extra axis over any config field: FIELD=v1,v2 (e.g. --grid=model=logreg,cnn); "
                          "separate values with ';' when they hold commas (--grid='client_lr=0.05;0.1'); components vary through "
                          "--attacks / --aggregators")
flags.DEFINE_string("output_dir", "results/sweep", "where the cells and the results go (a rerun resumes)")
flags.DEFINE_bool("compare_sequential_seeds", False, "also time the first cell's seeds one by one against the vmapped run")
flags.DEFINE_bool("allow_missing", False, "sweep only the registered attacks/aggregators of a preset naming missing ones")
flags.DEFINE_bool("progress", True, "show a progress bar over cells")
flags.DEFINE_enum("seed_execution", "auto", SEED_EXECUTIONS, "how a cell's seeds run in its one program: vmap "
                  "(batched), map (lax.map: one after another, memory of one seed), parallel (pmap: seeds "
                  "over the CPU cores' devices), auto (map on a multi-core CPU: each seed's clients over "
                  "every core; vmap elsewhere)")

_RUNNER_ONLY = ("output", "workdir", "checkpoint_every", "quiet")


def _parse_value(field: str, text: str):
    hints = typing.get_type_hints(ExperimentConfig)
    if field not in hints:
        raise ValueError(f"--grid: unknown config field {field!r}")
    kind = hints[field]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    if text.lower() == "none" and type(None) in typing.get_args(kind):
        return None
    if base is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--grid {field}: expected true/false, got {text!r}")
        return text.lower() == "true"
    try:
        return base(text) if base in (int, float) else text
    except ValueError:
        raise ValueError(f"--grid {field}: {text!r} is not {'an integer' if base is int else 'a number'}") from None


def spec_from_flags() -> SweepSpec:
    """The preset of ``--config`` (or the defaults), with every explicitly given flag on top."""
    preset = load_config_file(FLAGS.config) if FLAGS.config else None
    spec = preset if isinstance(preset, SweepSpec) else SweepSpec(base=preset or run_lib.config_from_flags(), **DEFAULTS)
    overrides = {f.name: FLAGS[f.name].value for f in dataclasses.fields(ExperimentConfig) if FLAGS[f.name].present}
    owned = sorted(set(overrides) & {"attack", "aggregator", "num_malicious"} | (set(overrides) & set(PARTITION_FIELDS)))
    if owned:
        raise ValueError(f"--{', --'.join(owned)}: set by the sweep's axes; use --attacks, --aggregators, "
                         "--malicious_fractions, --partitions")
    spec = dataclasses.replace(spec, base=replace_fields(spec.base, overrides, "flags"))
    conv = {"malicious_fractions": float, "seeds": int}
    for axis in ("attacks", "aggregators", "malicious_fractions", "partitions", "seeds"):
        if FLAGS[axis].value is not None:
            given = FLAGS[axis].value
            items = spec_lib.split(given, f"--{axis}") if isinstance(given, str) else given
            try:
                values = [conv.get(axis, str)(v.strip()) for v in items]
            except ValueError:
                raise ValueError(f"--{axis}: expected a comma list of {'integers' if axis == 'seeds' else 'numbers'}, "
                                 f"got {','.join(FLAGS[axis].value)}") from None
            spec = dataclasses.replace(spec, **{axis: values})
    if FLAGS.grid:
        grid = dict(spec.grid)
        for item in FLAGS.grid:
            field, sep, values = item.partition("=")
            if not sep or not values:
                raise ValueError(f"--grid must be FIELD=v1,v2, got {item!r}")
            grid[field] = [_parse_value(field, v.strip()) for v in values.split(";" if ";" in values else ",")]
        spec = dataclasses.replace(spec, grid=grid)
    return spec


def main(argv) -> int:
    logging.set_verbosity(logging.WARNING)
    run_lib.use_cpu_cores()
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected positional argument(s) {' '.join(argv[1:])!r}; settings are flags")
        given = [n for n in _RUNNER_ONLY if FLAGS[n].present]
        if given:
            raise ValueError(f"--{', --'.join(given)}: flags of experiments.run; the sweep writes to --output_dir "
                             "and resumes from it")
        run_lib._writable_location("output_dir", FLAGS.output_dir, "directory")
        spec = spec_from_flags()
        spec = check_registered(spec, FLAGS.allow_missing)
        make_cells(spec)  # malformed axes fail here, before any data is loaded
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_sweep(spec, FLAGS.output_dir, progress=FLAGS.progress, allow_missing=FLAGS.allow_missing,
                       compare_sequential_seeds=FLAGS.compare_sequential_seeds, seed_execution=FLAGS.seed_execution)
    print(f"results in {result.output_dir}/ (results.md, results.csv, results.json, history.csv, heatmap_*.png)")
    return 0 if os.path.abspath(result.output_dir) == os.path.abspath(FLAGS.output_dir) else 1


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=run_lib.parse_flags)
