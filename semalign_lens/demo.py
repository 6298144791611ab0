"""`semalign demo`: the whole SemAlign pipeline on one pair, ending in one self-contained HTML report.

Stages (each a step of the progress bar):
1. load the pair (vocabulary and mode checked) and look at it: architecture, residual norms per block;
2. layer pairing: rank the teacher's layers on a factual-recall task (attribution methods with bootstrap
   CIs), teacher x student CKA, the three pairing strategies (`lens.inspection.inspect_pairing`);
3. transfer data and evaluation: code transfer on the standard library's test files (never seen by the
   student), scored by HumanEval solution cross-entropy given the prompt and by held-out stdlib-test CE;
4. train the SFT control and SemAlign on exactly the same data, steps and trainable parameters
   (`semalign_lens.training.methods.run_method`; frontier schedule over the proportionally paired layers);
5. evaluate before/after against the teacher: gap closed = (after − before) / (teacher − before);
6. write one page, `report.html`: results, models, the pairing report's sections, training diagnostics,
   provenance.

Profiles: `demo` (the README's main job, ≤ 10 min on 2 cores in fp32, i.e. on a CPU without native bf16),
`quick` (≤ 2 min), `tiny` (random tiny
pair, seconds: tests and notebooks' fast mode). One seed: the demo shows the pipeline; the transfer table
(`analysis/transfer_table.py`) is where seeds and intervals live.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch

from .core.atomic import write_json_atomic
from .core.checks import check_output_dir
from .core.errors import SemalignError, writing
from .core.precision import precision_record
from .core.progress import StageBar
from .evaluation.protocol import RunProfile, build_task, load_pair, shared_config


@dataclass
class DemoProfile(RunProfile):
    """A `RunProfile` (every trained method shares it: the fairness rule) with the demo's defaults, plus the
    layer-pairing and overview sizes, the methods trained and the seed."""

    attribution_task: str = "facts"
    attribution_prompts: int = 16
    attribution_methods: tuple[str, ...] = ("grad_x_act", "patch_denoise", "ablate_mean", "seeking")
    cka_prompts: int = 64
    overview_prompts: int = 8
    n_transfer: int = 256
    seq_len: int = 128
    stage_steps: int = 12
    lr: float = 1e-3
    humaneval_limit: int = 24
    heldout_tokens: int = 2048
    methods: tuple[str, ...] = ("sft", "semalign")  # on a cross-tokenizer pair, their twins (kd -> kd-shared, ...)
    seed: int = 0
    vocab: str = "auto"  # "intersection" exactly when the student has another tokenizer (training/cross_pair.py)


PROFILES = {
    "demo": DemoProfile(),
    "quick": DemoProfile(attribution_prompts=8, attribution_methods=("grad_x_act",), cka_prompts=16,
                         overview_prompts=4, n_transfer=48, stage_steps=3, humaneval_limit=8, heldout_tokens=512,
                         student_layers=(2, 5)),
    "tiny": DemoProfile(teacher="tiny", student="tiny", attribution_prompts=6,
                        attribution_methods=("grad_x_act", "patch_denoise"), cka_prompts=12, overview_prompts=2,
                        n_transfer=12, diag_sequences=2, seq_len=32, batch_size=4, student_layers=(0, 2),
                        stage_steps=2, lr=1e-2, lora_rank=4, humaneval_limit=3, heldout_tokens=128),
}


# Expected relative time of each stage (the demo profile in fp32, AVX2 kernels): makes the bar's ETA honest.
# A method that reads teacher logits runs the whole teacher every step; the SFT control runs no teacher.
STAGE_WEIGHTS = {"load pair": 0.1, "overview": 0.1, "layer pairing": 1.0, "transfer task": 1.5, "train sft": 1.5,
                 "report": 0.05}
TRAIN_WEIGHT = 8.0  # any other method


@dataclass
class DemoResult:
    out_dir: Path
    report_path: Path
    results: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)  # precision asked and resolved, CPU model, ISA, native bf16
    verdict: str = ""  # one sentence: did it transfer, by how much


def results_table(metric: str, higher_is_better: bool, before: dict, teacher: dict,
                  after: dict[str, dict]) -> pd.DataFrame:
    """Rows: student before, teacher, each method; columns: every metric, and gap closed on `metric`."""
    from .evaluation import gap_closed

    rows = [{"model": "student (before)", **before}, {"model": "teacher", **teacher}]
    rows += [{"model": f"student + {name}", **scores} for name, scores in after.items()]
    table = pd.DataFrame(rows)
    table[f"gap_closed ({metric})"] = [
        gap_closed(before[metric], r[metric], teacher[metric], higher_is_better) for r in rows]
    return table


METRIC_NAMES = {"stdlib_test_ce": "held-out stdlib-test cross-entropy", "humaneval_ce": "HumanEval solution "
                "cross-entropy", "answer_logprob": "held-out fact log-prob",
                "stdlib_test_bpb": "held-out stdlib-test bits per byte"}


def pairing_story(pairing, cka: pd.DataFrame, attribution_task: str, transfer_task: str) -> str:
    """What the reader needs before the pairing sections: which pairs trained and who chose them, whether the
    attribution ranked the transfer task, and where each trained pair sits in the CKA map (its CKA against
    the best teacher layer for that student layer; "low" below half of it)."""
    pairs = ", ".join(f"student {p.student_layer} ← teacher {p.target_label()}" for p in pairing)
    text = [f"Training used {pairs}: the paper's proportional depth rule (strategy `proportional`); the CKA "
            "heatmap below marks the proportional pair of every student layer, these among them."]
    if attribution_task != transfer_task:
        text.append(f"The attribution rankers scored the teacher's layers on `{attribution_task}`, not on the "
                    f"{transfer_task} transfer task, so their ranking says which layers matter for "
                    f"`{attribution_task}`; the pairing was not chosen from it.")
    notes = []
    for p in pairing:
        column = cka[str(p.student_layer)] if str(p.student_layer) in cka else None
        here = column.get(str(p.nearest_teacher_layer)) if column is not None else None
        if here is None:
            continue
        best = column.drop("embed", errors="ignore").max()
        if here < 0.5 * best:
            notes.append(f"student {p.student_layer} ← teacher {p.nearest_teacher_layer} sits in a low-CKA band "
                         f"({here:.2f}, against {best:.2f} for teacher {column.drop('embed', errors='ignore').idxmax()})")
    if notes:
        text.append("CKA: " + "; ".join(notes) + ". A low-CKA pair asks the student layer for a representation "
                    "unlike its own; the layer loss then has more to move.")
    return " ".join(text)


def gap_figure(table: pd.DataFrame, metric: str):
    """Gap closed per method as bars, with the untrained student (0) and the teacher (1) as reference lines."""
    import plotly.graph_objects as go

    rows = table[table["model"].str.startswith("student + ")]
    gaps = rows[f"gap_closed ({metric})"].astype(float)
    fig = go.Figure(go.Bar(x=rows["model"].str.removeprefix("student + "), y=gaps,
                           text=[f"{100 * g:+.1f} %" if g == g else "no gap" for g in gaps], textposition="outside",
                           marker_color=["#2ca02c" if g > 0 else "#d62728" for g in gaps]))
    fig.add_hline(y=0, line_dash="dot", annotation_text="student before")
    fig.add_hline(y=1, line_dash="dash", annotation_text="teacher")
    low = min(-0.05, float(gaps.min()) * 1.3) if len(gaps) else -0.05
    fig.update_layout(template="plotly_white", height=320, yaxis_range=[low, 1.1], yaxis_tickformat=".0%",
                      title=f"Gap closed on {METRIC_NAMES.get(metric, metric)}", yaxis_title="gap closed")
    return fig


def verdict(table: pd.DataFrame, metric: str) -> str:
    """One sentence that answers "did it transfer?" from the results table (gap closed per method, 1 seed)."""
    gaps = {m.removeprefix("student + "): g for m, g in zip(table["model"], table[f"gap_closed ({metric})"],
                                                             strict=True) if m.startswith("student + ")}
    listed = ", ".join(f"{m} {100 * g:+.1f} %" for m, g in gaps.items())
    name = METRIC_NAMES.get(metric, metric)
    closed = {m: g for m, g in gaps.items() if g > 0}
    if gaps and all(g != g for g in gaps.values()):  # NaN: the teacher is not better, there is no gap
        rows = dict(zip(table["model"], table[metric], strict=True))
        head = (f"There is no gap to close: the teacher ({rows.get('teacher', float('nan')):.4g}) is not better than "
                f"the untrained student ({rows.get('student (before)', float('nan')):.4g}) on {name}")
    elif not closed:
        head = f"No method closed any of the {name} gap at this budget ({listed})"
    else:
        best = max(closed, key=closed.get)
        head = f"{best} closed the most of the {name} gap at this budget ({listed})"
    return head + "; one seed, so no interval: see analysis/TRANSFER.md for the benchmark with seeds."


class _StepNote:
    """A trainer plugin that shows the training step inside the demo's stage bar."""

    def __init__(self, bar: StageBar):
        self.bar = bar

    def on_step(self, trainer, step: int, total: int) -> None:
        self.bar.detail(f"step {step}/{total}")


def run_demo(profile: str | DemoProfile = "demo", out_dir: str | Path = "runs/demo", progress: bool = True,
             **overrides) -> DemoResult:
    """Run the pipeline (see module docstring); `overrides` replace fields of the named profile."""
    from .data.tokens import tokenize
    from .evaluation import humaneval_problem_ce
    from .lens.inspection import inspect_pairing
    from .lens.overview import (
        architecture_table,
        humaneval_prompts,
        norm_jumps,
        residual_norm_figure,
        residual_norms,
    )
    from .reports.page import Report
    from .reports.pairing import render_pairing
    from .reports.plots import signed_heatmap, versus_reference
    from .reports.run import heldout_figure, loss_figure, projection_figure
    from .training.diagnostics import PROJECTION_METRICS, cka_change, lens_agreement_change
    from .training.methods import get_method, run_method
    from .training.methods.cross_vocab import for_pair

    profile_name = profile if isinstance(profile, str) else "custom"
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise SemalignError(f"unknown demo profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    unknown = sorted(set(overrides) - {f.name for f in fields(profile)})
    if unknown:
        raise SemalignError(f"unknown demo profile field(s) {unknown}; valid: {', '.join(f.name for f in fields(profile))}")
    profile = replace(profile, **overrides)
    if profile.vocab not in ("auto", "shared", "intersection"):
        raise SemalignError(f"vocab must be auto, shared or intersection, got {profile.vocab!r}")
    out = check_output_dir(out_dir, "--out (the demo's output directory)")  # before anything loads or is written
    out.mkdir(parents=True, exist_ok=True)
    cross = profile.vocab == "intersection" or (profile.vocab == "auto" and _other_tokenizer(profile))
    profile = replace(profile, vocab="intersection" if cross else "shared",
                      methods=tuple(for_pair(m, cross) for m in profile.methods))
    stages = ["load pair", "overview", "layer pairing", "transfer task", *[f"train {m}" for m in profile.methods],
              "report"]
    bar = StageBar(stages, [STAGE_WEIGHTS.get(s, TRAIN_WEIGHT) for s in stages], desc="semalign demo",
                   enabled=progress)
    timings = bar.timings
    started = time.time()

    machine = precision_record(profile.precision)
    torch.manual_seed(profile.seed)
    bar.start("load pair")
    pair = load_pair(profile.teacher, profile.student, profile.vocab)
    teacher, student = pair.teacher, pair.student
    bar.done()

    bar.start("overview")
    prompts = humaneval_prompts(profile.overview_prompts)
    arch = architecture_table(teacher, student)
    norms = pd.concat([residual_norms(m, tokenize(m.tokenizer, prompts, max_len=profile.seq_len))
                       for m in (teacher, student)])  # each model reads the prompts in its own tokens
    bar.done()

    bar.start("layer pairing")
    pairing_sections = Report("layer pairing")  # filled now, placed after the results when the page is written
    inspected = inspect_pairing(pair, profile.attribution_task, n_prompts=profile.attribution_prompts,
                                methods=profile.attribution_methods, cka_prompts=profile.cka_prompts, n_boot=200,
                                seed=profile.seed, progress=False, strategy="proportional",
                                student_layers=profile.student_layers)  # the pairing training uses: the marked one
    render_pairing(inspected, pair, pairing_sections, level=3)
    pairing = inspected.pairing
    bar.done()

    bar.start("transfer task")
    run = build_task("code", profile, teacher, student)
    task, train, diag, before, teacher_scores = run.task, run.data, run.diag, run.before, run.teacher
    n_train = len(train)
    # each model reads HumanEval in its own tokens; a cross-tokenizer pair compares per byte (`metric`)
    metric = "stdlib_test_bpb" if cross else task.metric
    unit = "bpb" if cross else "ce"
    per_problem = {"student (before)": humaneval_problem_ce(student, limit=profile.humaneval_limit)}
    reference = humaneval_problem_ce(teacher, limit=profile.humaneval_limit)
    bar.done()

    base = shared_config(profile, len(train), seed=profile.seed, run_dir=out / "runs", cka_max_tokens=512)
    after, runs = {}, {}
    for method in profile.methods:
        bar.start(f"train {method}")
        result = run_method(method, base, pair, data=train, diag_data=diag,
                            run_dir=out / "runs" / method, pairing=pairing, plugins=[_StepNote(bar)])
        after[method] = task.evaluate(result.student)
        per_problem[f"student + {method}"] = humaneval_problem_ce(result.student, tokenizer=student.tokenizer,
                                                                  limit=profile.humaneval_limit)
        runs[method] = result
        bar.done()
    per_problem = pd.concat([f.assign(model=name, teacher=reference[unit]) for name, f in per_problem.items()],
                            ignore_index=True)

    bar.start("report")
    results = results_table(metric, task.higher_is_better, before, teacher_scores, after)
    report = Report(f"semalign demo: {arch.index[0]} → {arch.index[1]}",
                    subtitle=f"profile {profile_name}, seed {profile.seed}, {machine['resolved_precision']}")
    report.add_heading("Results")
    report.add_markdown(f"**{verdict(results, metric)}**")
    report.add_markdown(
        f"Code transfer: {n_train} sequences of {profile.seq_len} tokens from the standard library's test files "
        f"(unseen by the student); {profile.stage_steps} steps per paired student layer "
        f"({', '.join(map(str, profile.student_layers))}), LoRA rank {profile.lora_rank}, lr {profile.lr:g}, "
        f"seed {profile.seed}. Headline metric: `{metric}` ({'bits per byte' if cross else 'cross-entropy'} on "
        f"{task.meta['heldout_tokens']:,} tokens of held-out stdlib test files, "
        f"{'bits/byte' if cross else 'nats/token'}, lower is better); `humaneval_ce` is HumanEval "
        "canonical-solution cross-entropy given the prompt (out of distribution); `*_bpb` are the same in bits per "
        "byte. Gap closed = (after − before) / (teacher − before). Every method trains the same LoRA parameters on "
        "the same data for the same steps; only the loss terms differ.")
    if cross:
        report.add_markdown(
            f"**Two tokenizers.** {pair.alignment.summary()}. The teacher reads its own tokenization of every "
            "training block; the layer term, the KL and the diagnostics use only the aligned positions, where both "
            "have read the same text (`semalign_lens/training/cross_pair.py`), and the transfer map is built on the "
            "intersection bases. `semalign-shared` = the relation term + KL on the shared tokens. The teacher's "
            "scores are on the same texts in its own tokens, so only its bits per byte compare with the student's.")
    report.add_markdown(
        f"How this relates to the benchmark: the demo trains one seed for {profile.stage_steps * len(pairing)} "
        f"steps of {profile.batch_size} x {profile.seq_len} tokens at lr {profile.lr:g}, a pipeline run. "
        "`analysis/TRANSFER.md` trains the same student on the same kind of frontier LoRA schedule (64-token "
        "sequences, lr 2e-3) and on a train-all schedule, at four budgets with three seeds each, scores 16k "
        "held-out tokens, and states whether logit KD separates from SFT at all (on the frontier schedule it does "
        "not): read a demo number as one seed near the bottom of that table's frontier curve, not as a result.")
    report.add_figure(gap_figure(results, metric), caption="Gap closed on the headline metric, one seed: 0 is "
                      "the untrained student, 1 the teacher; below 0 the method made the student worse",
                      name="gap-closed")
    report.add_table(results, caption="Before, teacher, and after each method")
    unit_title = "bits/byte" if cross else "nats/token"
    report.add_figure(versus_reference(per_problem, x="teacher", y=unit, color="model", hover="task_id",
                                       title="HumanEval, per problem: student against teacher",
                                       x_title=f"teacher {unit.upper()} ({unit_title})",
                                       y_title=f"student {unit.upper()} ({unit_title})"),
                      caption=f"Canonical-solution {'bits per byte' if cross else 'cross-entropy'} given the prompt, {per_problem['task_id'].nunique()} "
                              "problems; below the dotted line the student beats the teacher on that problem. "
                              "Where a method's points sit relative to the untrained student's shows which problems "
                              "it gained or lost on.", name="humaneval-per-problem")
    report.add_table(pd.DataFrame({"setting": list(asdict(profile)), "value": [str(v) for v in asdict(profile).values()]}),
                     caption="The profile: every size of this run")
    report.add_heading("Models")
    report.add_table(arch.reset_index(), caption="Architecture side by side")
    report.add_figure(residual_norm_figure(norms), caption=f"On {len(prompts)} HumanEval prompts", name="norms")
    report.add_markdown(norm_jumps(norms, inspected.cka))
    report.add_heading("Layer pairing")
    report.add_markdown(pairing_story(pairing, inspected.cka, profile.attribution_task, "code"))
    report.add_table(pairing.summary_frame(), caption="Pairing used for training (0-based blocks; the `proportional` "
                                                 "strategy, the paper's depth rule)")
    report.extend(pairing_sections)
    records_of = {method: result.records for method, result in runs.items()}
    if any(r.get("kind") == "heldout" for records in records_of.values() for r in records):
        report.add_heading("Training: every method")
        report.add_figure(heldout_figure(records_of),
                          caption="Next-token cross-entropy of the student on the trainer's held-out diagnostic batch, "
                                  "at every stage start and end, for every method on one axis (the same batch for "
                                  "all of them).", name="heldout-per-step")
    lens = {}  # method -> {student layer: (top1_teacher before, after)}
    for method, result in runs.items():
        records = records_of[method]
        lens[method] = lens_agreement_change(records)
        report.add_heading(f"Training: {method}")
        report.add_figure(loss_figure(records, list(get_method(method).terms)), name=f"loss-{method}")
        change = cka_change(result.cka)
        if change is not None:
            delta, t_labels, s_labels = change
            report.add_figure(signed_heatmap(delta.numpy(), s_labels, t_labels, x_title="student layer",
                                             y_title="teacher layer", value_title="Δ CKA",
                                             title=f"CKA after − before training ({method})"),
                              caption=f"Teacher × student linear CKA on the diagnostic batch after the last stage "
                                      f"minus before the first (largest change {float(delta.abs().max()):.3f}). The "
                                      "paper claims alignment leaves the CKA pattern unchanged: near-zero cells "
                                      "everywhere are that claim holding.", name=f"dcka-{method}")
        if any(r.get("kind") == "diag" for r in records):
            report.add_figure(projection_figure(records), name=f"proj-{method}")
            report.add_table(pd.DataFrame({"metric": list(PROJECTION_METRICS),
                                           "definition": list(PROJECTION_METRICS.values())}),
                             caption="The projection metrics (held-out batch, each paired student layer)")
    if any(lens.values()):
        report.add_heading("Logit-lens agreement of the paired layers")
        labels = {p.student_layer: p.target_label() for p in pairing}
        first = next(v for v in lens.values() if v)
        table = pd.DataFrame({"student layer": list(first), "teacher layer": [labels.get(k, "") for k in first],
                              "before training": [first[k][0] for k in first],
                              **{f"after {m}": [v.get(k, (None, None))[1] for k in first] for m, v in lens.items()}})
        report.add_table(table.round(3), caption="Share of held-out tokens on which the student's logit lens at the "
                                                 "paired layer names the teacher's top-1 token at its paired layer "
                                                 "(each read with its own head, final norm recomputed); higher = the "
                                                 "student's layer reads out more like the teacher's")
    report.add_provenance(("teacher", teacher), ("student", student), seed=profile.seed,
                          extra={"precision": f"{machine['precision']} → {machine['resolved_precision']}",
                                 "timings_s": json.dumps(timings)})
    report_path = report.write(out / "report.html")
    bar.done()
    bar.close()
    timings["total"] = round(time.time() - started, 1)
    with writing(out / "results.csv"):
        results.to_csv(out / "results.csv", index=False)
    write_json_atomic(out / "timings.json", {"timings_s": timings, "machine": machine})
    return DemoResult(out, report_path, results, timings, machine, verdict(results, metric))


def _other_tokenizer(profile: DemoProfile) -> bool:
    """Whether the student's tokenizer differs from the teacher's, read from their directories (no model loads;
    heads padded to different sizes over one tokenizer are one vocabulary, `models.load.vocab_rows`); "tiny" is the
    one-tokenizer tiny pair. Two tokenizers of one size are refused when the pair loads, naming the fix
    (vocab = "intersection")."""
    from .models.pair import sources_differ_in_vocabulary

    if profile.teacher == "tiny":
        return False
    return sources_differ_in_vocabulary(profile.teacher, profile.student)
