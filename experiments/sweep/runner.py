"""``run_sweep``: every runnable cell of a spec, finished cells skipped, the outputs written
(to a fallback folder when the output folder fails: a finished cell is never lost)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from typing import Callable, Optional

import jax

from experiments import run as run_lib
from experiments.configs import SweepSpec
from experiments.sweep.cells import compare_seed_execution, load_cell, num_evaluations, run_cell, windowed
from experiments.sweep.grid import _notice_once, check_cell, check_registered, make_cells
from experiments.sweep.outputs import write_outputs
from experiments.sweep.programs import SEED_EXECUTIONS, ProgramCache, resolve_seed_execution
from fljax import checkpoint as checkpoint_lib


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


def run_sweep(
    spec: SweepSpec,
    output_dir: Optional[str] = None,
    *,
    log: Callable = print,
    progress: bool = True,
    compare_sequential_seeds: bool = False,
    allow_missing: bool = False,
    cache: Optional[ProgramCache] = None,
    seed_execution: str = "auto",
) -> SweepResult:
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
        return _run_sweep(
            spec,
            output_dir,
            log=log,
            progress=progress,
            compare_sequential_seeds=compare_sequential_seeds,
            allow_missing=allow_missing,
            cache=cache,
            seed_execution=seed_execution,
        )


def check_final_evaluations(spec: SweepSpec, cells) -> None:
    """Refuses a ``final_evaluations`` above some cell's number of evaluations."""
    for cell in cells:
        count = num_evaluations(cell.config)
        if spec.final_evaluations > count:
            raise ValueError(
                f"--final_evaluations must be in 1..{count} (the evaluations of {cell.config.rounds} rounds every "
                f"{cell.config.eval_every}), got {spec.final_evaluations}"
            )


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
    check_final_evaluations(spec, runnable)
    k = spec.final_evaluations
    cell_dir = os.path.join(output_dir, "cells") if output_dir else None
    seed_vmap = None
    if compare_sequential_seeds and runnable:
        seed_vmap = compare_seed_execution(runnable[0].config, spec.seeds, cache, seed_execution)
        log(
            f"seeds in one {seed_execution} program vs one by one ({len(spec.seeds)} seeds, cell {runnable[0].name}): "
            f"{seed_vmap['vmap_seconds']:.2f} s vs {seed_vmap['sequential_seconds']:.2f} s "
            f"({seed_vmap['speedup']:.2f}x)"
        )
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
                        say(
                            f"error: could not write {target} ({e}); the sweep's new cells and its results go to "
                            f"{output_dir} from now on"
                        )
                        run_lib.write_json_atomic(os.path.join(output_dir, "cells", cell.name + ".json"), result)
                f, t = windowed(result, k)["final"], result["timing"]
                say(
                    f"{cell.name}: accuracy {f['accuracy']['mean']:.4f} +- {f['accuracy']['std']:.4f}"
                    + (f", ASR {f['attack_success_rate']['mean']:.4f}" if "attack_success_rate" in f else "")
                    + f"  [{t['seconds']:.1f} s run, {t['compile_seconds']:.1f} s compile"
                    + (", shared program" if t["program"] == "shared" else "")
                    + "]"
                )
        if result is not None:
            results.append(windowed(result, k))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    timing = {
        "wall_seconds": time.perf_counter() - start,
        "cells": len(cells),
        "computed": len(computed),
        "skipped": len(skipped),
        "invalid": len(invalid),
        "programs_compiled": cache.compiled,
        "programs_reused": cache.reused,
        "backend": jax.default_backend(),
        "seed_execution": seed_execution,
        "compile_seconds": sum(r["timing"]["compile_seconds"] for r in results if r["name"] in computed),
        "run_seconds": sum(r["timing"]["seconds"] for r in results if r["name"] in computed),
    }
    out = SweepResult(results, invalid, computed, skipped, timing, seed_vmap, output_dir, spec)
    if output_dir:
        try:
            write_outputs(out)
        except OSError as e:
            out = dataclasses.replace(out, output_dir=fallback_output_dir())
            log(
                f"error: could not write the sweep's results to {output_dir} ({e}); they were saved to "
                f"{out.output_dir} instead"
            )
            write_outputs(out)
    log(
        f"{len(computed)} cells computed, {len(skipped)} already done, {len(invalid)} invalid; "
        f"wall time {timing['wall_seconds']:.1f} s ({timing['programs_compiled']} programs compiled, "
        f"{timing['programs_reused']} reused)"
    )
    return out
