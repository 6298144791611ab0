"""The transfer benchmark: budget curves of every method x schedule x seed, a positive control, paired differences.

    python analysis/transfer_table.py                    # the committed table (~6-8 h est., 2 cores AMD EPYC, native bf16)
    python analysis/transfer_table.py --resume           # continue an interrupted run (any number of times)
    python analysis/transfer_table.py --profile quick    # a smaller curve in about 15 minutes
    python analysis/transfer_table.py --profile tiny     # tiny random pair: a pipeline check in seconds
    python analysis/transfer_table.py --profile paper    # the paper's protocol size: for a GPU (see PAPER.md)

What it measures. *Does moving activations from the teacher into the student transfer anything,
and does SemAlign's layer term add to logit KD?* Every method trains the same student on the same transfer
pool with the same steps, schedule and learning rate; only the loss terms differ (`baselines.method_config`).

1. **Tasks.** `code`: transfer on stdlib test-file chunks; headline = cross-entropy on >= 16k tokens of held-out
   stdlib test files (same distribution, other files), HumanEval solution CE beside it (out of distribution),
   bits per byte beside every CE. `knowledge`: the standard-library facts of `tasks.stdlib_facts` the teacher
   answers exactly on the held-out phrasing; transfer on the other phrasings; headline = answer log-prob on
   the held-out phrasing.
2. **One teacher pass.** Per task, the teacher's paired-layer states and top-k logits are cached once
   (`targets.cache_logits = "topk"`); every method, seed, budget and schedule reads that cache.
3. **Budgets.** Total optimizer steps (over all stages), each a batch of sequences drawn from the task's
   transfer pool without repetition within an epoch (at the profile's `epochs` = 1, every step sees new
   data). Three schedules: `frontier` (the paper's: LoRA on v/o/up/down of one student layer at a time,
   shallow to deep, a separate run per budget), `all` (every student parameter, one joint stage; one run
   per seed evaluated at each budget, which at a constant learning rate equals separate runs) and
   `local-global` (the frontier stages on 2/3 of the budget, then one end-to-end stage on the output terms).
4. **Positive control.** Logit KD against the same-data SFT control: "separated" when their 95% intervals
   over seeds do not overlap and KD is the better one. The first line of TRANSFER.md says where it holds.
5. **Paired differences.** `semalign - kd`, `semalign - sft`, `semalign-layer - sft` and every other
   teacher-reading method against KD, paired by seed, with Student-t intervals; a verdict where the positive
   control fails at that budget is "uninformative".
6. **Gradient diagnostic** (`--gradcos N`): one extra seed-0 run per schedule and layer-term method, measuring
   how each layer term's gradient lines up with the output KL's (`gradcos.csv`, `gradcos_summary.csv`).

Outputs: `analysis/out/transfer/{runs.csv, summary.csv, paired.csv, control.csv, budget_curve.html,
budget_curve.png, meta.json}` (committed) and `analysis/TRANSFER.md`. Runs are written as they finish; `--resume`
keeps them, and a budget curve of the `all` schedule resumes from its trainer checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
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
from semalign_lens.core.errors import SemalignError, run_reporting_errors
from semalign_lens.core.precision import machine_line
from semalign_lens.core.runlock import run_lock
from semalign_lens.evaluation.protocol import RunProfile, TaskRun, build_task, load_pair, shared_config
from semalign_lens.training.checkpoint import latest_step, write_json_atomic
from semalign_lens.training.methods import METHODS, get_method, method_config, method_trainer
from semalign_lens.training.methods.cross_vocab import for_pair

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "transfer"
OUT_CROSS = ROOT / "out" / "transfer-cross"  # the cross-tokenizer profile's runs
SCHEDULES = ("frontier", "all", "local-global")
GLOBAL_SHARE = 3  # local-global: the last 1/GLOBAL_SHARE of a budget is one end-to-end stage on the output terms
CURVE_METHODS = ["sft", "kd", "semalign", "semalign-layer", "fitnets",
                 "lens-kl", "relation-kl", "semalign-balanced", "interchange"]
# The two roles the comparisons name, by the pair's vocabulary: a cross-tokenizer pair's KD and SemAlign rows
# read the teacher's logits through the shared strings (`baselines/cross_vocab.py`).
ROLES = {vocab: {role: for_pair(role, vocab != "shared") for role in ("kd", "semalign")}
         for vocab in ("shared", "intersection")}


def comparisons(vocab: str = "shared", methods=()) -> tuple[tuple[str, str], ...]:
    """(a, b) pairs of the paired differences; the first is the positive control (KD against SFT). Every other
    method of `methods` that reads the teacher is compared with KD (the bar an activation-level term must clear)."""
    kd, sem = ROLES[vocab]["kd"], ROLES[vocab]["semalign"]
    base = ((kd, "sft"), (sem, kd), (sem, "sft"), ("semalign-layer", "sft"))
    named = {m for pair in base for m in pair}
    return base + tuple((m, kd) for m in methods if m not in named)


@dataclass
class Profile(RunProfile):
    """A `RunProfile` plus the benchmark's axes.

    `budgets`: total optimizer steps of a run (a multiple of the number of stages). The transfer pool holds
    `n_transfer` sequences; a budget may use at most `epochs` passes over it. `knowledge_steps`: the one
    budget of the knowledge task. `all_lr`: the learning rate of the train-all schedule (full parameters
    take a smaller step than LoRA adapters; not tuned). `top_k`: teacher tokens kept per position.
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] = field(default_factory=lambda: ["code", "knowledge"])
    methods: list[str] = field(default_factory=lambda: list(CURVE_METHODS))
    schedules: list[str] = field(default_factory=lambda: ["frontier", "all"])
    budgets: list[int] = field(default_factory=lambda: [9, 27, 90, 270])
    epochs: int = 1
    knowledge_steps: int = 72
    all_lr: float = 5e-4
    top_k: int = 64


PROFILES = {
    "table": Profile(seq_len=64, n_transfer=2160, per_file=3, heldout_tokens=16384, humaneval_limit=32,
                     schedules=list(SCHEDULES)),
    "quick": Profile(seq_len=64, n_transfer=480, heldout_tokens=4096, humaneval_limit=8, budgets=[3, 12, 30, 60],
                     knowledge_steps=30, methods=["sft", "kd", "semalign"], schedules=["frontier"]),
    "tiny": Profile(seq_len=24, n_transfer=48, batch_size=4, student_layers=(0, 2), lora_rank=4, lr=1e-2,
                    precision="fp32", seeds=[0, 1, 2], humaneval_limit=4, heldout_tokens=128, diag_sequences=2,
                    budgets=[2, 4, 8], knowledge_steps=2, teacher="tiny", student="tiny", top_k=16),
    # The paper's protocol size (its §4: ~1,000 examples x 5 epochs, LoRA r16 on v/o/up/down,
    # batch 64): 1,000 sequences of 256 tokens, batch 64 (one step, no accumulation: the trainer has none, and
    # 64 x 256 tokens fit a GPU and 24 GB of CPU memory), 5 epochs = 78 steps. Meant for a GPU
    # (`analysis/paper_profile.sh`); on 2 CPU cores one run takes hours.
    "paper": Profile(seq_len=256, n_transfer=1000, per_file=2, epochs=5, batch_size=64, budgets=[6, 15, 30, 78],
                     heldout_tokens=65536, humaneval_limit=None, knowledge_steps=78, lr=2e-4),
    # The cross-tokenizer pair: the student with its own 8k BPE, the teacher read online on its own
    # tokenization of each block, layer terms and KL at aligned positions; scored in bits per byte (the
    # teacher's line is then on the same bytes). Code only by default (`--tasks code knowledge` adds the facts).
    "cross": Profile(student="stdlib-student-8k", vocab="intersection", seq_len=64, n_transfer=2160, per_file=3,
                     heldout_tokens=16384, humaneval_limit=32, tasks=["code"], schedules=["all"],
                     methods=["sft", "kd-shared", "semalign-shared", "semalign-layer"], budgets=[27, 90, 270]),
    "cross-tiny": Profile(seq_len=24, n_transfer=48, batch_size=4, student_layers=(0, 2), lora_rank=4, lr=1e-2,
                          precision="fp32", humaneval_limit=4, heldout_tokens=128, diag_sequences=2, budgets=[2, 4],
                          teacher="tiny", student="tiny", vocab="intersection", tasks=["code"],
                          methods=["sft", "kd-shared", "semalign-shared", "semalign-layer"]),
}


def check_budgets(budgets: list[int], n_stages: int, batch_size: int, pool: int, epochs: int,
                  what: str = "transfer set", schedules=()) -> None:
    """Refuse budgets (total steps) the schedule or the transfer pool cannot give, naming both numbers."""
    for b in budgets:
        if b % n_stages:
            raise SemalignError(f"budget {b} steps is not a multiple of the {n_stages} frontier stages; use budgets "
                                f"that are (e.g. {[n_stages * max(1, round(x / n_stages)) for x in budgets]})")
        local = b - b // GLOBAL_SHARE
        if "local-global" in schedules and (local % n_stages or b < GLOBAL_SHARE):
            step = GLOBAL_SHARE * n_stages
            raise SemalignError(f"budget {b} steps does not split into {n_stages} frontier stages of equal length and "
                                f"a global stage of 1/{GLOBAL_SHARE}; use multiples of {step} with local-global (e.g. "
                                f"{[step * max(1, round(x / step)) for x in budgets]})")
        need, have = b * batch_size, pool * epochs
        if need > have:
            raise SemalignError(f"budget {b} steps x batch {batch_size} = {need} sequences exceeds the {what}: "
                                f"{pool} sequences x epochs {epochs} = {have}; raise the set or epochs, or lower the "
                                "budget")


# ----------------------------------------------------------------------------------------------- runs

def transfer_maps(teacher, student, methods, alignment=None) -> dict:
    """The teacher->student maps of every kind the methods use, built once (each run would rebuild them); on
    a cross-tokenizer pair's `alignment`, from the intersection bases."""
    from semalign_lens.lens.semantics import SemanticBasis, TransferMap, intersection_bases

    tb, sb = (intersection_bases(teacher, student, alignment) if alignment is not None
              else (SemanticBasis.from_model(teacher), SemanticBasis.from_model(student)))
    kinds = {get_method(m).transfer_kind for m in methods if get_method(m).transfer_kind} | {"dual"}
    return {kind: TransferMap(tb, sb, kind=kind) for kind in sorted(kinds)}


def run_config(profile: Profile, tr: TaskRun, schedule: str, steps: int, seed: int, cache_dir: Path):
    """The shared AlignConfig of one run (`method_config` then swaps in a method's terms): frontier (one stage per paired layer, LoRA) or all (one joint stage,
    every parameter), `steps` optimizer steps in total, teacher targets from the task's top-k cache."""
    cfg = shared_config(profile, len(tr.data), seed=seed, cache_dir=cache_dir)
    if cfg.targets.mode == "cached":  # a cross-tokenizer pair reads the teacher online
        cfg.targets.cache_logits, cfg.targets.top_k = "topk", profile.top_k
    if schedule == "frontier":
        cfg.schedule.stage_steps = steps // len(profile.student_layers)
    elif schedule == "local-global":  # the frontier stages, then one end-to-end stage on the output terms only
        cfg.schedule.global_steps = steps // GLOBAL_SHARE
        cfg.schedule.stage_steps = (steps - cfg.schedule.global_steps) // len(profile.student_layers)
    else:
        cfg.schedule.mode, cfg.schedule.trainable, cfg.schedule.adapter = "joint", "all", "full"
        cfg.schedule.stage_steps, cfg.schedule.lr = steps, profile.all_lr
    cfg.checkpoint_every = max(1, min(profile.budgets))
    return cfg


def _row(tr: TaskRun, schedule: str, method: str, seed: int, steps: int, profile: Profile, scores: dict,
         train_s: float, eval_s: float, trainable: int, data_hash: str) -> dict:
    sequences = steps * profile.batch_size
    tokens = int(tr.data.mask.sum()) * sequences / len(tr.data)
    return {"task": tr.task.name, "schedule": schedule, "method": method, "family": get_method(method).family,
            "seed": seed, "steps": steps, "sequences_seen": sequences, "tokens_seen": round(tokens),
            "epochs_seen": round(sequences / len(tr.data), 3), "trainable_params": trainable,
            "data_hash": data_hash[:16], "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            **{f"score_{k}": v for k, v in scores.items()}}


def run_curve(method: str, schedule: str, seed: int, budgets: list[int], tr: TaskRun, profile: Profile, pair,
              work: Path, cache: Path, maps: dict, done: set, emit) -> None:
    """Train one (method, schedule, seed) at every budget not in `done`, calling `emit(row)` per budget.

    frontier and local-global: a separate run per budget (the stages split the budget). all: one run, evaluated at each budget
    (the run directory keeps its checkpoints, so a killed curve resumes where it stopped)."""
    def train(steps: int, run_dir: Path):
        cfg = run_config(profile, tr, schedule, steps, seed, cache)
        kind = get_method(method).transfer_kind or cfg.transfer.kind
        return method_trainer(method, cfg, pair, data=tr.data, diag_data=tr.diag, run_dir=run_dir,
                              transfer=maps.get(kind), lean=True)

    todo = [b for b in budgets if (tr.task.name, schedule, method, seed, b) not in done]
    if not todo:
        return
    if schedule != "all":
        for b in todo:
            run_dir = work / f"{tr.task.name}-{schedule}-{method}-s{seed}-b{b}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.time()
            trainer = train(b, run_dir)
            result = trainer.run()
            t1 = time.time()
            scores = tr.task.evaluate(result.student)
            emit(_row(tr, schedule, method, seed, b, profile, scores, t1 - t0, time.time() - t1,
                      sum(trainer.stage_params.values()), trainer.identity["data_hash"]))
            shutil.rmtree(run_dir, ignore_errors=True)
        return
    run_dir = work / f"{tr.task.name}-{schedule}-{method}-s{seed}"
    step = latest_step(run_dir)  # where a killed curve stopped: the trainer resumes there
    if any(b <= step for b in todo):  # a budget passed without its row: that point needs the curve again
        shutil.rmtree(run_dir, ignore_errors=True)
        step = 0
    trainer = train(max(budgets), run_dir)
    for b in budgets:
        t0 = time.time()
        if b < step or b not in todo:
            continue
        result = trainer.run(stop_after_steps=b - step) if b > step else None
        step = b
        t1 = time.time()
        model = result.student if result is not None else trainer.student
        scores = tr.task.evaluate(model)
        emit(_row(tr, schedule, method, seed, b, profile, scores, t1 - t0, time.time() - t1,
                  sum(trainer.stage_params.values()), trainer.identity["data_hash"]))
    shutil.rmtree(run_dir, ignore_errors=True)


def diagnosed(method: str) -> bool:
    """Whether the gradient diagnostic reads `method`: a layer term beside an output term on teacher logits."""
    from semalign_lens.training.objectives import get_objective

    objs = [get_objective(t) for t in get_method(method).terms]
    return any(o.kind == "layer" for o in objs) and any(o.kind == "output" and o.needs_teacher_logits for o in objs)


def gradient_rows(method: str, schedule: str, steps: int, every: int, tr: TaskRun, profile: Profile, pair,
                  work: Path, cache: Path, maps: dict) -> list[dict]:
    """One seed-0 run of `method` at `steps`, measuring every `every` steps how each layer term's gradient lines up
    with the output KL's (`training/gradcos.py`): its gradcos records. A run of its own, so that no score row of
    the table carries the diagnostic's extra backward passes."""
    cfg = run_config(profile, tr, schedule, steps, 0, cache)
    cfg.gradcos_every = every
    kind = get_method(method).transfer_kind or cfg.transfer.kind
    run_dir = work / f"gradcos-{tr.task.name}-{schedule}-{method}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = method_trainer(method, cfg, pair, data=tr.data, diag_data=tr.diag, run_dir=run_dir,
                            transfer=maps.get(kind), lean=True).run()
    shutil.rmtree(run_dir, ignore_errors=True)
    return [{"task": tr.task.name, "schedule": schedule, "method": method, "run_steps": steps,
             **{k: r[k] for k in ("step", "stage", "term", "student_layer", "cos", "norm_ratio")}}
            for r in result.records if r.get("kind") == "gradcos"]


def gradient_summary(rows):
    """Per (task, schedule, method, term, student layer): the mean cosine with the output KL's gradient, the share
    of measured steps where the two point apart (cos < 0), and the median norm ratio (layer / output)."""
    import pandas as pd

    if not len(rows):
        return pd.DataFrame()
    g = pd.DataFrame(rows).groupby(["task", "schedule", "method", "term", "student_layer"], sort=False)
    return g.agg(steps=("cos", "size"), cos_mean=("cos", "mean"), cos_negative=("cos", lambda c: float((c < 0).mean())),
                 norm_ratio_median=("norm_ratio", "median")).reset_index()


def gradient_figures(rows, out: Path) -> list[Path]:
    """Per (schedule, method) of the gradient diagnostic, the run report's own figure (`reports.run.gradcos_figure`:
    the cosine and the norm ratio against the step, per layer term and paired layer) as `gradcos/<schedule>-<method>
    .html`; the paths written."""
    import pandas as pd

    from semalign_lens.reports.run import gradcos_figure

    written = []
    frame = pd.DataFrame(rows)
    for (schedule, method), g in (frame.groupby(["schedule", "method"], sort=False) if len(frame) else ()):
        path = out / "gradcos" / f"{schedule}-{method}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [{**r, "kind": "gradcos"} for r in g.to_dict("records")]
        gradcos_figure(records).update_layout(title=f"{method}, {schedule} schedule: gradient agreement of each "
                                                    "layer term with the output KL").write_html(
            path, include_plotlyjs="cdn")
        written.append(path)
    return written


def _pyplot():
    """matplotlib's pyplot on the file-only backend, or None where matplotlib (the `analysis` extra) is missing:
    the tables' PNGs are then left out."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def gradient_png(gradients, path: Path) -> bool:
    """The gradient summary as a PNG for TRANSFER.md: per schedule, one bar per (method, paired student layer) of
    the mean cosine with the output KL's gradient, its norm ratio written beside it; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    schedules = list(dict.fromkeys(gradients["schedule"]))
    labels = [f"{m} · L{int(k)}" for m, k in dict.fromkeys(zip(gradients["method"], gradients["student_layer"],
                                                                 strict=True))]
    fig, axes = plt.subplots(1, len(schedules), figsize=(5.2 * len(schedules), 0.3 * len(labels) + 1.4),
                             squeeze=False, sharey=True)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(gradients["method"]))}
    for ax, schedule in zip(axes[0], schedules, strict=True):
        g = gradients[gradients["schedule"] == schedule]
        y = [labels.index(f"{m} · L{int(k)}") for m, k in zip(g["method"], g["student_layer"], strict=True)]
        ax.barh(y, g["cos_mean"], color=[colours[m] for m in g["method"]])
        for yi, cos, ratio in zip(y, g["cos_mean"], g["norm_ratio_median"], strict=True):
            ax.text(cos + (0.03 if cos >= 0 else -0.03), yi, f"×{ratio:.2f}", va="center", fontsize=7,
                    ha="left" if cos >= 0 else "right")
        ax.axvline(0, c="grey", lw=1)
        ax.set_xlim(-1.15, 1.15)
        ax.set_title(f"{schedule}: mean cos(∇ layer term, ∇ output KL)", fontsize=9)
        ax.set_xlabel("cosine (×: median norm ratio, layer / KL)", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def prebuild_cache(profile: Profile, tr: TaskRun, pair, cache_dir: Path, work: Path) -> None:
    """Build the task's teacher-target cache (paired states + top-k logits) once, before any method reads it
    (none for a cross-tokenizer pair, which reads its teacher online). Built as `lens-kl`'s when the profile runs it:
    that cache also holds the teacher's logit-lens top-k per pair, and serves every other method."""
    from semalign_lens.training import Trainer

    if profile.vocab != "shared":
        return
    builder = "lens-kl" if "lens-kl" in profile.methods else "kd"
    cfg = method_config(run_config(profile, tr, "frontier", max(profile.budgets), 0, cache_dir), builder)
    Trainer(cfg, pair, data=tr.data, diag_data=tr.diag, run_dir=work / "cache-warmup")
    shutil.rmtree(work / "cache-warmup", ignore_errors=True)


# ----------------------------------------------------------------------------------------------- summaries

# Every score a task reports, with its direction: the headline first, then the others the control may use.
METRICS = {"code": [("stdlib_test_ce", False), ("humaneval_ce", False)],
           "knowledge": [("answer_logprob", True), ("exact_match", True)]}
# A cross-tokenizer pair is scored in bits per byte: the student's CE per its own token and the teacher's per
# its own are not one unit (the methods' order is the same in either, one student tokenizer).
CROSS_METRICS = {"code": [("stdlib_test_bpb", False), ("humaneval_bpb", False)],
                 "knowledge": METRICS["knowledge"]}  # log P(answer text): comparable across tokenizers


def metrics_of(vocab: str) -> dict:
    return METRICS if vocab == "shared" else CROSS_METRICS


def summarise(runs, refs: dict[str, TaskRun], metrics: dict = METRICS):
    """One row per (task, schedule, method, steps, metric): score and gap closed, mean and 95% t-interval."""
    import pandas as pd

    rows = []
    for (task, schedule, method, steps), g in runs.groupby(["task", "schedule", "method", "steps"], sort=False):
        tr = refs[task]
        for metric, hib in metrics[task]:
            s = ev.summarize_seeds(tr.before[metric], g[f"score_{metric}"].tolist(), tr.teacher[metric],
                                   higher_is_better=hib)
            rows.append({"task": task, "schedule": schedule, "method": method, "steps": steps,
                         "tokens_seen": int(g["tokens_seen"].iloc[0]), "metric": metric, "higher_is_better": hib,
                         **{k: s[k] for k in ("n_seeds", "score", "score_lo", "score_hi", "gap_closed", "gap_lo",
                                              "gap_hi", "before", "teacher")}})
    return pd.DataFrame(rows)


def _better(diff: float, higher_is_better: bool) -> bool:
    return diff > 0 if higher_is_better else diff < 0


def control(summary, kd_method: str = "kd"):
    """Per (task, schedule, steps, metric): does logit KD (`kd_method`) separate from the SFT control
    (non-overlapping 95% intervals over >= 3 seeds, KD the better one)?"""
    import pandas as pd

    rows = []
    for (task, schedule, steps, metric), g in summary.groupby(["task", "schedule", "steps", "metric"], sort=False):
        kd, sft = g[g["method"] == kd_method], g[g["method"] == "sft"]
        if not len(kd) or not len(sft):
            continue
        kd, sft = kd.iloc[0], sft.iloc[0]
        overlap = not (kd["score_lo"] > sft["score_hi"] or sft["score_lo"] > kd["score_hi"])
        known = min(kd["n_seeds"], sft["n_seeds"]) >= 3 and not any(
            math.isnan(v) for v in (kd["score_lo"], sft["score_lo"]))
        separated = bool(known and not overlap and _better(kd["score"] - sft["score"], kd["higher_is_better"]))
        rows.append({"task": task, "schedule": schedule, "steps": steps, "tokens_seen": kd["tokens_seen"],
                     "metric": metric, "kd": kd["score"], "kd_lo": kd["score_lo"], "kd_hi": kd["score_hi"],
                     "sft": sft["score"], "sft_lo": sft["score_lo"], "sft_hi": sft["score_hi"],
                     "seeds": int(min(kd["n_seeds"], sft["n_seeds"])), "separated": separated})
    return pd.DataFrame(rows)


def paired(runs, controls, metrics: dict = METRICS, pairs: tuple = comparisons()):
    """`a - b` of every metric, paired by seed, per (task, schedule, steps), with a verdict that is
    "uninformative" where the positive control (the first of `pairs`) fails for that metric at that budget."""
    import pandas as pd

    rows = []
    for (task, schedule, steps), g in runs.groupby(["task", "schedule", "steps"], sort=False):
        for metric, hib in metrics[task]:
            by = g.pivot_table(index="seed", columns="method", values=f"score_{metric}")
            c = controls[(controls["task"] == task) & (controls["schedule"] == schedule)
                         & (controls["steps"] == steps) & (controls["metric"] == metric)] if len(controls) else controls
            control_ok = bool(len(c) and c["separated"].iloc[0])
            for a, b in pairs:
                if a not in by or b not in by:
                    continue
                both = by[[a, b]].dropna()
                mean, lo, hi = ev.paired_difference(both[a].tolist(), both[b].tolist())
                if len(both) < 2 or math.isnan(lo):
                    verdict = "too few seeds"
                elif (a, b) != pairs[0] and not control_ok:
                    verdict = "uninformative (positive control fails here)"
                elif lo > 0 or hi < 0:
                    verdict = f"{a} better" if _better(mean, hib) else f"{a} worse"
                else:
                    verdict = "no detectable difference"
                rows.append({"task": task, "schedule": schedule, "steps": steps, "metric": metric,
                             "comparison": f"{a} - {b}", "seeds": len(both), "diff": mean, "lo": lo, "hi": hi,
                             "verdict": verdict})
    return pd.DataFrame(rows)


def control_line(controls) -> str:
    """The one line at the top of TRANSFER.md: where the positive control holds, or that it does not."""
    if not len(controls):
        return "**Positive control: not measured yet** (no KD and SFT runs with 3 seeds)."
    ok = controls[controls["separated"]]
    if len(ok):
        r = ok.sort_values("steps").iloc[0]
        where = "; ".join(f"{m} ({', '.join(f'{x.task}/{x.schedule}/{x.steps}' for x in g.itertuples())})"
                          for m, g in ok.groupby("metric", sort=False))
        return (f"**Positive control holds** (case 1): logit KD separates from the same-data SFT control, first on "
                f"{r['task']} `{r['metric']}` ({r['schedule']} schedule, {r['steps']} steps = {r['tokens_seen']:,} "
                f"tokens): KD {r['kd']:.4f} [{r['kd_lo']:.4f}, {r['kd_hi']:.4f}] vs SFT {r['sft']:.4f} "
                f"[{r['sft_lo']:.4f}, {r['sft_hi']:.4f}], 95% t-intervals over {r['seeds']} seeds. Separated at "
                f"(task/schedule/steps): {where}.")
    best = controls.iloc[(controls["kd"] - controls["sft"]).abs().argmax()]
    return ("**Positive control fails at every measured budget** (case 2): logit KD's 95% interval overlaps the SFT "
            f"control's, or KD is the worse one, everywhere (largest gap: {best['task']} `{best['metric']}`, "
            f"{best['schedule']} at {best['steps']} steps, KD {best['kd']:.4f} vs SFT {best['sft']:.4f}); every "
            "SemAlign verdict below is uninformative.")


# ----------------------------------------------------------------------------------------------- figures

def _panels(summary) -> list[tuple[str, str, str]]:
    """(task, metric, schedule) of every curve panel, in table order."""
    return list(dict.fromkeys(zip(summary["task"], summary["metric"], summary["schedule"], strict=True)))


def budget_figure(summary):
    """Each score against tokens seen (log axis), a panel per task x metric x schedule, mean and 95% band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _panels(summary)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{t} · {m} · {s}" for t, m, s in panels],
                        horizontal_spacing=0.1, vertical_spacing=0.12 if rows > 1 else 0.2)
    colours = dict(zip(METHODS, ["#444", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"], strict=False))
    for i, (task, metric, schedule) in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        sub = summary[(summary["task"] == task) & (summary["metric"] == metric) & (summary["schedule"] == schedule)]
        for method, g in sub.groupby("method", sort=False):
            g = g.sort_values("tokens_seen")
            c = colours.get(method, "#000")
            x = g["tokens_seen"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=g["score_hi"].tolist() + g["score_lo"].tolist()[::-1],
                                     fill="toself", line={"width": 0}, fillcolor=c, opacity=0.15, hoverinfo="skip",
                                     showlegend=False, legendgroup=method), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=g["score"], mode="lines+markers", name=method, line={"color": c},
                                     legendgroup=method, showlegend=i == 0), row=row, col=col)
        first = sub.iloc[0]
        for label, value, dash in (("student before", first["before"], "dot"), ("teacher", first["teacher"], "dash")):
            fig.add_hline(y=value, line_dash=dash, line_color="#888", annotation_text=label, row=row, col=col)
        fig.update_xaxes(type="log", title_text="tokens seen", row=row, col=col)
        fig.update_yaxes(title_text=f"{metric} ({'↑' if first['higher_is_better'] else '↓'})", row=row, col=col)
    fig.update_layout(template="plotly_white", height=360 * rows + 80, width=1100,
                      title="Transfer against budget: mean over seeds, band = 95% t-interval")
    return fig


def off_scale(panel) -> list[str]:
    """Methods whose curve strays from the untrained student more than 3x as far as any remaining method's,
    and by more than 0.5 (nats, or log-prob): drawn, but the axis is scaled to the others (the interactive
    figure shows everything)."""
    dev = panel.assign(d=(panel["score"] - panel["before"]).abs()).groupby("method")["d"].max().sort_values()
    far: list[str] = []
    while len(dev) - len(far) >= 3:
        top, rest = dev.iloc[len(dev) - len(far) - 1], dev.iloc[len(dev) - len(far) - 2]
        if not (top > 3 * rest and top > 0.5):
            break
        far.append(dev.index[len(dev) - len(far) - 1])
    return sorted(far)


def budget_png(summary, path: Path) -> bool:
    """The same curves as a PNG for TRANSFER.md (matplotlib, the `analysis` extra); False when not installed.
    The teacher's line is left out: on a cross-entropy axis it is far below the curves."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = _panels(summary)
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (task, metric, schedule) in zip(axes.flat, panels, strict=False):
        sub = summary[(summary["task"] == task) & (summary["metric"] == metric) & (summary["schedule"] == schedule)]
        for method, g in sub.groupby("method", sort=False):
            g = g.sort_values("tokens_seen")
            line, = ax.plot(g["tokens_seen"], g["score"], marker="o", ms=3, label=method)
            ax.fill_between(g["tokens_seen"], g["score_lo"], g["score_hi"], color=line.get_color(), alpha=0.15)
        ax.axhline(sub["before"].iloc[0], ls=":", c="grey", lw=1)
        far = off_scale(sub)
        if far:  # one method far from the rest would flatten every other curve: the axis follows the rest
            near = sub[~sub["method"].isin(far)]
            lo, hi = float(near["score_lo"].min()), float(near["score_hi"].max())
            pad = 0.15 * (hi - lo) or 0.05
            ax.set_ylim(lo - pad, hi + pad)
            ax.text(0.02, 0.97, "off scale: " + ", ".join(f"{m} (up to {sub[sub['method'] == m]['score'].abs().max():.2f})"
                                                           for m in far),
                    transform=ax.transAxes, fontsize=7, va="top", color="#a00")
        ax.set_xscale("log")
        better = "higher" if sub["higher_is_better"].iloc[0] else "lower"
        ax.set_title(f"{task} · {metric} ({better} is better) · {schedule}", fontsize=9)
        ax.set_xlabel("tokens seen", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- main

def _fits(method: str, vocab: str) -> bool:
    """Whether every term of `method` fits the pair's kind of vocabulary (what the trainer checks)."""
    from semalign_lens.training.objectives import get_objective

    return all(get_objective(t).vocab_problem(vocab != "shared") is None for t in get_method(method).terms)


def build_profile(args) -> Profile:
    profile = replace(PROFILES[args.profile])
    for name in ("methods", "tasks", "seeds", "schedules", "budgets"):
        if getattr(args, name):
            setattr(profile, name, getattr(args, name))
    if args.student:
        profile.student = args.student
    profile.methods = [get_method(m).name for m in profile.methods]
    bad = sorted(set(profile.schedules) - set(SCHEDULES))
    if bad:
        raise SemalignError(f"unknown schedule(s) {bad}; valid: {', '.join(SCHEDULES)}")
    bad = sorted(set(profile.tasks) - {"code", "knowledge"})
    if bad:
        raise SemalignError(f"unknown task(s) {bad}; valid: code, knowledge")
    wrong = [m for m in profile.methods if not _fits(m, profile.vocab)]
    if wrong:
        raise SemalignError(f"method(s) {wrong} do not fit profile {args.profile!r} (vocab {profile.vocab!r}); "
                            f"its KD and SemAlign rows are {ROLES[profile.vocab]['kd']!r} and "
                            f"{ROLES[profile.vocab]['semalign']!r}")
    profile.budgets = sorted(set(profile.budgets))
    check_budgets(profile.budgets, len(profile.student_layers), profile.batch_size, profile.n_transfer, profile.epochs,
                  schedules=profile.schedules)
    return profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="table", choices=sorted(PROFILES))
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: the profile's)")
    parser.add_argument("--tasks", nargs="*", help="subset of tasks: code knowledge")
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--schedules", nargs="*", help="frontier, all and/or local-global")
    parser.add_argument("--budgets", nargs="*", type=int, help="total optimizer steps per run")
    parser.add_argument("--student", help="student source (zoo name or HF directory), overriding the profile's")
    parser.add_argument("--budget-minutes", type=float, default=600.0, help="stop launching runs after this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/runs.csv (same profile) and run only the missing ones")
    parser.add_argument("--gradcos", type=int, default=0, metavar="N",
                        help="after the score runs, one seed-0 run per (schedule, method with a layer term) at "
                             "--gradcos-budget steps with the gradient diagnostic every N steps (0: off)")
    parser.add_argument("--gradcos-budget", type=int, default=90, help="steps of each gradient-diagnostic run")
    parser.add_argument("--out", default=None, help=f"output directory (default {OUT.relative_to(ROOT.parent)}, "
                                                    f"for a cross-tokenizer profile {OUT_CROSS.relative_to(ROOT.parent)})")
    parser.add_argument("--summary", default=str(ROOT / "TRANSFER.md"),
                        help="markdown summary ('' to skip); a cross-tokenizer profile writes its own section of it")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    profile = build_profile(args)
    out = Path(args.out or (OUT_CROSS if profile.vocab != "shared" else OUT))
    with run_lock(out, "--out"):  # one table per output directory: its runs.csv, meta.json and work/
        return _run_table(args, argv, profile, out)


def _run_table(args, argv: list[str] | None, profile: Profile, out: Path) -> int:
    import pandas as pd

    cross = profile.vocab != "shared"
    metrics = metrics_of(profile.vocab)
    work = out / "work"
    t_start = time.time()
    deadline = t_start + args.budget_minutes * 60
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731

    runs_path, meta_path = out / "runs.csv", out / "meta.json"
    old_meta = json.loads(meta_path.read_text()) if args.resume and meta_path.exists() else {}
    if old_meta and old_meta.get("profile_name") != args.profile:
        raise SemalignError(f"--resume: {out} holds runs of profile {old_meta.get('profile_name')!r}, not "
                            f"{args.profile!r}; resume with that profile, or pass another --out")
    records = pd.read_csv(runs_path).to_dict("records") if old_meta and runs_path.exists() else []
    done = {(r["task"], r["schedule"], r["method"], int(r["seed"]), int(r["steps"])) for r in records}
    gradcos_path = out / "gradcos.csv"
    grad_rows = (pd.read_csv(gradcos_path).to_dict("records") if old_meta and gradcos_path.exists() else [])
    if records:
        log(f"resuming: {len(records)} runs already in {runs_path}")

    pair = load_pair(profile.teacher, profile.student, profile.vocab)
    teacher, student = pair.teacher, pair.student
    log(f"loaded teacher {profile.teacher} and student {profile.student}; {machine_line(profile.precision)}"
        + (f"; {pair.alignment.summary()}" if cross else ""))
    maps = transfer_maps(teacher, student, profile.methods, pair.alignment)
    refs: dict[str, TaskRun] = {}  # every task of the table: the ones trained now and those in runs.csv
    changed: list[str] = []  # tasks whose old runs were dropped (their spec changed)
    for name in dict.fromkeys([*profile.tasks, *(r["task"] for r in records)]):
        refs[name] = build_task(name, profile, teacher, student, cache=out / "references.json")
        log(f"task {name}: {len(refs[name].data)} transfer sequences; before {refs[name].before}; "
            f"teacher {refs[name].teacher}")
        was = old_meta.get("tasks", {}).get(name)
        if was is not None and was != json.loads(json.dumps(task_spec(refs[name]), default=str)):
            stale = [r for r in records if r["task"] == name]
            records[:] = [r for r in records if r["task"] != name]
            done -= {k for k in done if k[0] == name}
            log(f"task {name} changed since its {len(stale)} runs in {runs_path} (was {was}); they are run again")
            changed.append(name)
    if "knowledge" in refs:
        refs["knowledge"].task.meta["teacher_table"].to_csv(out / "knowledge_teacher_filter.csv", index=False)
        check_budgets([profile.knowledge_steps], len(profile.student_layers), profile.batch_size,
                      len(refs["knowledge"].data), profile.epochs, "knowledge transfer set", profile.schedules)
        table = refs["knowledge"].task.meta["teacher_table"]
        by_type = table.assign(type=table["fact"].str.split(":").str[0]).groupby("type", sort=False)["exact_match"]
        knowledge_types = [{"type": t, "candidates": int(g.count()), "teacher_exact": int(g.sum())}
                           for t, g in by_type]
    else:
        knowledge_types = []

    command = "python analysis/transfer_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # an earlier invocation that ran only tasks whose runs were dropped no longer made any row of the table
    invocations = [{**h, "superseded": True} if set(h.get("tasks", ())) and set(h.get("tasks", ())) <= set(changed)
                   else h for h in old_meta.get("invocations", [])]
    skipped: list[str] = []

    def finalize(final: bool) -> None:
        """Write every output from the runs so far (after each run: a kill leaves current files)."""
        import resource

        runs = pd.DataFrame(records)
        runs.to_csv(runs_path.with_suffix(".tmp"), index=False)  # whole or not at all: what --resume reads
        os.replace(runs_path.with_suffix(".tmp"), runs_path)
        summary = summarise(runs, refs, metrics) if len(runs) else pd.DataFrame()
        controls = control(summary, ROLES[profile.vocab]["kd"]) if len(summary) else pd.DataFrame()
        methods = list(dict.fromkeys(runs["method"])) if len(runs) else []
        pairs = paired(runs, controls, metrics, comparisons(profile.vocab, methods)) if len(runs) else pd.DataFrame()
        gradients = gradient_summary(grad_rows)
        if grad_rows:
            pd.DataFrame(grad_rows).to_csv(gradcos_path, index=False)
            gradient_figures(grad_rows, out)
            gradient_png(gradients, out / "gradcos.png")
        for name, frame in (("summary", summary), ("control", controls), ("paired", pairs),
                            ("gradcos_summary", gradients)):
            frame.to_csv(out / f"{name}.csv", index=False)
        png = False
        if len(summary):
            budget_figure(summary).write_html(out / "budget_curve.html", include_plotlyjs="cdn")
            png = budget_png(summary, out / "budget_curve.png")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = {"command": command, "tasks": list(profile.tasks), "wall_s": round(time.time() - t_start, 1),
               "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "finished": final,
               "machine": machine_line(profile.precision).removeprefix("Machine: ") + f", {os.cpu_count()} cpus"}
        meta = {"profile_name": args.profile, "profile": asdict(profile), "invocations": [*invocations, now],
                "finished": final, "planned_runs": planned, "runs": len(records), "skipped": skipped,
                "threads": args.threads, "torch": torch.__version__,
                "tasks": {k: task_spec(v) for k, v in refs.items()},
                "before": {k: v.before for k, v in refs.items()}, "teacher": {k: v.teacher for k, v in refs.items()},
                "png": png, "knowledge_types": knowledge_types,
                "out": out.resolve().relative_to(ROOT).as_posix() if out.resolve().is_relative_to(ROOT) else str(out),
                "vocab": pair.alignment.describe() if cross else None}
        write_json_atomic(meta_path, meta)
        if args.summary:
            write_summary(Path(args.summary), meta, runs, summary, controls, pairs, refs, gradients)

    def emit(row: dict) -> None:
        records.append(row)
        log(f"{row['task']} {row['schedule']} {row['method']} seed {row['seed']} {row['steps']} steps: "
            f"{ {k: round(v, 4) for k, v in row.items() if k.startswith('score_')} } "
            f"({row['train_s']}s train, {row['eval_s']}s eval)")
        finalize(final=False)

    def budgets_of(task: str) -> list[int]:
        return profile.budgets if task == "code" else [profile.knowledge_steps]

    def keys(task: str, p: Profile = profile) -> list[tuple]:
        return [(task, s, get_method(m).name, seed, b) for s in p.schedules for m in p.methods for seed in p.seeds
                for b in (p.budgets if task == "code" else [p.knowledge_steps])]

    # the table is finished when the profile's whole plan is, whatever subset this invocation runs
    whole = replace(PROFILES[args.profile])
    plan = {k for t in dict.fromkeys([*whole.tasks, *refs]) for k in keys(t, whole)} | {k for t in refs for k in keys(t)}
    planned = len(plan)
    caches = {}
    for name in profile.tasks:
        tr = refs[name]
        caches[name] = work / f"cache-{name}"
        if any(k not in done for k in keys(name)):  # a finished table re-summarised with --resume needs no teacher pass
            prebuild_cache(profile, tr, pair, caches[name], work)
            if not cross:
                log(f"teacher targets cached for {name} (top {profile.top_k} logits + paired states)")
    # Control first (sft, kd), then the rest; seeds inside, so a run cut short has whole curves of 3 seeds.
    for schedule in profile.schedules:
        for name in profile.tasks:
            tr = refs[name]
            for method in profile.methods:
                for seed in profile.seeds:
                    if time.time() > deadline:
                        skipped.append(f"{name}/{schedule}/{method}/seed {seed}")
                        continue
                    run_curve(method, schedule, seed, budgets_of(name), tr, profile, pair, work, caches[name],
                              maps, done, emit)
    if args.gradcos and "code" in profile.tasks:
        measured = {(r["schedule"], r["method"]) for r in grad_rows}
        for schedule in profile.schedules:
            for method in [m for m in profile.methods if diagnosed(m) and (schedule, m) not in measured]:
                if time.time() > deadline:
                    skipped.append(f"gradcos/{schedule}/{method}")
                    continue
                rows = gradient_rows(method, schedule, args.gradcos_budget, args.gradcos, refs["code"], profile,
                                     pair, work, caches["code"], maps)
                grad_rows.extend(rows)
                log(f"gradient diagnostic {schedule} {method}: {len(rows)} records")
                finalize(final=False)
    have = {(r["task"], r["schedule"], r["method"], int(r["seed"]), int(r["steps"])) for r in records}
    finished = plan <= have
    finalize(final=finished)
    if finished:  # until then the teacher caches serve the next invocation
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {(time.time() - t_start) / 60:.1f} min; {len(records)} runs, {len(skipped)} skipped")
    return 0


def task_spec(tr: TaskRun) -> dict:
    """What a task's runs depend on, as `meta.json` records it: a resumed table re-runs a task whose spec
    changed (another fact set, other held-out files) instead of mixing its old rows in."""
    spec = {k: v for k, v in tr.task.meta.items() if k not in ("teacher_table", "kept_ids")}
    if "kept_ids" in tr.task.meta:  # the facts themselves, not only how many
        spec["kept_sha256"] = hashlib.sha256(json.dumps(tr.task.meta["kept_ids"]).encode()).hexdigest()[:16]
    return spec


def _interval(mean, lo, hi, digits=4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


NOTES = [
    "## Notes on the design (measured before the table)", "",
    "- **Why τ = 1.** Hinton-style KD at τ = 2 made the student worse: six train-all steps from the shipped "
    "student moved held-out stdlib CE from 4.405 to 4.522 nats with dense online teacher logits (4.903 from the "
    "top-64 cache, whose tempered tail is modelled), against 4.370 (dense) and 4.364 (top-64) at τ = 1 and "
    "4.320 for SFT (`benchmarks/RESULTS.md`, sparse targets). Every `kl` row here runs at τ = 1, exact from the "
    "cache.",
    "- **Phrasings.** The 135M teacher states module facts in code, not in prose: over the 1,961 "
    "`function_module` candidates it answered 7 with `In Python, {name} is imported from the module` "
    "and 229 with `import sys\\n\\n# {name} is in the standard library\\nimport` "
    "(`python analysis/probe_fact_types.py --phrasings`, `fact_phrasing_probe.csv`, every candidate phrasing). "
    "So the module types train on three code phrasings (`# {name} comes from the standard library\\nfrom` "
    "and two variants) on which the teacher expresses what it knows — KD can only pass on what the teacher says "
    "on the transfer text; the earlier prose transfer phrasings gave it almost nothing to pass on — and hold out an "
    "`import` form. The teacher filter keeps the facts it answers on the held-out phrasing (per type: the table "
    "above).",
    "- **Growing the fact set.** Seven more fact types read from the interpreter (Unicode names, `ord` "
    "codes, MIME types, month and day names, exception docstrings, token names) were probed with two "
    "phrasings each: the teacher answered 2 of 972 exactly (`analysis/probe_fact_types.py`, "
    "`fact_type_probe.csv`). What reached 300 was more of the kind it knows — module facts from 34 more "
    "modules and from a package's `__all__` (asyncio's `gather`) — and phrasings it answers.",
    "- **Schedules.** The train-all schedule's learning rate (5e-4) was not tuned; the frontier schedule keeps "
    "the earlier benchmark's LoRA rate (2e-3).", ""]


def write_summary(path: Path, meta: dict, runs, summary, controls, pairs, refs: dict[str, TaskRun],
                  gradients=None) -> None:
    """The committed markdown: the positive control first, then setup, curves, paired differences, files."""
    import pandas as pd

    p = meta["profile"]
    inv = meta["invocations"]
    wall = sum(h["wall_s"] for h in inv if not h.get("superseded")) / 60
    lines = [control_line(controls), "", "# Transfer benchmark", "",
             "Commands" + (" (interrupted and resumed):" if len(inv) > 1 else ":"), "",
             *[f"- `{h['command']}`: {h['wall_s'] / 60:.1f} min wall, {h['cpu_s'] / 60:.1f} min CPU, on {h['machine']}"
               + (" (superseded: its task changed since, and its runs were run again)" if h.get("superseded") else "")
               for h in inv], "",
             f"Total wall time **{wall:.1f} min** ({meta['threads']} torch threads, torch {meta['torch']}); wall "
             "time grows with whatever else runs on the machine.", ""]
    if not meta["finished"]:
        lines += [f"**In progress: {meta['runs']} of {meta['planned_runs']} runs done.** Finish with the same "
                  "command plus `--resume`.", ""]
    code, know = meta["tasks"].get("code", {}), meta["tasks"].get("knowledge", {})
    tokens_per_step = p["batch_size"] * p["seq_len"]
    # the code budgets of the runs in the table (a resumed run may add some under another --budgets)
    code_runs = runs[runs["task"] == "code"] if len(runs) else runs
    budgets = sorted({int(b) for b in code_runs["steps"]}) if len(code_runs) else list(p["budgets"])
    lines += [
        "## Setup", "",
        f"- Teacher `{p['teacher']}`, student `{p['student']}`, seeds {p['seeds']} (a seed sets the data order and "
        "the adapter initialisation). Every method trains on the same pool, steps, schedule and learning rate; "
        "only the loss terms differ.",
        f"- **Schedules.** `frontier` (the paper's): LoRA rank {p['lora_rank']} on v/o/up/down of one student "
        f"layer at a time, shallow to deep over blocks {p['student_layers']} (proportional pairing), budget split "
        f"evenly over the stages, lr {p['lr']}, a separate run per budget. `all`: every student parameter in one "
        f"joint stage (all paired layers' terms at once), lr {p['all_lr']}, one run per seed evaluated at each "
        "budget (constant learning rate, so this equals separate runs)."
        + ("" if "local-global" not in set(runs["schedule"] if len(runs) else ()) else
           f" `local-global` (as published local-alignment methods run: MOHAWK, LoLCATs): the frontier stages on the "
           f"first {GLOBAL_SHARE - 1}/{GLOBAL_SHARE} of the budget, then one end-to-end stage on the last "
           f"1/{GLOBAL_SHARE} in which every block's adapter trains on the output terms only (a method's layer term "
           "is off there), same lr, a separate run per budget."),
        f"- **Budgets** (steps, all stages): {budgets} = {budgets[0] * tokens_per_step:,} to "
        f"{budgets[-1] * tokens_per_step:,} tokens ({budgets[-1] // budgets[0]}x), batch "
        f"{p['batch_size']} x {p['seq_len']} tokens. The pool holds {p['n_transfer']} sequences and at most "
        f"{p['epochs']} epoch(s) are used: every step of a run sees sequences that run has not seen before.",
        f"- **code**: transfer = {p['seq_len']}-token chunks of {code.get('transfer_files', '–')} standard-library "
        f"test files; headline `stdlib_test_ce` = cross-entropy (nats/token) on {code.get('heldout_tokens', 0):,} "
        f"tokens ({code.get('heldout_bytes', 0):,} bytes) of {code.get('heldout_files', '–')} held-out test files; "
        f"`humaneval_ce` = canonical-solution CE given the prompt on {code.get('humaneval_problems', '–')} "
        "problems (out of distribution); `*_bpb` = the same in bits per byte. Both sets checked against the "
        "transfer files for verbatim overlap.",
        *([] if not know else [
        f"- **knowledge**: facts read from the Python standard library (`semalign_lens.data.tasks.stdlib_facts`) that "
        f"the teacher answers exactly on the held-out phrasing: {know.get('teacher_known', '–')} of "
        f"{know.get('facts', '–')}; transfer = the other three phrasings + answer ({know.get('transfer_texts', '–')} "
        f"texts), {p['knowledge_steps']} steps; headline `answer_logprob` on the held-out phrasing (higher is "
        "better), `exact_match` beside it. Held-out and transfer phrasings checked disjoint."]),
        (f"- Teacher targets: one pass per task, cached (paired states + top-{p['top_k']} logits and the tail mass; "
         "`benchmarks/RESULTS.md` measures that KL against the dense one)." if p.get("vocab", "shared") == "shared" else
         "- **Two tokenizers** (`vocab = \"intersection\"`, `semalign_lens/training/cross_pair.py`): "
         f"{_vocab_line(meta.get('vocab'))}. The teacher reads its own tokenization of each student block, online "
         "(no cache), and the layer term, the KL and the diagnostics use only the aligned positions (both have read "
         "the same text there). `kd-shared` = forward KL on the shared tokens, renormalised; `semalign-shared` = "
         "the relation term through the intersection-basis dual map + that KL. Scores in bits per byte: the "
         "teacher's on the same bytes, its own tokens."),
        "- Intervals: mean [95% Student-t interval] over seeds; paired differences are per-seed differences.", ""]
    if len(controls):
        c = controls.copy()
        c["KD"] = c.apply(lambda r: _interval(r["kd"], r["kd_lo"], r["kd_hi"]), axis=1)
        c["SFT"] = c.apply(lambda r: _interval(r["sft"], r["sft_lo"], r["sft_hi"]), axis=1)
        lines += ["## Positive control: logit KD against SFT", "",
                  c[["task", "schedule", "steps", "tokens_seen", "metric", "KD", "SFT", "seeds", "separated"]]
                  .to_markdown(index=False), ""]
    if meta.get("png"):
        lines += ["## Budget curves", "", f"![budget curves]({meta['out']}/budget_curve.png)", "",
                  f"Interactive (with the teacher's line): `analysis/{meta['out']}/budget_curve.html`. Dotted line: "
                  "the student before transfer.", ""]
    if len(summary):
        s = summary.copy()
        s["score"] = s.apply(lambda r: _interval(r["score"], r["score_lo"], r["score_hi"]), axis=1)
        s["gap closed"] = s.apply(lambda r: _interval(r["gap_closed"], r["gap_lo"], r["gap_hi"], 3), axis=1)
        for (task, metric, schedule), g in s.groupby(["task", "metric", "schedule"], sort=False):
            pivot = g.pivot(index="method", columns="steps", values="score")
            lines += [f"### {task} · `{metric}` · {schedule}, by budget (steps)", "",
                      f"Student before {g['before'].iloc[0]:.4f}, teacher {g['teacher'].iloc[0]:.4f} "
                      f"({'higher' if g['higher_is_better'].iloc[0] else 'lower'} is better).", "",
                      pivot.to_markdown(), "",
                      "Gap closed ((after − before) / (teacher − before)):", "",
                      g.pivot(index="method", columns="steps", values="gap closed").to_markdown(), ""]
    if len(pairs):
        q = pairs.copy()
        q["difference"] = q.apply(lambda r: _interval(r["diff"], r["lo"], r["hi"]), axis=1)
        lines += ["## SemAlign's own contribution: paired differences by seed", "",
                  "For a loss (↓) a negative difference means the first method is better; for a score (↑) a positive "
                  "one.", "", q[["task", "schedule", "steps", "comparison", "metric", "seeds", "difference", "verdict"]]
                  .to_markdown(index=False), ""]
    if len(runs):
        main_rows = runs[runs["steps"] == runs.groupby("task")["steps"].transform("max")]
        cols = [c for c in main_rows.columns if c.startswith("score_")]
        table = main_rows.groupby(["task", "schedule", "method"], sort=False)[cols].mean().round(4)
        refs_rows = pd.DataFrame([{"task": t, "schedule": "–", "method": role, **{f"score_{k}": v for k, v in vals.items()}}
                                  for t, tr in refs.items() for role, vals in (("student (before)", tr.before),
                                                                               ("teacher", tr.teacher))])
        table = pd.concat([refs_rows.set_index(["task", "schedule", "method"]).round(4), table]).dropna(axis=1, how="all")
        fair = main_rows.groupby(["task", "schedule", "method"], sort=False).agg(
            seeds=("seed", "nunique"), steps=("steps", "first"), tokens=("tokens_seen", "first"),
            trainable_params=("trainable_params", "first"), data_hash=("data_hash", "first"),
            train_s=("train_s", "mean"))
        lines += ["## Every metric at the largest budget (mean over seeds)", "",
                  "`*_ce`: nats/token, `*_bpb`: bits per byte, lower is better; `answer_logprob`: higher is better; "
                  "`exact_match`: share of held-out phrasings answered exactly.", "", table.to_markdown(), "",
                  "## Same data, steps and parameters (the fairness record)", "",
                  "Trainable parameters summed over stages; FitNets also trains its projector (discarded). "
                  "`train_s` for the `all` schedule is the time since the previous budget of the same run.", "",
                  fair.round(1).to_markdown(), ""]
    if gradients is not None and len(gradients):
        gr = gradients.round(3)
        lines += ["## Why a layer term helps or hurts: its gradient against the output KL's", "",
                  "One seed-0 run per schedule and method at the diagnostic budget (`--gradcos`): on every measured "
                  "step, the cosine between the gradient of the layer term at each paired layer and that of the "
                  "output KL on the trainable parameters, and their norm ratio, each at its share of the loss "
                  "(`training/gradcos.py`). A negative mean cosine: the two compete and the step is a compromise; "
                  "near zero with a large ratio: the layer term spends the step on directions the output does not "
                  "read. Per step, as a run report draws it: `gradcos/<schedule>-<method>.html` beside this file's "
                  "outputs.", "", f"![gradient diagnostic]({meta['out']}/gradcos.png)", "",
                  gr.to_markdown(index=False), ""]
    kinds = meta.get("knowledge_types")
    if kinds:
        lines += ["## Knowledge facts kept, by type", "", "Teacher exact match on the held-out phrasing "
                  "(`knowledge_teacher_filter.csv` has every candidate).", "",
                  pd.DataFrame(kinds).to_markdown(index=False), ""]
    if meta["skipped"]:
        lines += ["## Not run (time budget spent)", "", *[f"- {s}" for s in meta["skipped"]], ""]
    cross = p.get("vocab", "shared") != "shared"
    lines += [] if cross else ["## Re-running one row", "",
              "A row is (task, schedule, method, budget) over the seeds; the pool, pairing and cache are the "
              "profile's, so it re-runs alone with the same numbers, e.g. KD on code, frontier schedule, at the "
              f"largest budget: `python analysis/transfer_table.py --profile {meta['profile_name']} --tasks code "
              f"--schedules frontier --methods kd --budgets {p['budgets'][-1]} --out /tmp/row --summary ''` (the "
              "teacher pass for the cache comes first: about 5 minutes on 2 cores).", ""]
    lines += [] if cross else NOTES
    lines += ["## Files", "", f"`analysis/{meta['out']}/`: runs.csv (every run: scores, steps, tokens, trainable "
              "parameters, data hash, times), summary.csv, control.csv, paired.csv, gradcos.csv, "
              "gradcos_summary.csv and gradcos/*.html (the gradient diagnostic), meta.json, budget_curve.html, "
              "budget_curve.png" + (", knowledge_teacher_filter.csv (the teacher on every held-out phrasing)"
                                    if "knowledge" in meta["tasks"] else "") + ".", ""]
    if cross:  # a section of the shared table's file: its title first, every heading one level down
        title = f"## Cross-tokenizer pair: {p['teacher']} → {p['student']}"
        lines = [title, "", lines[0], *(("#" + line if line.startswith("#") else line)
                                       for line in lines[1:] if line != "# Transfer benchmark")]
    write_section(path, "\n".join(lines), cross)


CROSS_BEGIN, CROSS_END = "<!-- cross-tokenizer pair: begin -->", "<!-- cross-tokenizer pair: end -->"


def write_section(path: Path, text: str, cross: bool) -> None:
    """Write the shared table's summary, or the cross-tokenizer section (between markers, at the end of the
    same file); either keeps the other part of the file as it is."""
    old = path.read_text() if path.exists() else ""
    head, marked = (old.split(CROSS_BEGIN, 1) + [""])[:2]
    marked = marked.split(CROSS_END, 1)[0]
    if cross:
        head, marked = head.rstrip("\n") + "\n\n", text
    else:
        head = text.rstrip("\n") + "\n\n"
    path.write_text(head + (f"{CROSS_BEGIN}\n{marked.strip()}\n{CROSS_END}\n" if marked.strip() else ""))


def _vocab_line(vocab: dict | None) -> str:
    if not vocab:
        return "two tokenizers"
    return (f"{vocab['shared_tokens']:,} shared tokens ({vocab['teacher_coverage']:.1%} of the teacher's "
            f"{vocab['teacher_vocab']:,}, {vocab['student_coverage']:.1%} of the student's {vocab['student_vocab']:,})")


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, prog=Path(__file__).name,
                                  interrupted="interrupted; rerun the same command with --resume to keep the runs "
                                              "finished so far"))
