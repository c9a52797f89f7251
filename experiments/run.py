"""Runs one poisoned federated experiment and writes its results as JSON.

    python -m experiments.run                       # the default experiment (mnist5k, 20 of 100 label flippers vs median)
    python -m experiments.run --attack='sign_flip(scale=10.0)' --aggregator='krum(num_byzantine=2)' --output=out.json
    python -m experiments.run --attack='backdoor(target_label=0)+model_replacement' --aggregator='clip(max_norm=1.0)+mean'
    python -m experiments.run --config=fang2020 --rounds=10   # a preset (experiments/configs/), flags on top

Every field of ``fljax.experiment.ExperimentConfig`` is a flag of the same name: the shared
settings flat, the aggregator and the attack as specs, name(arg=value, ...), whose arguments
and defaults are the factories' own (listed under --aggregator and --attack below). All
settings are validated before anything is compiled; a bad one exits with status 2 and a
one-line message. The flat component flags of the previous release (--kappa, --attack_scale,
--data_attack, ...; --helpfull lists them) still work, with a notice naming the replacement.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import typing
import warnings

import jax
import numpy as np
from absl import app, flags, logging

from experiments.configs import base_config, load_config_file, presets, replace_fields
from fljax import aggregators as aggregators_lib
from fljax import checkpoint as checkpoint_lib
from fljax import flat_settings, multihost
from fljax import sharding as sharding_lib
from fljax.allocator import restart_with_tcmalloc
from fljax.attacks import DATA_ATTACKS, MODEL_ATTACKS
from fljax.client import use_cpu_cores as use_cores
from fljax.experiment import (
    DEFAULTS,
    SETTINGS,
    Experiment,
    ExperimentConfig,
    SettingNotice,
    build,
    catalogue,
    check_applicable,
    components,
    config_dict,
    rule_num_byzantine,
    scoped,
)

FLAGS = flags.FLAGS


DEPRECATED_FLAGS = "fljax.flat_settings: the flat component flags of the previous release (they work for one more)"
"""The module the deprecated flags are listed under (by --helpfull; --help shows this module's)."""

_COMPONENTS = {
    "aggregator": "'bucketing(bucket_size=2)+krum(num_byzantine=2)'",
    "attack": "'backdoor(target_label=0)+model_replacement(gamma=5.0)'",
}
_LEGEND = {
    "aggregator": "<f>: the run's f, --num_byzantine; <required>: no default",
    "attack": "<f>: the run's f; <required>: no default; [targeted]: pursues a target, a targeted model "
    "attack boosts the training on the data attack before it",
}
_EXAMPLES = {
    "data_attack": "--attack='backdoor(target_label=0)+model_replacement'",
    "pre_aggregation": "--aggregator='bucketing(bucket_size=2)+krum'",
    "attack_scale": "--attack='sign_flip(scale=10.0)'",
}


def _example(field) -> str:
    """A spec that gives a deprecated flat setting's parameter, for its flag's help."""
    if field.name in _EXAMPLES:
        return _EXAMPLES[field.name]
    on = field.metadata["flat"]
    registries = (
        (aggregators_lib.REGISTRY, aggregators_lib.PREAGGREGATORS)
        if on == "aggregator"
        else (MODEL_ATTACKS, DATA_ATTACKS)
    )
    for registry in registries:
        for name in registry.names():
            params = registry[name].parameters()
            param = next((p for p in field.metadata["params"] if p in params), None)
            if param is not None:
                return f"--{on}='{name}({param}=...)'"
    return f"--{on}='<component>({field.metadata['params'][0]}=...)'"


def define_config_flags(config_cls=ExperimentConfig) -> None:
    """Defines one absl flag per config field, with the field's default, type and help; the
    component flags list the registered components, the deprecated flat ones are listed by
    --helpfull only."""
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        if field.name in flat_settings.FIELDS:
            help_text = flat_settings.flag_help(field, _example(field))
        else:
            help_text = field.metadata.get("help", field.name)
            if field.metadata.get("component"):
                help_text += (
                    f"; e.g. --{field.name}={_COMPONENTS[field.name]}. The registered ones, with their "
                    f"factories' defaults ({_LEGEND[field.name]}):\n{catalogue(field.name)}"
                )
        if base is bool:
            flag = flags.BooleanFlag(field.name, field.default, help_text)
        else:
            parser = {int: flags.IntegerParser(), float: flags.FloatParser()}.get(base, flags.ArgumentParser())
            flag = flags.Flag(parser, flags.ArgumentSerializer(), field.name, field.default, help_text)
        flags.DEFINE_flag(flag, module_name=DEPRECATED_FLAGS if field.name in flat_settings.FIELDS else None)


def config_from_flags(config_cls=ExperimentConfig):
    return config_cls(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(config_cls)})


define_config_flags()
flags.DEFINE_string(
    "config",
    None,
    "a preset's name (experiments/configs/<name>.py: "
    f"{', '.join(presets())}) or a config file, whose get_config() returns an "
    "ExperimentConfig or a SweepSpec (the runner runs its base experiment); flags given explicitly override it",
)
flags.DEFINE_string("output", None, "write the results JSON here")
flags.DEFINE_bool("quiet", False, "print only the final table")
flags.DEFINE_string(
    "workdir",
    None,
    "checkpoint the run here (config, full run state, history); re-running the same "
    "command with the same --workdir resumes from the newest checkpoint",
)
flags.DEFINE_integer(
    "checkpoint_every",
    1,
    "with --workdir: checkpoint after every k evaluation blocks (of --eval_every rounds) and after the last",
    lower_bound=1,
)
flags.DEFINE_integer(
    "cpu_cores",
    0,
    "on CPU, expose this many cores as JAX devices so --execution=parallel "
    "trains one stream of clients per core; 0: every core this process may use",
    lower_bound=0,
)
flags.DEFINE_bool(
    "distributed",
    False,
    "join a multi-process run (jax.distributed.initialize, before anything else) "
    "and shard each round's cohort over every process's devices (implies --shard_clients); on TPU pod "
    "slices, Slurm and Open MPI the next three flags may be left unset (auto-detected)",
)
flags.DEFINE_string(
    "coordinator_address", None, "with --distributed: 'host:port' of process 0, the same on every process"
)
flags.DEFINE_integer("num_processes", None, "with --distributed: how many processes take part")
flags.DEFINE_integer("process_id", None, "with --distributed: this process's id, 0..num_processes-1")
flags.DEFINE_integer(
    "heartbeat_timeout",
    100,
    "with --distributed: seconds after which a silent process counts as "
    "lost (jax.distributed's heartbeat timeout): a lost process ends the run on every process within "
    "about this time, with one line saying how to resume",
    lower_bound=1,
)

# Writes JSON through a temporary file and os.replace (a crash never leaves a half-written file).
write_json_atomic = checkpoint_lib.write_json_atomic


def _py(value):
    """Arrays to JSON-ready Python (lists, floats; NaN stays NaN)."""
    arr = np.asarray(value)
    return arr.tolist() if arr.ndim else arr.item()


def _nanmean(values) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def open_workdir(workdir: str, config) -> "checkpoint_lib.RunCheckpointer":
    """The run's checkpointer in ``workdir``; records the (scoped) config there, or refuses
    (``ValueError``) a workdir that holds a run with another config."""
    defaults = {name: DEFAULTS[name] for name in SETTINGS}
    return checkpoint_lib.RunCheckpointer(workdir, config_dict(scoped(config)), defaults=defaults)


def run_experiment(exp: Experiment, log=print, *, workdir=None, checkpoint_every: int = 1) -> dict:
    """Runs ``exp`` block by block (one jitted program per evaluation block) and returns the
    results dict (config, per-round history, per-evaluation history, final metrics, timing).

    With ``workdir`` (a folder, or a ``RunCheckpointer`` from ``open_workdir``) the full run state
    and the history so far are checkpointed after every ``checkpoint_every`` blocks and after the
    last one, and a run started again with the same workdir resumes from its newest checkpoint:
    killed at any moment and resumed, it ends with exactly the results of an uninterrupted run
    (only the timings differ). The results are also written to ``<workdir>/results.json``.

    In a multi-process run (``jax.distributed``) every process calls this with the same
    arguments and the workdir on storage they all see; process 0 writes the files. A preemption
    notice (SIGTERM) to any process checkpoints every process at the next block they all reach
    and raises ``multihost.Preempted``. A checkpoint written on other processes or devices is
    resumed on these (the state is replicated, nothing needs converting), with a notice.
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"--checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    train = exp.train
    blocks = list(train.blocks)
    # Fresh and resumed runs feed the compiled blocks states of identical types (see canonical_state).
    state = checkpoint_lib.canonical_state(train.init(jax.random.PRNGKey(exp.config.seed)))
    ckpt = workdir
    if workdir is not None and not isinstance(workdir, checkpoint_lib.RunCheckpointer):
        ckpt = open_workdir(workdir, exp.config)
    history, eval_history, eval_rounds = None, None, []
    first_block, seconds_before, compile_before = 0, 0.0, 0.0
    restored = ckpt.restore(state) if ckpt is not None else None
    if restored is not None:
        meta = restored.meta
        if meta.get("blocks") != blocks or not 0 < restored.step <= len(blocks):
            raise checkpoint_lib.CheckpointError(
                f"--workdir {ckpt.workdir}: checkpoint {restored.step} was written for blocks {meta.get('blocks')}, "
                f"this run has {blocks}; use a fresh --workdir"
            )
        state, first_block = restored.state, restored.step
        history, eval_history = dict(restored.history["rounds"]), dict(restored.history["evals"])
        eval_rounds = [int(r) for r in restored.history["eval_rounds"]]
        seconds_before, compile_before = float(meta["seconds"]), float(meta["compile_seconds"])
        log(
            f"resumed from {ckpt.workdir} after round {int(state.server.round)} ({first_block}/{len(blocks)} blocks done)"
        )
        recorded, here = meta.get("topology"), checkpoint_lib.topology()
        if recorded is not None and recorded != here:
            log(
                f"notice: the checkpoint was written on {checkpoint_lib.topology_text(recorded)}, this run has "
                f"{checkpoint_lib.topology_text(here)}: the remaining rounds split the cohort over these devices, so "
                "sums over devices may round differently from an uninterrupted run in the last bits"
            )
    t0 = time.perf_counter()
    compiled = {
        n: train.run_block.lower(state, exp.data, num_rounds=n).compile() for n in sorted(set(blocks[first_block:]))
    }
    compile_seconds = compile_before + time.perf_counter() - t0
    multihost.sync("compiled")  # --distributed: every process compiled before the first block's collectives
    start = time.perf_counter()
    for index in range(first_block, len(blocks)):
        state, r, e = compiled[blocks[index]](state, exp.data)
        r, e = jax.device_get((r, e))
        if history is None:
            history, eval_history = dict(r), {k: np.asarray(v)[None] for k, v in e.items()}
        else:
            history = {k: np.concatenate([history[k], r[k]]) for k in history}
            eval_history = {k: np.concatenate([eval_history[k], np.asarray(e[k])[None]]) for k in eval_history}
        done = int(state.server.round)
        eval_rounds.append(done)
        asr = f"  attack success {float(e['attack_success_rate']):.3f}" if "attack_success_rate" in e else ""
        stopped = int(state.diverged_round)
        stopped = f"  (model non-finite after round {stopped}: rounds skipped)" if stopped >= 0 else ""
        log(
            f"round {done:4d}/{exp.config.rounds}  accuracy {float(e['accuracy']):.4f}  loss {float(e['loss']):.4f}{asr}"
            f"  [{time.perf_counter() - start:.1f}s]{stopped}"
        )
        preempted = index + 1 < len(blocks) and multihost.preemption_point(index + 1)
        if ckpt is not None and ((index + 1) % checkpoint_every == 0 or index + 1 == len(blocks) or preempted):
            ckpt.save(
                index + 1,
                state,
                {"rounds": history, "evals": eval_history, "eval_rounds": np.asarray(eval_rounds, np.int64)},
                {
                    "round": done,
                    "blocks": blocks,
                    "seconds": seconds_before + time.perf_counter() - start,
                    "compile_seconds": compile_seconds,
                },
            )
        if preempted:
            raise multihost.Preempted(
                f"a preemption notice (SIGTERM) reached a process; every process stopped after "
                f"round {done}; {checkpoint_lib.resume_hint(ckpt and ckpt.workdir)}"
            )
    jax.block_until_ready(state)
    seconds = seconds_before + time.perf_counter() - start
    diverged = int(state.diverged_round)
    final = {k: _py(v[-1]) for k, v in eval_history.items() if k != "finite"}
    tpr, beyond = np.asarray(history["detection_tpr"], np.float64), np.asarray(history["beyond_f"], bool)
    final.update(
        detection_tpr=_nanmean(tpr),
        detection_fpr=_nanmean(history["detection_fpr"]),
        # Rounds with more attacking clients than the f the rule tolerates, reported apart.
        rounds_beyond_f=int(beyond.sum()),
        detection_tpr_within_f=_nanmean(tpr[~beyond]),
        detection_tpr_beyond_f=_nanmean(tpr[beyond]),
        diverged=diverged >= 0,
        diverged_round=diverged if diverged >= 0 else None,
        seconds=seconds,
        compile_seconds=compile_seconds,
        rounds_per_second=exp.config.rounds / seconds if seconds > 0 else math.inf,
    )
    results = {
        "config": config_dict(exp.config),
        "settings": describe(exp.config),
        "history": {k: _py(v) for k, v in history.items()},
        "evals": dict({k: _py(v) for k, v in eval_history.items()}, round=eval_rounds),
        "final": final,
    }
    if ckpt is not None:
        results["checkpoint"] = {
            "workdir": ckpt.workdir,
            "resumed_after_blocks": first_block,
            "checkpoint_every": checkpoint_every,
        }
        written = ckpt.results_path
        if jax.process_index() == 0:  # a multi-process run's files are written once
            written = checkpoint_lib.write_json_or_fallback(
                ckpt.results_path, results, lambda msg: print(f"warning: {msg}", file=sys.stderr)
            )
        results["checkpoint"]["results"] = written
    return results


_TRIGGER_ATTACKS = ("backdoor", "dba", "feature_trigger")


def _attack_text(spec, registry) -> tuple[str, list[str]]:
    """A readable attack and its notes: ``label_flip 5 -> 3``, ``backdoor -> class 0``, the
    strength and knowledge apart (``sign_flip``, ``["scale 10.0"]``), other arguments as given."""
    entry, args = registry[spec.name], spec.kwargs
    default = {name: p.default for name, p in entry.parameters().items()}
    if spec.name == "label_flip":
        head = f"label_flip {args.pop('source', default['source'])} -> {args.pop('target', default['target'])}"
    elif spec.name == "label_flip_all":
        head = "label_flip_all (l -> C - 1 - l)"
    elif spec.name in _TRIGGER_ATTACKS:
        head = f"{spec.name} -> class {args.pop('target_label')}"
    else:
        head = spec.name
    notes = []
    if entry.strength is not None:
        notes.append(f"{entry.strength} {args.pop(entry.strength, default[entry.strength])}")
    if "knowledge" in args:
        notes.append(f"{args.pop('knowledge')} knowledge")
    if args:
        head += f"({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    return head, notes


def describe(config) -> dict:
    """Every setting that defines the run, as readable text (the summary's rows; also in the
    results JSON as ``settings``): the partition's parameter, the attack's targets, strength,
    knowledge, arguments and schedule, the rule's f, arguments and pre-aggregation chain, the
    local training."""
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig(**config)
    c = scoped(config, notice=lambda message: None)
    parts = components(c)
    part = {
        "dirichlet": f"dirichlet, alpha={c.dirichlet_alpha}",
        "bias": f"bias, p={c.bias}",
        "shards": f"shards, {c.shards_per_client} per client",
    }.get(c.partition, c.partition)
    if c.malicious_data == "iid":
        part += " of the honest clients; malicious clients: IID samples"
    attack, extra = [], []
    for spec, registry in ((parts.model_attack, MODEL_ATTACKS), (parts.data_attack, DATA_ATTACKS)):
        if spec is not None:
            head, notes = _attack_text(spec, registry)
            attack.append(head)
            extra += notes
    if c.attack_single_shot:  # rounds as a person reads them, 1-based (--attack_start_round is 0-based)
        extra.append(f"single shot in round {c.attack_start_round + 1}")
    elif (c.attack_start_round, c.attack_every) != (0, 1):
        extra.append(f"every {c.attack_every} round(s) from round {c.attack_start_round + 1}")
    if c.continuous_data_poisoning:
        extra.append("data poisoning in every round")
    rule_args = {k: v for k, v in parts.rule.kwargs.items() if k != "num_byzantine"}  # f is shown apart
    rule = f"{type(parts.rule)(parts.rule.name, tuple(rule_args.items()))} (f = {rule_num_byzantine(c)})"
    if parts.pre_aggregations:
        rule += f" after {' -> '.join(str(p) for p in parts.pre_aggregations)}"
    local = (
        (
            f"fedavg, {c.local_steps} local steps"
            if c.local_steps is not None
            else f"fedavg, {c.local_epochs} local epochs"
        )
        if c.protocol == "fedavg"
        else "fedsgd"
    )
    return {
        "dataset / model": f"{c.dataset} / {c.model} ({part})",
        "clients": f"{c.num_clients} ({c.clients_per_round} per round, {c.num_malicious} malicious)",
        "attack": " + ".join(attack) + (f" ({', '.join(extra)})" if extra else ""),
        "aggregator": rule,
        "rounds": f"{c.rounds} ({local}, client lr {c.client_lr}, server lr {c.server_lr}, seed {c.seed})",
    }


def summary_table(results: dict) -> str:
    """A readable table of the run's settings (``describe``) and final metrics."""
    c, f = results["config"], results["final"]
    rows = list(describe(c).items()) + [
        ("test accuracy", f"{f['accuracy']:.4f}"),
        ("test loss", f"{f['loss']:.4f}"),
    ]
    if "attack_success_rate" in f:
        rows.append(("attack success rate", f"{f['attack_success_rate']:.4f}"))
    if "source_recall" in f:  # the attack's test examples classified as their true label
        data_attack = components(ExperimentConfig(**c)).data_attack
        triggered = data_attack is not None and data_attack.name in _TRIGGER_ATTACKS
        rows.append(
            ("accuracy on triggered inputs" if triggered else "source-class recall", f"{f['source_recall']:.4f}")
        )
    if "smoothed_accuracy" in f:  # a rule that predicts by a vote of noisy models (CRFL)
        rows.append(
            (
                "smoothed accuracy",
                f"{f['smoothed_accuracy']:.4f} (certified {f['certified_accuracy']:.4f}, "
                f"mean certified radius {f['certified_radius']:.4g})",
            )
        )
    rows += [
        (
            "detection TPR / FPR",
            " / ".join("n/a" if math.isnan(f[k]) else f"{f[k]:.3f}" for k in ("detection_tpr", "detection_fpr")),
        ),
        (
            "time",
            f"{f['seconds']:.1f} s ({f['rounds_per_second']:.2f} rounds/s) + {f['compile_seconds']:.1f} s compile",
        ),
    ]
    if f.get("rounds_beyond_f"):
        rows.append(
            (
                "rounds beyond f",
                f"{f['rounds_beyond_f']} of {c['rounds']} had more attacking clients than f "
                f"(TPR {f['detection_tpr_beyond_f']:.3f} there, {f['detection_tpr_within_f']:.3f} "
                "in the others)",
            )
        )
    if f["diverged"]:
        rows.append(("DIVERGED", f"global model non-finite after round {f['diverged_round']}; training stopped there"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}} | {v}" for k, v in rows] + [line])


def _writable_location(flag: str, path: str, kind: str) -> None:
    """``path`` can be written as a ``kind`` ("file" or "directory"): it is not the other kind,
    and a file can really be created where it goes (``checkpoint.probe_writable``, which creates
    the folder), checked before any training."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"--{flag} must be a non-empty path, got {path!r}")
    path = os.path.abspath(path)
    if kind == "file" and os.path.isdir(path):
        raise ValueError(f"--{flag} must be a file path, got the directory {path!r}")
    if kind == "directory" and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{flag} must be a directory, got the file {path!r}")
    ancestor = path if kind == "directory" and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--{flag}: cannot create {path!r}: {ancestor!r} is not a writable directory")
    try:
        checkpoint_lib.probe_writable(path, kind)
    except OSError as e:
        raise ValueError(f"--{flag}: cannot write to {path!r}: {e.strerror or e}") from None


def check_runner_flags(argv) -> None:
    """The runner's own flags (the config's are checked by ``fljax.experiment.validate``)."""
    if len(argv) > 1:
        raise ValueError(
            f"unexpected positional argument(s) {' '.join(argv[1:])!r}; settings are flags, e.g. --rounds=10"
        )
    if FLAGS.output is not None:
        _writable_location("output", FLAGS.output, "file")
    if FLAGS.workdir is None and FLAGS["checkpoint_every"].present:
        raise ValueError("--checkpoint_every applies only with --workdir (where the checkpoints go)")
    if FLAGS.workdir is not None:
        _writable_location("workdir", FLAGS.workdir, "directory")


def parse_flags(argv):
    """absl's parser, but a bad flag (unknown name, a word where a number is due, out of range)
    exits with status 2 and a one-line message, like every other invalid setting."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def config_with_preset(path):
    """``config_from_flags()``, or with ``--config=path`` the preset's experiment (a sweep's
    base) with the flags given explicitly on the command line on top. A flag given where it
    does not apply (``--dirichlet_alpha`` with ``--partition=iid``, even at its default value)
    raises ``ValueError`` (``fljax.experiment.check_applicable``)."""
    given = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(ExperimentConfig) if FLAGS[f.name].present}
    config = (
        config_from_flags() if path is None else replace_fields(base_config(load_config_file(path)), given, "flags")
    )
    check_applicable(config, given)
    return config


def start_distributed(config):
    """With ``--distributed``: ``jax.distributed.initialize`` with the coordinator flags (unset
    ones auto-detected), and the config with ``shard_clients`` on. Without it the coordinator
    flags must be unset. Returns the config to run."""
    given = [name for name in ("coordinator_address", "num_processes", "process_id") if FLAGS[name].value is not None]
    given += ["heartbeat_timeout"] if FLAGS["heartbeat_timeout"].present else []
    if not FLAGS.distributed:
        if given:
            raise ValueError(f"--{given[0]} applies only with --distributed")
        return config
    if not config.shard_clients and FLAGS["shard_clients"].present:
        raise ValueError(
            "--distributed shards the cohort over every process's devices: it needs --shard_clients "
            "(on by default with --distributed), got --shard_clients=false"
        )
    sharding_lib.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, heartbeat_timeout=FLAGS.heartbeat_timeout
    )
    return dataclasses.replace(config, shard_clients=True)


def use_cpu_cores() -> None:
    """``--cpu_cores``: ``fljax.use_cpu_cores`` before the first JAX computation (no effect on
    GPU/TPU runs; with one core, one device). Called in a process whose JAX already runs (a test,
    a notebook), it leaves that process's devices as they are."""
    try:
        use_cores(FLAGS.cpu_cores or None)
    except RuntimeError:
        pass


def main(argv) -> int:
    logging.set_verbosity(logging.WARNING)
    use_cpu_cores()
    notices = []  # deprecated flat flags and changed defaults, printed once the config is known to be valid
    try:
        config = start_distributed(scoped(config_with_preset(FLAGS.config), notice=notices.append))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    primary = jax.process_index() == 0  # with --distributed only process 0 prints and writes --output
    log = (lambda *a: None) if FLAGS.quiet or not primary else (lambda msg: print(msg, flush=True))
    try:
        check_runner_flags(argv)
        with warnings.catch_warnings(record=True) as caught:  # build reads the config again: its notices are
            warnings.simplefilter("ignore", FutureWarning)  # the ones above; it adds the settings it adjusts
            warnings.simplefilter("always", SettingNotice)
            exp = build(config)
        for w in caught:
            if issubclass(w.category, SettingNotice):
                notices.append(str(w.message))
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        ckpt = open_workdir(FLAGS.workdir, config) if FLAGS.workdir is not None else None
    except jax.errors.JaxRuntimeError:  # a failed collective (a lost process): multihost.exit_on_failure's
        raise
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for message in notices if primary else ():
        print(f"notice: {message}", file=sys.stderr)
    log(
        f"fljax: {config.attack} vs {config.aggregator} on {config.dataset}, {config.rounds} rounds "
        f"({jax.default_backend()}); compiling..."
    )
    try:
        results = run_experiment(exp, log, workdir=ckpt, checkpoint_every=FLAGS.checkpoint_every)
    except checkpoint_lib.CheckpointError as e:  # an incompatible checkpoint, found before compiling
        print(f"error: {e}", file=sys.stderr)
        return 2
    except multihost.Preempted as e:  # --distributed: a SIGTERM reached a process; checkpointed at a common block
        print(f"{multihost.INTERRUPTED}{e}", file=sys.stderr, flush=True)
        return multihost.EXIT_RESUMABLE
    if primary:
        print(summary_table(results))
    if FLAGS.output and primary:
        written = checkpoint_lib.write_json_or_fallback(
            FLAGS.output, results, lambda msg: print(f"error: {msg}", file=sys.stderr)
        )
        if written != FLAGS.output:
            return 1
        log(f"results written to {FLAGS.output}")
    return 0


def resume_hint() -> str:
    """How to resume this command's run, from what its --workdir holds now."""
    return checkpoint_lib.resume_hint(FLAGS.workdir)


def cli(argv) -> int:
    """``main`` as a command. With ``--distributed`` the command supervises a worker process
    running ``main`` (``fljax.multihost``): a lost process ends the run on every process within
    ``--heartbeat_timeout`` seconds with one line saying how to resume, never a hang or a crash dump."""
    if not FLAGS.distributed:
        return main(argv)
    if not multihost.is_supervised():
        return multihost.supervise(resume_hint, FLAGS.process_id)
    multihost.die_with_supervisor()
    with multihost.exit_on_failure(resume_hint):
        return main(argv)


if __name__ == "__main__":
    restart_with_tcmalloc()  # the command line again under tcmalloc where the system has it (FLJAX_TCMALLOC=0: not)
    app.run(lambda argv: sys.exit(cli(argv)), flags_parser=parse_flags)
