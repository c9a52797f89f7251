"""Programs: a cell's seeds as one compiled program (``vmap``, ``map`` or ``parallel`` over the
seeds), cached by everything static about it so that cells of equal shapes share it."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

import fljax
from experiments.sweep.grid import PARTITION_FIELDS
from fljax.experiment import ExperimentConfig, build, config_dict, partition_in_program

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
    if fljax.client.resolve_execution(config.execution) == "parallel" and resolve_seed_execution(seed_execution) in (
        "vmap",
        "parallel",
    ):
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
    executable. ``compiled`` / ``reused`` count the two cases.

    Only the ``max_programs`` most recently used are kept: each executable holds its machine code
    and buffers (~30 MB and ~400 memory mappings per catalogue cell on XLA:CPU), and a
    351-cell sweep that kept them all died after ~190 cells of "LLVM compilation error: Cannot
    allocate memory" (Linux's 65,530 mappings). Cells that share a program differ only in the
    partition, the innermost sweep axis but the ``--grid`` ones, so they run back to back."""

    def __init__(self, max_programs: int = 8):
        if isinstance(max_programs, bool) or not isinstance(max_programs, int) or max_programs < 1:
            raise ValueError(f"max_programs must be an integer >= 1, got {max_programs!r}")
        self._programs: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.max_programs = max_programs
        self.compiled = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, exp, keys, mode: str = "vmap"):
        """``(executable, compile_seconds, shared)`` for ``exp`` run on ``keys`` (see ``seeds_program``)."""
        key = _static_key(exp.config, exp.data, keys, mode)
        if key in self._programs:
            self._programs.move_to_end(key)
            self.reused += 1
            return self._programs[key], 0.0, True
        t0 = time.perf_counter()
        executable = seeds_program(exp.train, mode).lower(exp.data, keys).compile()
        self._programs[key] = executable
        while len(self._programs) > self.max_programs:
            self._programs.popitem(last=False)
        self.compiled += 1
        return executable, time.perf_counter() - t0, False


def _keys(seeds: Sequence[int]):
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])
