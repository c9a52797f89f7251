"""The sweep's flags (every ``experiments.run`` flag sets the base; these the axes) and ``main``."""

from __future__ import annotations

import dataclasses
import os
import sys
import typing

from absl import flags, logging

from experiments import run as run_lib
from experiments.configs import SweepSpec, load_config_file, replace_fields
from experiments.sweep.grid import PARTITION_FIELDS, check_registered, make_cells
from experiments.sweep.programs import SEED_EXECUTIONS
from experiments.sweep.runner import check_final_evaluations, run_sweep
from fljax import spec as spec_lib
from fljax.experiment import ExperimentConfig, catalogue

DEFAULTS = dict(
    attacks=("none", "sign_flip(scale=10.0)", "label_flip"),
    aggregators=("mean", "median", "trimmed_mean", "krum"),
    malicious_fractions=(0.2,),
    partitions=("iid",),
    seeds=(0, 1, 2),
)


FLAGS = flags.FLAGS  # --config and every ExperimentConfig field are defined by experiments.run
flags.DEFINE_string(
    "attacks",
    None,
    "comma list of --attack specs of experiments.run (chains included), or 'all': "
    f"e.g. 'none,sign_flip(scale=10.0),backdoor(target_label=0)+pgd' (default: {','.join(DEFAULTS['attacks'])}). "
    f"The registered ones, with their factories' defaults:\n{catalogue('attack')}",
)
flags.DEFINE_string(
    "aggregators",
    None,
    "comma list of --aggregator specs of experiments.run (chains included), or "
    "'all': e.g. 'median,krum(num_byzantine=2),bucketing(bucket_size=2)+krum' (default: "
    f"{','.join(DEFAULTS['aggregators'])}). The registered ones, with their factories' defaults:\n"
    f"{catalogue('aggregator')}",
)
flags.DEFINE_list("malicious_fractions", None, "shares of malicious clients in the population (default: 0.2)")
flags.DEFINE_list("partitions", None, "iid, dirichlet:<alpha>, bias:<p>, shards:<per client> (default: iid)")
flags.DEFINE_list(
    "seeds", None, "run keys, vmapped in one program per cell (default: 0,1,2); --seed fixes the data partition"
)
flags.DEFINE_multi_string(
    "grid",
    [],
    "an extra axis over any config field: FIELD=v1,v2 (e.g. --grid=model=logreg,cnn); "
    "separate values with ';' when they hold commas (--grid='client_lr=0.05;0.1'); components vary through "
    "--attacks / --aggregators",
)
flags.DEFINE_integer(
    "final_evaluations",
    None,
    "report each seed's mean over its last k evaluations (default: the preset's, else 1, the last one)",
)
flags.DEFINE_string("output_dir", "results/sweep", "where the cells and the results go (a rerun resumes)")
flags.DEFINE_bool(
    "compare_sequential_seeds", False, "also time the first cell's seeds one by one against the vmapped run"
)
flags.DEFINE_bool(
    "allow_missing", False, "sweep only the registered attacks/aggregators of a preset naming missing ones"
)
flags.DEFINE_bool("progress", True, "show a progress bar over cells")
flags.DEFINE_enum(
    "seed_execution",
    "auto",
    SEED_EXECUTIONS,
    "how a cell's seeds run in its one program: vmap "
    "(batched), map (lax.map: one after another, memory of one seed), parallel (pmap: seeds "
    "over the CPU cores' devices), auto (map on a multi-core CPU: each seed's clients over "
    "every core; vmap elsewhere)",
)

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
    spec = (
        preset if isinstance(preset, SweepSpec) else SweepSpec(base=preset or run_lib.config_from_flags(), **DEFAULTS)
    )
    overrides = {f.name: FLAGS[f.name].value for f in dataclasses.fields(ExperimentConfig) if FLAGS[f.name].present}
    owned = sorted(
        set(overrides) & {"attack", "aggregator", "num_malicious"} | (set(overrides) & set(PARTITION_FIELDS))
    )
    if owned:
        raise ValueError(
            f"--{', --'.join(owned)}: set by the sweep's axes; use --attacks, --aggregators, "
            "--malicious_fractions, --partitions"
        )
    spec = dataclasses.replace(spec, base=replace_fields(spec.base, overrides, "flags"))
    conv = {"malicious_fractions": float, "seeds": int}
    for axis in ("attacks", "aggregators", "malicious_fractions", "partitions", "seeds"):
        if FLAGS[axis].value is not None:
            given = FLAGS[axis].value
            items = spec_lib.split(given, f"--{axis}") if isinstance(given, str) else given
            try:
                values = [conv.get(axis, str)(v.strip()) for v in items]
            except ValueError:
                raise ValueError(
                    f"--{axis}: expected a comma list of {'integers' if axis == 'seeds' else 'numbers'}, "
                    f"got {','.join(FLAGS[axis].value)}"
                ) from None
            spec = dataclasses.replace(spec, **{axis: values})
    if FLAGS.final_evaluations is not None:
        spec = dataclasses.replace(spec, final_evaluations=FLAGS.final_evaluations)
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
            raise ValueError(
                f"--{', --'.join(given)}: flags of experiments.run; the sweep writes to --output_dir "
                "and resumes from it"
            )
        run_lib._writable_location("output_dir", FLAGS.output_dir, "directory")
        spec = spec_from_flags()
        spec = check_registered(spec, FLAGS.allow_missing)
        check_final_evaluations(spec, make_cells(spec))  # malformed axes fail here, before any data is loaded
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_sweep(
        spec,
        FLAGS.output_dir,
        progress=FLAGS.progress,
        allow_missing=FLAGS.allow_missing,
        compare_sequential_seeds=FLAGS.compare_sequential_seeds,
        seed_execution=FLAGS.seed_execution,
    )
    print(f"results in {result.output_dir}/ (results.md, results.csv, results.json, history.csv, heatmap_*.png)")
    return 0 if os.path.abspath(result.output_dir) == os.path.abspath(FLAGS.output_dir) else 1
