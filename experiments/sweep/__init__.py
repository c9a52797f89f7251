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

The package, by job (``python -m experiments.sweep`` runs ``__main__``; the rest imports from a
notebook): ``grid`` (the cells: axes, configs, names, checks), ``programs`` (one compiled
program per cell's seeds, shared between cells of equal shapes), ``cells`` (running a cell, its
summary and its file), ``runner`` (``run_sweep``: every cell, resuming), ``tables`` (Markdown and
CSV), ``heatmaps``, ``outputs`` (writing them all) and ``cli`` (the flags and ``main``).
"""

from experiments.sweep.cells import compare_seed_execution, load_cell, run_cell, summarize
from experiments.sweep.cli import DEFAULTS, FLAGS, main, spec_from_flags
from experiments.sweep.grid import (
    AXES,
    FORMAT_VERSION,
    PARTITION_FIELDS,
    Cell,
    cell_key,
    check_cell,
    check_registered,
    check_unused,
    expand,
    make_cells,
    missing_names,
    partition_settings,
)
from experiments.sweep.heatmaps import heatmap_figure
from experiments.sweep.outputs import write_outputs
from experiments.sweep.programs import (
    SEED_EXECUTIONS,
    ProgramCache,
    _keys,
    build_cell,
    resolve_seed_execution,
    seeds_program,
)
from experiments.sweep.runner import SweepResult, fallback_output_dir, run_sweep
from experiments.sweep.tables import markdown, matrix, slices, write_csv, write_history_csv

__all__ = [
    "AXES",
    "DEFAULTS",
    "FLAGS",
    "FORMAT_VERSION",
    "PARTITION_FIELDS",
    "SEED_EXECUTIONS",
    "Cell",
    "ProgramCache",
    "SweepResult",
    "_keys",
    "build_cell",
    "cell_key",
    "check_cell",
    "check_registered",
    "check_unused",
    "compare_seed_execution",
    "expand",
    "fallback_output_dir",
    "heatmap_figure",
    "load_cell",
    "main",
    "make_cells",
    "markdown",
    "matrix",
    "missing_names",
    "partition_settings",
    "resolve_seed_execution",
    "run_cell",
    "run_sweep",
    "seeds_program",
    "slices",
    "spec_from_flags",
    "summarize",
    "write_csv",
    "write_history_csv",
    "write_outputs",
]
