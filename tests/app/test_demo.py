"""The main job end to end on the tiny pair: every stage runs and the report holds the results."""

from __future__ import annotations

import math

import pytest

from semalign_lens.core.errors import SemalignError
from semalign_lens.demo import PROFILES, run_demo


def test_tiny_demo_runs_end_to_end(tmp_path):
    result = run_demo("tiny", out_dir=tmp_path, progress=False)
    table = result.results
    assert list(table["model"]) == ["student (before)", "teacher", "student + sft", "student + semalign"]
    for metric in ("stdlib_test_ce", "stdlib_test_bpb", "humaneval_ce", "humaneval_bpb"):
        assert all(math.isfinite(v) for v in table[metric]), metric
    # the trained students changed: their scores differ from the untrained student's
    before = table.loc[0, "stdlib_test_ce"]
    assert table.loc[2, "stdlib_test_ce"] != before and table.loc[3, "stdlib_test_ce"] != before
    html = result.report_path.read_text()
    assert html.count("plotly.js v") == 1 and "student + semalign" in html and "Provenance" in html
    # one page: the pairing report's sections (one level down) and the training diagnostics are in it
    for section in ("Layer attribution (teacher)", "Teacher × student CKA", "Semantic-basis fidelity",
                    "Training: semalign"):
        assert f">{section}</h" in html, section
    assert html.count(">Provenance</h2>") == 1 and not (tmp_path / "pairing_report.html").exists()
    assert (tmp_path / "results.csv").exists()
    assert set(result.timings) >= {"load pair", "layer pairing", "train sft", "train semalign", "report"}
    assert "How this relates to the benchmark" in html and "analysis/TRANSFER.md" in html
    assert "Gap closed on held-out stdlib-test cross-entropy" in html and "The projection metrics" in html
    # the Δ-CKA map: the last stage's end minus the first stage's start, as the run wrote them
    import json

    import torch

    from semalign_lens.training.diagnostics import cka_change, cka_maps

    assert '<figure id="dcka-semalign">' in html  # the section id, not the title (plotly escapes '−' without orjson)
    assert "HumanEval, per problem: student against teacher" in html
    folder = tmp_path / "runs" / "semalign" / "diagnostics"
    ends = sorted(folder.glob("cka_stage*_end.json"))
    start, end = (json.loads((folder / n).read_text())["matrix"] for n in ("cka_stage0_start.json", ends[-1].name))
    torch.testing.assert_close(cka_change(cka_maps(folder.parent))[0], torch.tensor(end) - torch.tensor(start))
    # logit-lens agreement before/after: the first and the last `top1_teacher` the run logged per paired layer
    from semalign_lens.training.diagnostics import lens_agreement_change, read_metrics

    assert "Logit-lens agreement of the paired layers" in html and "after semalign" in html
    assert "Held-out cross-entropy against the training step" in html
    records = [r for r in read_metrics(folder.parent / "metrics.jsonl") if r.get("kind") == "diag"]
    change = lens_agreement_change(read_metrics(folder.parent / "metrics.jsonl"))
    for layer, (before, after) in change.items():
        mine = [r["top1_teacher"] for r in records if r["student_layer"] == layer]
        assert (before, after) == (mine[0], mine[-1]) and records[0]["step"] == 0


def test_tiny_demo_on_a_cross_tokenizer_pair(tmp_path):
    """`--vocab intersection` on the tiny pair of two tokenizers: SemAlign's cross-tokenizer twin trains, the
    headline is in bits per byte (the teacher's own tokens on the same text), and the page says why."""
    from semalign_lens.evaluation import gap_closed

    result = run_demo("tiny", out_dir=tmp_path, progress=False, vocab="intersection")
    table = result.results.set_index("model")
    assert list(table.index) == ["student (before)", "teacher", "student + sft", "student + semalign-shared"]
    gap = table["gap_closed (stdlib_test_bpb)"]
    for row in table.index:
        assert gap[row] == pytest.approx(gap_closed(table.loc["student (before)", "stdlib_test_bpb"],
                                                    table.loc[row, "stdlib_test_bpb"],
                                                    table.loc["teacher", "stdlib_test_bpb"], False), nan_ok=True)
    html = result.report_path.read_text()
    assert "Two tokenizers." in html and "shared tokens" in html and "Training: semalign-shared" in html
    assert "held-out stdlib-test bits per byte" in result.verdict
    with pytest.raises(SemalignError, match="vocab must be auto, shared or intersection"):
        run_demo("tiny", out_dir=tmp_path / "bad", progress=False, vocab="both")


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(SemalignError, match="valid: " + ", ".join(PROFILES)):
        run_demo("huge")


@pytest.mark.parametrize("progress", [True, False])
def test_demo_terminal_is_quiet(tmp_path, progress):
    """Through the real command: no third-party bars or warnings; one stage bar (none with --no-progress);
    the output ends with the results table, the precision used and the report's path."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "semalign_lens", "demo", "--profile", "tiny", "--out", str(tmp_path)]
    proc = subprocess.run(cmd + ([] if progress else ["--no-progress"]), capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("Loading weights", "Writing model shards", "Warning", "warn"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
    assert ("semalign demo:" in proc.stderr) is progress
    # text mode reads the bar's carriage returns as line ends: every "line" must be the stage bar
    assert all(line.startswith("semalign demo:") for line in proc.stderr.splitlines() if line.strip()), proc.stderr
    assert progress or proc.stderr == ""
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["model", "stdlib_test_ce"] and "student + semalign" in proc.stdout
    assert lines[-2].startswith("precision fp32 (auto;") and lines[-1] == f"report: {tmp_path / 'report.html'}"


def test_verdict_says_whether_and_how_much_it_transferred():
    import pandas as pd

    from semalign_lens.reports.demo import verdict

    def table(sft, semalign):
        return pd.DataFrame({"model": ["student (before)", "teacher", "student + sft", "student + semalign"],
                             "gap_closed (humaneval_ce)": [0.0, 1.0, sft, semalign]})

    text = verdict(table(-0.005449, -0.0143), "humaneval_ce")
    assert text.startswith("No method closed any of the HumanEval solution cross-entropy gap at this budget "
                           "(sft -0.5 %, semalign -1.4 %)") and "analysis/TRANSFER.md" in text
    assert verdict(table(0.02, 0.05), "humaneval_ce").startswith("semalign closed the most of the HumanEval "
                                                                 "solution cross-entropy gap at this budget")
    nogap = pd.DataFrame({"model": ["student (before)", "teacher", "student + sft"], "humaneval_ce": [5.97, 6.03, 5.9],
                          "gap_closed (humaneval_ce)": [0.0, 1.0, float("nan")]})
    assert verdict(nogap, "humaneval_ce").startswith("There is no gap to close: the teacher (6.03) is not better than "
                                                     "the untrained student (5.97)")


def test_pairing_story_names_the_trained_pairs_the_task_mismatch_and_low_cka():
    import pandas as pd

    from semalign_lens.lens.pairing import make_pairing
    from semalign_lens.reports.demo import pairing_story

    pairing = make_pairing("proportional", 6, 3, student_layers=[0, 2])
    cka = pd.DataFrame({"0": [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.4], "1": [0.5] * 7, "2": [0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.2]},
                       index=["embed", *map(str, range(6))])
    text = pairing_story(pairing, cka, "facts", "code")
    assert text.startswith("Training used student 0 ← teacher 1, student 2 ← teacher 5")
    assert "scored the teacher's layers on `facts`, not on the code transfer task" in text
    # student 0's pair (teacher 1, 0.8) is its best teacher layer (embed excluded); student 2's (0.2) is not
    assert "CKA: student 2 ← teacher 5 sits in a low-CKA band (0.20, against 0.90 for teacher 0)." in text
    assert "student 0 ← teacher 1 sits" not in text
    assert "facts" not in pairing_story(pairing, cka, "code", "code")
