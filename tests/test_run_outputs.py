"""A run's results are never lost and say everything that defines the run; the Python API checks
what the runner checks (issue 12, "Also")."""

import json
import os

import jax
import numpy as np
import pytest

import fljax
from experiments import run as runner
from experiments.run import describe, run_experiment, summary_table
from fljax import checkpoint
from fljax.attacks import fang_krum
from fljax.experiment import ExperimentConfig, build
from tests.helpers import make_data, squared_loss

TINY = [
    "--dataset=digits",
    "--model=logreg",
    "--num_clients=10",
    "--clients_per_round=10",
    "--num_malicious=2",
    "--protocol=fedsgd",
    "--rounds=2",
    "--eval_every=2",
    "--attack=sign_flip",
    "--aggregator=median",
]


def run_main(argv):
    runner.FLAGS.unparse_flags()
    try:
        runner.FLAGS(["run"] + argv)
        return runner.main(["run"])
    finally:
        runner.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag", ["--output=/proc/fljax-results.json", "--workdir=/proc/fljax-workdir"])
def test_an_unwritable_output_fails_before_anything_is_built(flag, monkeypatch, capsys):
    """/proc refuses new files even to root (for whom os.access says yes): the runner must find
    out by creating one, before loading data or training, and stop with a one-line error."""
    built = []
    monkeypatch.setattr(runner, "build", lambda config: built.append(config))
    assert run_main(TINY + [flag]) == 2
    err = capsys.readouterr().err
    assert built == [] and "cannot write to '/proc/fljax-" in err and "Traceback" not in err


def test_a_failing_final_write_saves_the_results_elsewhere_and_says_where(tmp_path, monkeypatch, capsys):
    target = str(tmp_path / "out" / "results.json")
    real = checkpoint.write_json_atomic

    def refuse_target(path, payload):
        if os.path.abspath(path) == os.path.abspath(target):
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(checkpoint, "write_json_atomic", refuse_target)
    monkeypatch.chdir(tmp_path)
    assert run_main(TINY + [f"--output={target}"]) == 1  # the run finished, its results are elsewhere
    err = capsys.readouterr().err
    saved = [f for f in os.listdir(tmp_path) if f.startswith("fljax-results-")]
    assert len(saved) == 1 and str(tmp_path / saved[0]) in err and "No space left on device" in err
    with open(tmp_path / saved[0]) as f:
        results = json.load(f)
    assert results["config"]["rounds"] == 2 and "accuracy" in results["final"]
    assert not os.path.exists(target)


def test_a_failing_sweep_output_dir_moves_to_a_fallback_folder(tmp_path, monkeypatch):
    from experiments import sweep
    from experiments.configs import SweepSpec

    out = str(tmp_path / "sweep")
    real = runner.write_json_atomic

    def refuse_out(path, payload):
        if os.path.abspath(path).startswith(out + os.sep):
            raise OSError(30, "Read-only file system")
        real(path, payload)

    monkeypatch.setattr(runner, "write_json_atomic", refuse_out)
    monkeypatch.setattr(checkpoint, "fallback_folders", lambda: [str(tmp_path / "elsewhere")])
    base = ExperimentConfig(
        dataset="digits",
        model="logreg",
        num_clients=10,
        clients_per_round=10,
        protocol="fedsgd",
        rounds=2,
        eval_every=2,
    )
    spec = SweepSpec(base=base, attacks=["none", "sign_flip"], aggregators=["mean"], seeds=[0])
    messages = []
    result = sweep.run_sweep(spec, out, log=messages.append, progress=False)
    assert result.output_dir.startswith(str(tmp_path / "elsewhere" / "fljax-sweep-"))
    assert sorted(os.listdir(os.path.join(result.output_dir, "cells"))) == sorted(
        c["name"] + ".json" for c in result.cells
    )
    assert os.path.exists(os.path.join(result.output_dir, "results.json"))
    assert any(result.output_dir in m and "could not write" in m for m in messages)


def test_make_round_checks_the_population_and_the_model_attacks_requirement():
    data = make_data([[0], [1], [2], [3]], np.ones((4, 1)), np.ones(4))
    update = fljax.fedsgd(squared_loss)
    rnd = fljax.make_round(update, fljax.aggregators.mean(), clients_per_round=2, num_malicious=5)
    with pytest.raises(ValueError, match="make_round: num_malicious must be in 0..num_clients=4, got 5"):
        rnd.step(rnd.init({"w": np.zeros(1)}), data, jax.random.PRNGKey(0))
    # fang_krum simulates Krum: n > 2f + 2. With f given, at build time; else f = round(2 * 4 / 4) = 2 at the first step
    with pytest.raises(
        ValueError, match="fang_krum: Krum needs n > 2f \\+ 2 clients per round; got n=4, num_byzantine f=1"
    ):
        fljax.make_round(
            update,
            fljax.aggregators.mean(),
            clients_per_round=4,
            num_malicious=2,
            model_attack=fang_krum(),
            num_byzantine=1,
        )
    rnd = fljax.make_round(
        update, fljax.aggregators.mean(), clients_per_round=4, num_malicious=2, model_attack=fang_krum()
    )
    with pytest.raises(
        ValueError, match="fang_krum: Krum needs n > 2f \\+ 2 clients per round; got n=4, num_byzantine f=2"
    ):
        rnd.step(rnd.init({"w": np.zeros(1)}), data, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="make_round: continuous_data_poisoning needs a data_attack"):
        fljax.make_round(update, fljax.aggregators.mean(), clients_per_round=2, continuous_data_poisoning=True)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(partition="dirichlet", dirichlet_alpha=0.3), ["dirichlet, alpha=0.3"]),
        (dict(partition="bias", bias=0.7), ["bias, p=0.7"]),
        (dict(partition="shards", shards_per_client=3), ["shards, 3 per client"]),
        (dict(attack="label_flip(source=6, target=0)"), ["label_flip 6 -> 0"]),
        (dict(attack="label_flip_all"), ["label_flip_all (l -> C - 1 - l)"]),
        (dict(attack="fang_trim(knowledge='partial')"), ["fang_trim (partial knowledge)"]),
        (dict(attack="fang_trim(knowledge='partial', b=1.5)"), ["fang_trim(b=1.5) (partial knowledge)"]),
        (dict(aggregator="bucketing+nnm+krum", num_byzantine=3), ["krum (f = 3) after bucketing -> nnm"]),
        (
            dict(aggregator="bucketing(bucket_size=3)+krum(num_byzantine=1)"),
            ["krum (f = 1) after bucketing(bucket_size=3)"],
        ),
        (dict(aggregator="foolsgold(kappa=0.5)"), ["foolsgold(kappa=0.5) (f = 20)"]),
        (
            dict(attack="backdoor(target_label=0)+model_replacement", attack_start_round=20, attack_single_shot=True),
            ["model_replacement + backdoor -> class 0 (single shot in round 21)"],
        ),
        (
            dict(attack="sign_flip(scale=4.0)", attack_start_round=3, attack_every=2),
            ["sign_flip (scale 4.0, every 2 round(s) from round 4)"],
        ),
        # the deprecated flat form describes the same run
        (
            dict(
                attack="model_replacement",
                data_attack="backdoor",
                target_class=0,
                aggregator="krum",
                pre_aggregation="nnm",
            ),
            ["model_replacement + backdoor -> class 0", "krum (f = 20) after nnm"],
        ),
        (dict(clients_per_round=10), ["median (f = 2)", "100 (10 per round, 20 malicious)"]),
    ],
)
def test_every_setting_that_defines_a_run_is_described(overrides, expected):
    text = " | ".join(describe(ExperimentConfig(**overrides)).values())
    for e in expected:
        assert e in text, text


def test_results_json_and_summary_carry_the_settings_and_name_the_backdoor_row_small():
    config = ExperimentConfig(
        dataset="digits",
        model="logreg",
        num_clients=10,
        clients_per_round=10,
        num_malicious=2,
        protocol="fedsgd",
        rounds=2,
        eval_every=2,
        attack="backdoor(target_label=0, trigger_size=2)",
        aggregator="bucketing+trimmed_mean",
        partition="dirichlet",
        dirichlet_alpha=0.3,
    )
    results = run_experiment(build(config), log=lambda m: None)
    assert results["settings"] == describe(config)
    assert (results["config"]["attack"], results["config"]["aggregator"]) == (
        "backdoor(target_label=0, trigger_size=2)",
        "bucketing+trimmed_mean",
    )  # the scoped form, as given
    assert "dirichlet, alpha=0.3" in results["settings"]["dataset / model"]
    assert "after bucketing" in results["settings"]["aggregator"]
    table = summary_table(json.loads(json.dumps(results)))
    assert "accuracy on triggered inputs" in table and "source-class recall" not in table
    assert "backdoor -> class 0" in table
