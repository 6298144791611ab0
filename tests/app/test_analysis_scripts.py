"""Smoke tests of the figure scripts in `analysis/` on tiny random models, so CI keeps them working.

Each script runs in-process (one interpreter, imports paid once) in its fast mode with the smallest sizes,
and must write its outputs. The numbers are meaningless at this size; only the pipeline is checked.
`make_figures.py` is checked for the commands it would run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.checkpoint import latest_step

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


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
    from semalign_lens.lens.measures import MEASURES

    assert [m["measure"] for m in summary["measures"]] == [*MEASURES, "stitch"]  # claim (i) under every measure
    assert sum(c["claim"].startswith("(i) with ") for c in summary["claims"]) == len(MEASURES) + 1


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
    """Every row of one budget, the SFT control included, trained on the same data, steps and parameter count,
    on both schedules; the summaries hold the control and the paired differences with intervals; TRANSFER.md
    starts with the control's line; a resumed run adds nothing. (The code task; the knowledge task's resume is
    the next test.)"""
    import pandas as pd

    table = load("transfer_table")
    args = ["--profile", "tiny", "--tasks", "code", "--methods", "sft", "kd", "semalign", "--seeds", "0", "1",
            "--budgets", "2", "4", "--threads", "1", "--out", str(tmp_path), "--summary", str(tmp_path / "TRANSFER.md")]
    assert table.main(args) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    # code: 2 budgets x 2 schedules x 3 methods x 2 seeds
    assert len(runs) == 2 * 2 * 3 * 2 and set(runs["schedule"]) == {"frontier", "all"}
    for _, group in runs.groupby(["task", "schedule", "steps"]):
        for column in ("data_hash", "trainable_params", "sequences_seen"):
            assert group[column].nunique() == 1, column
    code = runs[runs["task"] == "code"]
    assert {"score_stdlib_test_ce", "score_stdlib_test_bpb", "score_humaneval_ce", "score_humaneval_bpb"} <= set(code)
    frontier, full = (code[code["schedule"] == s]["trainable_params"].iloc[0] for s in ("frontier", "all"))
    assert full > frontier  # every parameter against LoRA adapters
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert {"kd - sft", "semalign - kd", "semalign - sft"} <= set(paired["comparison"])
    assert paired[["diff", "lo", "hi"]].notna().all().all() and (paired["lo"] <= paired["hi"]).all()
    control = pd.read_csv(tmp_path / "control.csv")
    assert len(control) == 2 * 2 * 2  # schedules x code budgets x two metrics each
    text = (tmp_path / "TRANSFER.md").read_text()
    assert text.startswith("**Positive control") and "python analysis/transfer_table.py --profile tiny" in text
    assert (tmp_path / "budget_curve.html").exists() and (tmp_path / "budget_curve.png").exists()
    assert table.main(args + ["--resume"]) == 0
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)


def test_transfer_table_reruns_a_task_whose_spec_changed(tmp_path):
    """A task whose spec changed since its runs (here: another fact set, as meta.json records it) is run again on
    --resume, not mixed in; an invocation that ran only that task no longer counts toward the wall time."""
    import pandas as pd

    table = load("transfer_table")
    args = ["--profile", "tiny", "--methods", "sft", "kd", "semalign", "--seeds", "0", "1", "--budgets", "2",
            "--threads", "1", "--out", str(tmp_path), "--summary", str(tmp_path / "TRANSFER.md")]
    assert table.main(args + ["--tasks", "knowledge"]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 2 * 3 * 2 and set(runs["task"]) == {"knowledge"}  # schedules x methods x seeds
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["tasks"]["knowledge"]["teacher_known"] += 1
    meta["invocations"].append({**meta["invocations"][0], "command": "knowledge only", "tasks": ["knowledge"]})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    before = runs.set_index(["schedule", "method", "seed"])["train_s"]
    assert table.main(args + ["--tasks", "knowledge", "--resume"]) == 0
    again = pd.read_csv(tmp_path / "runs.csv")
    assert len(again) == len(runs) and again.equals(again.drop_duplicates())
    after = again.set_index(["schedule", "method", "seed"])["train_s"]
    assert not after.sort_index().equals(before.sort_index())  # trained anew (timings differ)
    invocations = json.loads((tmp_path / "meta.json").read_text())["invocations"]
    assert [h.get("superseded", False) for h in invocations] == [True, True, False]  # both ran only that task
    assert "knowledge only" in (tmp_path / "TRANSFER.md").read_text() and "(superseded" in (
        tmp_path / "TRANSFER.md").read_text()


def test_transfer_table_on_a_cross_tokenizer_pair_writes_its_own_section(tmp_path):
    """The tiny pair of two tokenizers: the same fairness record, bits-per-byte metrics, the cross-vocabulary
    KD as the positive control, and a section of the same summary file that a shared-pair run keeps."""
    import pandas as pd

    table = load("transfer_table")
    summary = tmp_path / "TRANSFER.md"
    summary.write_text("**Positive control holds** (the shared table)\n\n# Transfer benchmark\n")
    args = ["--profile", "cross-tiny", "--schedules", "all", "--seeds", "0", "1", "--budgets", "2", "4",
            "--threads", "1", "--out", str(tmp_path / "cross"), "--summary", str(summary)]
    assert table.main(args) == 0
    runs = pd.read_csv(tmp_path / "cross" / "runs.csv")
    assert set(runs["method"]) == {"sft", "kd-shared", "semalign-shared", "semalign-layer"} and len(runs) == 16
    for _, group in runs.groupby("steps"):
        assert group["data_hash"].nunique() == 1 and group["trainable_params"].nunique() == 1
    paired = pd.read_csv(tmp_path / "cross" / "paired.csv")
    assert {"kd-shared - sft", "semalign-shared - kd-shared"} <= set(paired["comparison"])
    assert set(paired["metric"]) == {"stdlib_test_bpb", "humaneval_bpb"}
    text = summary.read_text()
    assert text.startswith("**Positive control holds** (the shared table)")  # the shared part is kept
    assert text.count(table.CROSS_BEGIN) == 1 and "## Cross-tokenizer pair: tiny → tiny" in text
    table.write_section(summary, "**Positive control** (rewritten)\n", cross=False)  # a shared-pair run
    again = summary.read_text()
    assert again.startswith("**Positive control** (rewritten)") and "## Cross-tokenizer pair" in again
    with pytest.raises(SemalignError, match="do not fit profile 'cross-tiny'"):
        table.build_profile(table.argparse.Namespace(profile="cross-tiny", methods=["kd"], tasks=None, seeds=None,
                                                     schedules=None, budgets=None, student=None))


def test_the_all_schedule_evaluated_on_the_way_equals_separate_runs(tmp_path, tiny_pair):
    """At a constant learning rate, the score of a 2-step run equals the 2-step point of a 4-step run."""
    table = load("transfer_table")
    profile = replace(table.PROFILES["tiny"], budgets=[2, 4])
    tr = table.build_task("code", profile, tiny_pair.teacher, tiny_pair.student)
    maps = table.transfer_maps(tiny_pair.teacher, tiny_pair.student, ["kd"])
    cache = tmp_path / "cache"
    table.prebuild_cache(profile, tr, tiny_pair, cache, tmp_path)
    rows = {}
    for name, budgets in (("curve", [2, 4]), ("alone", [2])):
        out = []  # each run trains its own copy of the student (the pair's is never changed)
        table.run_curve("kd", "all", 0, budgets, tr, profile, tiny_pair, tmp_path / name, cache, maps, set(),
                        out.append)
        rows[name] = out
    assert [r["steps"] for r in rows["curve"]] == [2, 4]
    assert rows["curve"][0]["score_stdlib_test_ce"] == pytest.approx(rows["alone"][0]["score_stdlib_test_ce"], abs=1e-6)
    assert rows["curve"][1]["score_stdlib_test_ce"] != pytest.approx(rows["curve"][0]["score_stdlib_test_ce"], abs=1e-6)

    class Killed(Exception):
        pass

    def killed_after_first(row):  # the process dies right after writing the 2-step row
        raise Killed

    work = tmp_path / "killed"
    with pytest.raises(Killed):
        table.run_curve("kd", "all", 0, [2, 4], tr, profile, tiny_pair, work, cache, maps, set(), killed_after_first)
    assert latest_step(work / "code-all-kd-s0") == 2
    resumed = []
    table.run_curve("kd", "all", 0, [2, 4], tr, profile, tiny_pair, work, cache, maps, {("code", "all", "kd", 0, 2)},
                    resumed.append)
    assert [r["steps"] for r in resumed] == [4]  # from the 2-step checkpoint, not from the start
    assert resumed[0]["score_stdlib_test_ce"] == pytest.approx(rows["curve"][1]["score_stdlib_test_ce"], abs=1e-6)


def test_the_prebuilt_cache_holds_the_lens_readouts_when_lens_kl_runs(tmp_path, tiny_pair):
    """With `lens-kl` in the profile the task's cache is built as its (states, top-k logits and the teacher's lens
    top-k per pair), and serves kd too; without it, no lens readouts are built."""
    from semalign_lens.training import Trainer
    from semalign_lens.training.methods import method_config

    table = load("transfer_table")
    for methods, lens in ((["kd", "lens-kl"], True), (["kd"], False)):
        profile = replace(table.PROFILES["tiny"], methods=methods)
        tr = table.build_task("code", profile, tiny_pair.teacher, tiny_pair.student)
        cache = tmp_path / f"cache-{len(methods)}"
        table.prebuild_cache(profile, tr, tiny_pair, cache, tmp_path)
        meta = json.loads((cache / "meta.json").read_text())
        assert ("lens" in meta) == lens
        for method in methods:  # each opens the prebuilt cache (a lens-kl run would refuse one without readouts)
            cfg = method_config(table.run_config(profile, tr, "frontier", 2, 0, cache), method)
            Trainer(cfg, tiny_pair, data=tr.data, diag_data=tr.diag,
                    run_dir=tmp_path / f"run-{method}")
        assert json.loads((cache / "meta.json").read_text()) == meta  # served as built, nothing rebuilt


def test_a_budget_beyond_the_transfer_set_is_refused():
    from semalign_lens.core.errors import SemalignError

    table = load("transfer_table")
    with pytest.raises(SemalignError, match=r"budget 40 steps x batch 4 = 160 sequences exceeds the transfer set: "
                                            r"48 sequences x epochs 1 = 48"):
        table.check_budgets([2, 40], 2, 4, 48, 1)
    table.check_budgets([2, 40], 2, 4, 48, 4)  # four epochs give 192
    with pytest.raises(SemalignError, match="budget 3 steps is not a multiple of the 2 frontier stages"):
        table.check_budgets([3], 2, 4, 48, 1)


def test_local_then_global_splits_the_budget_and_trains_every_block_last(tmp_path, tiny_pair):
    """local-global: the frontier stages on 2/3 of the budget, one end-to-end stage on the last 1/3 (the trainer's
    own plan says so), a split that does not divide is refused; the gradient pass records one cosine per paired
    layer and measured step, between -1 and 1, and no score row."""
    from semalign_lens.lens.pairing import make_pairing
    from semalign_lens.training.schedule import build_stages

    table = load("transfer_table")
    profile = replace(table.PROFILES["tiny"], budgets=[12])
    tr = table.build_task("code", profile, tiny_pair.teacher, tiny_pair.student)
    cfg = table.run_config(profile, tr, "local-global", 12, 0, tmp_path / "cache")
    pairs = list(make_pairing("proportional", tiny_pair.teacher.cfg.n_layers, tiny_pair.student.cfg.n_layers,
                              student_layers=list(profile.student_layers)))
    stages = build_stages(cfg.schedule, pairs)
    assert [(s.steps, s.is_global) for s in stages] == [(4, False), (4, False), (4, True)]
    with pytest.raises(SemalignError, match="multiples of 6 with local-global"):
        table.check_budgets([4], 2, 4, 48, 1, schedules=["local-global"])  # 4 - 1 = 3 frontier steps, 2 stages
    table.check_budgets([4], 2, 4, 48, 1, schedules=["frontier"])
    table.check_budgets([8], 2, 4, 48, 1, schedules=["local-global"])  # 6 + 2
    maps = table.transfer_maps(tiny_pair.teacher, tiny_pair.student, ["semalign"])
    rows = table.gradient_rows("semalign", "local-global", 12, 2, tr, profile, tiny_pair, tmp_path,
                               tmp_path / "cache", maps)
    assert rows and all(-1 <= r["cos"] <= 1 and r["norm_ratio"] > 0 for r in rows)
    assert {r["stage"] for r in rows} == {0, 1}  # measured in the frontier stages; the global one has no layer term
    assert {r["student_layer"] for r in rows} == set(profile.student_layers)
    summary = table.gradient_summary(rows)
    assert summary["steps"].sum() == len(rows)
    (page,) = table.gradient_figures(rows, tmp_path / "out")  # the run report's figure, one per schedule and method
    assert page.name == "local-global-semalign.html" and "local-global schedule: gradient agreement" in page.read_text()
    assert table.gradient_png(summary, tmp_path / "gradcos.png") and (tmp_path / "gradcos.png").stat().st_size > 0
    assert table.diagnosed("semalign") and not table.diagnosed("kd") and not table.diagnosed("sft")


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


def test_a_method_far_off_the_others_is_named_off_scale():
    import pandas as pd

    table = load("transfer_table")

    def panel(devs):
        return pd.DataFrame({"method": list(devs), "before": 4.0, "score": [4.0 + d for d in devs.values()]})

    assert table.off_scale(panel({"sft": -0.3, "kd": -0.1, "semalign": -0.1, "layer": 1.9})) == ["layer"]
    assert table.off_scale(panel({"sft": -0.38, "kd": -0.05, "semalign": -0.09})) == []  # 0.38 is under 0.5
    assert table.off_scale(panel({"a": 0.1, "b": 2.0})) == []  # two methods: nothing to scale to


def test_probe_fact_types_tiny(tmp_path):
    """The fact-type probe runs on a tiny random teacher: the control row first, then two phrasings per type,
    each over every candidate its source reads from the interpreter."""
    import pandas as pd

    probe = load("probe_fact_types")
    out = tmp_path / "probe.csv"
    assert probe.main(["--teacher", "tiny", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["type"].iloc[0].startswith("function_module") and len(table) == 1 + 2 * len(probe.CANDIDATES)
    for kind, (source, _) in probe.CANDIDATES.items():
        assert (table.loc[table["type"] == kind, "candidates"] == len(source())).all(), kind


def test_probe_fact_phrasings_scores_every_fact_of_a_type_per_phrasing(tmp_path):
    """`--phrasings`: one row per fact of each probed type, one 0/1 column per phrasing, equal to the task's
    own exact match of that phrasing (`evaluation.fact_scores`) on a tiny teacher; a few-shot example that is
    the fact's own answer scores 0."""
    import pandas as pd

    from semalign_lens import evaluation as ev
    from semalign_lens.data.tasks.facts import Fact, FactSet
    from semalign_lens.data.tasks.stdlib_facts import stdlib_facts
    from semalign_lens.models.tiny import tiny_pair

    probe = load("probe_fact_types")
    teacher = tiny_pair(seed=0).teacher
    facts = FactSet([f for kind in probe.PHRASINGS for f in stdlib_facts().of_type(kind)[:6]]
                    + [Fact("function_module", "set_trace", " pdb", ("{subject}",))])
    table = probe.probe_phrasings(teacher, facts)
    assert len(table) == 13 and set(table["type"]) == set(probe.PHRASINGS)
    kind, phrasing = "function_module", probe.PHRASINGS["function_module"][2]
    rows = facts.of_type(kind)
    want = ev.fact_scores(teacher, [Fact(kind, f.subject, f.answer, ("{subject}", phrasing)) for f in rows],
                          "eval", 1)["exact_match"]
    assert table.loc[table["type"] == kind, probe.column(phrasing)].tolist() == want.astype(int).tolist()
    few_shot = probe.column(probe.PHRASINGS["function_module"][1])
    assert "\n" not in few_shot and table.loc[table["fact"] == "function_module:set_trace", few_shot].item() == 0
    out = tmp_path / "p.csv"
    assert probe.main(["--teacher", "tiny", "--phrasings", "--out", str(out)]) == 0
    assert pd.read_csv(out).shape[1] == 2 + len(set(sum(probe.PHRASINGS.values(), [])))


def test_transfer_table_refuses_an_output_directory_another_table_writes(tmp_path):
    from semalign_lens.core.runlock import run_lock

    table = load("transfer_table")
    with run_lock(tmp_path, "--out"):
        with pytest.raises(SemalignError, match=rf"^--out {tmp_path} is in use by process "):
            table.main(["--profile", "tiny", "--out", str(tmp_path), "--summary", ""])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".semalign.lock"]  # nothing of the table's written
