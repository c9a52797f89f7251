"""Shared pytest setup: the --runslow switch for full-size end-to-end runs, and one persistent
JAX compilation cache for the session (its xdist workers and the subprocesses tests start
inherit it), so a program compiled once, e.g. by each of a resume test's processes, is compiled
once (measured: tests/test_resume.py + tests/test_runner.py 134 -> 114 s from a cold cache), and
XLA:CPU's quickest code generation (in ``XLA_FLAGS``, unless ``XLA_FLAGS`` already sets a
level): the tests' programs are small and compiled once each, so compiling dominates (~60% of
test_contracts + test_hostile: 43 s cold, 18 s from a warm cache). LLVM at optimisation level 0
(``--xla_backend_optimization_level=0``; measured on 2 cores, -n 2: test_runner, test_models,
test_layers, test_notebooks 127 -> 82 s) and the classic elemental emitters instead of the
fusion emitters (``--xla_cpu_use_fusion_emitters=false``: the whole suite 473 -> 303 s, user
CPU 827 -> 508 s; the doctests 27 -> 18 s); the HLO passes, and so the programs' results, are
the same. The docstrings' examples run in the same session (pyproject: ``--doctest-modules`` over
``tests`` and ``fljax``); the worker scripts below are not collected, since importing them
sets up JAX for their own subprocess (``parallel_worker`` exposes 2 CPU devices)."""

import os
import shutil
import sys
import tempfile

import pytest

_CACHE_VARS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


collect_ignore = ["parallel_worker.py", "sharding_worker.py"]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run full-size end-to-end tests")


def pytest_configure(config):
    # Set in the controller before xdist starts its workers, which inherit the environment; a
    # cache the user set already is left alone.
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ and not hasattr(config, "workerinput"):
        config._fljax_jax_cache = tempfile.mkdtemp(prefix="fljax-tests-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._fljax_jax_cache
        for name, value in _CACHE_VARS.items():
            os.environ.setdefault(name, value)
    # The command lines the tests start do not restart themselves under tcmalloc (fljax.allocator:
    # ~1.4 s of imports again per process; the allocator changes no result).
    os.environ.setdefault("FLJAX_TCMALLOC", "0")
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if not hasattr(config, "workerinput") and "xla_backend_optimization_level" not in xla_flags:
        os.environ["XLA_FLAGS"] = (
            f"{xla_flags} --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false".strip()
        )


@pytest.hookimpl(trylast=True)  # after xdist's own: a worker has sent its last report
def pytest_unconfigure(config):
    """The controller removes the session's compilation cache; an xdist worker ends at once, since
    tearing down the thousands of programs it compiled takes ~2.4 ms each at exit (the suite's last
    10-12 s on this 2-core CPU) and its results are reported already."""
    cache = getattr(config, "_fljax_jax_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    if hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _uses_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


def pytest_collection_modifyitems(config, items):
    # Tests that share a module fixture (the device check, the 8-device worker, a sweep, ...) go
    # first, in their modules' order: xdist's "load" hands out consecutive tests, the first ~1/8
    # of them to one worker, so each such fixture runs once (split over both workers, it ran
    # twice: up to 40 s more) and the longest setups start first. (``--dist loadgroup`` would
    # say this with marks, but does not group under pytest 9.2: pytest-xdist issue #1386.)
    items.sort(key=lambda item: not _uses_a_module_fixture(item))  # stable: same order on every worker
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="full-size run: pass --runslow (CI runs the small version)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
