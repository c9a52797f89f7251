"""Executes every notebook in notebooks/ and checks what it prints, not only that it ran.

CI runs the small settings (FLJAX_SMALL=1); ``--runslow`` also runs the full-size versions (an
accelerator's work: the sweeps of notebooks 02 and 03 train hundreds of MNIST runs). Each
notebook must print no error and nothing skipped or invalid, and the facts its text claims must
show in its outputs: a demo that quietly stops demonstrating fails here.
"""

from __future__ import annotations

import glob
import math
import os
import re
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

from fljax.attacks import MODEL_ATTACKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
SIZES = [pytest.param(True, id="small"), pytest.param(False, id="full", marks=pytest.mark.slow)]
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"


def run(name: str, small: bool = True) -> tuple[str, ...]:
    """The output lines of ``notebooks/<name>`` executed to the end (its kernel imports this
    checkout, whatever fljax is installed), after checking that no cell failed and that no
    line reports something skipped or invalid. One test per notebook calls it (so that pytest-xdist
    executes each notebook once)."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.setenv("FLJAX_SMALL", "1" if small else "0")  # inherited by the kernel
        mp.setenv("MPLBACKEND", "agg")
        mp.setenv("TMPDIR", tmp)  # notebook 03's sweep folder (tempfile.mkdtemp) goes away with it
        mp.setenv(
            "PYTHONPATH", os.pathsep.join([ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        )
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    texts = [
        o.get("text", "")
        if o.get("output_type") == "stream"
        else o.get("data", {}).get("text/markdown", o.get("data", {}).get("text/plain", ""))
        for o in outputs
    ]
    lines = tuple(line for text in texts for line in text.splitlines())
    assert lines
    assert not [line for line in lines if re.search(r"skipp|cannot run|Traceback", line, re.I)]
    assert not [line for line in lines if "invalid" in line and not re.search(r"(?<!\d)0 invalid", line)]
    return lines


def matches(lines, pattern: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in (re.fullmatch(pattern, line.strip()) for line in lines) if m]


def test_the_three_notebooks_exist():
    assert [os.path.basename(p) for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_custom_aggregator.ipynb",
        "03_grid.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebooks_hold_no_outputs(path):
    """Saved outputs would go stale as the code changes: the notebooks are committed cleared."""
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "colab.research.google.com/github/" in text and "import fljax" in text and "SMALL" in text
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def _install_cell(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_every_notebook_installs_fljax_the_same_way():
    assert len({_install_cell(p) for p in NOTEBOOKS}) == 1
    first = nbformat.read(NOTEBOOKS[0], as_version=4).cells[0].source
    assert "FLJAX_REPO" in first and "pip install -e" in first  # the first cell says how


def _run_install_cell(tmp_path, monkeypatch, cwd, installed_at=None, repo=None) -> list[list[str]]:
    """The pip commands the install cell runs in ``cwd`` with fljax importable from
    ``installed_at`` (a folder holding fljax/__init__.py) or not at all; pip is not called."""
    import importlib.machinery
    import importlib.util
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd[4:]))
    origin = None if installed_at is None else str(installed_at / "fljax" / "__init__.py")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if origin is None else importlib.machinery.ModuleSpec(name, None, origin=origin),
    )
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if repo is None:
        monkeypatch.delenv("FLJAX_REPO", raising=False)
    else:
        monkeypatch.setenv("FLJAX_REPO", repo)
    exec(compile(_install_cell(NOTEBOOKS[0]), "install cell", "exec"), {})
    return calls


def test_install_cell_uses_the_checkout_it_sits_in_else_the_configured_repository(tmp_path, monkeypatch):
    checkout = tmp_path / "clone"
    (checkout / "fljax").mkdir(parents=True)
    (checkout / "notebooks").mkdir()
    (checkout / "pyproject.toml").write_text("[project]\nname = 'fljax'\n")
    (checkout / "fljax" / "__init__.py").write_text("")
    elsewhere = tmp_path / "site-packages"
    # In the checkout's notebooks/: an editable install of the checkout, unless fljax comes from it already.
    assert _run_install_cell(tmp_path, monkeypatch, checkout / "notebooks") == [["-q", "-e", str(checkout.resolve())]]
    assert _run_install_cell(tmp_path, monkeypatch, checkout / "notebooks", installed_at=elsewhere) == [
        ["-q", "-e", str(checkout.resolve())]
    ]
    assert _run_install_cell(tmp_path, monkeypatch, checkout / "notebooks", installed_at=checkout.resolve()) == []
    # Outside a checkout (Colab): the repository FLJAX_REPO names, unless fljax is importable.
    outside = tmp_path / "content"
    outside.mkdir()
    fork = "git+https://example.org/someone/fljax.git@dev"
    assert _run_install_cell(tmp_path, monkeypatch, outside, repo=fork) == [["-q", fork]]
    assert _run_install_cell(tmp_path, monkeypatch, outside) == [["-q", "git+https://github.com/fljax/fljax.git"]]
    assert _run_install_cell(tmp_path, monkeypatch, outside, installed_at=elsewhere, repo=fork) == []


@pytest.mark.parametrize("small", SIZES)
def test_quickstart_label_flippers_raise_the_5_to_3_rate(small):
    rows = {
        label: (float(acc), float(asr))
        for label, acc, asr in matches(
            run("01_quickstart.ipynb", small), rf"(.+?): accuracy ({NUMBER}), attack success ({NUMBER})"
        )
    }
    assert set(rows) == {"no attackers", "mean", "median"}
    assert all(acc > 0.3 for acc, _ in rows.values())  # trained: 10 classes, chance is 0.1
    assert rows["mean"][1] > rows["no attackers"][1] + 0.03  # a share of the test 5s


def _custom_rule_table(lines) -> tuple[float, dict]:
    ((reference,),) = matches(lines, rf"norm of the honest mean: ({NUMBER})")
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["attack"])
    rules = lines[header].split()[1:]
    table = {}
    for line in lines[header + 1 :]:
        name, *values = line.split() or [""]
        if name not in MODEL_ATTACKS:
            break
        assert len(values) == len(rules) and all(re.fullmatch(NUMBER, v) for v in values), line
        table[name] = dict(zip(rules, map(float, values)))
    return float(reference), table


@pytest.mark.parametrize("small", SIZES)
def test_custom_aggregator_faces_every_registered_model_attack(small):
    lines = run("02_custom_aggregator.ipynb", small)
    [(got,)], [(hand,)] = matches(lines, r"aggregate: \[(.*)\]"), matches(lines, r"by hand: +\[(.*)\]")
    got, hand = [float(v) for v in got.split()], [float(v) for v in hand.split(",")]
    assert got == pytest.approx([(0.5 + 0.7 + 1.4) / 3, -1.0], abs=1e-6) and hand == pytest.approx(got, abs=1e-6)

    reference, table = _custom_rule_table(lines)
    assert set(table) == set(MODEL_ATTACKS)  # each with a number for every rule, none skipped
    assert reference > 0 and set(table["none"]) == {"mean", "median", "clipped_mean"}
    for name, errors in table.items():  # the robust rules stay finite and closer than no update
        assert all(math.isfinite(errors[r]) and errors[r] < reference for r in ("median", "clipped_mean")), name
    assert all(e < reference / 4 for e in table["none"].values())
    assert not math.isfinite(table["nan"]["mean"]) and not math.isfinite(table["inf"]["mean"])
    for name in ("sign_flip", "gaussian", "ipm"):  # x10: the mean is worse than no update, the new rule is not
        assert table[name]["mean"] > reference and table[name]["clipped_mean"] < table[name]["mean"] / 2, name
    ((worse,),) = matches(lines, r"mean does worse than no update under +(\d+) of \d+ attacks: .*")
    assert int(worse) == sum(not e["mean"] < reference for e in table.values())

    # the cells' attacks print as their specs (an attack's arguments hold spaces: "label_flip(source=5, target=3)")
    cells = {(a, r): float(acc) for a, r, acc in matches(lines, rf"(.+?) vs (\S+) +accuracy ({NUMBER})")}
    sign_flip = "sign_flip(scale=10.0)"
    if small:
        assert set(cells) == {(sign_flip, "mean"), (sign_flip, "clipped_mean")}
        assert cells[sign_flip, "mean"] < 0.2 and cells[sign_flip, "clipped_mean"] > 0.5  # chance is 0.1
    else:
        assert {r for _, r in cells} == {"mean", "median", "clipped_mean"} and len(cells) == 69
        assert cells[sign_flip, "clipped_mean"] > cells[sign_flip, "mean"] + 0.3


@pytest.mark.parametrize("small", SIZES)
def test_grid_shares_programs_and_vmapped_seeds_match(small):
    lines = run("03_grid.ipynb", small)
    ((diff,),) = matches(lines, rf".*same results: max accuracy difference ({NUMBER})")
    assert float(diff) <= (0.0 if small else 0.005)  # an accelerator may round a batched matmul differently
    programs = {(a, r, p): how for a, r, p, how in matches(lines, r"(.+?) vs (\S+) +(\S+) +program (shared|compiled)")}
    pairs = {(a, r) for a, r, _ in programs}
    assert len(pairs) >= 4 and set(programs) == {(a, r, p) for a, r in pairs for p in ("iid", "shards:2")}
    assert all(programs[a, r, "shards:2"] == "shared" for a, r in pairs)  # equal shapes: the iid cell's program
    assert sum(how == "compiled" for how in programs.values()) >= len(pairs) - 1
