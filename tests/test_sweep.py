"""The sweep: a tiny grid's outputs, vmapped seeds against separate runs, resuming, presets."""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import sweep
from experiments.configs import SweepSpec, load_config_file
from fljax import spec as spec_lib
from fljax.data import EMBEDDED, SYNTHETIC
from fljax.experiment import ExperimentConfig, attack_names, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 6 clients (2 malicious) on the 8x8 digits, 2 rounds of FedSGD: the cheapest real grid. iid and
# shards:1 give client tables of equal shape, so the shards cells reuse the iid cells' programs.
BASE = ExperimentConfig(
    dataset="digits",
    model="logreg",
    num_clients=6,
    clients_per_round=6,
    num_malicious=2,
    protocol="fedsgd",
    client_lr=0.5,
    rounds=2,
    eval_every=1,
    seed=0,
)
SPEC = SweepSpec(
    base=BASE,
    attacks=["none", "label_flip"],
    aggregators=["mean", "median"],
    malicious_fractions=[1 / 3],
    partitions=["iid", "shards:1"],
    seeds=[0, 1],
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweep"))
    cache = sweep.ProgramCache(max_programs=1)  # cells sharing a program run back to back
    result = sweep.run_sweep(SPEC, out, log=lambda *a: None, progress=False, cache=cache)
    return out, cache, result


def _cell_files(out):
    folder = os.path.join(out, "cells")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def test_grid_writes_every_output(grid):
    out, cache, result = grid
    assert len(result.cells) == 8 and len(result.computed) == 8 and not result.invalid
    # One program per (attack, rule); the shards cells reuse them.
    assert cache.compiled == 4 and cache.reused == 4 and len(cache) == 1  # the older three were dropped
    assert sorted(r["timing"]["program"] for r in result.cells) == ["compiled"] * 4 + ["shared"] * 4
    assert len(_cell_files(out)) == 8
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {(r["attack"], r["aggregator"], r["partition"]) for r in rows} == {
        (a, g, p) for a in SPEC.attacks for g in SPEC.aggregators for p in SPEC.partitions
    }
    for r in rows:
        assert r["num_malicious"] == "2"
        assert 0.0 <= float(r["accuracy_mean"]) <= 1.0 and float(r["accuracy_std"]) >= 0.0
        assert (r["attack_success_rate_mean"] != "") == (r["attack"] == "label_flip")
    with open(os.path.join(out, "history.csv")) as f:
        history = list(csv.DictReader(f))
    assert len(history) == 8 * 2 * 2  # cells x seeds x rounds
    assert {h["round"] for h in history} == {"1", "2"} and all(h["accuracy"] != "" for h in history)
    with open(os.path.join(out, "results.json")) as f:
        payload = json.load(f)
    assert len(payload["cells"]) == 8 and payload["spec"]["seeds"] == [0, 1]
    cell = payload["cells"][0]
    assert len(cell["final"]["accuracy"]["values"]) == 2
    assert np.asarray(cell["evals"]["accuracy"]).shape == (2, 2)  # seeds x evaluations
    assert np.asarray(cell["history"]["detection_tpr"]).shape == (2, 2)  # seeds x rounds
    md = open(os.path.join(out, "results.md")).read()
    assert "| attack | mean | median |" in md and "Attack success rate" in md and "Wall time" in md
    for partition in ("iid", "shards-1"):
        png = os.path.join(out, f"heatmap_malicious_fraction-0.333333__partition-{partition}.png")
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_vmapped_seeds_match_separate_runs(grid):
    """Each seed of a vmapped cell (here one run by a program shared with another partition)
    equals ``build(config).train(PRNGKey(seed))`` run on its own."""
    _, _, result = grid
    cell = next(
        r
        for r in result.cells
        if r["cell"]["attack"] == "label_flip"
        and r["cell"]["aggregator"] == "median"
        and r["cell"]["partition"] == "shards:1"
    )
    assert cell["timing"]["program"] == "shared"
    exp = build(ExperimentConfig(**cell["config"]))
    for i, seed in enumerate(cell["seeds"]):
        _, history = exp.train(jax.random.PRNGKey(seed))
        for metric in ("accuracy", "loss", "attack_success_rate"):
            np.testing.assert_allclose(
                cell["evals"][metric][i], np.asarray(history.evals[metric]), rtol=1e-5, atol=1e-6
            )
        np.testing.assert_allclose(
            cell["history"]["update_norm"][i], np.asarray(history.rounds["update_norm"]), rtol=1e-5
        )
    # Different seeds are different runs.
    assert cell["history"]["update_norm"][0] != cell["history"]["update_norm"][1]
    # The seeds one after another in one program (--seed_execution=map) give the same runs.
    _, mapped = sweep.seeds_program(exp.train, "map")(exp.data, sweep._keys(cell["seeds"]))
    np.testing.assert_allclose(cell["evals"]["accuracy"], np.asarray(mapped.evals["accuracy"]), rtol=1e-5, atol=1e-6)


def test_rerun_skips_finished_cells(grid):
    out, _, _ = grid
    before = {p: os.stat(p).st_mtime_ns for p in _cell_files(out)}
    cache = sweep.ProgramCache()
    again = sweep.run_sweep(SPEC, out, log=lambda *a: None, progress=False, cache=cache)
    assert again.computed == [] and len(again.skipped) == 8
    assert cache.compiled == 0 and cache.reused == 0  # nothing was even compiled
    assert {p: os.stat(p).st_mtime_ns for p in _cell_files(out)} == before
    finals = lambda cells: json.dumps([r["final"] for r in cells])  # NaN (no attacker's TPR) compares equal as text
    assert finals(again.cells) == finals(grid[2].cells)


def test_final_evaluations_reports_each_seeds_mean_over_its_last_k(grid, tmp_path):
    """Karimireddy et al.'s metric: a rerun with ``final_evaluations=2`` computes nothing, keeps
    the cell files (the last evaluation) and reports every seed's mean of its last two."""
    out = str(tmp_path / "copy")
    shutil.copytree(grid[0], out)
    before = {os.path.basename(p): open(p).read() for p in _cell_files(out)}
    spec = dataclasses.replace(SPEC, final_evaluations=2)
    again = sweep.run_sweep(spec, out, log=lambda *a: None, progress=False)
    assert again.computed == [] and len(again.skipped) == 8
    assert {os.path.basename(p): open(p).read() for p in _cell_files(out)} == before
    for cell in again.cells:
        for metric in ("accuracy", "loss"):
            per_seed = np.mean(np.asarray(cell["evals"][metric]), axis=1)
            np.testing.assert_allclose(cell["final"][metric]["values"], per_seed, rtol=1e-12)
            np.testing.assert_allclose(cell["final"][metric]["mean"], per_seed.mean(), rtol=1e-12)
        raw = json.load(open(os.path.join(out, "cells", cell["name"] + ".json")))["final"]["accuracy"]["values"]
        assert raw == [a[-1] for a in cell["evals"]["accuracy"]]  # the file: the last evaluation
    assert any(
        c["final"]["accuracy"]["values"] != [a[-1] for a in c["evals"]["accuracy"]] for c in again.cells
    )  # the two differ somewhere, so the check above can fail
    assert "each seed's mean over its last 2 evaluations" in open(os.path.join(out, "results.md")).read()
    with pytest.raises(
        ValueError, match=r"--final_evaluations must be in 1..2 \(the evaluations of 2 rounds every 1\), got 3"
    ):
        sweep.run_sweep(dataclasses.replace(SPEC, final_evaluations=3), out, log=lambda *a: None, progress=False)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="--final_evaluations must be an integer >= 1"):
            dataclasses.replace(SPEC, final_evaluations=bad)


def test_corrupt_or_partial_cell_is_recomputed(grid):
    out, cache, first = grid
    files = _cell_files(out)
    truncated, partial = files[0], files[1]
    with open(truncated) as f:
        text = f.read()
    with open(truncated, "w") as f:
        f.write(text[: len(text) // 2])  # a write cut short
    with open(partial) as f:
        payload = json.load(f)
    del payload["final"]
    with open(partial, "w") as f:
        json.dump(payload, f)
    untouched = {p: os.stat(p).st_mtime_ns for p in files[2:]}
    logs = []
    again = sweep.run_sweep(SPEC, out, log=logs.append, progress=False, cache=cache)
    names = sorted(os.path.basename(p)[: -len(".json")] for p in (truncated, partial))
    assert sorted(again.computed) == names and len(again.skipped) == 6
    assert any("unreadable" in m for m in logs) and any("incomplete" in m for m in logs)
    assert {p: os.stat(p).st_mtime_ns for p in files[2:]} == untouched
    by_name = {r["name"]: r for r in first.cells}
    for r in again.cells:  # deterministic: the recomputed cells equal the first ones
        assert r["final"]["accuracy"]["values"] == by_name[r["name"]]["final"]["accuracy"]["values"]
    for path in (truncated, partial):
        with open(path) as f:
            assert "final" in json.load(f)


def test_changed_settings_are_new_cells(tmp_path):
    """A cell file is keyed by the full config and seeds: another base setting is another cell."""
    a = sweep.make_cells(SPEC)
    b = sweep.make_cells(dataclasses.replace(SPEC, base=dataclasses.replace(BASE, client_lr=0.4)))
    c = sweep.make_cells(dataclasses.replace(SPEC, seeds=[0, 2]))
    assert not {x.name for x in a} & {x.name for x in b} and not {x.name for x in a} & {x.name for x in c}
    assert [x.name for x in a] == [x.name for x in sweep.make_cells(SPEC)]


def test_axes_parsing_and_validation():
    assert sweep.partition_settings("iid") == {"partition": "iid"}
    assert sweep.partition_settings("dirichlet:0.1") == {"partition": "dirichlet", "dirichlet_alpha": 0.1}
    assert sweep.partition_settings("bias:0.5") == {"partition": "bias", "bias": 0.5}
    assert sweep.partition_settings("shards:2") == {"partition": "shards", "shards_per_client": 2}
    for bad in ("zipf:1", "shards:x", "iid:3"):
        with pytest.raises(ValueError, match="--partitions"):
            sweep.partition_settings(bad)
    cells = sweep.make_cells(dataclasses.replace(SPEC, malicious_fractions=[0.0, 0.5], partitions=["iid"]))
    assert sorted({c.config.num_malicious for c in cells}) == [0, 3]
    with pytest.raises(ValueError, match="malicious_fractions"):
        sweep.make_cells(dataclasses.replace(SPEC, malicious_fractions=[1.5]))
    with pytest.raises(ValueError, match="seeds"):
        sweep.make_cells(dataclasses.replace(SPEC, seeds=[1, 1]))
    with pytest.raises(ValueError, match="set by the sweep's own axes"):
        sweep.make_cells(dataclasses.replace(SPEC, grid={"attack": ["none"]}))
    # 'all' expands over the registries, whatever they hold when the sweep runs.
    from fljax import aggregators

    spec = dataclasses.replace(SPEC, aggregators=["all"], attacks=["none"], partitions=["iid"])
    assert {c.axes["aggregator"] for c in sweep.make_cells(spec)} == set(aggregators.REGISTRY)


def test_unregistered_names_fail_with_the_list():
    spec = dataclasses.replace(
        SPEC,
        attacks=["none", "no_such_attack(scale=2)"],
        aggregators=["mean", "bucketing(bucket_size=2)+no_such_rule"],
        pending=["no_such_attack"],
    )
    with pytest.raises(ValueError) as e:
        sweep.check_registered(spec)
    assert "attack no_such_attack (in no_such_attack(scale=2))" in str(e.value)
    assert "aggregator no_such_rule (in bucketing(bucket_size=2)+no_such_rule)" in str(e.value)
    assert "pending: no_such_attack" in str(e.value)
    kept = sweep.check_registered(spec, allow_missing=True, log=lambda *a: None)
    assert kept.attacks == ["none"] and kept.aggregators == ["mean"]


def test_a_misspelled_name_suggests_the_close_ones_not_allow_missing():
    spec = dataclasses.replace(SPEC, attacks=["none", "sign_flp(scale=2.0)"], aggregators=["meadian"])
    with pytest.raises(ValueError) as e:
        sweep.check_registered(spec)
    message = str(e.value)
    assert "attack sign_flp (in sign_flp(scale=2.0); did you mean sign_flip?)" in message
    assert "aggregator meadian (did you mean median" in message and "--allow_missing" not in message
    with pytest.raises(ValueError, match="Pass --allow_missing"):  # a name with nothing close: maybe not merged yet
        sweep.check_registered(dataclasses.replace(SPEC, attacks=["zzzzzz"]))


def test_config_takes_a_presets_short_name_and_suggests_close_ones():
    from experiments.configs import preset_path, presets

    assert "fang2020" in presets()
    assert load_config_file("fang2020") == load_config_file(os.path.join(ROOT, "experiments", "configs", "fang2020.py"))
    assert preset_path("fang2020.py") == os.path.join(ROOT, "experiments", "configs", "fang2020.py")
    with pytest.raises(ValueError, match=r"--config: 'fang202' is neither a preset nor a file \(did you mean fang2020"):
        load_config_file("fang202")
    with pytest.raises(ValueError, match="presets: bagdasaryan2020, "):
        load_config_file("/no/such/file.py")


def test_axes_are_specs_and_the_side_tables_are_retired():
    """An axis value is a component with its arguments (chains included), checked against the
    factory before any data is loaded; its canonical text names the cell and sets its config."""
    spec = dataclasses.replace(
        SPEC,
        attacks=["sign_flip(scale=3)", "backdoor(target_label=0)+pgd(norm_bound=2)"],
        aggregators=["krum(num_byzantine=1)", "bucketing(bucket_size=2)+median"],
        partitions=["iid"],
    )
    cells = sweep.make_cells(spec)
    assert [(c.axes["attack"], c.axes["aggregator"]) for c in cells] == [
        ("sign_flip(scale=3.0)", "krum(num_byzantine=1)"),
        ("sign_flip(scale=3.0)", "bucketing(bucket_size=2)+median"),
        ("backdoor(target_label=0)+pgd(norm_bound=2.0)", "krum(num_byzantine=1)"),
        ("backdoor(target_label=0)+pgd(norm_bound=2.0)", "bucketing(bucket_size=2)+median"),
    ]
    assert all((c.config.attack, c.config.aggregator) == (c.axes["attack"], c.axes["aggregator"]) for c in cells)
    assert sweep.check_cell(cells[2].config) is None
    with pytest.raises(ValueError, match=r"--attack: sign_flip: unknown argument 'scal' \(did you mean scale\?\)"):
        sweep.make_cells(dataclasses.replace(spec, attacks=["sign_flip(scal=3)"]))
    with pytest.raises(ValueError, match="attack_settings is retired: write each component's arguments into its spec"):
        SweepSpec(base=BASE, attack_settings={"gaussian": {"attack_scale": 200.0}})
    with pytest.raises(
        ValueError,
        match=r"--grid: pre_aggregation is a deprecated flat component setting: vary the "
        r"component through its specs instead, e.g. --aggregators=",
    ):
        sweep.make_cells(dataclasses.replace(spec, grid={"pre_aggregation": ["bucketing", "nnm"]}))


def test_a_base_setting_applies_to_some_cell_or_is_refused():
    """The single run's rule for settings that do not apply, over the grid: the shared base's
    setting is left out of the cells it does not apply to, and refused when no cell takes it."""
    flat = dataclasses.replace(
        SPEC,
        base=dataclasses.replace(BASE, kappa=0.5),
        attacks=["none"],
        aggregators=["median", "foolsgold"],
        partitions=["iid"],
    )
    assert [c.config.aggregator for c in sweep.make_cells(flat)] == ["median", "foolsgold(kappa=0.5)"]
    with pytest.raises(
        ValueError, match="--kappa does not apply to any cell's --aggregator: no component of it takes kappa"
    ):
        sweep.make_cells(dataclasses.replace(flat, aggregators=["median"]))
    part = dataclasses.replace(
        SPEC,
        base=dataclasses.replace(BASE, partition="dirichlet", dirichlet_alpha=0.3),
        attacks=["none"],
        aggregators=["mean"],
        partitions=["iid", "dirichlet"],
    )
    cells = sweep.make_cells(part)
    assert [(c.config.partition, c.config.dirichlet_alpha) for c in cells] == [("iid", 0.5), ("dirichlet", 0.3)]
    with pytest.raises(
        ValueError, match="--dirichlet_alpha does not apply to any cell: it applies only with --partition=dirichlet"
    ):
        sweep.make_cells(dataclasses.replace(part, partitions=["iid", "shards:1"]))


def test_cells_a_rule_cannot_take_are_reported_not_run(tmp_path):
    spec = dataclasses.replace(
        SPEC, aggregators=["krum"], attacks=["none"], partitions=["iid"], malicious_fractions=[0.5]
    )
    result = sweep.run_sweep(spec, str(tmp_path), log=lambda *a: None, progress=False)
    assert result.cells == [] and len(result.invalid) == 1 and "krum" in result.invalid[0]["reason"]
    assert "Cells that cannot run" in open(tmp_path / "results.md").read()


PRESETS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "[a-z]*.py")))


def test_every_reproduction_has_a_preset():
    assert {
        "fang2020",
        "karimireddy2022",
        "tolpegin2020",
        "bagdasaryan2020",
        "baruch2019",
        "catalogue",
        "tabular_backdoor",
        "karimireddy2022_mimic",
        "karimireddy2022_noattack",
    } <= set(PRESETS)


def test_karimireddy_experiments_cover_their_tables():
    """Both of Karimireddy et al.'s tables: 5 rules x with / without bucketing x IID / sorted, 3 seeds;
    Experiment 1 without an attacker (n = 24), Experiment 2 with 5 mimics among 25."""
    for name, n, malicious, rounds in (
        ("karimireddy2022_noattack", 24, 0, 4500),
        ("karimireddy2022_mimic", 25, 5, 600),
    ):
        spec = load_config_file(name)
        cells = sweep.make_cells(spec)
        assert len(cells) == 20 and list(spec.seeds) == [0, 1, 2], name
        assert all(sweep.check_cell(c.config) is None for c in cells), name
        assert {c.config.partition for c in cells} == {"iid", "shards"}, name
        assert {(c.config.num_clients, c.config.num_malicious, c.config.rounds) for c in cells} == {
            (n, malicious, rounds)
        }
        assert sum(c.config.aggregator.startswith("bucketing(bucket_size=2)+") for c in cells) == 10, name
        assert all(
            c.config.client_lr == 0.01 and c.config.batch_size == 32 and c.config.local_steps == 1 for c in cells
        )


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_expand(name):
    spec = load_config_file(os.path.join(ROOT, "experiments", "configs", f"{name}.py"))
    # Presets run offline (embedded data, or the full Fashion-MNIST from Debian's IDX files), or
    # are a standard benchmark that runs where its data exists and here on its synthetic stand-in.
    assert isinstance(spec, SweepSpec) and spec.description
    if spec.base.dataset not in EMBEDDED + ("fashion_mnist",):
        assert spec.base.dataset in SYNTHETIC, name
        spec = dataclasses.replace(spec, base=dataclasses.replace(spec.base, dataset=f"synthetic:{spec.base.dataset}"))
    spec = sweep.check_registered(spec)  # every name a preset uses is registered
    cells = sweep.make_cells(spec)
    assert len(cells) >= 4
    reasons = [sweep.check_cell(c.config) for c in cells]
    # Only tolpegin2020 asks rules for more Byzantine clients than they tolerate (at 50%).
    assert all(r is None for r in reasons) or (
        name == "tolpegin2020" and all(c.axes["malicious_fraction"] == 0.5 for c, r in zip(cells, reasons) if r)
    )


def test_catalogue_tabular_and_text_presets_run_every_registered_attack():
    attacks = {
        name: {
            s.name
            for c in sweep.make_cells(load_config_file(os.path.join(ROOT, "experiments", "configs", f"{name}.py")))
            for s in spec_lib.parse(c.config.attack)
        }
        for name in ("catalogue", "tabular_backdoor", "shakespeare")
    }
    assert attacks["catalogue"] | attacks["tabular_backdoor"] | attacks["shakespeare"] == set(attack_names())
    assert "feature_trigger" in attacks["tabular_backdoor"] and "phrase_backdoor" in attacks["shakespeare"]


def test_catalogue_runs_the_new_rules_and_says_why_it_leaves_any_out():
    from experiments.configs import catalogue
    from fljax.aggregators import subsets

    cells = sweep.make_cells(load_config_file(os.path.join(ROOT, "experiments", "configs", "catalogue.py")))
    names = {s.name for c in cells for s in spec_lib.parse(c.config.aggregator)}
    issue15 = {"mda", "smea", "caf", "meamed", "monna", "fldetector", "lasa", "deepsight", "crfl", "auror", "arc"}
    assert issue15 <= names | set(catalogue.EXCLUDED) and not names & set(catalogue.EXCLUDED)
    n, f = cells[0].config.clients_per_round, 20
    for rule in catalogue.EXCLUDED:  # the reason holds: the exact search is refused at this n, f
        with pytest.raises(ValueError, match=rule):
            subsets.check_subsets(rule, n, f, subsets.MAX_SUBSETS)
    monna = [c.config for c in cells if c.config.aggregator.startswith("monna")]
    assert monna and all(c.num_malicious <= 99 < c.num_clients for c in monna)  # the pivot is an honest id


def test_run_and_sweep_take_a_preset_with_flags_on_top():
    from experiments import run

    preset = os.path.join(ROOT, "experiments", "configs", "baruch2019.py")
    try:
        run.FLAGS(["run", f"--config={preset}", "--rounds=3", "--dataset=tfds:mnist"])
        config = run.config_with_preset(run.FLAGS.config)
        spec = sweep.spec_from_flags()
        run.FLAGS.unparse_flags()
        run.FLAGS(["run", "--config=baruch2019", "--rounds=3", "--dataset=tfds:mnist"])  # the preset's short name
        by_name = run.config_with_preset(run.FLAGS.config)
        run.FLAGS.unparse_flags()
        run.FLAGS(["run", "--config=karimireddy2022_mimic"])
        mimic = sweep.spec_from_flags()
        run.FLAGS.unparse_flags()
        run.FLAGS(["run", "--config=karimireddy2022_mimic", "--final_evaluations=1"])
        mimic_last = sweep.spec_from_flags()
    finally:
        run.FLAGS.unparse_flags()
    assert (config.rounds, config.dataset, config.attack, config.num_clients) == (3, "tfds:mnist", "alie", 50)
    assert spec.base == config and spec.aggregators == ["mean", "krum", "trimmed_mean", "bulyan", "median"]
    assert by_name == config
    assert (spec.final_evaluations, mimic.final_evaluations, mimic_last.final_evaluations) == (1, 5, 1)


def test_cli_reports_missing_names():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--attacks=none,not_an_attack",
            "--aggregators=mean",
            "--progress=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "attack not_an_attack" in proc.stderr and "Registered attacks" in proc.stderr
    proc = subprocess.run(  # a window longer than the run: one line, before any data is loaded
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config=karimireddy2022_mimic",
            "--rounds=60",
            "--progress=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --final_evaluations must be in 1..2 (the evaluations of 60 rounds every 30), got 5"
    )


@pytest.mark.parametrize(
    "name",
    [
        "femnist",
        # ~20 s on 2 cores (the 2x256 LSTM over 1,000 test windows); test_models covers its model
        pytest.param("shakespeare", marks=pytest.mark.slow),
        pytest.param("cifar10_resnet18", marks=pytest.mark.slow),  # ResNet-18: ~90 s on 2 cores
    ],
)
def test_standard_benchmark_presets_run_small_on_their_synthetic_stand_ins(name, tmp_path):
    """Each standard-benchmark preset's model, attack and rule, one cell at toy size on the stand-in
    with its dataset's shapes (the real data is not offline): it runs and says it was synthetic."""
    spec = load_config_file(name)
    base = dataclasses.replace(
        spec.base,
        dataset=f"synthetic:{spec.base.dataset}",
        num_clients=4,
        clients_per_round=4,
        num_malicious=1,
        rounds=1,
        eval_every=1,
        local_steps=1,
        local_epochs=None,
        batch_size=4,
    )
    spec = dataclasses.replace(
        spec,
        base=base,
        attacks=[spec.attacks[-1]],
        aggregators=[spec.aggregators[1]],
        seeds=[0],
        partitions=spec.partitions[:1],
    )
    result = sweep.run_sweep(spec, str(tmp_path), log=lambda *a: None, progress=False)
    assert not result.invalid and len(result.cells) == 1
    cell = result.cells[0]
    assert cell["config"]["dataset"] == f"synthetic:{spec.base.dataset.split(':')[-1]}"
    assert cell["config"]["model"] == load_config_file(name).base.model
    assert 0.0 <= cell["final"]["accuracy"]["mean"] <= 1.0 and "attack_success_rate" in cell["final"]
    assert "synthetic" in open(tmp_path / "results.md").read()


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_program_cache_refuses_a_bound_below_one(bad):
    with pytest.raises(ValueError, match=r"max_programs must be an integer >= 1"):
        sweep.ProgramCache(max_programs=bad)
