"""Crash-safe checkpoints of whole runs (orbax), and atomic JSON files.

A run's working directory (the runner's ``--workdir``) holds::

    config.json            the experiment's config, written once (atomically); a later run
                           with the same workdir must have the same config or it is refused
    checkpoints/<step>/    orbax checkpoints, ``step`` = evaluation blocks done: the full
                           ``TrainState`` (params, server optimizer, aggregator and attack
                           state, PRNG key, round, diverged round), the metrics history so far
                           and a JSON record of the run's progress, all in one step folder
    results.json           the final results, once the run is complete

Every checkpoint is written into a temporary folder and renamed into place when complete
(orbax's atomic commit), and every JSON file through a temporary file and ``os.replace``, so a
process killed at any moment (SIGKILL included) leaves either the previous checkpoint or the
new one, never a half-written one; leftover temporary folders are removed at the next start.
Since a block's result depends only on the state it starts from, a run resumed from a
checkpoint reproduces an uninterrupted run bit for bit.

In a multi-process run (``jax.distributed``) every process opens the same workdir, on storage
they all see, and takes part in every save; the state is replicated, so process 0 writes it
once (orbax writes host arrays from the primary process only), and writes the JSON files. On
opening, process 0 leaves a probe file that every process must see, and every process checks
the recorded config and that all run the same one; any failure is every process's refusal,
before any work. Each checkpoint records the ``topology()`` it was written on; a replicated
state is resumed on any other number of processes or devices as it is.

Examples:
  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> ckpt = RunCheckpointer(workdir, {"rounds": 10, "seed": 0})  # the config, as a JSON dict
  >>> state = {"params": jnp.zeros(3), "round": jnp.array(0)}
  >>> ckpt.restore(state) is None  # a fresh workdir
  True
  >>> ckpt.save(1, dict(state, round=jnp.array(5)), {"loss": jnp.array([0.5])}, {"round": 5})
  >>> restored = RunCheckpointer(workdir, {"rounds": 10, "seed": 0}).restore(state)
  >>> restored.step, int(restored.state["round"]), restored.meta["round"]
  (1, 5, 5)
  >>> import shutil
  >>> shutil.rmtree(workdir)
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import time
import zlib
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fljax.types import PyTree

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The workdir cannot be used for this run: another config, or an incompatible checkpoint."""


def _json_safe(value):
    """NaN and infinities as strings (strict JSON has none); everything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON to a temporary file in the same folder, flushes it to disk, then renames it
    over ``path`` (and syncs the folder): a crash never leaves a half-written file, only the
    old one or the new one. NaN is written as ``NaN`` (Python's ``json`` reads it back). The
    file gets the mode ``open`` would give it (0644 under the usual umask 022), not 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are shared with colleagues: the mode open() gives.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def probe_writable(path: str, kind: str = "file") -> None:
    """Creates the folder that will hold ``path`` (``kind="file"``) or ``path`` itself
    (``kind="directory"``), and a temporary file in it that is removed at once: the OS's own
    answer, before any training, to whether the results can be written there (``os.access``
    says yes to root even where nothing can be created, e.g. under /proc).

    Raises:
      OSError: the location cannot be written.
    """
    folder = os.path.abspath(path) if kind == "directory" else os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fljax-probe-", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def fallback_folders() -> list[str]:
    """Where results go when their own location fails at the end of a run: the working
    directory, the home directory, the system's temporary directory (in that order)."""
    return [os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir()]


def write_json_or_fallback(path: str, payload: dict, say: Callable[[str], None] = print) -> str:
    """``write_json_atomic(path, payload)``; if that fails, the same JSON in the first writable
    of ``fallback_folders()`` as ``fljax-results-<time>-<pid>.json``, saying where (``say``).
    Returns the path written: a finished run's results are never lost.

    Raises:
      OSError: no location could be written (the first error).
    """
    try:
        write_json_atomic(path, payload)
        return path
    except OSError as first:
        name = f"fljax-results-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        for folder in fallback_folders():
            fallback = os.path.join(folder, name)
            try:
                write_json_atomic(fallback, payload)
            except OSError:
                continue
            say(f"could not write {path} ({first}); the results were saved to {fallback} instead")
            return fallback
        raise first


def _normalized(config: dict) -> dict:
    """The config as it reads back from JSON (tuples become lists, NaN a string)."""
    return json.loads(json.dumps(_json_safe(config)))


def check_config(workdir: str, config: dict, defaults: Optional[dict] = None) -> bool:
    """Whether ``workdir`` holds a recorded config: ``False`` when it holds none yet, ``True``
    when the recorded one equals ``config``; raises ``CheckpointError`` listing every differing
    setting otherwise.

    A setting missing from the recorded config (one added to the code since the run started)
    is accepted when its value equals its entry in ``defaults``: it cannot have changed the run.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = _normalized(config)
    defaults = _normalized(defaults or {})
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"--workdir: cannot read the recorded config {path} ({e}); use a fresh --workdir"
        ) from None
    if not isinstance(recorded, dict):
        raise CheckpointError(f"--workdir: the recorded config {path} is not a JSON object; use a fresh --workdir")
    diffs = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if key not in recorded and key in defaults and new == defaults[key]:
            continue  # a setting added since, left at its default
        if old != new:
            diffs.append(f"--{key}: recorded {old!r}, now {new!r}")
    if diffs:
        raise CheckpointError(
            f"--workdir {workdir} holds a run with a different config ({'; '.join(diffs)}); "
            "re-run with the recorded settings to resume it, or use a fresh --workdir"
        )
    return True


def record_config(workdir: str, config: dict, defaults: Optional[dict] = None) -> None:
    """Writes ``config.json`` into a fresh ``workdir``, or checks that the recorded config equals
    ``config`` (``check_config``; a different one raises ``CheckpointError``)."""
    if not check_config(workdir, config, defaults):
        write_json_atomic(os.path.join(workdir, CONFIG_FILE), _normalized(config))


_PROBE = ".fljax-shared-"


def _record_config_everywhere(workdir: str, config: dict, defaults: Optional[dict]) -> None:
    """``record_config`` in a multi-process run, where every process opens the same workdir:
    process 0 leaves a probe file there; every process looks for it, checks the recorded config
    and hashes its own; the answers are gathered (``multihost.gather``), so that every process
    refuses together, before any work, a workdir some process cannot see, different configs or
    a different recorded config; then process 0 alone writes a fresh workdir's config."""
    from fljax import multihost

    primary = jax.process_index() == 0
    name = f"{_PROBE}{os.getpid()}-{time.time_ns()}"
    if primary:
        for stale in glob.glob(os.path.join(workdir, _PROBE + "*")):  # left by a process killed right here
            os.unlink(stale)
        with open(os.path.join(workdir, name), "w"):
            pass
    probe = os.path.join(workdir, multihost.gather("workdir-probe", name)[0])  # process 0's, once it exists
    answer = {
        "sees": os.path.exists(probe),
        "config": zlib.crc32(json.dumps(_normalized(config), sort_keys=True).encode()),
    }
    try:
        answer["recorded"] = check_config(workdir, config, defaults)
    except CheckpointError as e:
        answer["recorded"], error = None, e
    else:
        error = None
    answers = [json.loads(a) for a in multihost.gather("workdir-answers", json.dumps(answer))]
    if primary:
        os.unlink(probe)
    which = lambda test: ", ".join(str(i) for i, a in enumerate(answers) if test(a))
    if not all(a["sees"] for a in answers):
        raise CheckpointError(
            f"--workdir {workdir} must be on storage every process sees (a shared file system: NFS, "
            f"Lustre, Filestore): process(es) {which(lambda a: not a['sees'])} cannot see the file "
            "process 0 wrote there"
        )
    if any(a["config"] != answers[0]["config"] for a in answers):
        raise CheckpointError(
            f"--workdir {workdir}: process(es) {which(lambda a: a['config'] != answers[0]['config'])} "
            "run another config than process 0; every process must run the same command"
        )
    if error is not None:
        raise error
    if any(a["recorded"] is None for a in answers):
        raise CheckpointError(
            f"--workdir {workdir}: process(es) {which(lambda a: a['recorded'] is None)} refused its "
            "recorded config (see their message); every process must run the same command"
        )
    if primary and not any(a["recorded"] for a in answers):
        write_json_atomic(os.path.join(workdir, CONFIG_FILE), _normalized(config))


def topology() -> dict:
    """The processes and devices this run computes on (``processes`` x their devices, and the
    platform), as recorded with every checkpoint."""
    return {"processes": jax.process_count(), "devices": jax.device_count(), "platform": jax.default_backend()}


def topology_text(t: dict) -> str:
    return f"{t.get('processes')} process(es) with {t.get('devices')} {t.get('platform')} device(s) in all"


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaf_to_numpy(leaf) -> np.ndarray:
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _leaf_from_numpy(saved: np.ndarray, template, index: int, where: str):
    if _is_key(template):
        data = jnp.asarray(saved)
        expected = jax.random.key_data(template)
        if data.shape != expected.shape or data.dtype != expected.dtype:
            raise CheckpointError(
                f"{where}: PRNG key {index} has shape {data.shape} {data.dtype}, this run's has "
                f"{expected.shape} {expected.dtype}; use a fresh --workdir"
            )
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(template))
    saved = np.asarray(saved)
    shape, dtype = tuple(np.shape(template)), np.dtype(template.dtype)
    if saved.shape != shape or saved.dtype != dtype:
        raise CheckpointError(
            f"{where}: state leaf {index} has shape {saved.shape} {saved.dtype}, this run's has "
            f"{shape} {dtype} (a different model, rule or code version?); use a fresh --workdir"
        )
    return jnp.asarray(saved)


def state_to_numpy(state: PyTree) -> list[np.ndarray]:
    """The state's leaves as host numpy arrays (typed PRNG keys as their raw key data)."""
    return [_leaf_to_numpy(leaf) for leaf in jax.tree.leaves(state)]


def state_from_numpy(leaves: list, template: PyTree, where: str = "checkpoint") -> PyTree:
    """Rebuilds a state shaped like ``template`` from ``state_to_numpy`` output, checking every
    leaf's shape and dtype (a mismatch raises ``CheckpointError``)."""
    template_leaves, treedef = jax.tree.flatten(template)
    if len(leaves) != len(template_leaves):
        raise CheckpointError(
            f"{where}: holds {len(leaves)} state arrays, this run has {len(template_leaves)} "
            "(a different model, rule, attack or code version?); use a fresh --workdir"
        )
    return jax.tree.unflatten(
        treedef, [_leaf_from_numpy(s, t, i, where) for i, (s, t) in enumerate(zip(leaves, template_leaves))]
    )


def canonical_state(state: PyTree) -> PyTree:
    """``state`` as it comes back from a checkpoint (committed device arrays, no weak types),
    so that a fresh run and a resumed run feed bit-identical inputs of identical types to the
    same compiled blocks."""
    return state_from_numpy(state_to_numpy(state), state, "state")


class Restored(NamedTuple):
    """What ``RunCheckpointer.restore`` returns: the state, the history so far, the metadata."""

    step: int
    state: PyTree
    history: dict
    meta: dict


class RunCheckpointer:
    """Saves and restores a run's full state plus its metrics history in ``workdir``.

    Args:
      workdir: the run's folder (created if needed); its config must match (see module doc).
      config: the experiment config as a JSON-ready dict (``dataclasses.asdict(config)``).
      defaults: the config's defaults: settings added to the code after the run started are
        accepted at their default (see ``record_config``).
      max_to_keep: how many of the newest checkpoints to keep (older ones are deleted after a
        newer one is committed).
    """

    def __init__(self, workdir: str, config: dict, *, defaults: Optional[dict] = None, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"RunCheckpointer: max_to_keep must be an integer >= 1, got {max_to_keep!r}")
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise CheckpointError(f"--workdir must be a directory, got the file {workdir!r}")
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        if jax.process_count() == 1:
            record_config(self.workdir, config, defaults)
        else:
            _record_config_everywhere(self.workdir, config, defaults)
        self._ocp = ocp
        folder = os.path.join(self.workdir, CHECKPOINT_DIR)
        os.makedirs(folder, exist_ok=True)
        # Every process named: orbax then syncs them at the coordination service's barriers (timeouts
        # of its own) instead of with device collectives (on CPU, Gloo's first one times out after 30 s).
        processes = ocp.options.MultiprocessingOptions(active_processes=set(range(jax.process_count())))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
            multiprocessing_options=processes,
        )
        self._manager = ocp.CheckpointManager(folder, options=options)

    @property
    def results_path(self) -> str:
        return os.path.join(self.workdir, RESULTS_FILE)

    def latest_step(self) -> Optional[int]:
        """The newest committed step (blocks done), or ``None`` before the first save."""
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, history: dict, meta: dict) -> None:
        """Commits one checkpoint: ``state`` (any pytree of arrays), ``history`` (a nested dict
        of numpy arrays) and ``meta`` (JSON-ready, plus this run's ``topology()``), atomically,
        under ``step``. In a multi-process run every process calls it with the same (replicated)
        values; process 0 writes them."""
        ocp = self._ocp
        tree = {"state": state_to_numpy(state), "history": jax.tree.map(np.asarray, history)}
        meta = dict(_json_safe(meta), format_version=FORMAT_VERSION, step=int(step), topology=topology())
        self._manager.save(
            int(step), args=ocp.args.Composite(arrays=ocp.args.PyTreeSave(tree), meta=ocp.args.JsonSave(meta))
        )
        self._manager.wait_until_finished()

    def restore(self, template: PyTree) -> Optional[Restored]:
        """The newest checkpoint with its state rebuilt like ``template`` (e.g. ``train.init(key)``),
        or ``None`` when the workdir holds none yet."""
        step = self.latest_step()
        if step is None:
            return None
        ocp = self._ocp
        where = f"checkpoint {os.path.join(self.workdir, CHECKPOINT_DIR, str(step))}"
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(arrays=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore())
            )
        except Exception as e:  # unreadable files: say which checkpoint and what to do
            raise CheckpointError(
                f"{where} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "delete that step folder to fall back to the previous one, or use a fresh --workdir"
            ) from None
        meta = dict(restored["meta"])
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{where} has format version {meta.get('format_version')!r}, this fljax writes "
                f"{FORMAT_VERSION}; use a fresh --workdir"
            )
        arrays = restored["arrays"]
        state = state_from_numpy(list(arrays["state"]), template, where)
        history = jax.tree.map(np.asarray, arrays.get("history", {}))
        return Restored(step, state, history, meta)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_json(path: str) -> Any:
    """Reads a JSON file written by ``write_json_atomic``."""
    with open(path) as f:
        return json.load(f)


def newest_round(workdir: str) -> Optional[int]:
    """The round after which the newest committed checkpoint of ``workdir`` was saved, read from
    its files without JAX or orbax (for messages after a failure); ``None`` when there is none."""
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    try:
        steps = sorted((int(name) for name in os.listdir(folder) if name.isdigit()), reverse=True)
    except OSError:
        return None
    for step in steps:  # a step folder is renamed into place once complete (orbax's atomic commit)
        try:
            return int(load_json(os.path.join(folder, str(step), "meta", "metadata"))["round"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def resume_hint(workdir: Optional[str]) -> str:
    """What to do to resume a stopped run of ``workdir`` (``None``: a run without one)."""
    if workdir is None:
        return (
            "without --workdir the run cannot resume: run every process's command again to start over "
            "(with --workdir on shared storage it would resume)"
        )
    workdir = os.path.abspath(workdir)
    done = newest_round(workdir)
    if done is None:
        return f"{workdir} holds no checkpoint yet: restart every process with the same command to start the run again"
    return f"restart every process with the same command to resume from {workdir} after round {done}"
