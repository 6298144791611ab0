"""Inspecting a pair before training: which teacher layer each student layer should learn from, and why.

`inspect_pairing(pair, task, settings)` computes what the pairing page shows, as data (`PairingInspection`):
teacher layer attribution (every ranker, bootstrap CIs, their agreement), optional patching maps, teacher x
student CKA on the task's clean prompts with their answers, the pairing of every strategy, and the semantic-basis
fidelity of the chosen one. `reports.pairing` draws it; nothing here renders. It takes a validated `ModelPair` and
checks nothing about the models again.

Cost: the rankers dominate; on SmolLM2 (30 blocks) with 24 prompts and all methods it is measured in
`benchmarks/RESULTS.md` ("Pairing report"). Lower `n_prompts`, drop `seeking` (one backward per prompt) or pass
fewer `methods` to go faster.
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
from .attribution import METHODS, rank_agreement, rank_layers
from .capture import accumulated_resid

FIDELITY_KINDS = ("paper", "dual", "logits")


@dataclass(frozen=True)
class InspectionSettings:
    """How a pair is inspected.

    n_prompts: pairs used by the rankers (seeded sample). cka_prompts / cka_tokens: pairs whose clean prompt +
        answer feed CKA and fidelity, as many as fit in `cka_tokens` real tokens (capture is cheap).
    methods: rankers from `attribution.METHODS`; metric: "logprob" or "logit_diff"; align: how clean/corrupted
        prompts of different token lengths are handled (`tasks.tokenize_pairs`).
    strategy: the chosen pairing ("proportional", "attribution", "cka"); every strategy is computed for comparison.
        attribution_method / top_k: which ranker's scores the attribution strategy (and every pair's attribution
        rank) uses, and how many critical teacher layers it places; student_layers: the student layers the
        proportional strategy pairs (None: all).
    debiased / drop_first: the CKA estimator (unbiased HSIC, needs >= 4 tokens) and whether each sequence's
        document-start token is left out.
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

    @classmethod
    def make(cls, **values) -> InspectionSettings:
        """Settings from keyword values, checked: an unknown name or a bad value is one line naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SemalignError(f"unknown pairing-inspection setting(s) {unknown}; valid: {sorted(names)}")
        for name in ("methods", "fidelity_kinds", "patching", "student_layers"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every check that needs no model, so a refused call loads nothing and writes nothing."""
        from ..data.tasks import ALIGN, METRICS
        from .pairing import STRATEGIES
        from .patching import MAPS

        if self.strategy not in STRATEGIES:
            raise SemalignError(f"unknown pairing strategy {self.strategy!r}; choose one of {STRATEGIES}")
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


def _cka_batch(tokenizer, task, n_tokens: int):
    """Clean prompt + answer of the task's pairs, as many as fit in `n_tokens` real tokens (at least 4)."""
    from ..data.tokens import tokenize

    batch = tokenize(tokenizer, [p.clean + p.answer for p in task])
    lengths = batch.mask.sum(1).cumsum(0)
    keep = max(4, int((lengths <= n_tokens).sum()))
    return batch.select(range(min(keep, len(batch))))


def _cka(t_states, s_states, *, debiased: bool):
    """Wide CKA table (rows: teacher embed, 0..; columns: the student's) from flat token states."""
    from .similarity import cka_matrix, cka_wide, residual_labels

    matrix = cka_matrix(t_states, s_states, debiased=debiased)
    return cka_wide(matrix, residual_labels(len(t_states) - 1), residual_labels(len(s_states) - 1))


def _fidelity(teacher, student, pairing, t_states, s_states, *, kinds, n_tokens: int, seed: int,
              progress: bool, alignment=None) -> pd.DataFrame:
    """Round-trip fidelity of each paired layer on its own model's basis, and transfer fidelity of the targets
    (for two tokenizers: on the intersection bases, both readouts restricted to the shared strings)."""
    from ..models.readout import Readout
    from .semantics import (
        SemanticBasis,
        TransferMap,
        fidelity,
        intersection_bases,
        live_head_tokens,
        transfer_fidelity,
    )

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


def inspect_pairing(pair, task: Any = "facts", settings: InspectionSettings | None = None, *,
                    progress: bool = True, **changes) -> PairingInspection:
    """Inspect a validated `models.pair.ModelPair` on `task` (a built-in task name: "facts", "humaneval"; a .json/.jsonl
    task file; or a `tasks.Task`) with `settings` (defaults, then `changes` by name). A two-tokenizer pair
    (`vocab="intersection"`) gets CKA and fidelity on the aligned positions of the same texts
    (`aligned.aligned_stacks`), fidelity on the intersection bases with both readouts restricted to the shared
    strings; attribution reads the teacher alone either way."""
    from ..data.tasks import load_task, tokenize_pairs
    from ..models.inspect import describe
    from .pairing import STRATEGIES, make_pairing
    from .patching import patching_maps

    s = InspectionSettings.make(**{**dataclasses.asdict(settings or InspectionSettings()), **changes})
    teacher, student, alignment = pair.teacher, pair.student, pair.alignment
    clock = Stopwatch()
    torch.manual_seed(s.seed)
    full = load_task(task, tokenizer=teacher.tokenizer, seed=s.seed)
    batch = tokenize_pairs(teacher.tokenizer, full.subset(s.n_prompts, s.seed), align=s.align)
    cka_batch = _cka_batch(teacher.tokenizer, full.subset(s.cka_prompts, s.seed + 1), s.cka_tokens)
    clock.lap("task")

    attribution = rank_layers(teacher, batch, methods=s.methods, metric=s.metric, batch_size=s.batch_size,
                              n_boot=s.n_boot, seed=s.seed, progress=progress)
    agreement = rank_agreement(attribution)
    clock.lap("attribution (teacher)")
    maps = patching_maps(teacher, batch, maps=s.patching, metric=s.metric, progress=progress) if s.patching else {}
    if maps:
        clock.lap("patching maps (teacher)")

    notes: list[str] = []
    if alignment is None:
        t_states = accumulated_resid(teacher, cka_batch, drop_first=s.drop_first, progress=progress)
        s_states = accumulated_resid(student, cka_batch, drop_first=s.drop_first, progress=progress)
    else:
        from .aligned import aligned_stacks

        texts = [p.clean + p.answer for p in full.subset(s.cka_prompts, s.seed + 1)][: len(cka_batch)]
        stacks = aligned_stacks(teacher, student, texts, progress=progress)
        t_states, s_states = stacks.teacher, stacks.student
        notes.append(f"Two tokenizers (vocab='intersection'): {alignment.summary()}. CKA and fidelity use the "
                     f"{stacks.n_aligned} aligned positions of the same texts ({stacks.share[0]:.0%} of the "
                     f"teacher's positions, {stacks.share[1]:.0%} of the student's), where both tokenizations "
                     "end a token at the same character offset; fidelity uses the intersection bases.")
    cka, n_cka_tokens = _cka(t_states, s_states, debiased=s.debiased), len(t_states[0])
    clock.lap("CKA")

    n_t, n_s = teacher.cfg.n_layers, student.cfg.n_layers
    options = {"attribution": {"top_k": s.top_k},
               "proportional": {} if s.student_layers is None else {"student_layers": list(s.student_layers)}}
    pairings = {name: make_pairing(name, n_t, n_s, scores=attribution, cka=cka, method=s.attribution_method,
                                   **options.get(name, {})) for name in STRATEGIES}
    clock.lap("pairing")

    fid = _fidelity(teacher, student, pairings[s.strategy], t_states, s_states, kinds=s.fidelity_kinds,
                    n_tokens=s.fidelity_tokens, seed=s.seed, progress=progress, alignment=alignment)
    del t_states, s_states
    clock.lap("semantic fidelity")
    return PairingInspection(s, full, batch, attribution, agreement, cka, n_cka_tokens, len(cka_batch),
                             pairings[s.strategy], pairings, fid,
                             {"teacher": describe(teacher), "student": describe(student)}, maps, notes,
                             clock.timings, clock.cpu)
