"""Named experiment presets: Python config files, one per reproduction.

Each preset (``experiments/configs/<name>.py``) defines ``get_config()`` returning either an
``fljax.experiment.ExperimentConfig`` (one experiment) or a ``SweepSpec`` (a grid whose ``base``
is one experiment), in the style of the flax / fedjax examples. Components carry their
arguments in their specs (``"krum(num_byzantine=2)"``, ``"backdoor(target_label=0)+pgd"``)::

    python -m experiments.run   --config=experiments/configs/fang2020.py              # the base experiment
    python -m experiments.sweep --config=experiments/configs/fang2020.py --rounds=5   # the grid, flags on top

Flags given explicitly on the command line override the preset's values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Sequence, Union

from fljax.experiment import ExperimentConfig


@dataclasses.dataclass
class SweepSpec:
    """A grid of experiments: ``base`` with every combination of the axes applied on top.

    Attributes:
      base: the settings every cell shares. ``base.seed`` seeds the data partition and the
        test split, fixed for every cell of the grid; ``seeds`` are the run keys.
      attacks, aggregators: the ``--attack`` / ``--aggregator`` specs of the cells, each a
        registered name with its arguments, chains included (``"fang_krum(knowledge='partial')"``,
        ``"backdoor(target_label=0)+model_replacement(gamma=5.0)"``,
        ``"bucketing(bucket_size=2)+krum"``); ``"all"`` expands to every registered name (a
        name without the arguments it needs is an invalid cell).
      malicious_fractions: shares of the population that is malicious; a cell has
        ``num_malicious = round(fraction * num_clients)``.
      partitions: ``iid``, ``dirichlet:<alpha>``, ``bias:<p>`` or ``shards:<per client>``.
      seeds: run keys ``jax.random.PRNGKey(seed)`` (model init, cohorts, local batches, attack
        noise), all of a cell's seeds run as one vmapped program on one data partition.
      grid: extra axes, config field -> values (e.g. ``{"model": ["logreg", "cnn"]}``).
      pending: names the preset uses that were not registered when it was written (for the
        reader; a name still missing at run time stops the sweep with the full list).
      description: what the preset reproduces.
    """

    base: ExperimentConfig
    attacks: Sequence[str] = ("none",)
    aggregators: Sequence[str] = ("mean",)
    malicious_fractions: Sequence[float] = (0.2,)
    partitions: Sequence[str] = ("iid",)
    seeds: Sequence[int] = (0,)
    grid: dict = dataclasses.field(default_factory=dict)
    pending: Sequence[str] = ()
    description: str = ""
    attack_settings: None = None  # retired: the specs carry the arguments
    aggregator_settings: None = None

    def __post_init__(self):
        for name in ("attack_settings", "aggregator_settings"):
            if getattr(self, name):
                axis = name.split("_")[0] + "s"
                raise ValueError(f"SweepSpec: {name} is retired: write each component's arguments into its spec in "
                                 f"{axis}, e.g. {axis}=['gaussian(std=200.0)'] or ['bucketing(bucket_size=2)+krum'] "
                                 "(see experiments/configs/)")


Preset = Union[ExperimentConfig, SweepSpec]


def load_config_file(path: str) -> Preset:
    """Executes the Python file ``path`` and returns its ``get_config()``.

    Raises:
      ValueError: the file is missing, defines no ``get_config``, or returns something else
        than an ``ExperimentConfig`` or a ``SweepSpec``.
    """
    if not isinstance(path, str) or not os.path.isfile(path):
        raise ValueError(f"--config must be a Python config file, got {path!r}")
    name = "fljax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"--config {path}: the file defines no get_config()")
    config = module.get_config()
    if not isinstance(config, (ExperimentConfig, SweepSpec)):
        raise ValueError(f"--config {path}: get_config() must return an ExperimentConfig or a SweepSpec, "
                         f"got {type(config).__name__}")
    return config


def base_config(preset: Preset) -> ExperimentConfig:
    """The single experiment of a preset: itself, or a sweep's ``base``."""
    return preset.base if isinstance(preset, SweepSpec) else preset


def replace_fields(config: ExperimentConfig, overrides: dict[str, Any], where: str) -> ExperimentConfig:
    """``dataclasses.replace`` that names unknown fields (e.g. a setting of a rule not merged yet)."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} (not fields of ExperimentConfig)")
    return dataclasses.replace(config, **overrides)
