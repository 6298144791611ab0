"""The transfer benchmark: every method x task x seed on the embedded pair, sized for two CPU cores.

    python analysis/transfer_table.py                    # demo profile, writes analysis/TRANSFER.md
    python analysis/transfer_table.py --profile quick    # a few minutes, fewer seeds and steps
    python analysis/transfer_table.py --profile tiny     # tiny random pair: a pipeline check in seconds

What it does (issue 7, item 3):
1. loads the teacher and the student (zoo names by default) and builds the two tasks of
   `semalign_lens.evaluation`: **code** (transfer on stdlib test-file chunks, score = HumanEval solution
   cross-entropy given the prompt, lower is better) and **knowledge** (teacher-known facts, transfer on
   training phrasings, score = answer log-prob on held-out phrasings, higher is better);
2. scores the teacher and the untrained student once per task (no seed dependence: no training);
3. trains every method of `semalign_lens.baselines` (the SFT control, logit KD, FitNets, Gram, Seeking,
   LaTen, SemAlign variants by objective and map kind) for every seed with **one shared AlignConfig**:
   same transfer data, pairing, frontier schedule, LoRA adapters, steps and learning rate; only the loss
   terms (and for the plugin methods their documented extra step) differ;
4. summarises per method and task: score mean and Student-t 95% interval over seeds, and gap closed
   (after - before) / (teacher - before) per seed, then mean and interval;
5. a data-budget curve: selected methods on the code task with more or less transfer data at the same
   steps (so the same compute: a larger budget means more distinct sequences, not more updates).

Outputs: `analysis/out/transfer/{runs.csv, summary.csv, table.md, budget_curve.html, meta.json}` and the
committed summary `analysis/TRANSFER.md` (command, wall time, profile, table, caveats). A time budget
(`--budget-minutes`) stops launching new runs when spent; skipped runs are listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from semalign_lens import evaluation as ev
from semalign_lens.baselines import METHODS, get_method, run_method
from semalign_lens.benchmark import RunProfile, TaskRun, build_task, load_pair, shared_config
from semalign_lens.errors import run_reporting_errors
from semalign_lens.precision import machine_line

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "transfer"


@dataclass
class Profile(RunProfile):
    """A `RunProfile` (its defaults are this benchmark's: 96 = steps x batch transfer sequences, each seen
    once; fp32, measured faster than bf16 autocast on this CPU at these sizes) plus seeds, tasks, methods and
    the data-budget curve."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=lambda: ["code", "knowledge"])
    methods: list[str] | None = None  # None: every registered method
    budgets: list[int] = field(default_factory=lambda: [24, 48, 96])
    budget_methods: list[str] = field(default_factory=lambda: ["sft", "kd", "semalign"])


PROFILES = {
    "demo": Profile(),
    "quick": Profile(seeds=[0, 1, 2], stage_steps=2, n_transfer=48, humaneval_limit=8, heldout_tokens=256,
                     budgets=[12, 24, 48],
                     methods=["sft", "kd", "fitnets", "gram", "seeking", "laten", "semalign", "semalign-paper-map"]),
    "tiny": Profile(seq_len=24, n_transfer=24, batch_size=4, stage_steps=2, student_layers=(0, 2), lora_rank=4,
                    lr=1e-2, precision="fp32", seeds=[0, 1, 2], humaneval_limit=4, heldout_tokens=128,
                    diag_sequences=2, budgets=[8, 24], teacher="tiny", student="tiny"),
}


# ----------------------------------------------------------------------------------------------- runs

def transfer_maps(teacher, student) -> dict:
    """The teacher->student maps of every kind a method uses, built once (each run would rebuild them)."""
    from semalign_lens.semantics import SemanticBasis, TransferMap

    tb, sb = SemanticBasis.from_model(teacher), SemanticBasis.from_model(student)
    kinds = {m.transfer_kind for m in METHODS.values() if m.transfer_kind} | {"dual"}
    return {kind: TransferMap(tb, sb, kind=kind) for kind in sorted(kinds)}


def run_one(method: str, seed: int, tr: TaskRun, profile: Profile, teacher, student, work: Path,
            cache_dir: Path | None, maps: dict | None = None) -> dict:
    cfg = shared_config(profile, len(tr.data), seed=seed, cache_dir=cache_dir)
    kind = get_method(method).transfer_kind or cfg.transfer.kind
    run_dir = work / f"{tr.task.name}-{tr.n_transfer}-{method}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    result = run_method(method, cfg, teacher=teacher, student=student, data=tr.data, diag_data=tr.diag,
                        run_dir=run_dir, lean=True, transfer=(maps or {}).get(kind))
    train_s = time.time() - t0
    scores = tr.task.evaluate(result.student)
    shutil.rmtree(run_dir, ignore_errors=True)  # weights and checkpoints: tens of MB per run
    m = get_method(method)
    return {"task": tr.task.name, "method": method, "family": m.family, "seed": seed, "n_transfer": tr.n_transfer,
            "steps": result.steps, "trainable_params": sum(result.trainable_params.values()),
            "trainable_by_stage": json.dumps(result.trainable_params), "data_hash": result.data_hash[:16],
            "train_s": round(train_s, 1), "eval_s": round(time.time() - t0 - train_s, 1),
            **{f"score_{k}": v for k, v in scores.items()}}


def prebuild_cache(profile: Profile, tr: TaskRun, teacher, student, cache_dir: Path, work: Path) -> None:
    """Build the task's teacher-target cache (states + logits) once, before the first method uses it."""
    from semalign_lens.baselines import method_config
    from semalign_lens.trainer import Trainer

    cfg = method_config(shared_config(profile, len(tr.data), cache_dir=cache_dir), "kd")
    Trainer(cfg, teacher=teacher, student=student, data=tr.data, diag_data=tr.diag, run_dir=work / "cache-warmup")
    shutil.rmtree(work / "cache-warmup", ignore_errors=True)


# ----------------------------------------------------------------------------------------------- summary

def summarise(runs, refs: dict[str, TaskRun]):
    """One row per (task, method): score mean and 95% CI over seeds, gap closed mean and 95% CI."""
    import pandas as pd

    rows = []
    for task, tr in refs.items():
        metric, hib = tr.task.metric, tr.task.higher_is_better
        rows.append({"task": task, "method": "student (before)", "family": "reference", "n_seeds": 0,
                     "metric": metric, "score": tr.before[metric], "gap_closed": 0.0})
        rows.append({"task": task, "method": "teacher", "family": "reference", "n_seeds": 0, "metric": metric,
                     "score": tr.teacher[metric], "gap_closed": 1.0})
        sub = runs[(runs["task"] == task) & (runs["n_transfer"] == tr.n_transfer)] if len(runs) else runs
        for method in dict.fromkeys(sub["method"]) if len(sub) else []:
            vals = sub[sub["method"] == method][f"score_{metric}"].tolist()
            s = ev.summarize_seeds(tr.before[metric], vals, tr.teacher[metric], higher_is_better=hib)
            rows.append({"task": task, "method": method, "family": get_method(method).family, "metric": metric,
                         **{k: s[k] for k in ("n_seeds", "score", "score_lo", "score_hi", "gap_closed", "gap_lo",
                                              "gap_hi")}})
    return pd.DataFrame(rows)


def _fmt(mean, lo, hi, digits=3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def markdown_table(summary, refs: dict[str, TaskRun]) -> str:
    """Methods as rows; per task: score (mean ± 95% CI half-width) and gap closed (mean ± half-width)."""
    tasks = list(refs)
    head = ["method"]
    for t in tasks:
        arrow = "↑" if refs[t].task.higher_is_better else "↓"
        head += [f"{t}: {refs[t].task.metric} {arrow}", f"{t}: gap closed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in dict.fromkeys(summary["method"]):
        cells = [method]
        for t in tasks:
            r = summary[(summary["task"] == t) & (summary["method"] == method)]
            if not len(r):
                cells += ["–", "–"]
                continue
            r = r.iloc[0]
            if r["family"] == "reference":
                cells += [f"{r['score']:.3f}", "0" if method.startswith("student") else "1"]
            else:
                cells += [_fmt(r["score"], r["score_lo"], r["score_hi"]), _fmt(r["gap_closed"], r["gap_lo"], r["gap_hi"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_figure(curve, refs: dict[str, TaskRun]):
    import plotly.graph_objects as go

    tr = refs["code"]
    metric = tr.task.metric
    fig = go.Figure()
    for method in dict.fromkeys(curve["method"]):
        sub = curve[curve["method"] == method].groupby("n_transfer")[f"score_{metric}"].mean().sort_index()
        fig.add_trace(go.Scatter(x=sub.index.tolist(), y=sub.tolist(), mode="lines+markers", name=method))
    for label, value, dash in (("student before", tr.before[metric], "dot"), ("teacher", tr.teacher[metric], "dash")):
        fig.add_hline(y=value, line_dash=dash, annotation_text=label)
    fig.update_layout(title="Data budget (code task, same steps for every budget): HumanEval solution CE, "
                            "lower is better", xaxis_title="transfer sequences", yaxis_title=metric,
                      xaxis_type="log", template="plotly_white")
    return fig


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: the profile's, else all)")
    parser.add_argument("--tasks", nargs="*", help="subset of tasks: code knowledge")
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--student", help="student source (zoo name or HF directory), overriding the profile's")
    parser.add_argument("--no-budget-curve", action="store_true")
    parser.add_argument("--pass-at-1", type=int, default=0, metavar="N",
                        help="also greedy pass@1 on N HumanEval problems for the teacher and the student before "
                             "(executes model-written code in a subprocess with a timeout; slow; off by default)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="stop launching runs after this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/runs.csv (same profile) and run only the missing ones")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--summary", default=str(ROOT / "TRANSFER.md"), help="markdown summary ('' to skip)")
    args = parser.parse_args(argv)

    import pandas as pd

    torch.set_num_threads(args.threads)
    profile = replace(PROFILES[args.profile])
    if args.methods:
        profile.methods = args.methods
    if args.tasks:
        profile.tasks = args.tasks
    if args.seeds:
        profile.seeds = args.seeds
    if args.student:
        profile.student = args.student
    methods = [get_method(m).name for m in (profile.methods or list(METHODS))]
    out = Path(args.out)
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    deadline = t_start + args.budget_minutes * 60
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731

    pair = load_pair(profile.teacher, profile.student)
    teacher, student = pair.teacher, pair.student
    log(f"loaded teacher {profile.teacher} and student {profile.student}")
    maps = transfer_maps(teacher, student)
    refs: dict[str, TaskRun] = {}
    for name in profile.tasks:
        refs[name] = build_task(name, profile, teacher, student, cache=out / "references.json")
        log(f"task {name}: {len(refs[name].data)} transfer sequences; before {refs[name].before}; "
            f"teacher {refs[name].teacher}")

    pass_at_1 = {}
    if args.pass_at_1:
        for role, model in (("teacher", teacher), ("student (before)", student)):
            r = ev.humaneval_pass_at_1(model, limit=args.pass_at_1, max_new_tokens=192, progress=False)
            pass_at_1[role] = {k: r[k] for k in ("pass_at_1", "passed", "problems")}
            log(f"pass@1 {role}: {pass_at_1[role]}")

    if "knowledge" in refs:  # the measured teacher filter, for transparency
        refs["knowledge"].task.meta["teacher_table"].to_csv(out / "knowledge_teacher_filter.csv", index=False)

    records, skipped = [], []
    runs_path = out / "runs.csv"
    if args.resume and runs_path.exists():  # rows of an earlier, interrupted invocation with the same profile
        records = pd.read_csv(runs_path).to_dict("records")
        log(f"resuming: {len(records)} runs already in {runs_path}")
    done = {(r["task"], r["method"], int(r["seed"]), int(r["n_transfer"])) for r in records}
    n_resumed = len(records)

    command = "python analysis/transfer_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    history_path = out / "invocations.json"
    history = json.loads(history_path.read_text()) if args.resume and history_path.exists() else []

    def finalize(final: bool) -> str:
        """Write every output from the runs so far (after each run, so a kill leaves current files)."""
        import resource

        runs = pd.DataFrame(records)
        runs.to_csv(runs_path, index=False)
        summary = summarise(runs, refs)
        summary.to_csv(out / "summary.csv", index=False)
        table = markdown_table(summary, refs)
        (out / "table.md").write_text(table + "\n")
        curve = pd.DataFrame()
        if len(runs) and "code" in refs:
            main_n = refs["code"].n_transfer
            curve = runs[(runs["task"] == "code") & (runs["method"].isin(profile.budget_methods))
                         & ((runs["n_transfer"] != main_n) | (runs["seed"] == profile.seeds[0]))]
            if curve["n_transfer"].nunique() > 1:
                budget_figure(curve, refs).write_html(out / "budget_curve.html", include_plotlyjs="cdn")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = {"command": command, "wall_s": round(time.time() - t_start, 1),
               "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "runs": len(records) - n_resumed,
               "finished": final}
        invocations = history + [now]
        history_path.write_text(json.dumps(invocations, indent=2))
        meta = {"command": command, "invocations": invocations, "finished": final, "planned_runs": planned,
                "profile": asdict(profile), "methods": methods,
                "wall_s": round(sum(h["wall_s"] for h in invocations), 1),
                "cpu_s": round(sum(h["cpu_s"] for h in invocations), 1), "skipped": skipped,
                "threads": args.threads,
                "machine": machine_line(profile.precision).removeprefix("Machine: ") + f", {os.cpu_count()} cpus",
                "torch": torch.__version__,
                "tasks": {k: {kk: vv for kk, vv in v.task.meta.items() if kk not in ("teacher_table", "kept_ids")}
                          for k, v in refs.items()},
                "before": {k: v.before for k, v in refs.items()}, "teacher": {k: v.teacher for k, v in refs.items()},
                "pass_at_1": pass_at_1}
        (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        if args.summary:
            write_summary(Path(args.summary), meta, table, runs, curve, refs)
        return table

    def launch(method: str, seed: int, tr: TaskRun, cache: Path) -> None:
        if (tr.task.name, method, seed, tr.n_transfer) in done:
            return
        if time.time() > deadline:
            skipped.append(f"{tr.task.name}/{method}/seed {seed}/n {tr.n_transfer}")
            return
        row = run_one(method, seed, tr, profile, teacher, student, work, cache, maps)
        records.append(row)
        log(f"{tr.task.name} n={tr.n_transfer} {method} seed {seed}: "
            f"{ {k: round(v, 4) for k, v in row.items() if k.startswith('score_')} } "
            f"({row['train_s']}s train, {row['eval_s']}s eval)")
        finalize(final=False)

    budgets = [n for n in profile.budgets if "code" in refs and n != refs["code"].n_transfer]
    planned = len(profile.seeds) * len(methods) * len(refs) + (
        0 if args.no_budget_curve else len(budgets) * len(profile.budget_methods))
    caches = {}
    for name, tr in refs.items():
        caches[name] = work / f"cache-{name}-{tr.n_transfer}"
        prebuild_cache(profile, tr, teacher, student, caches[name], work)
        log(f"teacher targets cached for {name}")
    for seed in profile.seeds:  # seed-major: a run cut short has every method of every task at the first seeds
        for name, tr in refs.items():
            for method in methods:
                launch(method, seed, tr, caches[name])

    if not args.no_budget_curve:
        for n in budgets:
            tr = build_task("code", profile, teacher, student, n_transfer=n, cache=out / "references.json")
            cache = work / f"cache-code-{n}"
            prebuild_cache(profile, tr, teacher, student, cache, work)
            for method in profile.budget_methods:
                launch(method, profile.seeds[0], tr, cache)

    table = finalize(final=True)
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {(time.time() - t_start) / 60:.1f} min; {len(records)} runs, {len(skipped)} skipped")
    print(table)
    return 0


def write_summary(path: Path, meta: dict, table: str, runs, curve, refs: dict[str, TaskRun]) -> None:
    """The committed markdown: command, wall time, setup, the table, the budget curve, caveats."""
    p = meta["profile"]
    lines = [
        "# Transfer benchmark (issue 7)", "",
        *([f"Command: `{meta['command']}`  "] if len(meta.get("invocations", [])) < 2 else
          ["Commands (the first was interrupted and resumed):", "",
           *[f"- `{h['command']}`: {h['runs']} runs, {h['wall_s'] / 60:.1f} min wall" for h in meta["invocations"]],
           ""]),
        f"Wall time: **{meta['wall_s'] / 60:.1f} min** on {meta['machine']} "
        f"({meta['threads']} torch threads), CPU time {meta['cpu_s'] / 60:.1f} min, torch {meta['torch']}; "
        "wall time grows with whatever else runs on the machine.", "",
        *([] if meta.get("finished") else
          [f"**In progress / interrupted: {len(runs)} of {meta.get('planned_runs', '?')} runs done.** "
           "Finish with the same command plus `--resume`.", ""]),
        "## Setup", "",
        f"- teacher `{p['teacher']}`, student `{p['student']}`; every method trains the same LoRA adapters "
        f"(rank {p['lora_rank']} on v/o/up/down) of the frontier layer, shallow to deep over student blocks "
        f"{p['student_layers']} (proportional pairing), {p['stage_steps']} steps per stage, batch "
        f"{p['batch_size']}, lr {p['lr']}, on the same transfer sequences; seeds {p['seeds']}.",
        f"- code: {meta['tasks'].get('code', {}).get('n_transfer', '–')} chunks of {p['seq_len']} tokens from the "
        f"standard library's test files ({p['n_transfer']} train, {p['diag_sequences']} held out for the training "
        "diagnostics; unseen by the student; HumanEval and the held-out test files checked for verbatim overlap); "
        "score = cross-entropy of the canonical solution given the prompt on "
        f"{p['humaneval_limit']} evenly spaced HumanEval problems (lower is better); `stdlib_test_ce` in runs.csv "
        "is the same-distribution held-out check.",
        f"- knowledge: facts of `semalign_lens/tasks/facts.json` the teacher answers exactly on the held-out "
        f"(last) phrasing: {meta['tasks'].get('knowledge', {}).get('teacher_known', '–')} of "
        f"{meta['tasks'].get('knowledge', {}).get('facts', '–')}; transfer = the other phrasings + answer; score "
        "= answer log-prob on the held-out phrasing (higher is better); exact match in runs.csv.",
        "- score: mean ± half-width of the Student-t 95% interval over seeds; gap closed = (after − before) / "
        "(teacher − before), per seed, then mean ± half-width. Before and teacher involve no training (no seed "
        "variance).", "",
        "## Results", "", table, "",
    ]
    if len(runs):
        main_rows = runs[runs.apply(lambda r: r["n_transfer"] == refs[r["task"]].n_transfer, axis=1)]
        score_cols = [c for c in main_rows.columns if c.startswith("score_")]
        secondary = main_rows.groupby(["task", "method"], sort=False)[score_cols].mean().round(4)
        secondary = secondary.dropna(axis=1, how="all")
        ref_rows = []
        for task, tr in refs.items():
            ref_rows.append({"task": task, "method": "student (before)", **{f"score_{k}": v for k, v in tr.before.items()}})
            ref_rows.append({"task": task, "method": "teacher", **{f"score_{k}": v for k, v in tr.teacher.items()}})
        import pandas as pd

        secondary = pd.concat([pd.DataFrame(ref_rows).set_index(["task", "method"]).round(4), secondary])
        fair = main_rows.groupby(["task", "method"], sort=False).agg(
            seeds=("seed", "nunique"), steps=("steps", "first"), trainable_params=("trainable_params", "first"),
            data_hash=("data_hash", "first"), train_s=("train_s", "mean"))
        lines += ["## All metrics (mean over seeds)", "",
                  "`humaneval_ce`, `stdlib_test_ce`: nats/token, lower is better; `answer_logprob`: higher is better; "
                  "`exact_match`: share of held-out phrasings answered exactly (greedy).", "",
                  secondary.to_markdown(), "",
                  "## Same data, steps and parameters (the fairness record)", "",
                  "Trainable parameters summed over stages. FitNets additionally trains its projector (an auxiliary "
                  "head, discarded); LaTen trains a parameter-matched hypernetwork instead of the LoRA adapters.", "",
                  fair.round(1).to_markdown(), ""]
    if len(curve) and curve["n_transfer"].nunique() > 1:
        pivot = curve.pivot_table(index="method", columns="n_transfer", values="score_humaneval_ce", aggfunc="mean")
        lines += ["## Data budget (code task, seed 0, same steps at every budget)", "",
                  pivot.round(4).to_markdown(), "", "Figure: `analysis/out/transfer/budget_curve.html`.", ""]
    if meta.get("pass_at_1"):
        lines += ["## HumanEval pass@1 (greedy, before any transfer)", "",
                  *[f"- {role}: {r['passed']}/{r['problems']} = {r['pass_at_1']:.3f}" for role, r in
                    meta["pass_at_1"].items()], ""]
    if meta["skipped"]:
        lines += ["## Skipped (time budget spent)", "", *[f"- {s}" for s in meta["skipped"]], ""]
    lines += ["## Files", "", "`analysis/out/transfer/`: runs.csv (every run: scores, steps, trainable parameters, "
              "data hash, times), summary.csv, table.md, meta.json, budget_curve.html, "
              "knowledge_teacher_filter.csv (the teacher's answer on every held-out phrasing).", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, prog=Path(__file__).name))
