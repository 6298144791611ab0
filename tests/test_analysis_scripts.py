"""Smoke tests of the figure scripts in `analysis/` on tiny random models, so CI keeps them working.

Each script runs in-process (one interpreter, imports paid once) in its fast mode with the smallest sizes,
and must write its outputs. The numbers are meaningless at this size; only the pipeline is checked.
`make_figures.py` is checked for the commands it would run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fig45_cka_fast(tmp_path):
    fig45 = load("fig45_cka")
    assert fig45.main(["--fast", "--n-prompts", "2", "--steps", "1", "--permutations", "2", "--align-sequences", "8",
                       "--out", str(tmp_path)]) == 0
    for name in ("fig45_cka.html", "fig45_cka.md", "fig45_cka.csv", "summary.json"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {c["matrix"] for c in summary["cross"]} == {"fig5a teacher x student", "fig5b mapped(dual) x student",
                                                      "fig5b mapped(paper) x student", "fig5b teacher x aligned",
                                                      "fig5a teacher x student (standardized)"}
    assert len(summary["comparisons"]) == 4 and summary["claims"]


def test_ablations_fast(tmp_path):
    ablations = load("ablations")
    assert ablations.main(["--fast", "--noise-seeds", "0", "--steps", "1", "--rankers", "grad_x_act", "laten", "--humaneval-limit", "2", "--n-transfer", "8",
                           "--out", str(tmp_path)]) == 0
    for name in ("ablations.md", "ablations.html", "runs.csv", "attribution.csv", "pairings.csv", "map_fidelity.csv",
                 "summary.json"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {row["axis"] for row in summary["summary"]} == {"attribution", "pairing", "objective", "map"}
    steps = {row["steps"] for row in summary["summary"]}
    assert len(steps) == 1, f"every run must take the same total number of steps, got {steps}"


def test_transfer_table_tiny_with_the_fairness_record(tmp_path):
    """Every row, the SFT control included, trained on the same data, steps and parameter count; the table has
    the references and a row per method for both tasks; a resumed run adds nothing."""
    import pandas as pd

    table = load("transfer_table")
    args = ["--profile", "tiny", "--methods", "sft", "kd", "semalign", "--seeds", "0", "--no-budget-curve",
            "--threads", "1", "--out", str(tmp_path), "--summary", str(tmp_path / "TRANSFER.md")]
    assert table.main(args) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 6 and set(runs["method"]) == {"sft", "kd", "semalign"}
    for _, task in runs.groupby("task"):
        for column in ("data_hash", "steps", "trainable_params", "trainable_by_stage"):
            assert task[column].nunique() == 1, column
    md = (tmp_path / "table.md").read_text()
    for row in ("| student (before) |", "| teacher |", "| sft |", "| kd |", "| semalign |"):
        assert row in md, row
    assert "python analysis/transfer_table.py --profile tiny" in (tmp_path / "TRANSFER.md").read_text()
    assert table.main(args + ["--resume"]) == 0
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 6


def test_fig2_runs_on_a_tiny_teacher_directory(tmp_path):
    make_figures = load("make_figures")
    model = make_figures.tiny_teacher_dir(tmp_path / "teacher")
    fig2 = load("fig2_resolution")
    assert fig2.main(["--model", str(model), "--n-prompts", "2", "--max-len", "24", "--readout-tokens", "16",
                      "--readout-every", "3", "--out", str(tmp_path / "fig2")]) == 0
    assert (tmp_path / "fig2" / "fig2_resolution.md").exists()


def test_make_figures_commands(tmp_path):
    make_figures = load("make_figures")
    args = make_figures.argparse.Namespace(student="stdlib-student", transfer_profile="quick", transfer_minutes=20.0)
    for fast in (False, True):
        for target in ("fig45", "ablations", "transfer"):
            cmd = make_figures.commands(target, fast, tmp_path, args)
            assert cmd[0] == sys.executable and Path(cmd[1]).exists(), cmd
            assert ("--fast" in cmd or "tiny" in cmd) == fast, cmd
    with pytest.raises(ValueError):
        make_figures.commands("fig9", False, tmp_path, args)
