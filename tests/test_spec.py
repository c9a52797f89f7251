"""Component specs (``krum(num_byzantine=2)``), the registries as records, the scoped config and
the deprecated flat flags it replaces, and the ``--help`` generated from the factories."""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
import sys

import pytest

from experiments import run as runner
from fljax import aggregators, attacks
from fljax.experiment import ExperimentConfig, catalogue, config_dict, scoped
from fljax.registry import Registry
from fljax.spec import Spec, chain_text, parse, split
from fljax.types import Aggregator

ROOT = runner.__file__.rsplit("/experiments/", 1)[0]


# ----------------------------------------------------------------------------- syntax


@pytest.mark.parametrize(
    "text, specs",
    [
        ("median", (Spec("median"),)),
        ("krum(num_byzantine=2)", (Spec("krum", (("num_byzantine", 2),)),)),
        ("bucketing(bucket_size=2)+krum", (Spec("bucketing", (("bucket_size", 2),)), Spec("krum"))),
        ("fang_trim(knowledge=partial, b=1.5)", (Spec("fang_trim", (("knowledge", "partial"), ("b", 1.5))),)),
        (
            "backdoor(target_label=0, trigger_position=(2, 3))",
            (Spec("backdoor", (("target_label", 0), ("trigger_position", (2, 3)))),),
        ),
    ],
)
def test_parse_reads_specs_and_chains_and_str_writes_them_back(text, specs):
    assert parse(text) == specs
    assert parse(chain_text(specs)) == specs  # the canonical text reads back to the same components


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "must be a component spec"),
        ("krum(2)", r"takes keyword arguments only, as krum\(arg=value\)"),
        ("krum(num_byzantine=2, num_byzantine=3)", "gives num_byzantine twice"),
        ("krum(num_byzantine=f)", None),  # a bare word is text: the type check refuses it later
        ("krum(num_byzantine=len(x))", "the value must be a literal"),
        ("krum(", "cannot read"),
    ],
)
def test_parse_errors_name_the_flag_and_the_syntax(text, message):
    if message is None:
        assert parse(text, "--aggregator") == (Spec("krum", (("num_byzantine", "f"),)),)
        return
    with pytest.raises(ValueError, match=message) as e:
        parse(text, "--aggregator")
    assert str(e.value).startswith("--aggregator") and "\n" not in str(e.value)


def test_split_keeps_commas_inside_arguments():
    assert split("krum(num_byzantine=2),median, label_flip(source=5, target=3),") == [
        "krum(num_byzantine=2)",
        "median",
        "label_flip(source=5, target=3)",
    ]
    with pytest.raises(ValueError, match="unbalanced parentheses"):
        split("krum(num_byzantine=2,median", "--aggregators")


# ----------------------------------------------------------------------------- registries


def sharpened_mean(weighted: bool = True) -> Aggregator:
    """The mean under another name (a test's entry)."""
    return aggregators.mean(weighted)


def test_a_registry_refuses_duplicate_names_lambdas_and_bad_strengths():
    registry = Registry("aggregator")
    registry.register("sharpened_mean", sharpened_mean)
    with pytest.raises(ValueError, match="'sharpened_mean' is registered already .*sharpened_mean"):
        registry.register("sharpened_mean", aggregators.median)
    with pytest.raises(ValueError, match="register a named function"):
        registry.register("anonymous", lambda: aggregators.mean())
    with pytest.raises(ValueError, match="names are identifiers"):
        registry.register("not a name", sharpened_mean)
    with pytest.raises(ValueError, match="strength 'scale' is not a parameter of sharpened_mean"):
        registry.register("strong", sharpened_mean, strength="scale")
    registry.register("unweighted_mean", functools.partial(sharpened_mean, weighted=False))  # a named variant
    assert registry.build("unweighted_mean").init is not None
    with pytest.raises(TypeError):  # read-only: entries go through register
        registry["x"] = sharpened_mean  # type: ignore[index]
    # the real registries: built once, by decorator or call, an entry a record
    with pytest.raises(ValueError, match="aggregator 'krum' is registered already"):
        aggregators.REGISTRY.register("krum", aggregators.median)
    entry = attacks.MODEL_ATTACKS["sign_flip"]
    assert (entry.factory, entry.strength, entry.local_training, entry.targeted) == (
        attacks.sign_flip,
        "scale",
        None,
        False,
    )
    assert attacks.MODEL_ATTACKS["pgd"].local_training is attacks.pgd_training and attacks.MODEL_ATTACKS["pgd"].targeted


def test_build_checks_arguments_against_the_factory_signature():
    rule = aggregators.REGISTRY.build("trimmed_mean(num_byzantine=2)")
    assert rule.requirement is not None
    with pytest.raises(
        ValueError,
        match=r"^--aggregator: krum: unknown argument 'num_byzantin' \(did you mean "
        r"num_byzantine\?\); valid: num_byzantine, distance_power$",
    ):
        aggregators.REGISTRY.build("krum(num_byzantin=2)", where="--aggregator")
    with pytest.raises(ValueError, match="median: unknown argument 'f'; valid: none, median takes no arguments"):
        aggregators.REGISTRY.build("median(f=1)")
    with pytest.raises(ValueError, match=r"krum: num_byzantine must be an integer, got 2.5 \(float\)"):
        aggregators.REGISTRY.build("krum(num_byzantine=2.5)")
    with pytest.raises(ValueError, match=r"foolsgold: kappa must be a finite number, got 'big' \(str\)"):
        aggregators.REGISTRY.build("foolsgold(kappa=big)")
    with pytest.raises(
        ValueError, match=r"norm_clipping has no default for max_norm: give norm_clipping\(max_norm=...\)"
    ):
        aggregators.REGISTRY.build("norm_clipping")
    with pytest.raises(ValueError, match=r"unknown aggregator 'krun' \(did you mean krum\?\); valid: afa, "):
        aggregators.REGISTRY.build("krun")
    with pytest.raises(ValueError, match="num_clients is set by the run, not in the spec"):
        aggregators.REGISTRY.build("foolsgold(num_clients=3)", fixed=dict(num_clients=10))


# ----------------------------------------------------------------------------- the scoped config


def test_scoped_writes_the_canonical_form_and_the_config_dict_holds_no_flat_field():
    config = scoped(
        ExperimentConfig(
            attack="backdoor(target_label=0)+model_replacement(gamma=5)",
            aggregator=" bucketing( bucket_size = 2 ) + krum(num_byzantine=2)",
        )
    )
    assert config.attack == "backdoor(target_label=0)+model_replacement(gamma=5.0)"
    assert config.aggregator == "bucketing(bucket_size=2)+krum(num_byzantine=2)"
    recorded = config_dict(config)
    assert recorded["attack"] == config.attack and "attack_scale" not in recorded and "data_attack" not in recorded
    with pytest.raises(ValueError, match="--attack: .* names 2 data and 0 model attacks"):
        scoped(ExperimentConfig(attack="backdoor(target_label=0)+dba(target_label=0)"))
    with pytest.raises(ValueError, match="the rule krum must come last, after the pre-aggregations it takes"):
        scoped(ExperimentConfig(aggregator="krum+bucketing"))


@pytest.mark.parametrize(
    "flat, attack, aggregator",
    [
        (dict(attack="sign_flip", attack_scale=4.0), "sign_flip(scale=4.0)", "median"),
        (
            dict(attack="model_replacement", data_attack="backdoor", target_class=0, trigger_size=2),
            "backdoor(target_label=0, trigger_size=2)+model_replacement",
            "median",
        ),
        (
            dict(aggregator="krum", pre_aggregation="bucketing,nnm", bucket_size=3),
            "label_flip(source=5, target=3)",
            "bucketing(bucket_size=3)+nnm+krum",
        ),
        (
            dict(attack="fang_trim", attack_knowledge="partial", fang_b=1.5),
            "fang_trim(knowledge='partial', b=1.5)",
            "median",
        ),
        (dict(aggregator="foolsgold", kappa=0.5), "label_flip(source=5, target=3)", "foolsgold(kappa=0.5)"),
        (dict(attack="label_flip", source_class=6, target_class=0), "label_flip(source=6, target=0)", "median"),
    ],
)
def test_flat_settings_move_into_the_specs_with_a_notice_naming_the_replacement(flat, attack, aggregator):
    notices = []
    config = scoped(ExperimentConfig(**flat), notice=notices.append)
    assert (config.attack, config.aggregator) == (attack, aggregator)
    moved = [name for name in flat if name not in ("attack", "aggregator")]
    for name in moved:
        [notice] = [n for n in notices if n.startswith(f"--{name} is deprecated")]
        assert "\n" not in notice
        assert f"write --attack='{attack}'" in notice or f"write --aggregator='{aggregator}'" in notice
    assert config == scoped(config, notice=notices.append)  # the scoped form is a fixed point


def test_a_flat_setting_given_twice_or_nowhere_is_an_error():
    """One rule for the attack's and the rule's flat settings; a sweep's cell (refuse_unused=False)
    ignores, with a notice, a setting of the shared base that its components do not take."""
    with pytest.raises(ValueError, match="--kappa: foolsgold's kappa is given twice"):
        scoped(ExperimentConfig(aggregator="foolsgold(kappa=1.0)", kappa=0.5))
    with pytest.raises(ValueError, match="--trigger_size does not apply to --attack=sign_flip"):
        scoped(ExperimentConfig(attack="sign_flip", trigger_size=3))
    with pytest.raises(
        ValueError, match="--kappa does not apply to --aggregator=median: no component of it takes kappa"
    ):
        scoped(ExperimentConfig(aggregator="median", kappa=0.5))
    notices = []
    scoped(ExperimentConfig(aggregator="median", kappa=0.5), notice=notices.append, refuse_unused=False)
    assert notices == ["--kappa=0.5: no component of --aggregator=median takes it: ignored there"]


def test_runner_prints_one_notice_line_per_flat_flag(tmp_path):
    """The old command still runs; stderr names the replacement, one line each."""
    out = tmp_path / "r.json"
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
            "--protocol=fedsgd",
            "--rounds=1",
            "--eval_every=1",
            "--attack=sign_flip",
            "--attack_scale=4",
            "--aggregator=median",
            "--pre_aggregation=bucketing",
            "--quiet",
            f"--output={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stderr.splitlines() if line.startswith("notice: ")]
    assert notices == [
        "notice: --pre_aggregation is deprecated: write --aggregator='bucketing+median' (the flat "
        "component flags go in the next release)",
        "notice: --attack_scale is deprecated: write --attack='sign_flip(scale=4.0)' (the flat "
        "component flags go in the next release)",
    ]
    config = json.loads(out.read_text())["config"]
    assert (config["attack"], config["aggregator"]) == ("sign_flip(scale=4.0)", "bucketing+median")
    assert "attack_scale" not in config and "pre_aggregation" not in config  # the results record the scoped form


# ----------------------------------------------------------------------------- --help


def test_help_lists_every_registered_component_with_its_signature_defaults():
    for on, registries in (
        ("aggregator", (aggregators.REGISTRY, aggregators.PREAGGREGATORS)),
        ("attack", (attacks.MODEL_ATTACKS, attacks.DATA_ATTACKS)),
    ):
        lines = [line.strip() for line in catalogue(on).splitlines()]
        for registry in registries:
            for name in registry:
                assert any(line == name or line.startswith((f"{name}(", f"{name}  [")) for line in lines), name
        assert on in runner.FLAGS[on].help  # the flag's help carries the list
    lines = catalogue("aggregator").splitlines()
    default = inspect.signature(aggregators.foolsgold).parameters["kappa"].default
    assert f"  foolsgold(kappa={default!r}, feature_importance=False)" in lines
    assert (
        "  krum(num_byzantine=<f>, distance_power=2.0)" in lines
        and "  norm_clipping(max_norm=<required>, weighted=True)" in lines
    )
    assert "kappa" not in runner.FLAGS["aggregator"].help.split("foolsgold")[0]  # no hand-written defaults


def test_a_new_registration_shows_in_the_help_the_day_it_is_registered():
    aggregators.REGISTRY.register("sharpened_mean", sharpened_mean)
    try:
        assert "  sharpened_mean(weighted=True)" in catalogue("aggregator").splitlines()
    finally:
        aggregators.REGISTRY.unregister("sharpened_mean")
