"""One cell: its seeds run as one program, summarized over the seeds, and its file (a finished
cell is read back instead of run again); and the timing of that program against the seeds run
one by one."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Optional, Sequence

import jax
import numpy as np

from experiments.sweep.grid import FORMAT_VERSION, Cell, cell_key
from experiments.sweep.programs import ProgramCache, _keys, build_cell
from fljax.experiment import ExperimentConfig, SettingNotice, config_dict


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
        "evals": dict(
            {k: np.asarray(v).tolist() for k, v in evals.items()}, round=np.asarray(history.eval_rounds)[0].tolist()
        ),
        "history": {k: np.asarray(v).tolist() for k, v in rounds.items()},
    }


def num_evaluations(config: ExperimentConfig) -> int:
    """The evaluations of a run: every ``eval_every`` rounds and after the last."""
    return config.rounds // config.eval_every + (1 if config.rounds % config.eval_every else 0)


def windowed(result: dict, k: int) -> dict:
    """``result`` with each evaluation metric's ``final`` over the mean of every seed's last ``k``
    evaluations instead of its last one (a seed with a NaN among them is left out, as at the last
    evaluation); ``k = 1``: ``result`` itself."""
    if k == 1:
        return result
    final = dict(result["final"])
    for metric, values in result["evals"].items():
        if metric in final:
            final[metric] = _nan_stats(np.mean(np.asarray(values, np.float64)[:, -k:], axis=1))
    return {**result, "final": final}


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
    result = {
        "version": FORMAT_VERSION,
        "name": cell.name,
        "key": cell_key(cell.config, seeds),
        "cell": cell.axes,
        "num_malicious": cell.config.num_malicious,
        "config": config_dict(cell.config),
    }
    result.update(summarize(seeds, diverged_round, history), notices=notices)
    result["timing"] = {
        "build_seconds": build_seconds,
        "compile_seconds": compile_seconds,
        "seconds": seconds,
        "program": "shared" if shared else "compiled",
        "backend": jax.default_backend(),
        "seed_execution": seed_execution,
        "rounds_per_second": cell.config.rounds * len(seeds) / seconds if seconds > 0 else math.inf,
    }
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
    if (
        not isinstance(final, dict)
        or "accuracy" not in final
        or not all(isinstance(v, dict) and len(v.get("values", ())) == len(seeds) for v in final.values())
    ):
        return None, "incomplete"
    if not all(k in result for k in ("evals", "history", "timing", "cell")):
        return None, "incomplete"
    return result, ""


def compare_seed_execution(
    config: ExperimentConfig, seeds: Sequence[int], cache: Optional[ProgramCache] = None, seed_execution: str = "vmap"
) -> dict:
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
    return {
        "cell": {
            "attack": config.attack,
            "aggregator": config.aggregator,
            "dataset": config.dataset,
            "model": config.model,
            "num_clients": config.num_clients,
            "clients_per_round": config.clients_per_round,
            "rounds": config.rounds,
        },
        "seeds": list(seeds),
        "backend": jax.default_backend(),
        "seed_execution": seed_execution,
        "vmap_seconds": vmap_seconds,
        "sequential_seconds": sequential_seconds,
        "speedup": sequential_seconds / vmap_seconds if vmap_seconds > 0 else math.inf,
        "saved_seconds": sequential_seconds - vmap_seconds,
        "vmap_compile_seconds": vmap_compile,
        "single_compile_seconds": single_compile,
        "max_abs_accuracy_difference": float(np.nanmax(np.abs(acc_v - acc_s))) if acc_v.size else 0.0,
    }
