"""The flat per-component settings of the previous release (``--kappa``, ``--attack_scale``,
``--data_attack``, ``--pre_aggregation``, ...), accepted for one more release.

``ExperimentConfig`` inherits these fields, all unset by default. ``into_specs`` moves a config's
set ones into its component specs (``--kappa=0.5 --aggregator=foolsgold`` becomes
``--aggregator='foolsgold(kappa=0.5)'``) and reports each with a one-line notice naming the
replacement; the runner, the sweep and ``build`` call it, so old commands, presets and notebooks
run unchanged and their results record the scoped form. This module goes in the next release.

A setting goes to every component of its chain that has the parameter it names (``max_norm``
to ``norm_clipping`` and to the ``clip`` pre-aggregation). A setting that no component of its
chain takes is refused, by one rule for every flag (``--max_norm`` with ``median``, like
``--trigger_size`` with ``sign_flip``): ``--max_norm does not apply to --aggregator=median: no
component of it takes max_norm``. A sweep, whose base is shared by cells of different
components, refuses only a setting that no cell takes, and ignores it (with a notice) in the
others.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax.spec import Spec


def _flat(on: str, *params: str, help: str = ""):
    """A deprecated field of the ``on`` chain ("aggregator" or "attack") that sets ``params``
    (the first one a component has), unset (None) by default."""
    return dataclasses.field(default=None, repr=False, metadata={"flat": on, "params": params, "help": help})


@dataclasses.dataclass
class FlatSettings:
    """The deprecated flat settings: each one is a keyword argument of a component now."""

    data_attack: Optional[str] = _flat("attack", help="the data attack before the model attack in --attack")
    pre_aggregation: Optional[str] = _flat("aggregator", help="pre-aggregations before the rule in --aggregator")
    attack_scale: Optional[float] = _flat(
        "attack", help="the model attack's strength (sign_flip's scale, gaussian's std, ipm's epsilon)"
    )
    source_class: Optional[int] = _flat("attack", "source")
    target_class: Optional[int] = _flat("attack", "target", "target_label")
    trigger_size: Optional[int] = _flat("attack", "trigger_size")
    trigger_position: Optional[str] = _flat("attack", "trigger_position")
    trigger_pattern: Optional[str] = _flat("attack", "trigger_pattern")
    trigger_value: Optional[float] = _flat("attack", "trigger_value")
    poison_fraction: Optional[float] = _flat("attack", "poison_fraction")
    num_parts: Optional[int] = _flat("attack", "num_parts")
    trigger_features: Optional[str] = _flat("attack", "trigger_features")
    trigger_values: Optional[str] = _flat("attack", "trigger_values")
    trigger_percentile: Optional[float] = _flat("attack", "trigger_percentile")
    gamma: Optional[float] = _flat("attack", "gamma")
    alpha: Optional[float] = _flat("attack", "alpha")
    norm_bound: Optional[float] = _flat("attack", "norm_bound")
    mask_ratio: Optional[float] = _flat("attack", "mask_ratio")
    objective: Optional[str] = _flat("attack", "objective")
    constraint: Optional[str] = _flat("attack", "constraint")
    attack_steps: Optional[int] = _flat("attack", "attack_steps")
    attack_lr: Optional[float] = _flat("attack", "attack_lr")
    init_point: Optional[str] = _flat("attack", "init_point")
    attack_knowledge: Optional[str] = _flat("attack", "knowledge")
    attack_colluding: Optional[bool] = _flat("attack", "colluding")
    attack_direction: Optional[str] = _flat("attack", "direction")
    alie_z: Optional[float] = _flat("attack", "z")
    fang_b: Optional[float] = _flat("attack", "b")
    mimic_choice: Optional[str] = _flat("attack", "choice")
    gamma_init: Optional[float] = _flat("attack", "gamma_init")
    num_selected: Optional[int] = _flat("aggregator", "num_selected")
    kappa: Optional[float] = _flat("aggregator", "kappa")
    feature_importance: Optional[bool] = _flat("aggregator", "feature_importance")
    xi: Optional[float] = _flat("aggregator", "xi")
    delta_xi: Optional[float] = _flat("aggregator", "delta_xi")
    prior_alpha: Optional[float] = _flat("aggregator", "prior_alpha")
    prior_beta: Optional[float] = _flat("aggregator", "prior_beta")
    block_threshold: Optional[float] = _flat("aggregator", "block_threshold")
    top_k: Optional[int] = _flat("aggregator", "top_k")
    similarity_threshold: Optional[float] = _flat("aggregator", "similarity_threshold")
    reputation_delta: Optional[float] = _flat("aggregator", "reputation_delta")
    noise_lambda: Optional[float] = _flat("aggregator", "noise_lambda")
    min_cluster_size: Optional[int] = _flat("aggregator", "min_cluster_size")
    num_iterations: Optional[int] = _flat("aggregator", "num_iterations")
    max_norm: Optional[float] = _flat("aggregator", "max_norm")
    noise_std: Optional[float] = _flat("aggregator", "noise_std")
    clip_radius: Optional[float] = _flat("aggregator", "clip_radius")
    bucket_size: Optional[int] = _flat("aggregator", "bucket_size")
    nu: Optional[float] = _flat("aggregator", "nu")
    tol: Optional[float] = _flat("aggregator", "tol")
    max_iter: Optional[int] = _flat("aggregator", "max_iter")
    subsample_dim: Optional[int] = _flat("aggregator", "subsample_dim")
    filter_frac: Optional[float] = _flat("aggregator", "filter_frac")
    norm_lower_bound: Optional[float] = _flat("aggregator", "norm_lower_bound")
    norm_upper_bound: Optional[float] = _flat("aggregator", "norm_upper_bound")
    coordinate_fraction: Optional[float] = _flat("aggregator", "coordinate_fraction")
    learning_threshold: Optional[int] = _flat("aggregator", "learning_threshold")


FIELDS = tuple(f.name for f in dataclasses.fields(FlatSettings))


def flag_help(field: dataclasses.Field, example: str) -> str:
    """The help of a deprecated flag: what replaces it."""
    what = field.metadata["help"] or f"{field.metadata['params'][0]} of the component"
    return f"DEPRECATED (goes in the next release): {what}; write it into --{field.metadata['flat']}, e.g. {example}"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _entry(on: str, name: str):
    """The registry entry of a component of the ``on`` chain (None if unknown: reported later)."""
    registries = (
        (aggregators_lib.PREAGGREGATORS, aggregators_lib.REGISTRY)
        if on == "aggregator"
        else (attacks_lib.DATA_ATTACKS, attacks_lib.MODEL_ATTACKS)
    )
    return next((r[name] for r in registries if name in r), None)


def check(config) -> None:
    """The checks the runner made on these settings itself (the components check the rest)."""
    c = config
    for name in ("source_class", "target_class"):
        v = getattr(c, name)
        _check(v is None or v >= 0, f"--{name} must be a class index >= 0, got {v!r}")
    _check(c.attack_scale is None or c.attack_scale > 0, f"--attack_scale must be > 0, got {c.attack_scale!r}")
    _check(
        c.num_selected is None or 1 <= c.num_selected <= c.clients_per_round,
        f"--num_selected must be in 1..clients_per_round={c.clients_per_round} (or unset), got {c.num_selected!r}",
    )


def given(config) -> dict:
    """The flat settings ``config`` sets."""
    return {name: getattr(config, name) for name in FIELDS if getattr(config, name) is not None}


def param_of(name: str, term: Spec) -> Optional[str]:
    """The parameter of component ``term`` that the flat setting ``name`` sets, or None (an
    unknown component, or one without such a parameter)."""
    meta = _META[name]
    entry = _entry(meta["flat"], term.name)
    if entry is None:
        return None
    params = entry.parameters()
    if name == "attack_scale":
        return entry.strength
    return next((p for p in meta["params"] if p in params), None)


def not_taken(name: str, where: str) -> str:
    """Why the flat setting ``name`` is refused with the chain ``where`` (e.g.
    ``--aggregator=median``): one line naming the flag and the parameter no component takes."""
    params = _META[name]["params"]
    what = " or ".join(params) if params else "a strength (scale, std, epsilon)"
    return f"--{name} does not apply to {where}: no component of it takes {what}"


def into_specs(
    config, attack: list[Spec], rule: list[Spec], notice: Callable[[str], None], refuse_unused: bool = True
) -> tuple[list[Spec], list[Spec], list[str]]:
    """Moves ``config``'s set flat settings into the ``attack`` and ``rule`` chains (as parsed
    from ``--attack`` and ``--aggregator``); returns the new chains and the settings moved (for
    the caller's notices, which name the final specs). A setting that no component takes raises
    ``ValueError`` (``not_taken``), or with ``refuse_unused=False`` (a sweep's cell) is reported
    through ``notice`` and ignored."""
    flat = given(config)
    check(config)
    old = {
        "attack": f"--attack={config.attack}" + (f" --data_attack={config.data_attack}" if config.data_attack else ""),
        "aggregator": f"--aggregator={config.aggregator}"
        + (f" --pre_aggregation={config.pre_aggregation}" if config.pre_aggregation else ""),
    }
    data_attacks, preaggregators = attacks_lib.DATA_ATTACKS, aggregators_lib.PREAGGREGATORS
    if "data_attack" in flat:
        name = flat["data_attack"]
        _check(
            name in data_attacks,
            f"--data_attack: unknown data attack {name!r}; valid: {', '.join(data_attacks.names())}",
        )
        _check(
            not any(t.name in data_attacks for t in attack),
            f"--data_attack: --attack={config.attack} is a data attack already; pair a data attack with a model "
            "attack (e.g. --attack='backdoor(target_label=0)+model_replacement')",
        )
        attack = [Spec(name)] + [t for t in attack if t.name != "none"]
    if "pre_aggregation" in flat:
        names = [p.strip() for p in flat["pre_aggregation"].split(",") if p.strip()]
        for name in names:
            _check(
                name in preaggregators,
                f"--pre_aggregation: unknown pre-aggregation {name!r}; valid: "
                f"{', '.join(preaggregators.names())} (comma list, applied in order)",
            )
        rule = [Spec(n) for n in names] + rule
    chains = {"attack": list(attack), "aggregator": list(rule)}
    moved = [name for name in ("data_attack", "pre_aggregation") if name in flat]
    for name, value in flat.items():
        meta = _META[name]
        if name in ("data_attack", "pre_aggregation"):
            continue
        terms, applied = chains[meta["flat"]], False
        for i, term in enumerate(terms):
            param = param_of(name, term)
            if param is None:
                continue
            _check(
                param not in term.kwargs,
                f"--{name}: {term.name}'s {param} is given twice, in --{meta['flat']} and by "
                f"the deprecated --{name}; keep the one in --{meta['flat']}",
            )
            terms[i] = term.with_args(**{param: value})
            applied = True
        if applied:
            moved.append(name)
        elif refuse_unused:
            raise ValueError(not_taken(name, old[meta["flat"]]))
        else:
            notice(f"--{name}={value!r}: no component of {old[meta['flat']]} takes it: ignored there")
    return chains["attack"], chains["aggregator"], moved


_META = {f.name: f.metadata for f in dataclasses.fields(FlatSettings)}


def on(name: str) -> str:
    """The chain a flat setting moves into: "attack" or "aggregator"."""
    return _META[name]["flat"]
