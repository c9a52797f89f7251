"""Validation: every bad setting is refused before anything is compiled, with a message that
names the parameter, the bad value and what is allowed; the CLI exits with status 2 and that
message, never a traceback."""

import dataclasses
import inspect
import os
import subprocess
import sys

import optax
import pytest

import fljax
from fljax import aggregators as aggregators_lib
from fljax import attacks as attacks_lib
from fljax.client import map_clients
from fljax.data.partition import partition
from fljax.experiment import ExperimentConfig, build, validate
from fljax.train import eval_schedule
from tests.helpers import squared_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")
BASE = dict(
    dataset="digits",
    model="logreg",
    num_clients=12,
    clients_per_round=12,
    num_malicious=3,
    attack="sign_flip",
    aggregator="median",
    rounds=2,
    eval_every=1,
    local_steps=1,
)
ALLOWED = ("must", "valid", "needs", "requires", "give ")

# (overrides, substrings the message must contain). The first override is the bad value, and
# its repr or str must appear in the message too (unless the case says value=False).
CASES = [
    # integers: wrong type, bool, float, zero, negative
    (dict(rounds="3"), ["--rounds", "integer"]),
    (dict(rounds=0), ["--rounds", ">= 1"]),
    (dict(rounds=-5), ["--rounds"]),
    (dict(rounds=2.5), ["--rounds", "integer"]),
    (dict(rounds=True), ["--rounds", "integer"]),
    (dict(num_clients=0), ["--num_clients"]),
    (dict(num_clients="ten"), ["--num_clients"]),
    (dict(clients_per_round=0), ["--clients_per_round"]),
    (dict(clients_per_round=13), ["--clients_per_round", "num_clients=12"]),
    (dict(num_malicious=-1), ["--num_malicious"]),
    (dict(num_malicious=13), ["--num_malicious", "num_clients=12"]),
    (dict(batch_size=0), ["--batch_size"]),
    (dict(batch_size=None), ["--batch_size"]),
    (dict(eval_every=0), ["--eval_every"]),
    (dict(chunk_size=-1), ["--chunk_size"]),
    (dict(local_steps=0), ["--local_steps"]),
    (dict(local_epochs=0, local_steps=None), ["--local_epochs"]),
    (dict(local_steps=None, local_epochs=None), ["--local_steps", "--local_epochs"], False),
    (dict(shards_per_client=0), ["--shards_per_client"]),
    (dict(seed=-1), ["--seed", "2**32"]),
    (dict(seed=2**32), ["--seed"]),
    (dict(seed="a"), ["--seed"]),
    (dict(source_class=-1), ["--source_class"]),
    (dict(target_class="3"), ["--target_class"]),
    (dict(attack_single_shot="yes"), ["--attack_single_shot", "boolean"]),
    # floats: zero, negative, NaN, infinity, strings
    (dict(client_lr=0), ["--client_lr", "> 0"]),
    (dict(client_lr=-0.1), ["--client_lr"]),
    (dict(client_lr=NAN), ["--client_lr", "finite"]),
    (dict(client_lr=INF), ["--client_lr", "finite"]),
    (dict(client_lr="0.1"), ["--client_lr"]),
    (dict(server_lr=NAN), ["--server_lr"]),
    (dict(server_lr=0.0), ["--server_lr"]),
    (dict(client_momentum=1.0), ["--client_momentum", "[0, 1)"]),
    (dict(server_momentum=-0.5), ["--server_momentum"]),
    (dict(dirichlet_alpha=0.0), ["--dirichlet_alpha", "> 0"]),
    (dict(dirichlet_alpha=-1.0), ["--dirichlet_alpha"]),
    (dict(dirichlet_alpha="a"), ["--dirichlet_alpha"]),
    (dict(dirichlet_alpha=INF), ["--dirichlet_alpha"]),
    (dict(bias=1.5), ["--bias", "[0, 1]"]),
    (dict(bias=-0.1), ["--bias"]),
    (dict(bias=NAN), ["--bias"]),
    (dict(attack_scale=-1.0), ["--attack_scale", "> 0"]),
    (dict(attack_scale=0.0), ["--attack_scale"]),
    (dict(attack_scale=INF), ["--attack_scale"]),
    (dict(attack_scale=NAN), ["--attack_scale"]),
    (dict(kappa=NAN, aggregator="foolsgold"), ["--kappa"]),
    # f and selections
    (dict(num_byzantine=-1), ["--num_byzantine"]),
    (dict(num_byzantine=12), ["--num_byzantine", "clients_per_round"]),
    (dict(num_byzantine="2"), ["--num_byzantine"]),
    (dict(num_selected=0, aggregator="multi_krum", num_byzantine=1), ["--num_selected"]),
    (dict(num_selected=13, aggregator="multi_krum", num_byzantine=1), ["--num_selected"]),
    # names: each lists the valid ones
    (dict(dataset="nope"), ["--dataset", "mnist5k", "digits", "tfds:"]),
    (dict(dataset=3), ["--dataset"]),
    (dict(dataset="tfds:"), ["--dataset"]),
    (dict(data_dir="/nonexistent/fljax-data"), ["--data_dir"]),
    (dict(model="resnet"), ["--model", "logreg", "mlp", "cnn"]),
    (dict(attack="zzz"), ["--attack", "sign_flip", "label_flip"]),
    (dict(aggregator="zzz"), ["--aggregator", "median", "krum"]),
    (dict(partition="random"), ["--partition", "iid", "dirichlet"]),
    (dict(execution="gpu"), ["--execution", "vmap", "sequential"]),
    (dict(protocol="sgd"), ["--protocol", "fedavg"]),
    (dict(precision="fp8"), ["--precision", "fp32"]),
    (dict(data_attack="zzz"), ["--data_attack", "backdoor"]),
    # rules' requirements at n = clients_per_round = 12
    (dict(aggregator="krum", num_byzantine=5), ["krum", "num_byzantine", "n > 2f + 2"], False),
    (dict(aggregator="multi_krum", num_byzantine=5), ["multi_krum", "num_byzantine"], False),
    (dict(aggregator="bulyan", num_byzantine=3), ["bulyan", "num_byzantine", "4f + 3"], False),
    (dict(aggregator="trimmed_mean", num_byzantine=6), ["trimmed_mean", "num_byzantine", "n/2"], False),
    (dict(aggregator="krum", num_malicious=8), ["krum", "num_byzantine"], False),  # default f = 8
    (dict(aggregator="norm_clipping"), ["norm_clipping", "max_norm=..."], False),
    (dict(aggregator="norm_clipping", max_norm=-1.0), ["max_norm"], False),
    (dict(aggregator="rlr", learning_threshold=20), ["learning_threshold"], False),
    (dict(aggregator="median", pre_aggregation="foo"), ["--pre_aggregation", "bucketing"], False),
    (dict(aggregator="mda", num_byzantine=6), ["mda", "num_byzantine", "n > 2f"], False),
    (dict(aggregator="smea(num_byzantine=5, max_subsets=100)"), ["smea", "C(12, 5) = 792", "max_subsets=100"], False),
    (dict(aggregator="monna(pivot=-2)"), ["monna", "pivot", "-2"], False),
    (dict(aggregator="arc+median", num_byzantine=6), ["arc", "num_byzantine", "n > 2f"], False),
    # attacks' settings
    (dict(attack_start_round=-1), ["start_round"]),
    (dict(attack_every=0), ["every"]),
    (dict(attack="label_flip", source_class=10), ["source", "0..9"]),
    (dict(attack="label_flip", source_class=3, target_class=3), ["source", "target"], False),
    (dict(attack="backdoor", trigger_position="middle", target_class=0), ["trigger_position", "bottom_right"]),
    (dict(attack="backdoor", poison_fraction=1.5, target_class=0), ["poison_fraction", "(0, 1]"]),
    (dict(attack="backdoor"), ["backdoor", "target_label"]),  # the factory has no default target
    # data-dependent: checked after loading the data, still before compiling
    (dict(num_clients=5000, clients_per_round=12), ["--num_clients", "1438"]),
    (dict(partition="shards", shards_per_client=1000), ["--shards_per_client", "1438"], False),
    (dict(model="cnn"), ["cnn", "H, W >= 10"], False),
    (dict(partition="bias", num_clients=5, clients_per_round=5, num_malicious=1), ["bias", "num_clients"], False),
]


def _config(overrides):
    return ExperimentConfig(**dict(BASE, **overrides))


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v!r}" for k, v in c[0].items()) for c in CASES])
def test_bad_config_is_refused_naming_the_parameter(case):
    overrides, expected, *rest = case
    check_value = rest[0] if rest else True
    with pytest.raises(ValueError) as info:
        build(_config(overrides))
    message = str(info.value)
    for part in expected:
        assert part in message, (part, message)
    assert any(word in message for word in ALLOWED), message
    if check_value:
        value = next(iter(overrides.values()))
        assert repr(value) in message or str(value) in message, message
    assert "\n" not in message


def test_at_least_50_bad_configurations():
    assert len(CASES) >= 50


def test_unknown_tfds_name_fails_fast():
    """No download, no retries: a name TFDS does not know is refused at once."""
    pytest.importorskip("tensorflow_datasets")
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        build(_config(dict(dataset="tfds:no_such_dataset_xyz")))
    assert time.perf_counter() - start < 60


def test_validate_checks_every_annotated_field_type():
    """Each int/float/str/bool field of the config refuses a value of the wrong type by name,
    so fields added later are covered too."""
    import typing

    hints = typing.get_type_hints(ExperimentConfig)
    wrong = {int: "1", float: "x", str: 1, bool: "yes"}
    checked = 0
    for field in dataclasses.fields(ExperimentConfig):
        args = [a for a in typing.get_args(hints[field.name]) if a is not type(None)]
        base = args[0] if len(args) == 1 else hints[field.name]
        if base not in wrong:
            continue
        with pytest.raises(ValueError, match=f"--{field.name} must be"):
            validate(_config({field.name: wrong[base]}))
        checked += 1
    assert checked >= 30


def test_eval_every_beyond_rounds_means_one_evaluation_at_the_end():
    """Not an error: evaluate after the last round only (e.g. --rounds=3 with the default 5)."""
    validate(_config(dict(rounds=3, eval_every=5)))
    assert eval_schedule(3, 5) == [3]


# ---- settings where they do not apply: one rule for every flag ------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(partition="iid", dirichlet_alpha=0.3),
            "--dirichlet_alpha does not apply to --partition=iid: it applies only with --partition=dirichlet",
        ),
        (
            dict(partition="dirichlet", bias=0.8),
            "--bias does not apply to --partition=dirichlet: it applies only with --partition=bias",
        ),
        (dict(partition="bias", shards_per_client=3), "--shards_per_client does not apply to --partition=bias"),
        (
            dict(protocol="fedsgd", local_steps=3),
            "--local_steps does not apply to --protocol=fedsgd: it applies only with --protocol=fedavg",
        ),
        (dict(protocol="fedsgd", batch_size=8, local_steps=None), "--batch_size does not apply to --protocol=fedsgd"),
        (
            dict(execution="vmap", chunk_size=4),
            "--chunk_size does not apply to --execution=vmap: it applies only with --execution=chunked",
        ),
        # the deprecated flat settings: a rule's, like an attack's, must be taken by a component
        (
            dict(aggregator="median", max_norm=1.0),
            "--max_norm does not apply to --aggregator=median: no component of it takes max_norm",
        ),
        (
            dict(aggregator="median", pre_aggregation="bucketing", kappa=0.5),
            "--kappa does not apply to --aggregator=median --pre_aggregation=bucketing: no component of it takes kappa",
        ),
        (
            dict(attack="label_flip", attack_scale=3.0),
            "--attack_scale does not apply to --attack=label_flip: no component of it takes a strength",
        ),
        (
            dict(attack="sign_flip", trigger_size=3),
            "--trigger_size does not apply to --attack=sign_flip: no component of it takes trigger_size",
        ),
    ],
)
def test_a_setting_where_it_does_not_apply_is_refused_naming_it(overrides, message):
    with pytest.raises(ValueError) as info:
        validate(_config(overrides))
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_settings_where_they_apply_pass():
    for overrides in (
        dict(partition="dirichlet", dirichlet_alpha=0.3),
        dict(partition="bias", bias=0.8),
        dict(partition="shards", shards_per_client=3),
        dict(protocol="fedsgd", local_steps=None),
        dict(execution="chunked", chunk_size=4),
        dict(aggregator="clip+median", max_norm=1.0),
    ):
        validate(_config(overrides))


def test_runner_refuses_a_flag_given_where_it_does_not_apply_even_at_its_default():
    """The library sees values, the command line sees flags: --dirichlet_alpha=0.5 (the
    default) with the default --partition=iid is refused by the runner before anything runs."""
    from experiments import run

    try:
        run.FLAGS(["run", "--dirichlet_alpha=0.5"])
        with pytest.raises(ValueError, match="--dirichlet_alpha does not apply to --partition=iid"):
            run.config_with_preset(None)
        run.FLAGS.unparse_flags()
        run.FLAGS(["run", "--dirichlet_alpha=0.5", "--partition=dirichlet"])
        assert run.config_with_preset(None).dirichlet_alpha == 0.5
    finally:
        run.FLAGS.unparse_flags()


# ---- --batch_size beyond every client's data ---------------------------------------------------


def test_a_batch_beyond_every_clients_data_runs_as_the_whole_data_with_a_notice():
    """A batch holds at most a client's data: --batch_size=4096 on 120-example clients trains on
    the same batches as --batch_size=120 (bit for bit), without computing 3,976 padded rows per
    step, and says so; the experiment records the value given."""
    import re
    import warnings

    import jax
    import numpy as np

    from fljax.experiment import SettingNotice

    small = dict(BASE, attack="none", aggregator="mean", rounds=1, local_steps=2)
    with pytest.warns(SettingNotice) as caught:
        big = build(_config(dict(small, batch_size=4096)))
    [message] = [str(w.message) for w in caught]
    largest = int(np.max(np.asarray(big.data.client_counts)))
    assert re.fullmatch(
        rf"--batch_size=4096 is larger than every client's data \(at most {largest} examples\): each "
        rf"local step takes a client's whole data, run as --batch_size={largest} \(no padded steps\)",
        message,
    ), message
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingNotice)
        exact = build(_config(dict(small, batch_size=largest)))
    assert big.config.batch_size == 4096
    key = jax.random.PRNGKey(0)
    a, b = big.train(key)[0].server.params, exact.train(key)[0].server.params
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_runner_prints_the_batch_notice_on_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "--dataset=digits",
            "--model=logreg",
            "--num_clients=6",
            "--clients_per_round=6",
            "--num_malicious=1",
            "--rounds=1",
            "--eval_every=1",
            "--local_steps=1",
            "--batch_size=1000",
            "--attack=none",
            "--aggregator=mean",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if "batch_size" in line]
    assert notices == [
        "notice: --batch_size=1000 is larger than every client's data (at most 240 examples): each "
        "local step takes a client's whole data, run as --batch_size=240 (no padded steps)"
    ], proc.stderr


# ---- factories, called directly ------------------------------------------------------------

FACTORY_CASES = [
    (lambda: aggregators_lib.krum(num_byzantine=-1), "num_byzantine", "-1"),
    (lambda: aggregators_lib.krum(num_byzantine=1.5), "num_byzantine", "1.5"),
    (lambda: aggregators_lib.krum(num_byzantine="2"), "num_byzantine", "'2'"),
    (lambda: aggregators_lib.krum(num_byzantine=True), "num_byzantine", "True"),
    (lambda: aggregators_lib.multi_krum(num_byzantine=1, num_selected=0), "num_selected", "0"),
    (lambda: aggregators_lib.trimmed_mean(beta=0.7), "beta", "0.7"),
    (lambda: aggregators_lib.trimmed_mean(beta=-0.1), "beta", "-0.1"),
    (lambda: aggregators_lib.trimmed_mean(beta=NAN), "beta", "nan"),
    (lambda: aggregators_lib.trimmed_mean(), "num_byzantine", "exactly one"),
    (lambda: aggregators_lib.trimmed_mean(num_byzantine=1, beta=0.1), "beta", "exactly one"),
    (lambda: aggregators_lib.trimmed_mean(num_byzantine=-2), "num_byzantine", "-2"),
    (lambda: aggregators_lib.mean(weighted="yes"), "weighted", "'yes'"),
    (lambda: aggregators_lib.krum(num_byzantine=2).requirement(6), "n > 2f + 2", "n=6"),
    (lambda: aggregators_lib.multi_krum(num_byzantine=1, num_selected=9).requirement(8), "num_selected", "9"),
    (lambda: aggregators_lib.bulyan(num_byzantine=2).requirement(10), "4f + 3", "n=10"),
    (lambda: aggregators_lib.trimmed_mean(num_byzantine=3).requirement(6), "n/2", "n=6"),
    (lambda: aggregators_lib.median().requirement(0), "median", "n=0"),
    (lambda: attacks_lib.sign_flip(scale=-1.0), "scale", "-1.0"),
    (lambda: attacks_lib.sign_flip(scale=NAN), "scale", "nan"),
    (lambda: attacks_lib.gaussian(std=0), "std", "0"),
    (lambda: attacks_lib.label_flip(num_classes=1), "num_classes", "1"),
    (lambda: attacks_lib.label_flip(10, source=3), "target", "both"),
    (lambda: attacks_lib.label_flip(10, source=10, target=1), "source", "10"),
    (lambda: fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=0), "local_steps", "0"),
    (lambda: fljax.fedavg(squared_loss, optax.sgd(0.1)), "local_steps", "exactly one"),
    (lambda: fljax.fedavg(squared_loss, optax.sgd(0.1), local_steps=1, batch_size=0), "batch_size", "0"),
    (
        lambda: fljax.make_round(fljax.fedsgd(squared_loss), aggregators_lib.mean(), clients_per_round=0),
        "clients_per_round",
        "0",
    ),
    (
        lambda: fljax.make_round(
            fljax.fedsgd(squared_loss), aggregators_lib.mean(), clients_per_round=4, num_malicious=-1
        ),
        "num_malicious",
        "-1",
    ),
    (
        lambda: fljax.make_round(
            fljax.fedsgd(squared_loss), aggregators_lib.krum(num_byzantine=1), clients_per_round=4
        ),
        "krum",
        "n=4",
    ),
    (lambda: fljax.make_train(None, None, None, None, num_rounds=0), "num_rounds", "0"),
    (lambda: fljax.make_train(None, None, None, None, num_rounds=2, eval_every=0), "eval_every", "0"),
    (lambda: partition(None, [0, 1, 2], 2, "dirichlet", alpha=0.0), "dirichlet_alpha", "0.0"),
    (lambda: partition(None, [0, 1, 2], 2, "random"), "random", "iid"),
    (lambda: partition(None, [0, 1, 2], 5, "iid"), "num_clients", "5"),
    (lambda: map_clients(lambda x: x, (), execution="gpu"), "gpu", "vmap"),
    (lambda: aggregators_lib.geometric_median(weighted="x"), "weighted", "'x'"),
    (lambda: aggregators_lib.norm_clipping(max_norm=1.0, weighted=1), "weighted", "1"),
    (lambda: aggregators_lib.rlr(learning_threshold=2, weighted="no"), "weighted", "'no'"),
    (lambda: aggregators_lib.geometric_median(nu=0.0), "nu", "0.0"),
    (lambda: attacks_lib.MODEL_ATTACKS["alie"](z=NAN), "z", "nan"),
    (lambda: attacks_lib.MODEL_ATTACKS["ipm"](epsilon=-1.0), "epsilon", "-1.0"),
    (lambda: attacks_lib.MODEL_ATTACKS["adaptive"](optimizer="sgd"), "optimizer", "'sgd'"),
    (lambda: attacks_lib.MODEL_ATTACKS["adaptive"](rule="median"), "rule", "'median'"),
    (lambda: attacks_lib.DATA_ATTACKS["backdoor"](target_label=1, num_classes=1), "num_classes", "1"),
    (lambda: attacks_lib.DATA_ATTACKS["backdoor"](target_label=1, input_shape=0), "input_shape", "0"),
    (lambda: aggregators_lib.mda(num_byzantine=1, max_subsets=0), "max_subsets", "0"),
    (lambda: aggregators_lib.mda(num_byzantine=8).requirement(40), "C(40, 8)", "76,904,685"),
    (lambda: aggregators_lib.smea(num_byzantine=3).requirement(6), "n > 2f", "n=6"),
    (lambda: aggregators_lib.caf(num_byzantine=4).requirement(8), "n > 2f", "n=8"),
    (lambda: aggregators_lib.meamed(num_byzantine=2).requirement(4), "n > 2f", "n=4"),
    (lambda: aggregators_lib.monna(num_byzantine=1, pivot=-1), "pivot", "-1"),
    (lambda: aggregators_lib.monna(num_byzantine=1, pivot=1.5), "pivot", "1.5"),
    (lambda: aggregators_lib.monna(num_byzantine=2).requirement(4), "n > 2f", "n=4"),
    (lambda: aggregators_lib.lasa(sparsity=1.0), "sparsity", "1.0"),
    (lambda: aggregators_lib.lasa(lambda_n=0.0), "lambda_n", "0.0"),
    (lambda: aggregators_lib.lasa(lambda_s=NAN), "lambda_s", "nan"),
    (lambda: aggregators_lib.lasa(layer_shapes=[(3, 0)]), "layer_shapes", "(3, 0)"),
    (lambda: aggregators_lib.auror(alpha=-1.0), "alpha", "-1.0"),
    (lambda: aggregators_lib.auror(detection_rounds=0), "detection_rounds", "0"),
    (lambda: aggregators_lib.arc(num_byzantine=-1), "num_byzantine", "-1"),
    (lambda: aggregators_lib.arc(num_byzantine=3).requirement(6), "n > 2f", "n=6"),
]


@pytest.mark.parametrize("index", range(len(FACTORY_CASES)))
def test_factory_refuses_bad_argument(index):
    call, name, value = FACTORY_CASES[index]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert name in message and value in message, message
    assert any(word in message for word in ALLOWED), message


def _other_required(factory):
    """Values for a factory's required arguments other than num_byzantine (from the config's
    defaults or a plausible positive value)."""
    kwargs = {}
    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}
    plausible = dict(num_clients=10, max_norm=1.0, noise_std=0.0, clip_radius=1.0, learning_threshold=2)
    for name, param in inspect.signature(factory).parameters.items():
        if name == "num_byzantine" or param.default is not inspect.Parameter.empty:
            continue
        value = plausible.get(name, defaults.get(name))
        if value is None:
            pytest.fail(f"{factory.__name__}: no value for required argument {name!r}; add it to _other_required")
        kwargs[name] = value
    return kwargs


TAKE_F = sorted(r for r, f in aggregators_lib.REGISTRY.items() if "num_byzantine" in inspect.signature(f).parameters)


def test_most_rules_take_num_byzantine():
    assert {"krum", "multi_krum", "trimmed_mean", "bulyan"} <= set(TAKE_F)


@pytest.mark.parametrize("rule", TAKE_F)
@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_every_registered_rule_refuses_a_bad_num_byzantine(rule, bad):
    factory = aggregators_lib.REGISTRY[rule]
    with pytest.raises(ValueError, match="num_byzantine") as info:
        factory(num_byzantine=bad, **_other_required(factory))
    assert repr(bad) in str(info.value)


# ---- the CLI: status 2, the message on stderr, no traceback --------------------------------


def test_cli_refuses_bad_flags_with_status_2(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--rounds=abc"], "--rounds"),
        (["--client_lr=nan"], "--client_lr"),
        (["--aggregator=zzz"], "median"),
        (
            [
                "--dataset=digits",
                "--num_clients=12",
                "--clients_per_round=12",
                "--num_malicious=3",
                "--aggregator=bulyan",
                "--num_byzantine=3",
            ],
            "bulyan: needs n >= 4f + 3",
        ),
        (["--unknown_flag=1"], "unknown_flag"),
        ([f"--output={tmp_path}"], "--output"),
        ([f"--workdir={a_file}"], "--workdir"),
        (["positional"], "positional"),
        (["--checkpoint_every=3"], "--checkpoint_every applies only with --workdir"),
        # a setting where it does not apply, even at its default value, like an attack's
        (["--dirichlet_alpha=0.5"], "--dirichlet_alpha does not apply to --partition=iid"),
        (["--max_norm=1.0"], "--max_norm does not apply to --aggregator=median: no component of it takes max_norm"),
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.run", *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags, _ in cases
    ]
    for (flags, expected), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (flags, proc.returncode, out, err)
        assert expected in err, (flags, err)
        assert "Traceback" not in err and "Traceback" not in out, (flags, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (flags, err)
        assert "compiling" not in out, flags
