"""The layer-pairing inspection report: why each student layer is supervised by the teacher layer it gets.

`pairing_report(teacher, student, task, out_path)` is what `semalign report pairing TEACHER STUDENT --task ...`
runs. It writes one self-contained HTML file (`report.Report`) with:

1. model cards of both models (depth, width, heads, vocabulary, norm, mode) and the task (pairs, examples,
   how much the corruption moves the metric);
2. teacher layer attribution: one bar chart per ranker with bootstrap CIs (`attribution.rank_layers`), the
   top layers per method, and the Kendall-tau agreement table between methods;
3. teacher × student linear CKA (`similarity.cka_matrix`, embeddings + every block output, on the task's clean
   prompts with their answers) as a heatmap with the chosen pairs drawn on it;
4. the pairing table of the chosen strategy (`pairing.make_pairing`: score, CKA, attribution rank and the
   reason per pair) and a side-by-side comparison of all strategies;
5. semantic-basis fidelity on the paired layers (`semantics.fidelity` round trips on each model's own basis,
   `semantics.transfer_fidelity` of teacher targets read by the student head), skipped with a note if the
   semantics module is unavailable;
6. timings and provenance (package versions, model sources, mode, dtype, weight hashes, seed).

Cost: the rankers dominate; on SmolLM2 (30 blocks) with 24 prompts and all methods it is measured in
`benchmarks/RESULTS.md` ("Pairing report"). Lower `n_prompts`, drop `seeking` (one backward per
prompt) or pass fewer `methods` to go faster.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core.checks import check_output_file, is_bridge, require_choices, require_hooked, require_int
from ..core.errors import SemalignError
from ..lens.attribution import METHODS, rank_agreement, rank_layers
from ..lens.capture import accumulated_resid
from .page import Report, home_relative

FIDELITY_KINDS = ("paper", "dual", "logits")


@dataclass
class PairingReport:
    """What the report shows, as data (for notebooks and tests), plus where the HTML went."""

    path: Path | None  # None when the sections went into a caller's report
    attribution: pd.DataFrame
    agreement: pd.DataFrame
    cka: pd.DataFrame  # wide: index teacher points ("embed", "0", ...), columns student points
    pairing: Any  # pairing.LayerPairing of the chosen strategy
    pairings: dict[str, Any]
    fidelity: pd.DataFrame | None
    timings: dict[str, float] = field(default_factory=dict)  # wall-clock seconds per stage, and "total"
    notes: list[str] = field(default_factory=list)
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU seconds (all threads) per stage
    patching: dict[str, pd.DataFrame] = field(default_factory=dict)  # `patching_maps` asked for: [layer, pos/head]


class _Clock:
    """Wall-clock and process CPU seconds per stage (CPU time is what a shared, oversubscribed machine can
    still measure: wall time there depends on the neighbours)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.start = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, name: str, since: float) -> float:
        now, cpu = time.perf_counter(), time.process_time()
        self.timings[name] = round(now - since, 2)
        self.cpu[name] = round(cpu - self._cpu, 2)
        self._cpu = cpu
        return now


def _as_model(source, role: str, **load_kwargs):
    if isinstance(source, (str, Path)):
        from ..models.load import load_model

        return load_model(source, **load_kwargs)
    require_hooked(source, role)
    if not is_bridge(source):
        raise SemalignError(f"the {role} must be a model source (zoo name, HF directory, .gguf, Hub name) or a "
                            f"loaded TransformerBridge, got {type(source).__name__}")
    return source


def _cka_batch(tokenizer, task, n_tokens: int):
    """Clean prompt + answer of the task's pairs, as many as fit in `n_tokens` real tokens (at least 4)."""
    from ..data.tokens import tokenize

    batch = tokenize(tokenizer, [p.clean + p.answer for p in task])
    lengths = batch.mask.sum(1).cumsum(0)
    keep = max(4, int((lengths <= n_tokens).sum()))
    return batch.select(range(min(keep, len(batch))))


def _cka(t_states, s_states, *, debiased: bool):
    """Wide CKA table (rows: teacher embed, 0..; columns: the student's) from flat token states."""
    from ..lens.similarity import cka_matrix, cka_wide, residual_labels

    matrix = cka_matrix(t_states, s_states, debiased=debiased)
    return cka_wide(matrix, residual_labels(len(t_states) - 1), residual_labels(len(s_states) - 1))


def _fidelity(teacher, student, pairing, t_states, s_states, *, kinds, n_tokens: int, seed: int,
              progress: bool, alignment=None) -> pd.DataFrame:
    """Round-trip fidelity of each paired layer on its own model's basis, and transfer fidelity of the targets
    (for two tokenizers: on the intersection bases, both readouts restricted to the shared strings)."""
    from ..lens.semantics import (
        SemanticBasis,
        TransferMap,
        fidelity,
        intersection_bases,
        live_head_tokens,
        transfer_fidelity,
    )
    from ..models.readout import Readout

    n = t_states[0].shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_tokens].sort().values

    def tokens(states, block):  # states[0] is the embeddings, states[b + 1] block b's output
        return states[block + 1][pick]

    t_read, s_read = Readout.from_model(teacher), Readout.from_model(student)
    if alignment is None:
        keep, left_out = live_head_tokens(teacher, student)  # padding rows HF keeps at zero have no direction
        t_basis, s_basis = SemanticBasis.from_model(teacher, tokens=keep), SemanticBasis.from_model(student, tokens=keep)
    else:
        t_basis, s_basis = intersection_bases(teacher, student, alignment)
        left_out = torch.empty(0, dtype=torch.long)
        t_read, s_read = t_read.restricted(alignment.teacher_ids), s_read.restricted(alignment.student_ids)
    targets = {p.student_layer: p.target({b: tokens(t_states, b) for b in p.teacher_layers}) for p in pairing}
    student_h = {p.student_layer: tokens(s_states, p.student_layer) for p in pairing}
    teacher_h = {p.nearest_teacher_layer: tokens(t_states, p.nearest_teacher_layer) for p in pairing}
    frames = [
        fidelity(teacher_h, t_basis, teacher, kinds, progress=progress).assign(side="teacher round trip"),
        fidelity(student_h, s_basis, student, kinds, progress=progress).assign(side="student round trip"),
        transfer_fidelity(targets, [TransferMap(t_basis, s_basis, k) for k in kinds], t_read, s_read,
                          student_states=student_h, progress=progress).assign(side="teacher -> student"),
    ]
    out = pd.concat(frames, ignore_index=True)
    out.attrs["left_out"] = left_out.tolist()
    return out


def _model_card(model) -> tuple[str, str] | None:
    """(file name, text) of a MODEL_CARD.md / README.md shipped beside the model's weights, if any."""
    path = getattr(getattr(model, "provenance", None), "path", None)
    for name in ("MODEL_CARD.md", "README.md"):
        if path and (Path(path) / name).is_file():
            return name, (Path(path) / name).read_text(encoding="utf-8", errors="replace")[:20000]
    return None


def _top_table(df: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    rows = []
    for method, part in df.groupby("method", sort=False):
        best = part.sort_values("rank").head(k)
        rows.append({"method": method, "unit": best["unit"].iloc[0],
                     **{f"#{i + 1}": f"{int(r.layer)} ({r.score:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}], "
                                      f"p_top {r.p_top:.2f})" for i, r in enumerate(best.itertuples())}})
    return pd.DataFrame(rows)


def _strategy_table(pairings: dict[str, Any], n_student: int) -> pd.DataFrame:
    rows = []
    for s in range(n_student):
        row = {"student_layer": s}
        for name, pairing in pairings.items():
            pair = pairing.pair_for(s)
            row[name] = "—" if pair is None else pair.target_label()
        rows.append(row)
    return pd.DataFrame(rows)


def pairing_report(teacher, student, task: Any = "facts", out_path: str | Path = "pairing_report.html", *,
                   n_prompts: int = 24, methods: Sequence[str] = METHODS, metric: str = "logprob",
                   align: str = "left_pad", strategy: str = "attribution", attribution_method: str = "grad_x_act",
                   top_k: int = 1, cka_prompts: int = 128, cka_tokens: int = 4096, debiased: bool = True,
                   drop_first: bool = True,
                   fidelity_kinds: Sequence[str] = FIDELITY_KINDS, fidelity_tokens: int = 256, batch_size: int = 8,
                   n_boot: int = 1000, seed: int = 0, png: bool = False, progress: bool = True,
                   patching: Sequence[str] = (), report: Report | None = None, level: int = 2,
                   vocab: str = "shared") -> PairingReport:
    """Build the layer-pairing report and write it to `out_path` (one self-contained HTML file).

    teacher, student: loaded bridges or sources for `models.load_model` (zoo name, HF directory, .gguf, Hub
        name); they must share a vocabulary and a loading mode (`models.ModelPair`).
    task: a built-in task name ("facts", "humaneval"), a .json/.jsonl task file, or a `tasks.Task`.
    n_prompts: pairs used by the rankers (seeded sample). cka_prompts / cka_tokens: pairs whose clean prompt +
        answer feed CKA and fidelity, as many as fit in `cka_tokens` real tokens (capture is cheap).
    methods: rankers from `attribution.METHODS`; metric: "logprob" or "logit_diff"; align: how clean/corrupted
        prompts of different token lengths are handled (`tasks.tokenize_pairs`).
    strategy: the pairing drawn on the CKA map and tabulated ("proportional", "attribution", "cka"); all three
        are compared in a side table. attribution_method / top_k: which ranker's scores the attribution strategy
        (and every pair's attribution rank) uses, and how many critical teacher layers it places.
    debiased / drop_first: the CKA estimator (unbiased HSIC, needs >= 4 tokens) and whether each sequence's
        document-start token is left out.
    fidelity_kinds / fidelity_tokens: semantic-basis variants and how many tokens they are measured on.
    batch_size, n_boot, seed: ranker batch size, bootstrap resamples and the seed of every sample drawn.
    png: also write each figure as PNG next to the HTML when kaleido and a Chromium are present.
    patching: position- and/or head-resolved patching maps of the teacher ("position", "head"; off by default:
        the position map costs layers x positions forwards), `semalign_lens.lens.patching`.
    vocab: "shared" (one vocabulary) or "intersection" (two tokenizers: CKA and fidelity on the aligned positions
        of the same texts, `cross_tokenizer.aligned_stacks`, fidelity on the intersection bases with both
        readouts restricted to the shared strings; attribution reads the teacher alone either way).
    report / level: append the sections to this `Report` instead (headings at `level`, no provenance of its
        own, nothing written; `out_path` and `png` are then ignored) — how `semalign demo` puts the pairing
        and the training diagnostics in one page.
    Returns a `PairingReport` (the tables and pairings as data, timings, notes, the path).
    """
    from ..data.tasks import ALIGN, BUILTIN_TASKS, METRICS, load_task, tokenize_pairs
    from ..lens.pairing import STRATEGIES, make_pairing
    from ..lens.patching import MAPS, patching_maps
    from ..models.load import ModelPair, check_pair_sources, describe
    from ..models.readout import READOUTS
    from .plots import agreement_heatmap, attribution_bars, cka_heatmap, layer_metric_bars, signed_heatmap

    # every check that needs no loaded model first, so a refused call loads nothing and writes nothing
    if strategy not in STRATEGIES:
        raise SemalignError(f"unknown pairing strategy {strategy!r}; choose one of {STRATEGIES}")
    methods = require_choices("attribution methods", methods, METHODS)
    if attribution_method not in methods:
        raise SemalignError(f"attribution_method {attribution_method!r} must be one of the methods run "
                            f"({list(methods)}); add it to methods or pick another")
    require_choices("metric", [metric], METRICS)
    if patching:
        require_choices("patching maps", patching, MAPS)
    require_choices("align", [align], ALIGN)
    require_choices("fidelity kinds", fidelity_kinds, FIDELITY_KINDS)
    require_int("n_prompts (prompt pairs for the rankers)", n_prompts, 2)
    for name, value, least in (("cka_prompts", cka_prompts, 1), ("cka_tokens", cka_tokens, 4),
                               ("fidelity_tokens", fidelity_tokens, 1), ("batch_size", batch_size, 1),
                               ("n_boot", n_boot, 1), ("top_k", top_k, 1)):
        require_int(name, value, least)
    if report is None:
        check_output_file(out_path, "report path", (".html", ".htm"))
    if isinstance(task, (str, Path)) and str(task) not in BUILTIN_TASKS:
        load_task(task)  # a task file: exists, UTF-8, well-formed records (read again below with the tokenizer)
    check_pair_sources(teacher, student, vocab)
    clock = _Clock()
    t0 = clock.start
    teacher, student = _as_model(teacher, "teacher"), _as_model(student, "student")
    alignment = ModelPair(teacher, student, vocab=vocab).alignment  # vocabulary and mode, or a clear error
    torch.manual_seed(seed)
    t0 = clock.lap("load models", t0)

    full = load_task(task, tokenizer=teacher.tokenizer, seed=seed)
    batch = tokenize_pairs(teacher.tokenizer, full.subset(n_prompts, seed), align=align)
    cka_batch = _cka_batch(teacher.tokenizer, full.subset(cka_prompts, seed + 1), cka_tokens)
    t0 = clock.lap("task", t0)

    attribution = rank_layers(teacher, batch, methods=methods, metric=metric, batch_size=batch_size, n_boot=n_boot,
                              seed=seed, progress=progress)
    agreement = rank_agreement(attribution)
    t0 = clock.lap("attribution (teacher)", t0)
    maps = patching_maps(teacher, batch, maps=patching, metric=metric, progress=progress) if patching else {}
    if maps:
        t0 = clock.lap("patching maps (teacher)", t0)

    notes: list[str] = []
    if alignment is None:
        t_states = accumulated_resid(teacher, cka_batch, drop_first=drop_first, progress=progress)
        s_states = accumulated_resid(student, cka_batch, drop_first=drop_first, progress=progress)
    else:
        from ..lens.aligned import aligned_stacks

        texts = [p.clean + p.answer for p in full.subset(cka_prompts, seed + 1)][: len(cka_batch)]
        stacks = aligned_stacks(teacher, student, texts, progress=progress)
        t_states, s_states = stacks.teacher, stacks.student
        notes.append(f"Two tokenizers (vocab='intersection'): {alignment.summary()}. CKA and fidelity use the "
                     f"{stacks.n_aligned} aligned positions of the same texts ({stacks.share[0]:.0%} of the "
                     f"teacher's positions, {stacks.share[1]:.0%} of the student's), where both tokenizations "
                     "end a token at the same character offset; fidelity uses the intersection bases.")
    cka, n_cka_tokens = _cka(t_states, s_states, debiased=debiased), len(t_states[0])
    t0 = clock.lap("CKA", t0)

    n_t, n_s = teacher.cfg.n_layers, student.cfg.n_layers
    options = {"attribution": {"top_k": top_k}}
    pairings = {name: make_pairing(name, n_t, n_s, scores=attribution, cka=cka, method=attribution_method,
                                   **options.get(name, {})) for name in STRATEGIES}
    pairing = pairings[strategy]
    t0 = clock.lap("pairing", t0)

    fid = _fidelity(teacher, student, pairing, t_states, s_states, kinds=fidelity_kinds, n_tokens=fidelity_tokens,
                    seed=seed, progress=progress, alignment=alignment)
    del t_states, s_states
    t0 = clock.lap("semantic fidelity", t0)

    # ------------------------------------------------------------------------------------------ the page
    t_name, s_name = describe(teacher)["model"], describe(student)["model"]
    own = report is None
    subtitle = (f"task `{full.name}`, {len(batch)} prompt pairs for attribution, {n_cka_tokens} tokens for CKA; "
                f"strategy `{strategy}`")
    if own:
        report = Report(f"Layer pairing: {t_name} → {s_name}", subtitle=subtitle)
    else:
        report.add_markdown(subtitle)
    first_note = len(report.notes)  # a caller's report may hold notes of its own

    def heading(text: str) -> None:
        report.add_heading(text, level)

    heading("Summary")
    pairs_text = ", ".join(f"student {p.student_layer} ← teacher {p.target_label()}" for p in pairing)
    firsts = attribution[attribution["rank"] == 1].set_index("method")["layer"]
    report.add_markdown(
        f"- **Chosen pairing** (`{strategy}`): {pairs_text}.\n"
        f"- **Top teacher layer per method**: "
        + ", ".join(f"{m} → {int(layer)}" for m, layer in firsts.items()) + ".\n"
        f"- Layers are 0-based block indices (layer b = output of block b); the paper numbers them b + 1.\n"
        f"- Scores are oriented so that higher = more important; CIs are 95% bootstrap intervals over prompts "
        f"({n_boot} resamples, seed {seed}).")
    for note in notes:
        report.add_note(note)

    if own:  # a caller's page (the demo) has its own models table
        heading("Models")
        cards = pd.DataFrame([dict(role="teacher", **describe(teacher)), dict(role="student", **describe(student))])
        report.add_table(cards, caption="Model cards")
        for role, model in (("teacher", teacher), ("student", student)):
            card = _model_card(model)
            if card:
                report.add_html(f"<details><summary>{role} model card ({html.escape(card[0])})</summary>"
                                f"<pre>{html.escape(card[1])}</pre></details>")

    heading("Task")
    gap = attribution["gap"].dropna() if "gap" in attribution else pd.Series(dtype=float)
    report.add_markdown(f"**{full.name}** — {full.description or 'user task'} (source: `{home_relative(str(full.source)) if full.source else 'memory'}`). "
                        f"{len(full)} pairs in the task; {len(batch)} used by the rankers (align=`{align}`, "
                        f"{batch.n_padded} padded, {len(batch.dropped)} dropped)."
                        + (f" Mean clean − corrupted {metric} on the teacher: {gap.iloc[0]:.3f}." if len(gap) else ""))
    examples = pd.DataFrame([{"clean": p.clean[-80:], "corrupted": p.corrupted[-80:], "answer": p.answer[:40],
                              "corrupted_answer": (p.corrupted_answer or "")[:40]} for p in batch.pairs[:6]])
    report.add_table(examples, caption="Example pairs (prompt tails); the answer is teacher-forced in both runs")

    heading("Layer attribution (teacher)")
    report.add_markdown("Methods: `grad_x_act` is the paper's (gradient × activation on the block write, signed); "
                        "patching is normalised by the clean − corrupted gap; ablations are in metric units; "
                        "`seeking` is Seeking's Σ|θ·∇θ| per block; `laten` is LaTen's log-prob increase, read "
                        "by the cached logit lens (the final residual's norm scale, TransformerLens's "
                        "`apply_ln_to_stack`; see `semalign_lens.lens.attribution`).")
    report.add_figure(attribution_bars(attribution, title=f"Teacher layer attribution ({t_name}, metric {metric})"),
                      caption="Score per teacher layer with 95% bootstrap CI; the top layer is outlined.",
                      name="attribution")
    report.add_table(_top_table(attribution), caption="Top 3 layers per method: score [95% CI], p_top = share of "
                                                      "bootstrap resamples in which the layer ranks first")
    heading("Method agreement")
    report.add_figure(agreement_heatmap(agreement), caption="Kendall tau between the methods' layer scores",
                      name="agreement")
    report.add_table(agreement.round(3).reset_index(names="method"), caption="Kendall tau")
    for name, frame in maps.items():
        heading("Where in the prompt" if name == "position" else "Which heads")
        axis = {"position": "position in the prompt (left padded)", "head": "attention head"}[name]
        report.add_figure(signed_heatmap(frame.to_numpy(), list(frame.columns), list(frame.index), x_title=axis,
                                         value_title="recovery",
                                         title=f"Denoising recovery per layer and {frame.columns.name} ({t_name})"),
                          caption=f"Normalised recovery of the {metric}: 0 = patching the clean activation into the "
                                  f"corrupted run restores nothing, 1 = the clean value; {frame.attrs['pairs']} pairs "
                                  f"of matching length ({frame.attrs['left_out']} left out). "
                                  + ("Block input (resid_pre) at one position." if name == "position" else
                                     "One head's output (hook_z) at every position."), name=f"patching_{name}")

    heading("Teacher × student CKA")
    estimator = "debiased (unbiased HSIC)" if debiased else "linear (biased)"
    report.add_markdown(f"Linear CKA, {estimator}, on {n_cka_tokens} tokens of {len(cka_batch)} clean prompts "
                        f"with their answers{' (document-start token dropped)' if drop_first else ''}. Rows: teacher "
                        "embeddings and block outputs; columns: the student's. Red crosses: the chosen pairing "
                        f"(`{strategy}`); open markers: the other strategies, each in its own shape (hover names "
                        "the pair and its reason).")
    others = {f"{name} (not chosen)": other for name, other in pairings.items() if name != strategy}
    report.add_figure(cka_heatmap(torch.tensor(cka.to_numpy()), list(cka.columns), list(cka.index),
                                  title=f"CKA {t_name} × {s_name}", pairs=pairing, others=others,
                                  pairs_name=f"{strategy} (chosen)"),
                      caption=f"CKA (0..1) with the chosen pairs ({strategy}) and the other strategies' pairs",
                      name="cka")

    heading("Pairing")
    report.add_table(pairing.summary_frame(), caption=f"Chosen pairing (`{strategy}`), with the reason for each pair")
    report.add_table(_strategy_table(pairings, n_s), caption="Teacher target per student layer under each strategy "
                                                             "(— = not paired)")

    heading("Semantic-basis fidelity")
    report.add_markdown("Round trip: cos(h, recompose(decompose(h))) and top-1 agreement of the logit-lens "
                        "readouts, on each model's own basis, for the paired layers. Transfer: the teacher "
                        "target mapped to the student space and read by the student's head, against the "
                        "teacher's own readout (kind `student` = the student's actual state, the baseline). "
                        f"Readout: {READOUTS['recompute']}.")
    left_out = fid.attrs.get("left_out", [])
    if left_out:
        report.add_note(f"{len(left_out)} token id(s) left out of both semantic bases (first: {left_out[0]}): "
                        "their LM-head row is all zero in a model (HF keeps a padding embedding at zero), so "
                        "they have no basis direction.")
    top1 = fid[fid["metric"] == "top1"]
    report.add_figure(layer_metric_bars(top1.assign(series=top1["side"] + " / " + top1["kind"].astype(str)),
                                        x="layer", y="value", color="series", y_range=(0, 1),
                                        x_title="layer (teacher layer for teacher round trip, else student)",
                                        y_title="top-1 agreement",
                                        title="Top-1 readout agreement (logit lens, final norm recomputed)"),
                      name="fidelity")
    wide = fid.pivot_table(index=["side", "layer", "kind"], columns="metric", values="value", sort=False)
    report.add_table(wide.reset_index(), caption="Fidelity per paired layer and basis variant")

    heading("Timings")
    clock.lap("report assembly", t0)
    report.add_table(pd.DataFrame({"stage": list(clock.timings), "wall seconds": list(clock.timings.values()),
                                   "CPU seconds": [clock.cpu[k] for k in clock.timings]}),
                     caption=f"Per stage, {torch.get_num_threads()} torch threads; CPU seconds sum all threads")
    path = None
    if own:
        report.add_provenance(("teacher", teacher), ("student", student), seed=seed,
                              extra={"task": full.name, "n_prompts": len(batch), "methods": ", ".join(methods),
                                     "metric": metric, "strategy": strategy,
                                     "attribution_method": attribution_method, "cka": estimator, "align": align})
        path = Path(report.write(out_path, png=png))
    notes += [n for n in report.notes[first_note:] if n not in notes]
    clock.timings["total"] = round(time.perf_counter() - clock.start, 2)
    clock.cpu["total"] = round(sum(clock.cpu.values()), 2)
    return PairingReport(path, attribution, agreement, cka, pairing, pairings, fid, clock.timings, notes,
                         clock.cpu, maps)
