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

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch

from .core.atomic import write_json_atomic
from .core.checks import check_output_dir
from .core.errors import SemalignError, writing
from .core.precision import precision_record
from .core.progress import StageBar
from .evaluation.protocol import RunProfile, build_task, load_pair, results_table, shared_config


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


class _StepNote:
    """A trainer plugin that shows the training step inside the demo's stage bar."""

    def __init__(self, bar: StageBar):
        self.bar = bar

    def on_step(self, trainer, step: int, total: int) -> None:
        self.bar.detail(f"step {step}/{total}")


def run_demo(profile: str | DemoProfile = "demo", out_dir: str | Path = "runs/demo", progress: bool = True,
             **overrides) -> DemoResult:
    """Run the pipeline (see module docstring); `overrides` replace fields of the named profile."""
    from .lens.inspection import inspect_pairing
    from .lens.overview import architecture_table
    from .reports.demo import DemoData, verdict, write_demo_page
    from .training.methods import run_method

    profile_name = profile if isinstance(profile, str) else "custom"
    profile = _resolve_profile(profile, overrides)
    out = check_output_dir(out_dir, "--out (the demo's output directory)")  # before anything loads or is written
    out.mkdir(parents=True, exist_ok=True)
    profile = _for_the_pair(profile)
    bar = _stage_bar(profile, progress)
    started, machine = time.time(), precision_record(profile.precision)
    torch.manual_seed(profile.seed)
    with bar.stage("load pair"):
        pair = load_pair(profile.teacher, profile.student, profile.vocab)  # checked here, once
    with bar.stage("overview"):
        architecture = architecture_table(pair.teacher, pair.student)
        norms, n_prompts = _residual_norms(pair, profile)
    with bar.stage("layer pairing"):  # the pairing training uses: the proportional one, marked on the page
        inspection = inspect_pairing(pair, profile.attribution_task, n_prompts=profile.attribution_prompts,
                                     methods=profile.attribution_methods, cka_prompts=profile.cka_prompts, n_boot=200,
                                     seed=profile.seed, progress=False, strategy="proportional",
                                     student_layers=profile.student_layers)
    with bar.stage("transfer task"):  # the untrained student and the teacher, scored once each
        run = build_task("code", profile, pair.teacher, pair.student)
    base = shared_config(profile, len(run.data), seed=profile.seed, run_dir=out / "runs", cka_max_tokens=512)
    runs, scores = {}, {"teacher": run.references["teacher"], "student (before)": run.references["before"]}
    for method in profile.methods:
        with bar.stage(f"train {method}"):
            runs[method] = run_method(method, base, pair, data=run.data, diag_data=run.diag,
                                      run_dir=out / "runs" / method, pairing=inspection.pairing,
                                      plugins=[_StepNote(bar)])
            scores[f"student + {method}"] = run.task.score(runs[method].student)  # scored once
    cross = profile.vocab == "intersection"  # each model reads its own tokens: a cross pair compares per byte
    metric = "stdlib_test_bpb" if cross else run.task.metric
    results = results_table(metric, run.task.higher_is_better, run.before, run.teacher,
                            {m: scores[f"student + {m}"].metrics for m in profile.methods})
    with bar.stage("report"):
        report_path = write_demo_page(DemoData(
            profile, profile_name, machine, bar.timings, pair, architecture, norms, n_prompts, inspection, run.task,
            metric, cross, len(run.data), results, {name: s.per_problem for name, s in scores.items()}, runs),
            out / "report.html")
    bar.close()
    bar.timings["total"] = round(time.time() - started, 1)
    with writing(out / "results.csv"):
        results.to_csv(out / "results.csv", index=False)
    write_json_atomic(out / "timings.json", {"timings_s": bar.timings, "machine": machine})
    return DemoResult(out, report_path, results, bar.timings, machine, verdict(results, metric))


def _resolve_profile(profile: str | DemoProfile, overrides: dict) -> DemoProfile:
    """The named (or given) profile with `overrides`, each checked."""
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
    return profile


def _for_the_pair(profile: DemoProfile) -> DemoProfile:
    """`vocab` decided ("auto": intersection exactly when the student has another tokenizer), and the methods
    those of that kind of pair (kd -> kd-shared, ...)."""
    from .training.methods.cross_vocab import for_pair

    cross = profile.vocab == "intersection" or (profile.vocab == "auto" and _other_tokenizer(profile))
    return replace(profile, vocab="intersection" if cross else "shared",
                   methods=tuple(for_pair(m, cross) for m in profile.methods))


def _stage_bar(profile: DemoProfile, progress: bool) -> StageBar:
    stages = ["load pair", "overview", "layer pairing", "transfer task", *[f"train {m}" for m in profile.methods],
              "report"]
    return StageBar(stages, [STAGE_WEIGHTS.get(s, TRAIN_WEIGHT) for s in stages], desc="semalign demo",
                    enabled=progress)


def _residual_norms(pair, profile: DemoProfile) -> tuple[pd.DataFrame, int]:
    """Residual norms per block of both models on the overview's HumanEval prompts (each model reads them in its
    own tokens), and how many prompts."""
    from .data.tokens import tokenize
    from .lens.overview import humaneval_prompts, residual_norms

    prompts = humaneval_prompts(profile.overview_prompts)
    return pd.concat([residual_norms(m, tokenize(m.tokenizer, prompts, max_len=profile.seq_len))
                      for m in (pair.teacher, pair.student)]), len(prompts)


def _other_tokenizer(profile: DemoProfile) -> bool:
    """Whether the student's tokenizer differs from the teacher's, read from their directories (no model loads;
    heads padded to different sizes over one tokenizer are one vocabulary, `models.load.vocab_rows`); "tiny" is the
    one-tokenizer tiny pair. Two tokenizers of one size are refused when the pair loads, naming the fix
    (vocab = "intersection")."""
    from .models.pair import sources_differ_in_vocabulary

    if profile.teacher == "tiny":
        return False
    return sources_differ_in_vocabulary(profile.teacher, profile.student)
