"""Inspecting a pair before training: which teacher layer each student layer should learn from, and why.

`inspect_pairing(pair, task, settings)` computes what the pairing page shows, as data (`PairingInspection`):
teacher layer attribution (every ranker, bootstrap CIs, their agreement), optional patching maps, the teacher x
student similarity grids of several measures side by side (CKA, debiased CKA, Procrustes, mutual kNN, ...; each
with its shuffled-token null, `lens.measures`) on the task's clean prompts with their answers, and where they
agree (`lens.measures.compare_measures`), the same grids for each block's attention write and MLP write, the
head-by-head attention-pattern similarity of the chosen pairs (`lens.heads`), the pairing of every strategy,
and the semantic-basis fidelity of the chosen one. Model stitching is a measure too, but it scores the student's
cross-entropy (the evaluation floor, above this one): `reports.pairing.pairing_report(stitching=True)` computes
the map on `stitching_batches` and passes it in (`inspect_pairing(..., stitching=map)`), which adds it to the
comparison and the `stitch` strategy to the pairings. `reports.pairing` draws it; nothing here renders. It takes
a validated `ModelPair` and checks nothing about the models again.

State flow (ours): each model reads the similarity batch once (`capture.token_states`, one forward per 16
sequences): its `ResidualStates` record at the real tokens, and with `sublayers` its attention and MLP writes
from the same forwards. Every measure, the fidelity and the sub-layer view read those. The head view reads the
paired layers' attention patterns in forwards of its own: its layers come from the pairing, which the `cka`
strategy draws from this very record, and it compares the two models chunk by chunk.

Cost: the rankers dominate; on SmolLM2 (30 blocks) with 24 prompts and all methods it is measured in
`benchmarks/RESULTS.md` ("Pairing report"). Lower `n_prompts`, drop `seeking` (one backward per prompt) or pass
fewer `methods` to go faster. Each measure's null costs `permutations` more grids for CKA and Procrustes (the
neighbour measures only re-index): about 70 CPU s for the default four measures on SmolLM2 x stdlib-student
(1350 tokens, 10 shuffles); the sub-layer maps (opt-in, `sublayers=True`) cost about 130 more; stitching (opt-in)
one student forward per teacher x student cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core.checks import require_choices, require_int
from ..core.errors import SemalignError
from ..core.progress import Stopwatch
from ..models.residuals import ResidualStates
from .attribution import METHODS, rank_agreement, rank_layers
from .capture import SUBLAYER_POINTS, require_sublayer_writes, token_states

FIDELITY_KINDS = ("paper", "dual", "logits")
DEFAULT_MEASURES = ("cka", "cka_debiased", "procrustes", "mutual_knn")  # never CKA alone (lens.measures)


@dataclass(frozen=True)
class InspectionSettings:
    """How a pair is inspected.

    n_prompts: pairs used by the rankers (seeded sample). cka_prompts / cka_tokens: pairs whose clean prompt +
        answer feed CKA and fidelity, as many as fit in `cka_tokens` real tokens (capture is cheap).
    methods: rankers from `attribution.METHODS`; metric: "logprob" or "logit_diff"; align: how clean/corrupted
        prompts of different token lengths are handled (`tasks.tokenize_pairs`).
    strategy: the chosen pairing ("proportional", "attribution", "cka", or "stitch" with `stitching`); every
        strategy is computed for comparison.
        attribution_method / top_k: which ranker's scores the attribution strategy (and every pair's attribution
        rank) uses, and how many critical teacher layers it places; student_layers: the student layers the
        proportional strategy pairs (None: all).
    debiased / drop_first: the CKA estimator the `cka` strategy pairs by (unbiased HSIC, needs >= 4 tokens) and
        whether each sequence's document-start token is left out (for every measure).
    measures: the similarity measures computed side by side (`lens.measures.MEASURES`; the CKA estimator is
        always among them, never alone); permutations: token shuffles of each measure's null; knn_k /
        knn_tokens: neighbours and the fixed token sample of mutual kNN and CKNNA (and RSA's sample).
    sublayers: also the grids of each block's attention write and MLP write (opt-in: about twice the measures'
        cost); heads: the head-by-head attention-pattern similarity of the chosen pairs (both need one tokenizer
        for the two models).
    stitching / stitching_ridge: model stitching as a further measure and the `stitch` strategy (opt-in: one
        student forward per cell; computed by `reports.pairing.pairing_report`), and its fit's ridge.
    fidelity_kinds / fidelity_tokens: semantic-basis variants and how many tokens they are measured on.
    batch_size, n_boot, seed: ranker batch size, bootstrap resamples and the seed of every sample drawn.
    patching: position- and/or head-resolved patching maps of the teacher ("position", "head"; off by default:
        the position map costs layers x positions forwards), `lens.patching`.
    """

    n_prompts: int = 24
    methods: tuple[str, ...] = METHODS
    metric: str = "logprob"
    align: str = "left_pad"
    strategy: str = "attribution"
    attribution_method: str = "grad_x_act"
    top_k: int = 1
    student_layers: tuple[int, ...] | None = None
    cka_prompts: int = 128
    cka_tokens: int = 4096
    debiased: bool = True
    drop_first: bool = True
    fidelity_kinds: tuple[str, ...] = FIDELITY_KINDS
    fidelity_tokens: int = 256
    batch_size: int = 8
    n_boot: int = 1000
    seed: int = 0
    patching: tuple[str, ...] = ()
    measures: tuple[str, ...] = DEFAULT_MEASURES
    permutations: int = 10
    knn_k: int = 10
    knn_tokens: int = 1024
    sublayers: bool = False
    heads: bool = True
    stitching: bool = False
    stitching_ridge: float = 0.01

    @property
    def cka_estimator(self) -> str:
        return "cka_debiased" if self.debiased else "cka"

    @property
    def measure_names(self) -> tuple[str, ...]:
        """The measures computed: the CKA estimator the `cka` strategy reads first, then `measures`."""
        return tuple(dict.fromkeys((self.cka_estimator, *self.measures)))

    @classmethod
    def make(cls, **values) -> InspectionSettings:
        """Settings from keyword values, checked: an unknown name or a bad value is one line naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SemalignError(f"unknown pairing-inspection setting(s) {unknown}; valid: {sorted(names)}")
        for name in ("methods", "fidelity_kinds", "patching", "student_layers", "measures"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every check that needs no model, so a refused call loads nothing and writes nothing."""
        from ..data.tasks import ALIGN, METRICS
        from .measures import MEASURES
        from .pairing import ALL_STRATEGIES
        from .patching import MAPS

        if self.strategy not in ALL_STRATEGIES:
            raise SemalignError(f"unknown pairing strategy {self.strategy!r}; choose one of {ALL_STRATEGIES}")
        if self.strategy == "stitch" and not self.stitching:
            raise SemalignError("the stitch strategy pairs by the stitching map: turn it on with stitching=True "
                                "(semalign report pairing --stitching)")
        require_choices("similarity measures", self.measures, MEASURES)
        if not self.stitching and set(self.measure_names) <= {"cka", "cka_debiased"}:
            raise SemalignError(f"measures {list(self.measures)} are CKA alone; the pairing page reads CKA beside at "
                                "least one other measure: add procrustes, mutual_knn, cknna or rsa (or stitching)")
        methods = require_choices("attribution methods", self.methods, METHODS)
        if self.attribution_method not in methods:
            raise SemalignError(f"attribution_method {self.attribution_method!r} must be one of the methods run "
                                f"({list(methods)}); add it to methods or pick another")
        require_choices("metric", [self.metric], METRICS)
        if self.patching:
            require_choices("patching maps", self.patching, MAPS)
        require_choices("align", [self.align], ALIGN)
        require_choices("fidelity kinds", self.fidelity_kinds, FIDELITY_KINDS)
        require_int("n_prompts (prompt pairs for the rankers)", self.n_prompts, 2)
        for name, least in (("cka_prompts", 1), ("cka_tokens", 4), ("fidelity_tokens", 1), ("batch_size", 1),
                            ("n_boot", 1), ("top_k", 1)):
            require_int(name, getattr(self, name), least)
        require_int("permutations (token shuffles of each measure's null)", self.permutations, 1)
        require_int("knn_tokens", self.knn_tokens, 2)
        require_int("knn_k", self.knn_k, 1)
        if self.knn_k >= self.knn_tokens:
            raise SemalignError(f"knn_k = {self.knn_k} neighbours needs fewer than knn_tokens = {self.knn_tokens} "
                                "tokens; pass a smaller knn_k or more knn_tokens")
        ridge = self.stitching_ridge
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise SemalignError(f"stitching_ridge must be a number >= 0, got {ridge!r}")


@dataclass
class PairingInspection:
    """What the pairing page shows, as data (for notebooks, tests and the page), plus where a page went."""

    settings: InspectionSettings
    task: Any  # the full `tasks.Task`
    pairs: Any  # the ranker batch (`tasks.PairBatch`): its pairs, padding and drops
    attribution: pd.DataFrame
    agreement: pd.DataFrame
    cka: pd.DataFrame  # wide: index teacher points ("embed", "0", ...), columns student points
    n_cka_tokens: int
    n_cka_prompts: int
    pairing: Any  # pairing.LayerPairing of the chosen strategy
    pairings: dict[str, Any]
    fidelity: pd.DataFrame | None
    models: dict[str, dict]  # {"teacher": describe(...), "student": describe(...)}
    patching: dict[str, pd.DataFrame] = field(default_factory=dict)  # the patching maps asked for: [layer, pos/head]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # wall-clock seconds per stage, and "total"
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU seconds (all threads) per stage
    path: Path | None = None  # the page, once `reports.pairing` wrote one
    measures: dict[str, Any] = field(default_factory=dict)  # name -> similarity.PermutationNull, grids as `cka`
    comparison: Any = None  # measures.MeasureComparison of `measures` (and stitching): where they agree
    stitching: Any = None  # the evaluation.stitching.StitchingMap passed in, if any
    sublayers: dict[str, dict[str, Any]] = field(default_factory=dict)  # "attn_out"/"mlp_out" -> name -> null
    sublayer_comparison: dict[str, Any] = field(default_factory=dict)  # "attn_out"/"mlp_out" -> comparison
    heads: list[Any] = field(default_factory=list)  # heads.HeadSimilarity per chosen pair


def similarity_batch(tokenizer, task, settings: InspectionSettings):
    """The tokens every similarity measure reads (and fidelity, the sub-layer and head views): the clean prompt
    + answer of `cka_prompts` of the task's pairs (seeded), as many as fit in `cka_tokens` real tokens (at least 4
    sequences)."""
    texts = [p.clean + p.answer for p in task.subset(settings.cka_prompts, settings.seed + 1)]
    return _fitting(tokenizer, texts, settings.cka_tokens, least=4)


def stitching_batches(tokenizer, task, settings: InspectionSettings):
    """(fit, held-out) token batches of the task's clean prompts with their answers for `stitching_map`: a
    seeded quarter of the distinct texts held out (at least 2), the rest fitting the maps, each as many as fit in
    `cka_tokens` (held out: a quarter of that)."""
    import random

    texts = list(dict.fromkeys(p.clean + p.answer for p in task))
    if len(texts) < 4:
        raise SemalignError(f"stitching needs at least 4 distinct prompts in task {task.name!r} (fit and held-out "
                            f"sequences), got {len(texts)}")
    random.Random(settings.seed + 2).shuffle(texts)
    n_held = max(2, len(texts) // 4)
    return (_fitting(tokenizer, texts[n_held:], settings.cka_tokens, least=2),
            _fitting(tokenizer, texts[:n_held], max(4, settings.cka_tokens // 4), least=2))


def _fitting(tokenizer, texts: list[str], n_tokens: int, least: int):
    """The first of `texts` that fit in `n_tokens` real tokens, as one batch (at least `least` sequences)."""
    from ..data.tokens import tokenize

    batch = tokenize(tokenizer, texts)
    keep = max(least, int((batch.mask.sum(1).cumsum(0) <= n_tokens).sum()))
    return batch.select(range(min(keep, len(batch))))


def _measure_nulls(t_states, s_states, s: InspectionSettings, progress: bool) -> dict[str, Any]:
    """Every measure of `s.measure_names` with its shuffled-token null, on the same flat token states."""
    from .measures import measure_null

    options = {"mutual_knn": {"k": s.knn_k, "n_tokens": s.knn_tokens},
               "cknna": {"k": s.knn_k, "n_tokens": s.knn_tokens}, "rsa": {"n_tokens": s.knn_tokens}}
    return {name: measure_null(name, t_states, s_states, n_permutations=s.permutations, seed=s.seed,
                               progress=progress, **options.get(name, {})) for name in s.measure_names}


def _check_stitching(stitching, n_teacher: int, n_student: int) -> None:
    from .similarity import residual_labels

    want = (residual_labels(n_teacher), residual_labels(n_student))
    if (list(stitching.teacher_labels), list(stitching.student_labels)) != want:
        raise SemalignError(f"the stitching map covers teacher points {stitching.teacher_labels} and student points "
                            f"{stitching.student_labels}; the page compares whole grids: compute it over every "
                            "point (teacher_points=None, student_points=None)")


def _fidelity(teacher, student, pairing, t_states: ResidualStates, s_states: ResidualStates, *, kinds,
              n_tokens: int, seed: int, progress: bool, alignment=None) -> pd.DataFrame:
    """Round-trip fidelity of each paired layer on its own model's basis, and transfer fidelity of the targets
    (for two tokenizers: on the intersection bases, both readouts restricted to the shared strings), on a seeded
    sample of the tokens of the measures' records."""
    from ..models.readout import Readout
    from .semantics import (
        SemanticBasis,
        TransferMap,
        fidelity,
        intersection_bases,
        live_head_tokens,
        transfer_fidelity,
    )

    n = t_states.embed.shape[0]
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_tokens].sort().values

    def tokens(states: ResidualStates, block: int):
        return states.post[block][pick]

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


def inspect_pairing(pair, task: Any = "facts", settings: InspectionSettings | None = None, *,
                    stitching: Any = None, progress: bool = True, **changes) -> PairingInspection:
    """Inspect a validated `models.pair.ModelPair` on `task` (a built-in task name: "facts", "humaneval"; a .json/.jsonl
    task file; or a `tasks.Task`) with `settings` (defaults, then `changes` by name). A two-tokenizer pair
    (`vocab="intersection"`) gets the measures and fidelity on the aligned positions of the same texts
    (`aligned.aligned_stacks`), fidelity on the intersection bases with both readouts restricted to the shared
    strings, and no sub-layer or head view (those need the same positions); attribution reads the teacher alone
    either way. `stitching`: an `evaluation.stitching.StitchingMap` over every teacher and student point
    (`settings.stitching` asks for one; `reports.pairing.pairing_report` computes it)."""
    from ..data.tasks import load_task, tokenize_pairs
    from ..models.inspect import describe
    from .measures import Reading, compare_measures, reading
    from .pairing import ALL_STRATEGIES, STRATEGIES, make_pairing
    from .patching import patching_maps
    from .similarity import cka_wide, residual_labels

    s = InspectionSettings.make(**{**dataclasses.asdict(settings or InspectionSettings()), **changes})
    if s.stitching and stitching is None:
        raise SemalignError("stitching=True needs the stitching map, which scores the student's cross-entropy (the "
                            "evaluation floor): use reports.pairing.pairing_report(..., stitching=True), or pass "
                            "stitching=evaluation.stitching.stitching_map(...) here")
    if stitching is not None:
        _check_stitching(stitching, pair.teacher.cfg.n_layers, pair.student.cfg.n_layers)
    teacher, student, alignment = pair.teacher, pair.student, pair.alignment
    clock = Stopwatch()
    torch.manual_seed(s.seed)
    full = load_task(task, tokenizer=teacher.tokenizer, seed=s.seed)
    batch = tokenize_pairs(teacher.tokenizer, full.subset(s.n_prompts, s.seed), align=s.align)
    cka_batch = similarity_batch(teacher.tokenizer, full, s)
    clock.lap("task")

    attribution = rank_layers(teacher, batch, methods=s.methods, metric=s.metric, batch_size=s.batch_size,
                              n_boot=s.n_boot, seed=s.seed, progress=progress)
    agreement = rank_agreement(attribution)
    clock.lap("attribution (teacher)")
    maps = patching_maps(teacher, batch, maps=s.patching, metric=s.metric, progress=progress) if s.patching else {}
    if maps:
        clock.lap("patching maps (teacher)")

    notes: list[str] = []
    sublayer_problem = None
    if alignment is None:  # one capture per model: the residual record and, asked for, the block writes
        writes = SUBLAYER_POINTS if s.sublayers else ()
        try:
            for model in (teacher, student) if writes else ():
                require_sublayer_writes(model)
        except SemalignError as err:  # an architecture without separate attention and MLP writes
            sublayer_problem, writes = err, ()
        t_states, t_writes = token_states(teacher, cka_batch, writes=writes, drop_first=s.drop_first,
                                          progress=progress)
        s_states, s_writes = token_states(student, cka_batch, writes=writes, drop_first=s.drop_first,
                                          progress=progress)
    else:
        from .aligned import aligned_stacks

        texts = [p.clean + p.answer for p in full.subset(s.cka_prompts, s.seed + 1)][: len(cka_batch)]
        stacks = aligned_stacks(teacher, student, texts, progress=progress)
        t_states, s_states = ResidualStates.from_stream(stacks.teacher), ResidualStates.from_stream(stacks.student)
        notes.append(f"Two tokenizers (vocab='intersection'): {alignment.summary()}. CKA and fidelity use the "
                     f"{stacks.n_aligned} aligned positions of the same texts ({stacks.share[0]:.0%} of the "
                     f"teacher's positions, {stacks.share[1]:.0%} of the student's), where both tokenizations "
                     "end a token at the same character offset; fidelity uses the intersection bases.")
    n_t, n_s = teacher.cfg.n_layers, student.cfg.n_layers
    t_labels, s_labels = residual_labels(n_t), residual_labels(n_s)
    nulls = _measure_nulls(t_states.stream(), s_states.stream(), s, progress)
    n_cka_tokens = t_states.embed.shape[0]
    cka = cka_wide(nulls[s.cka_estimator].observed, t_labels, s_labels)
    readings = [reading(null) for null in nulls.values()]
    if stitching is not None:
        readings.append(Reading.of_stitching(stitching))
    comparison = compare_measures(readings, t_labels, s_labels)
    clock.lap("similarity measures")

    options = {"attribution": {"top_k": s.top_k},
               "proportional": {} if s.student_layers is None else {"student_layers": list(s.student_layers)}}
    pairings = {name: make_pairing(name, n_t, n_s, scores=attribution, cka=cka, method=s.attribution_method,
                                   stitching=stitching, **options.get(name, {}))
                for name in (ALL_STRATEGIES if stitching is not None else STRATEGIES)}
    clock.lap("pairing")

    sublayers, sublayer_comparison, heads = {}, {}, []
    if alignment is not None and (s.sublayers or s.heads):
        notes.append("The sub-layer and head views need the same token positions in both models; a two-tokenizer "
                     "pair has only aligned positions, so they are left out.")
    elif s.sublayers:
        if sublayer_problem is not None:
            notes.append(f"The sub-layer maps are left out: {sublayer_problem}.")
        blocks_t, blocks_s = [str(b) for b in range(n_t)], [str(b) for b in range(n_s)]
        for point in t_writes:
            sublayers[point] = _measure_nulls(t_writes[point], s_writes[point], s, progress)
            sublayer_comparison[point] = compare_measures([reading(n) for n in sublayers[point].values()],
                                                          blocks_t, blocks_s)
        del t_writes, s_writes
        clock.lap("sub-layer measures")
    if alignment is None and s.heads:
        from .heads import head_similarity

        chosen = pairings[s.strategy]
        try:
            heads = head_similarity(teacher, student, cka_batch, [(p.nearest_teacher_layer, p.student_layer)
                                                                  for p in chosen], batch_size=s.batch_size,
                                    progress=progress)
        except SemalignError as err:  # a paired block without attention (recurrent, state-space)
            notes.append(f"The head view is left out: {err}.")
        clock.lap("head patterns")

    fid = _fidelity(teacher, student, pairings[s.strategy], t_states, s_states, kinds=s.fidelity_kinds,
                    n_tokens=s.fidelity_tokens, seed=s.seed, progress=progress, alignment=alignment)
    del t_states, s_states
    clock.lap("semantic fidelity")
    return PairingInspection(s, full, batch, attribution, agreement, cka, n_cka_tokens, len(cka_batch),
                             pairings[s.strategy], pairings, fid,
                             {"teacher": describe(teacher), "student": describe(student)}, maps, notes,
                             clock.timings, clock.cpu, measures=nulls, comparison=comparison, stitching=stitching,
                             sublayers=sublayers, sublayer_comparison=sublayer_comparison, heads=heads)
