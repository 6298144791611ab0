"""The ablations SemAlign promised but did not show, on the embedded pair, sized for two CPU cores.

The v1 introduction claims ablations over attribution granularity, pairing strategy and decomposition; none
appear in the paper (its second ICLR reviewer asked for them). This script runs four small ones on the code-transfer
task of `semalign_lens.evaluation` (transfer on stdlib test-file chunks; score = cross-entropy of HumanEval
canonical solutions given the prompt, lower is better; gap closed = (after − before) / (teacher − before)):

| axis | variants | training-free part |
|---|---|---|
| attribution method | top-1 teacher layer of each ranker → the paper's critical-layer pairing → a SemAlign run per distinct pairing | rankings, p_top, Kendall τ |
| pairing strategy | proportional (paper), attribution (grad × act, paper), cka (monotone CKA path, ours) | the pairs and their CKA |
| layer objective | relation (v2), cosine (v1), fisher (ACL), none (output KL alone = `kd`), and the SFT control | – |
| map kind | paper, dual, logits (relation + KL) | transfer fidelity of mapped teacher states |

Every run is `baselines.run_method` on one shared `AlignConfig` (the fairness rule of the transfer benchmark):
same transfer data, LoRA adapters on the frontier layer, learning rate, and the same **total** number of
optimizer steps (a pairing with fewer pairs gets proportionally more steps per stage; it then trains fewer
layers, so its summed trainable-parameter count is smaller). The reference run
(SemAlign: relation + KL, dual map, proportional pairing) is shared by the pairing, objective and map axes
and is repeated over `--noise-seeds`, whose spread is the yardstick: one-seed differences smaller than the
reference's seed spread are not evidence. Teacher targets are cached once per pairing (states + logits).

    python analysis/ablations.py              # embedded pair, every axis
    python analysis/ablations.py --fast       # tiny random pair, seconds (CI smoke test; numbers meaningless)
    python analysis/ablations.py --axes objective map

Writes `ablations.{md,html}`, `runs.csv`, `attribution.csv`, `agreement.csv`, `pairings.csv` and
`map_fidelity.csv` into `--out` (default analysis/out/ablations).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from semalign_lens import evaluation as ev  # noqa: E402
from semalign_lens.core.errors import run_reporting_errors  # noqa: E402
from semalign_lens.data.tasks import load_task, tokenize_pairs  # noqa: E402
from semalign_lens.evaluation.protocol import load_pair  # noqa: E402
from semalign_lens.lens.attribution import rank_agreement, rank_layers  # noqa: E402
from semalign_lens.lens.capture import accumulated_resid, capture  # noqa: E402
from semalign_lens.lens.pairing import make_pairing  # noqa: E402
from semalign_lens.lens.semantics import SemanticBasis, TransferMap, transfer_fidelity  # noqa: E402
from semalign_lens.lens.similarity import cka_matrix, cka_wide, residual_labels  # noqa: E402
from semalign_lens.models.inspect import describe  # noqa: E402
from semalign_lens.reports.page import Report  # noqa: E402
from semalign_lens.training import load_align_config  # noqa: E402
from semalign_lens.training.methods import Method, get_method, run_method  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "ablations"
AXES = ("attribution", "pairing", "objective", "map")
REFERENCE = "semalign"  # relation + kl, dual map
RANKERS = ("grad_x_act", "grad_x_act_abs", "patch_denoise", "patch_noise", "ablate_mean", "laten")
OBJECTIVES = {"relation (v2)": "semalign", "cosine (v1)": "semalign-cosine", "fisher (ACL)": "semalign-fisher",
              "none (output KL only)": "kd", "SFT control (CE, no teacher)": "sft"}
KL = {"kl": {"direction": "forward", "temperature": 2.0}}
LOGITS_MAP = Method("semalign-logits-map", {"relation": 1.0, "kl": 1.0}, "SemAlign v2 with the least-squares "
                    "logit-matching map pinv(W_S) W_T", family="semalign", transfer_kind="logits", options=KL)
MAPS = {"paper": "semalign-paper-map", "dual": REFERENCE, "logits": LOGITS_MAP}


def pairs_text(pairing) -> str:
    return ", ".join(f"{p.student_layer}<-{p.target_label()}" for p in pairing)


class Runner:
    """Trains one (method, pairing, seed) on the shared config; caches teacher targets per pairing."""

    def __init__(self, args, pair, task, data, diag, work: Path):
        self.args, self.pair, self.task = args, pair, task
        teacher, student = pair.teacher, pair.student
        self.data, self.diag, self.work = data, diag, work
        self.n_student = student.cfg.n_layers
        self.total_steps = args.steps * self.n_student
        self.caches: dict[tuple[int, ...], Path] = {}
        self.rows: list[dict] = []
        self.done: dict[tuple, dict] = {}
        metric = task.metric
        self.before = task.evaluate(student)[metric]
        self.teacher_score = task.evaluate(teacher)[metric]
        self.base = load_align_config(None, {
            "progress": False, "report": False, "cka_max_tokens": 256,
            "data.seq_len": args.seq_len, "data.batch_size": args.batch_size, "data.diag_sequences": len(diag),
            "schedule.mode": "frontier", "schedule.trainable": "paired", "schedule.adapter": "lora",
            "schedule.lora_rank": args.lora_rank, "schedule.lora_alpha": 2.0 * args.lora_rank, "schedule.lr": args.lr,
            "targets.mode": "cached", "targets.cache_logits": True})

    def _cache_for(self, layers: tuple[int, ...]) -> Path:
        for have, path in self.caches.items():
            if set(layers) <= set(have):
                return path
        path = self.work / f"cache-{len(self.caches)}"
        self.caches[layers] = path
        return path

    def run(self, axis: str, variant: str, method, pairing, seed: int) -> dict:
        m = get_method(method)
        key = (m.name, pairs_text(pairing), seed)
        if key in self.done:  # shared between axes (the reference run): train once
            row = {**self.done[key], "axis": axis, "variant": variant, "shared": True}
            self.rows.append(row)
            return row
        cfg = copy.deepcopy(self.base)
        cfg.seed = seed
        per_stage = max(1, round(self.total_steps / len(pairing)))
        cfg.schedule.stage_steps = per_stage
        cfg.targets.cache_dir = str(self._cache_for(tuple(pairing.teacher_layers_needed)))
        run_dir = self.work / f"run-{len(self.done)}"
        t0 = time.perf_counter()
        result = run_method(m, cfg, self.pair, data=self.data, diag_data=self.diag,
                            pairing=pairing, run_dir=run_dir, lean=True)
        train_s = time.perf_counter() - t0
        score = self.task.evaluate(result.student)[self.task.metric]
        shutil.rmtree(run_dir, ignore_errors=True)
        row = {"axis": axis, "variant": variant, "method": m.name, "terms": json.dumps(m.terms),
               "map": (m.transfer_kind or cfg.transfer.kind) if m.name not in ("kd", "sft") else "-",
               "pairing": pairs_text(pairing), "seed": seed, "steps": result.steps,
               "trainable_params": sum(result.trainable_params.values()), "score": score,
               "gap_closed": ev.gap_closed(self.before, score, self.teacher_score, self.task.higher_is_better),
               "train_s": round(train_s, 1), "shared": False}
        self.done[key] = row
        self.rows.append(row)
        print(f"  {axis:12s} {variant:32s} seed {seed}: {self.task.metric} {score:.4f} "
              f"(gap closed {row['gap_closed']:+.3f}, {result.steps} steps, {train_s:.0f} s)", flush=True)
        return row


def code_attribution_batch(tokenizer, n: int, seed: int):
    """The `n` shortest HumanEval prompts with a parameter renamed (clean/corrupted pairs), for ranking teacher
    layers. Shortest, because patching and ablation rerun the teacher from every layer: the cost grows with
    prompt length x layers, and HumanEval prompts run to 400+ tokens (a bias toward short problems, stated)."""
    from semalign_lens.data.tasks import Task

    task = load_task("humaneval", tokenizer=tokenizer, seed=seed)
    length = lambda p: len(tokenizer(p.clean, add_special_tokens=False)["input_ids"])  # noqa: E731
    shortest = sorted(task.pairs, key=length)[:n]
    task = Task(task.name, shortest, task.description + f" The {len(shortest)} shortest prompts.", task.source)
    return tokenize_pairs(tokenizer, task, align="left_pad", max_answer_tokens=16)


def cka_pairing(teacher, student, batch, n_t: int, n_s: int):
    """Monotone CKA path on debiased linear CKA over the given sequences (every block's output + embeddings)."""
    cka = cka_matrix(accumulated_resid(teacher, batch, drop_first=True),
                     accumulated_resid(student, batch, drop_first=True), debiased=True)
    table = cka_wide(cka, residual_labels(n_t), residual_labels(n_s))
    return make_pairing("cka", n_t, n_s, cka=table), table


def map_fidelity(teacher, student, diag, pairing, n_tokens: int, seed: int) -> pd.DataFrame:
    """Training-free: the student's readout of mapped teacher states vs the teacher's readout, per map kind."""
    t_cap = capture(teacher, diag, layers=pairing.teacher_layers_needed, progress=False)
    s_cap = capture(student, diag, layers=pairing.student_layers, progress=False)
    mask = diag.mask.clone()
    mask[:, 0] = False
    sample = torch.randperm(int(mask.sum()), generator=torch.Generator().manual_seed(seed))[:n_tokens]
    t_states = {p.student_layer: p.target({t: t_cap.get("resid_post", t)[mask] for t in p.teacher_layers})[sample]
                for p in pairing}
    s_states = {p.student_layer: s_cap.get("resid_post", p.student_layer)[mask][sample] for p in pairing}
    tb, sb = SemanticBasis.from_model(teacher), SemanticBasis.from_model(student)
    maps = [TransferMap(tb, sb, kind=k) for k in ("paper", "dual", "logits")]
    return transfer_fidelity(t_states, maps, teacher, student, student_states=s_states, progress=False)


def summarise(rows: pd.DataFrame, noise: dict) -> pd.DataFrame:
    out = []
    for (axis, variant), g in rows.groupby(["axis", "variant"], sort=False):
        out.append({"axis": axis, "variant": variant, "method": g["method"].iloc[0], "map": g["map"].iloc[0],
                    "pairing": g["pairing"].iloc[0], "seeds": g["seed"].nunique(), "steps": g["steps"].iloc[0],
                    "trainable_params": g["trainable_params"].iloc[0], "score": g["score"].mean(),
                    "gap_closed": g["gap_closed"].mean(),
                    "delta_vs_reference": g["score"].mean() - noise["reference_score"]})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="tiny random pair and small sizes (smoke test)")
    p.add_argument("--axes", nargs="*", default=list(AXES), choices=AXES)
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--student", default="stdlib-student")
    p.add_argument("--seed", type=int, default=0, help="seed of every run except the reference's extra seeds")
    p.add_argument("--noise-seeds", type=int, nargs="*", default=None, help="seeds of the reference run "
                   "(default 0 1 2; fast 0 1)")
    p.add_argument("--steps", type=int, default=None, help="steps per student layer (total = steps x student "
                   "layers, for every pairing; default 4, fast 2)")
    p.add_argument("--n-transfer", type=int, default=None, help="transfer sequences (default 32; fast 12)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per transfer sequence (default 64; fast 24)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4; fast 4")
    p.add_argument("--lora-rank", type=int, default=None, help="default 16; fast 4")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3; fast 1e-2")
    p.add_argument("--humaneval-limit", type=int, default=None, help="HumanEval problems scored (default 24; fast 4)")
    p.add_argument("--attribution-pairs", type=int, default=None, help="prompt pairs for the rankers "
                   "(the shortest HumanEval prompts; default 10, fast 6)")
    p.add_argument("--rankers", nargs="*", default=None, choices=RANKERS,
                   help=f"attribution methods compared (default {' '.join(RANKERS)}; fast: 3 of them)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    sizes = {"noise_seeds": ([0, 1, 2], [0, 1]), "steps": (4, 2), "n_transfer": (32, 12), "seq_len": (64, 24),
             "batch_size": (4, 4), "lora_rank": (16, 4), "lr": (1e-3, 1e-2), "humaneval_limit": (24, 4),
             "attribution_pairs": (10, 6), "rankers": (list(RANKERS), ["grad_x_act", "patch_denoise", "laten"])}
    for key, (full, fast) in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, fast if args.fast else full)
    if args.seed not in args.noise_seeds:
        args.noise_seeds = [args.seed, *args.noise_seeds]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t_start, timings = time.perf_counter(), {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    pair = load_pair("tiny", "tiny") if args.fast else load_pair(args.teacher, args.student)
    teacher, student = pair.teacher, pair.student
    assert not teacher.training and not student.training, "analyses run in eval mode"
    tok = student.tokenizer
    n_t, n_s = teacher.cfg.n_layers, student.cfg.n_layers
    t = lap("load", t_start)

    n_diag = 4
    # The ablations' committed results score HumanEval solution CE; the held-out stdlib CE comes beside it.
    task = replace(ev.code_task(tok, args.n_transfer + n_diag, args.seq_len, args.humaneval_limit,
                                heldout_tokens=2048), metric="humaneval_ce")
    data = task.transfer.select(torch.arange(args.n_transfer))
    diag = task.transfer.select(torch.arange(args.n_transfer, args.n_transfer + n_diag))
    work = Path(tempfile.mkdtemp(prefix="ablations-"))
    runner = Runner(args, pair, task, data, diag, work)
    print(f"code task: before {runner.before:.4f}, teacher {runner.teacher_score:.4f} ({task.metric}, "
          f"{'higher' if task.higher_is_better else 'lower'} is better)", flush=True)
    t = lap("task", t)

    proportional = make_pairing("proportional", n_t, n_s)
    frames: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    try:
        # ------------------------------------------------------------------ the reference and its seed spread
        for seed in args.noise_seeds:
            runner.run("reference", "semalign (relation+kl, dual, proportional)", REFERENCE, proportional, seed)
        ref = pd.DataFrame([r for r in runner.rows if r["axis"] == "reference"])
        noise = {"reference_score": float(ref.loc[ref["seed"] == args.seed, "score"].iloc[0]),
                 "reference_mean": float(ref["score"].mean()), "seeds": len(ref),
                 "score_sd": float(ref["score"].std()) if len(ref) > 1 else float("nan"),
                 "score_range": float(ref["score"].max() - ref["score"].min())}
        t = lap("reference runs", t)

        # ------------------------------------------------------------------ attribution method
        attribution_scores, batch_tokens = None, 0
        if "attribution" in args.axes or "pairing" in args.axes:
            batch = code_attribution_batch(tok, args.attribution_pairs, args.seed)
            batch_tokens = int(batch.clean.mask.sum()) if hasattr(batch, "clean") else 0
            rankers = list(dict.fromkeys(["grad_x_act", *(args.rankers if "attribution" in args.axes else [])]))
            attribution_scores = rank_layers(teacher, batch, methods=rankers, n_boot=1000, seed=args.seed,
                                             progress=False)
            attribution_scores.to_csv(out / "attribution.csv", index=False)
            t = lap("attribution ranking", t)
        if "attribution" in args.axes:
            agreement = rank_agreement(attribution_scores)
            agreement.to_csv(out / "agreement.csv")
            frames["agreement"] = agreement
            top = attribution_scores[attribution_scores["rank"] == 1].set_index("method")
            rows = []
            for method in args.rankers:
                pairing = make_pairing("attribution", n_t, n_s, scores=attribution_scores, method=method)
                row = runner.run("attribution", f"top-1 of {method}", REFERENCE, pairing, args.seed)
                rows.append({"method": method, "top_teacher_block": int(top.loc[method, "layer"]),
                             "p_top": float(top.loc[method, "p_top"]), "pairing": pairs_text(pairing),
                             "score": row["score"], "gap_closed": row["gap_closed"]})
            frames["attribution"] = pd.DataFrame(rows)
            t = lap("attribution axis", t)

        # ------------------------------------------------------------------ pairing strategy
        if "pairing" in args.axes:
            cka_batch = data.select(torch.arange(min(16, len(data))))
            by_cka, cka_table = cka_pairing(teacher, student, cka_batch, n_t, n_s)
            by_attr = make_pairing("attribution", n_t, n_s, scores=attribution_scores, method="grad_x_act")
            strategies = {"proportional (paper)": proportional, "attribution, grad x act top-1 (paper)": by_attr,
                          "cka path (ours)": by_cka}
            rows = []
            for name, pairing in strategies.items():
                annotated = pairing.annotate(cka=cka_table)
                runner.run("pairing", name, REFERENCE, pairing, args.seed)
                for pr in annotated:
                    rows.append({"strategy": name, "student_layer": pr.student_layer, "teacher": pr.target_label(),
                                 "cka": pr.cka, "reason": pr.reason})
            frames["pairings"] = pd.DataFrame(rows)
            frames["pairings"].to_csv(out / "pairings.csv", index=False)
            t = lap("pairing axis", t)

        # ------------------------------------------------------------------ layer objective
        if "objective" in args.axes:
            for name, method in OBJECTIVES.items():
                runner.run("objective", name, method, proportional, args.seed)
            t = lap("objective axis", t)

        # ------------------------------------------------------------------ map kind
        if "map" in args.axes:
            fid = map_fidelity(teacher, student, diag, proportional, 256, args.seed)
            fid.to_csv(out / "map_fidelity.csv", index=False)
            frames["map_fidelity"] = (fid.groupby(["kind", "metric"], sort=False)["value"].mean()
                                      .unstack("metric").reset_index())
            for kind, method in MAPS.items():
                runner.run("map", f"{kind} map", method, proportional, args.seed)
            t = lap("map axis", t)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    runs = pd.DataFrame(runner.rows)
    runs.to_csv(out / "runs.csv", index=False)
    summary = summarise(runs[runs["axis"] != "reference"], noise)
    timings["total"] = round(time.perf_counter() - t_start, 1)

    # -------------------------------------------------------------------------------------------- outputs
    names = (describe(teacher)["model"], describe(student)["model"])
    sd = noise["score_sd"]
    if not args.fast and len(ref) > 1:
        notes.append(f"Seed spread of the reference run over {noise['seeds']} seeds: sd {sd:.4f}, range "
                     f"{noise['score_range']:.4f} ({task.metric}). A single-seed difference smaller than about "
                     "2 sd is not evidence of an effect.")
    settings = {"mode": "fast (tiny random pair; numbers meaningless)" if args.fast else "full (embedded pair)",
                "teacher": names[0], "student": names[1],
                "task": f"code transfer: {args.n_transfer} x {args.seq_len} stdlib test-file tokens; score "
                        f"{task.metric} on {task.meta['humaneval_problems']} HumanEval problems "
                        f"({'higher' if task.higher_is_better else 'lower'} is better); before "
                        f"{runner.before:.4f}, teacher {runner.teacher_score:.4f}",
                "schedule": f"frontier, LoRA rank {args.lora_rank} on the frontier layer, lr {args.lr}, batch "
                            f"{args.batch_size}, {runner.total_steps} steps in total per run",
                "attribution": f"the {args.attribution_pairs} shortest HumanEval rename pairs ({batch_tokens} tokens), "
                               "1000 bootstrap resamples",
                "seeds": f"{args.seed} (reference also {args.noise_seeds})",
                "torch threads": torch.get_num_threads(), "timings_s": timings}
    lines = ["# Ablations the paper promised", "",
             f"Produced by `python analysis/ablations.py{' --fast' if args.fast else ''}`; every run in `runs.csv`.", "",
             f"Reference (SemAlign: relation + KL, dual map, proportional pairing): {task.metric} "
             f"{noise['reference_score']:.4f} at seed {args.seed}"
             + (f"; over seeds {args.noise_seeds}: mean {noise['reference_mean']:.4f}, sd {sd:.4f}" if len(ref) > 1
                else "") + f". Student before {runner.before:.4f}, teacher {runner.teacher_score:.4f}. "
             "`delta_vs_reference` = score − the reference's score at the same seed.", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    for axis in ("attribution", "pairing", "objective", "map"):
        part = summary[summary["axis"] == axis]
        if not len(part):
            continue
        lines += [f"## {axis}", "", part.drop(columns=["axis"]).round(4).to_markdown(index=False), ""]
        if axis == "attribution" and "attribution" in frames:
            lines += ["Top teacher block per ranker (p_top = share of bootstrap resamples where it ranks first):", "",
                      frames["attribution"].round(3).to_markdown(index=False), "", "Kendall tau between rankers:",
                      "", frames["agreement"].round(2).to_markdown(), ""]
        if axis == "pairing" and "pairings" in frames:
            lines += [frames["pairings"].drop(columns=["reason"]).round(3).to_markdown(index=False), ""]
        if axis == "map" and "map_fidelity" in frames:
            lines += ["Training-free: the student's readout of mapped teacher states against the teacher's readout "
                      "(proportional pairs, 256 held-out tokens; kind `student` = the student's own state):", "",
                      frames["map_fidelity"].round(4).to_markdown(index=False), ""]
    lines += ["## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()]
    (out / "ablations.md").write_text("\n".join(lines) + "\n")

    report = Report(f"Ablations: {names[0]} -> {names[1]}", subtitle=settings["task"])
    report.add_markdown(__doc__.split("\n\n")[1])
    for n in notes:
        report.add_note(n)
    import plotly.express as px

    if len(summary):
        fig = px.bar(summary, x="variant", y="score", color="axis", title=f"{task.metric} after a short run "
                     f"({'higher' if task.higher_is_better else 'lower'} is better)",
                     labels={"score": task.metric, "variant": "variant"})
        fig.add_hline(y=runner.before, line_dash="dot", annotation_text="student before")
        fig.add_hline(y=noise["reference_score"], line_dash="dash", annotation_text=f"reference (seed {args.seed})")
        report.add_figure(fig, name="scores")
        report.add_table(summary.round(4), caption="One row per variant (score averaged over its seeds)")
    for name, frame in frames.items():
        report.add_table(frame.round(4).reset_index() if name == "agreement" else frame.round(4), caption=name)
    report.add_provenance(("teacher", teacher), ("student", student), seed=args.seed,
                          extra={"settings": json.dumps(settings, default=str)})
    report.write(out / "ablations.html")
    (out / "summary.json").write_text(json.dumps({"settings": settings, "noise": noise,
                                                  "summary": summary.to_dict("records"),
                                                  **{k: v.reset_index().to_dict("records") for k, v in frames.items()}},
                                                 indent=1, default=float))
    print(summary.round(4).to_string(index=False))
    print(f"wrote {out}/ablations.{{md,html}} in {timings['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, prog=Path(__file__).name))
