"""Named experiment presets: Python config files, one per reproduction.

Each preset (``experiments/configs/<name>.py``) defines ``get_config()`` returning either an
``fljax.experiment.ExperimentConfig`` (one experiment) or a ``SweepSpec`` (a grid whose ``base``
is one experiment), in the style of the flax / fedjax examples. Components carry their
arguments in their specs (``"krum(num_byzantine=2)"``, ``"backdoor(target_label=0)+pgd"``)::

    python -m experiments.run   --config=fang2020                                     # the base experiment
    python -m experiments.sweep --config=fang2020 --rounds=5                          # the grid, flags on top
    python -m experiments.sweep --config=path/to/my_preset.py                         # a preset file of your own

``--config`` takes a preset's name (``presets()`` lists them) or the path of a config file.
Flags given explicitly on the command line override the preset's values.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
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
      final_evaluations: k: each seed's reported evaluation metrics are the mean of its last k
        evaluations (Karimireddy et al. report the mean of the last five epochs'); 1 (default):
        the last evaluation. The cell files keep every evaluation; only the report changes.
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
    final_evaluations: int = 1
    attack_settings: None = None  # retired: the specs carry the arguments
    aggregator_settings: None = None

    def __post_init__(self):
        k = self.final_evaluations
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"--final_evaluations must be an integer >= 1, got {k!r}")
        for name in ("attack_settings", "aggregator_settings"):
            if getattr(self, name):
                axis = name.split("_")[0] + "s"
                raise ValueError(
                    f"SweepSpec: {name} is retired: write each component's arguments into its spec in "
                    f"{axis}, e.g. {axis}=['gaussian(std=200.0)'] or ['bucketing(bucket_size=2)+krum'] "
                    "(see experiments/configs/)"
                )


Preset = Union[ExperimentConfig, SweepSpec]


PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))


def presets() -> list[str]:
    """The names of the presets in ``experiments/configs/`` (``fang2020``, ...), sorted."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PRESETS_DIR, "[a-z]*.py")))


def preset_path(name_or_path: str) -> str:
    """The config file of ``--config``: a preset's name (``fang2020``) is
    ``experiments/configs/fang2020.py``; anything else is a path.

    Raises:
      ValueError: neither a preset nor a file, naming the close preset names (a typo) or
        listing them all.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(
            f"--config must be a preset name ({', '.join(presets())}) or a config file, got {name_or_path!r}"
        )
    if os.path.isfile(name_or_path):
        return name_or_path
    name = os.path.basename(name_or_path)
    name = name[:-3] if name.endswith(".py") else name
    if name in presets() and os.sep not in name_or_path and "/" not in name_or_path:
        return os.path.join(PRESETS_DIR, f"{name}.py")
    close = difflib.get_close_matches(name, presets(), n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else f"presets: {', '.join(presets())}"
    raise ValueError(f"--config: {name_or_path!r} is neither a preset nor a file ({hint})")


def load_config_file(path: str) -> Preset:
    """Executes the config file of ``path`` (a preset's name or a file path, ``preset_path``)
    and returns its ``get_config()``.

    Raises:
      ValueError: no such preset or file, the file defines no ``get_config``, or returns
        something else than an ``ExperimentConfig`` or a ``SweepSpec``.
    """
    path = preset_path(path)
    name = "fljax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"--config {path}: the file defines no get_config()")
    config = module.get_config()
    if not isinstance(config, (ExperimentConfig, SweepSpec)):
        raise ValueError(
            f"--config {path}: get_config() must return an ExperimentConfig or a SweepSpec, got {type(config).__name__}"
        )
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
