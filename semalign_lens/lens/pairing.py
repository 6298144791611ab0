"""Layer pairing: which teacher layer supervises each student layer, and why.

**Layer indexing (the package-wide convention; decided here).**
- A *layer* is a 0-based block index b, TransformerLens numbering. Layer b's state is the output of block b,
  `blocks.{b}.hook_resid_post` (`resid_post` in activations.py); student layer b is block b's parameters.
- The paper numbers layers from 1: paper layer k is the output of the k-th block, i.e. our layer k − 1
  (`paper_to_block`, `block_to_paper`). Paper layer 0 would be the embeddings (`resid_pre` of block 0); like the
  paper (ℓ ≥ 1) we never pair it. The paper's formulas below are evaluated in paper numbering and converted
  once, where the pair is built, so they can be read side by side with the paper's §2.1 (arXiv 2510.24208).
- A `LayerPair` asks student layer `student_layer` to match
  target = (1 − weight) · h_T[teacher_low] + weight · h_T[teacher_high].
  Exact pairs have teacher_low == teacher_high and weight 0; interpolated ones teacher_high == teacher_low + 1
  and 0 < weight < 1 (a paper λ of 0 or 1 is stored as the exact pair it is).
- A CKA matrix's rows/columns are mapped to blocks with `teacher_blocks` / `student_blocks`, where −1 marks the
  embeddings row/column (`similarity.residual_labels` order: embed, 0, 1, ...); those rows are never paired.

**Strategies** (each pair records `strategy`, a `reason` in words, and score / CKA / attribution rank):
- `proportional` — paper: ℓ^T_k = max(1, ⌊(L_T/L_S)·k⌋), e.g. 2k for 20→10. With `interpolate=True` (default)
  a non-integer ratio uses the paper's exact-depth rule: ρ = k/L_S, u = L_T·ρ, a = max(1, min(⌊u⌋, L_T−1)),
  b = a+1, λ = clip(u−a, 0, 1) (40→32, k=1: λ = 0.25 between paper layers 1 and 2). For integer ratios both
  rules agree.
- `attribution` — paper: a critical teacher layer ℓ⋆ (here: the `top_k` highest attribution scores) is trained
  through student layer k† = min{k' : ℓ^T_{k'} ≥ ℓ⋆} (k† = L_S when none), on the pair (ℓ^T_{k†}, k†),
  interpolated like `proportional`. Only those student layers are paired (paper Fig. 3: one critical layer,
  one trained student layer). Our inference: several critical layers landing on the same k† share one pair,
  and the pair's score/rank are those of the best of them.
- `cka` — ours (the paper's "future work: pairing based on layer outputs"): the non-decreasing map student
  layer → teacher layer maximising the summed CKA, by dynamic programming; ties go to the shallower layer.
- `stitch` — ours (pairing from the models' *outputs*): the same monotone path, *minimising* the summed
  stitching penalty (the student's held-out CE increase when its own state is replaced by the affinely mapped
  teacher state, `evaluation.stitching.stitching_map`). Not in `STRATEGIES` (the strategies `pairing_report` builds from
  its own measurements); `ALL_STRATEGIES` has it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.checks import check_output_file, read_json, require_hooked
from ..core.errors import SemalignError
from .capture import parse_hook_name

STRATEGIES: tuple[str, ...] = ("proportional", "attribution", "cka")  # what pairing_report builds from its measures
ALL_STRATEGIES: tuple[str, ...] = (*STRATEGIES, "stitch")  # stitch needs a stitching map (`evaluation.stitching.stitching_map`)
FORMAT = "semalign_lens.LayerPairing"
FORMAT_VERSION = 1
INDEXING = "0-based block index: layer b = blocks.{b}.hook_resid_post; paper layer = b + 1"


def paper_to_block(k: int) -> int:
    """Paper layer k (1-based, output of the k-th block) -> our block index k − 1."""
    if k < 1:
        raise SemalignError(f"paper layers start at 1 (the output of the first block), got {k}")
    return k - 1


def block_to_paper(b: int) -> int:
    """Our block index b -> the paper's layer number b + 1."""
    if b < 0:
        raise SemalignError(f"block indices start at 0, got {b}")
    return b + 1


def layer_of(value: int | float | str) -> int | float:
    """A pairing layer given as a block index (returned as is) or as a residual hook name, the way SAELens-style
    configs name layers: `blocks.b.hook_resid_post` is layer b, `blocks.b.hook_resid_pre` the same state as
    block b − 1's output (TransformerLens's names; the bridge's hook_out / hook_in alike)."""
    if not isinstance(value, str):
        return value
    try:
        point, block = parse_hook_name(value)
        if point not in ("resid_pre", "resid_post"):  # a block's attention or MLP write is not a residual state
            raise SemalignError(point)
    except SemalignError:
        point = None
    if point not in ("resid_pre", "resid_post"):  # a block's attention or MLP write is no residual state
        raise SemalignError(f"pairing layer {value!r} is neither a block index nor a residual hook name; use b, "
                            "blocks.b.hook_resid_post or blocks.b.hook_resid_pre (= block b − 1's output), or the "
                            "bridge's blocks.b.hook_out / hook_in")
    layer = block if point == "resid_post" else block - 1
    if layer < 0:
        raise SemalignError(f"pairing layer {value!r} is the embeddings, which are never paired; pair a block's "
                            "output (blocks.b.hook_resid_post, or blocks.b.hook_resid_pre with b >= 1)")
    return layer


# --------------------------------------------------------------------------------------------- data


def nearest_layer(low: int, high: int, weight: float) -> int:
    """The one teacher layer nearest to the interpolated target (1 − w)·h[low] + w·h[high]: halfway (w = 0.5)
    rounds to the deeper one. The one rounding rule for the pairing report, the trainer and its diagnostics."""
    return high if weight >= 0.5 else low


@dataclass(frozen=True)
class LayerPair:
    """Student layer `student_layer` matches (1 − weight)·h_T[teacher_low] + weight·h_T[teacher_high] (blocks)."""

    student_layer: int
    teacher_low: int
    teacher_high: int
    weight: float = 0.0
    reason: str = ""
    strategy: str = ""
    score: float | None = None
    cka: float | None = None
    attribution_rank: int | None = None

    def __post_init__(self) -> None:
        if min(self.student_layer, self.teacher_low, self.teacher_high) < 0:
            raise SemalignError(f"layer indices are 0-based blocks and cannot be negative: {self}")
        exact = self.teacher_low == self.teacher_high and self.weight == 0.0
        between = self.teacher_high == self.teacher_low + 1 and 0.0 < self.weight < 1.0
        if not (exact or between):
            raise SemalignError(f"pair for student layer {self.student_layer} is neither exact (teacher_low == "
                                f"teacher_high, weight 0) nor an interpolation of adjacent layers (high = low + 1, "
                                f"0 < weight < 1): low={self.teacher_low}, high={self.teacher_high}, "
                                f"weight={self.weight}")

    @property
    def interpolated(self) -> bool:
        return self.weight > 0.0

    @property
    def teacher_layers(self) -> tuple[int, ...]:
        """The teacher layers this target reads (one, or two when interpolated)."""
        return (self.teacher_low, self.teacher_high) if self.interpolated else (self.teacher_low,)

    @property
    def nearest_teacher_layer(self) -> int:
        return nearest_layer(self.teacher_low, self.teacher_high, self.weight)

    def record(self) -> dict[str, Any]:
        """The target's own fields (no scores): what a run records as its pairing and its resume identity."""
        return {"student_layer": self.student_layer, "teacher_low": self.teacher_low,
                "teacher_high": self.teacher_high, "weight": self.weight, "reason": self.reason}

    def target_label(self) -> str:
        if not self.interpolated:
            return str(self.teacher_low)
        return f"{1 - self.weight:.3g}·{self.teacher_low} + {self.weight:.3g}·{self.teacher_high}"

    def target(self, states: Mapping[int, Tensor]) -> Tensor:
        """The supervision target from teacher states keyed by block index (e.g. resid_post per block)."""
        missing = [b for b in self.teacher_layers if b not in states]
        if missing:
            raise SemalignError(f"teacher layer(s) {missing} needed by the pair for student layer "
                                f"{self.student_layer} were not captured; capture {list(self.teacher_layers)}")
        if not self.interpolated:
            return states[self.teacher_low]
        return torch.lerp(states[self.teacher_low], states[self.teacher_high], self.weight)


@dataclass
class LayerPairing:
    """At most one target per student layer (sorted by student layer), for given teacher/student depths."""

    pairs: list[LayerPair]
    n_teacher_layers: int
    n_student_layers: int
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = sorted(self.pairs, key=lambda p: p.student_layer)
        if not self.pairs:
            raise SemalignError("a pairing needs at least one pair")
        seen = [p.student_layer for p in self.pairs]
        dup = sorted({s for s in seen if seen.count(s) > 1})
        if dup:
            raise SemalignError(f"student layer(s) {dup} have more than one teacher target; a pairing gives each "
                                "student layer exactly one (possibly interpolated) teacher layer")
        self._check_range(self.n_teacher_layers, self.n_student_layers)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def pair_for(self, student_layer: int) -> LayerPair | None:
        return next((p for p in self.pairs if p.student_layer == student_layer), None)

    @property
    def student_layers(self) -> list[int]:
        return [p.student_layer for p in self.pairs]

    @property
    def teacher_layers_needed(self) -> list[int]:
        """Sorted teacher blocks whose resid_post the targets read."""
        return sorted({b for p in self.pairs for b in p.teacher_layers})

    @property
    def deepest_teacher_layer(self) -> int:
        """The teacher forward can stop after this block (`stop_at_layer=deepest_teacher_layer + 1`)."""
        return self.teacher_layers_needed[-1]

    def _check_range(self, n_teacher: int, n_student: int) -> None:
        for p in self.pairs:
            if p.student_layer >= n_student:
                raise SemalignError(f"student layer {p.student_layer} does not exist: the student has {n_student} "
                                    f"layers (0..{n_student - 1}); rebuild the pairing for this student")
            if p.teacher_high >= n_teacher:
                raise SemalignError(f"teacher layer {p.teacher_high} does not exist: the teacher has {n_teacher} "
                                    f"layers (0..{n_teacher - 1}); rebuild the pairing for this teacher")

    def validate(self, n_teacher_layers: int, n_student_layers: int) -> LayerPairing:
        """Raise unless this pairing was built for these depths (what the trainer calls before training)."""
        if (n_teacher_layers, n_student_layers) != (self.n_teacher_layers, self.n_student_layers):
            raise SemalignError(
                f"this {self.strategy} pairing was built for a {self.n_teacher_layers}-layer teacher and a "
                f"{self.n_student_layers}-layer student, but the models have {n_teacher_layers} and "
                f"{n_student_layers} layers; rebuild it for these models (e.g. make_pairing(..., "
                f"n_teacher_layers={n_teacher_layers}, n_student_layers={n_student_layers}))")
        self._check_range(n_teacher_layers, n_student_layers)
        return self

    def check_models(self, teacher, student) -> LayerPairing:
        """`validate` against two models (anything with `.cfg.n_layers`)."""
        require_hooked(teacher, "teacher")
        require_hooked(student, "student")
        return self.validate(int(teacher.cfg.n_layers), int(student.cfg.n_layers))

    def to_frame(self):
        """The explanation table: one row per pair, our block indices and the paper's numbers side by side."""
        import pandas as pd

        rows = [{"student_layer": p.student_layer, "teacher_target": p.target_label(),
                 "teacher_low": p.teacher_low, "teacher_high": p.teacher_high, "weight": p.weight,
                 "paper_student_layer": block_to_paper(p.student_layer),
                 "paper_teacher_low": block_to_paper(p.teacher_low),
                 "paper_teacher_high": block_to_paper(p.teacher_high), "strategy": p.strategy,
                 "score": p.score, "cka": p.cka, "attribution_rank": p.attribution_rank, "reason": p.reason}
                for p in self.pairs]
        frame = pd.DataFrame(rows)
        return frame.astype({"attribution_rank": "Int64", "score": "float64", "cka": "float64"})

    def summary_frame(self):
        """The pairing as a report shows it: one row per pair, six narrow columns (ours and the paper's
        numbering in one, no missing-value markers: "–" where a measure was not taken)."""
        import pandas as pd

        def num(v, digits=3):
            return "–" if v is None or v != v else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

        return pd.DataFrame([{
            "student ← teacher": f"{p.student_layer} ← {p.target_label()}",
            "paper numbering": f"{block_to_paper(p.student_layer)} ← {block_to_paper(p.teacher_low)}"
                               + ("" if p.teacher_high == p.teacher_low else f"–{block_to_paper(p.teacher_high)}"),
            "strategy": p.strategy, "CKA": num(p.cka), "attribution rank": num(p.attribution_rank),
            "reason": p.reason} for p in self.pairs])

    def annotate(self, *, cka: Any = None, scores: Any = None, teacher_blocks: Sequence[int] | None = None,
                 student_blocks: Sequence[int] | None = None, method: str | None = None) -> LayerPairing:
        """A copy with `cka` (from a [teacher, student] matrix) and `attribution_rank` (from per-teacher-layer
        scores) filled in for every pair, whatever the strategy; `score` keeps the strategy's own criterion.

        For an interpolated pair, cka is the weight-blended CKA of its two teacher layers (the CKA of the blended
        state itself is not measured) and the rank is that of its nearer teacher layer.
        """
        lookup = _cka_lookup(cka, teacher_blocks, student_blocks) if cka is not None else None
        ranks = _ranks(_score_series(scores, self.n_teacher_layers, method)) if scores is not None else None
        pairs = []
        for p in self.pairs:
            changes: dict[str, Any] = {}
            if lookup is not None:
                changes["cka"] = _blended_cka(lookup, p)
            if ranks is not None and p.attribution_rank is None:
                changes["attribution_rank"] = ranks.get(p.nearest_teacher_layer)
            pairs.append(replace(p, **changes))
        return replace(self, pairs=pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "indexing": INDEXING,
                "n_teacher_layers": self.n_teacher_layers, "n_student_layers": self.n_student_layers,
                "strategy": self.strategy, "params": self.params, "pairs": [asdict(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPairing:
        if data.get("format") != FORMAT:
            raise SemalignError(f"not a layer pairing (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise SemalignError(f"layer pairing format version {data.get('version')} is not supported "
                                f"(this semalign_lens reads version {FORMAT_VERSION}); rebuild the pairing")
        fields = set(LayerPair.__dataclass_fields__)
        pairs = []
        for i, p in enumerate(data["pairs"]):
            unknown = set(p) - fields
            if unknown:
                raise SemalignError(f"pair #{i} has unknown fields {sorted(unknown)}; expected {sorted(fields)}")
            pairs.append(LayerPair(**p))
        return cls(pairs, int(data["n_teacher_layers"]), int(data["n_student_layers"]), str(data["strategy"]),
                   dict(data.get("params", {})))

    def save(self, path: str | Path) -> Path:
        from ..core.atomic import write_json_atomic

        path = check_output_file(path, "pairing file")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerPairing:
        path = Path(path)
        if not path.exists():
            raise SemalignError(f"pairing file {path} does not exist")
        return cls.from_dict(read_json(path, "pairing file", "write pairings with LayerPairing.save"))


# --------------------------------------------------------------------------------------------- helpers


def _check_depths(n_teacher_layers: int, n_student_layers: int) -> None:
    for name, n in (("n_teacher_layers", n_teacher_layers), ("n_student_layers", n_student_layers)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise SemalignError(f"{name} must be a positive integer (the model's number of blocks), got {n!r}")


def _check_student_layers(student_layers: Sequence[int] | None, n_student_layers: int) -> list[int]:
    if student_layers is None:
        return list(range(n_student_layers))
    layers = sorted({int(s) for s in student_layers})
    bad = [s for s in layers if not 0 <= s < n_student_layers]
    if bad or not layers:
        raise SemalignError(f"student layer {bad[0] if bad else '(none)'} was asked for, but the student has "
                            f"{n_student_layers} layers (blocks 0..{n_student_layers - 1})")
    return layers


def proportional_layer(k: int, n_teacher_layers: int, n_student_layers: int) -> int:
    """Paper: ℓ^T_k = max(1, ⌊(L_T/L_S)·k⌋), in paper numbering (k and the result are 1-based)."""
    return max(1, (n_teacher_layers * k) // n_student_layers)  # integer arithmetic: no 0.1 * 30 rounding


def paper_interpolation(k: int, n_teacher_layers: int, n_student_layers: int) -> tuple[int, int, float]:
    """Paper's exact-depth rule for student layer k (1-based): (a, b, λ), target (1−λ)·h^(a) + λ·h^(b)."""
    u = Fraction(n_teacher_layers * k, n_student_layers)  # u = L_T · (k / L_S), exactly
    a = max(1, min(math.floor(u), n_teacher_layers - 1))
    lam = min(max(u - a, Fraction(0)), Fraction(1))
    return a, a + 1, float(lam)


def _proportional_pair(k: int, n_teacher: int, n_student: int, interpolate: bool, strategy: str, reason: str,
                       **extra) -> LayerPair:
    """The pair for paper student layer k, in block indices (λ of 0/1 stored as the exact pair it is)."""
    if interpolate:
        a, b, lam = paper_interpolation(k, n_teacher, n_student)
        if 0.0 < lam < 1.0:
            why = (f"{reason}; u = L_T·k/L_S = {n_teacher}·{k}/{n_student} = {n_teacher * k / n_student:.4g} "
                   f"falls between paper layers {a} and {b}: λ = {lam:.4g}")
            return LayerPair(k - 1, a - 1, b - 1, lam, why, strategy, **extra)
        ell = b if lam == 1.0 else a
    else:
        ell = proportional_layer(k, n_teacher, n_student)
    why = f"{reason}; paper ℓ^T_{k} = max(1, ⌊{n_teacher}·{k}/{n_student}⌋) = {ell}"
    return LayerPair(k - 1, ell - 1, ell - 1, 0.0, why, strategy, **extra)


def _score_series(scores: Any, n_teacher_layers: int, method: str | None = None):
    """Per-teacher-layer scores as a pandas Series indexed by block (higher = more important)."""
    import pandas as pd

    if isinstance(scores, pd.DataFrame):
        frame = scores
        if "method" in frame.columns:
            methods = sorted(frame["method"].astype(str).unique())
            if method is None and len(methods) > 1:
                raise SemalignError(f"the scores hold several methods {methods}; pass method=... to choose one")
            if method is not None:
                if method not in methods:
                    raise SemalignError(f"method {method!r} is not in the scores; available: {methods}")
                frame = frame[frame["method"].astype(str) == method]
        missing = {"layer", "score"} - set(frame.columns)
        if missing:
            raise SemalignError(f"score table lacks column(s) {sorted(missing)}; pass a DataFrame with 'layer' "
                                "and 'score' (one row per teacher layer), a Series indexed by layer, or an array")
        if frame["layer"].duplicated().any():
            raise SemalignError("score table has several rows for one layer (several models or points?); "
                                "filter it to one score per teacher layer")
        series = pd.Series(frame["score"].to_numpy(dtype=float), index=frame["layer"].to_numpy(dtype=int))
    elif isinstance(scores, pd.Series):
        series = scores.astype(float)
        series.index = series.index.astype(int)
    else:
        values = np.asarray(torch.as_tensor(scores).detach().cpu().numpy() if isinstance(scores, Tensor)
                            else scores, dtype=float)
        if values.ndim != 1:
            raise SemalignError(f"scores must be one value per teacher layer, got shape {values.shape}")
        series = pd.Series(values, index=np.arange(len(values)))
    bad = [int(b) for b in series.index if not 0 <= b < n_teacher_layers]
    if bad:
        raise SemalignError(f"scores name teacher layer {bad[0]}, but the teacher has {n_teacher_layers} layers "
                            f"(blocks 0..{n_teacher_layers - 1}); scores must be indexed by block")
    if not np.isfinite(series.to_numpy()).all():
        raise SemalignError("scores contain NaN or inf; drop or fix those layers first")
    if series.empty:
        raise SemalignError("scores are empty; pass one score per teacher layer")
    return series


def _ranks(series) -> dict[int, int]:
    """Rank 1 = highest score; ties go to the shallower layer."""
    order = sorted(series.items(), key=lambda kv: (-kv[1], kv[0]))
    return {int(layer): rank for rank, (layer, _) in enumerate(order, start=1)}


def _as_matrix(cka: Any) -> tuple[np.ndarray, list | None, list | None]:
    """A CKA matrix as float64 numpy, plus the index/columns of a DataFrame (used as blocks when integers)."""
    import pandas as pd

    if isinstance(cka, pd.DataFrame):
        return cka.to_numpy(dtype=float), list(cka.index), list(cka.columns)
    if isinstance(cka, Tensor):
        cka = cka.detach().cpu().double().numpy()
    matrix = np.asarray(cka, dtype=float)
    if matrix.ndim != 2:
        raise SemalignError(f"the CKA matrix must be 2-D [teacher, student], got shape {matrix.shape}")
    return matrix, None, None


def _blocks(given: Sequence[int] | None, labels: list | None, n: int, what: str) -> list[int]:
    if given is None and labels is not None:
        try:
            given = [-1 if str(v) == "embed" else int(v) for v in labels]
        except (TypeError, ValueError):
            given = None
    blocks = list(range(n)) if given is None else [int(b) for b in given]
    if len(blocks) != n:
        raise SemalignError(f"{len(blocks)} {what}_blocks for a CKA matrix with {n} {what} rows/columns")
    real = [b for b in blocks if b != -1]
    if any(b < -1 for b in blocks) or real != sorted(set(real)):
        raise SemalignError(f"{what}_blocks must be increasing block indices (−1 for the embeddings), got {blocks}")
    return blocks


def _cka_lookup(cka: Any, teacher_blocks, student_blocks) -> dict[tuple[int, int], float]:
    matrix, index, columns = _as_matrix(cka)
    tb = _blocks(teacher_blocks, index, matrix.shape[0], "teacher")
    sb = _blocks(student_blocks, columns, matrix.shape[1], "student")
    return {(t, s): float(matrix[i, j]) for i, t in enumerate(tb) for j, s in enumerate(sb)}


def _blended_cka(lookup: Mapping[tuple[int, int], float], p: LayerPair) -> float | None:
    low, high = lookup.get((p.teacher_low, p.student_layer)), lookup.get((p.teacher_high, p.student_layer))
    if low is None or high is None:
        return None
    return (1 - p.weight) * low + p.weight * high


# --------------------------------------------------------------------------------------------- strategies


def pair_proportional(n_teacher_layers: int, n_student_layers: int, *, interpolate: bool = True,
                      student_layers: Sequence[int] | None = None) -> LayerPairing:
    """Paper's depth-proportional pairing for every student layer (or the given blocks)."""
    _check_depths(n_teacher_layers, n_student_layers)
    layers = _check_student_layers(student_layers, n_student_layers)
    pairs = [_proportional_pair(s + 1, n_teacher_layers, n_student_layers, interpolate, "proportional",
                                f"depth-proportional (paper §2.1) for paper student layer {s + 1}")
             for s in layers]
    return LayerPairing(pairs, n_teacher_layers, n_student_layers, "proportional", {"interpolate": interpolate})


def pair_by_attribution(scores: Any, n_teacher_layers: int, n_student_layers: int, *, top_k: int = 1,
                        interpolate: bool = True, method: str | None = None) -> LayerPairing:
    """Paper's critical-layer rule: each of the `top_k` highest-scoring teacher layers ℓ⋆ is trained through
    student layer k† = min{k' : ℓ^T_{k'} ≥ ℓ⋆} (else L_S), on the proportional pair (ℓ^T_{k†}, k†).

    `scores`: one value per teacher block, higher = more important (a Series indexed by block, an array, or
    attribution.py's long table with `layer`/`score` columns; `method=` picks one method from it). Pass
    absolute values if the sign should not matter.
    """
    _check_depths(n_teacher_layers, n_student_layers)
    series = _score_series(scores, n_teacher_layers, method)
    if not 1 <= top_k <= len(series):
        raise SemalignError(f"top_k must be between 1 and the number of scored layers ({len(series)}), got {top_k}")
    ranks = _ranks(series)
    critical = sorted(ranks, key=ranks.get)[:top_k]
    ell = {k: proportional_layer(k, n_teacher_layers, n_student_layers) for k in range(1, n_student_layers + 1)}
    by_student: dict[int, list[int]] = {}
    for block in critical:
        star = block_to_paper(block)
        partners = [k for k in ell if ell[k] >= star]
        by_student.setdefault(min(partners) if partners else n_student_layers, []).append(block)
    pairs = []
    for k, blocks in sorted(by_student.items()):
        best = min(blocks, key=ranks.get)
        named = ", ".join(f"teacher layer {b} (paper ℓ⋆ = {b + 1}, rank {ranks[b]}, score {series[b]:.4g})"
                          for b in sorted(blocks, key=ranks.get))
        placed = ("is the proportional partner of" if ell[k] == block_to_paper(best)
                  else "has no proportional partner; moved to")
        reason = f"critical {named} {placed} student k† = {k} = min{{k' : ℓ^T_k' ≥ ℓ⋆}} (paper §2.1)"
        pairs.append(_proportional_pair(k, n_teacher_layers, n_student_layers, interpolate, "attribution", reason,
                                        score=float(series[best]), attribution_rank=ranks[best]))
    return LayerPairing(pairs, n_teacher_layers, n_student_layers, "attribution",
                        {"top_k": top_k, "interpolate": interpolate, "critical_teacher_layers": critical,
                         "method": method})


def monotone_path(matrix: Float[np.ndarray, "t s"], strict: bool = False) -> tuple[list[int], float]:
    """Row index per column maximising the summed entries, rows non-decreasing (increasing when `strict`)
    across columns. Dynamic programming, O(rows · cols); ties go to the smaller row."""
    matrix = np.asarray(matrix, dtype=float)
    rows, cols = matrix.shape
    if strict and rows < cols:
        raise SemalignError(f"a strictly increasing path needs at least as many teacher layers as student layers "
                            f"({rows} < {cols}); use strict=False")
    if not np.isfinite(matrix).all():
        raise SemalignError("the CKA matrix contains NaN or inf; recompute it (constant layers?) before pairing")
    best = matrix[:, 0].copy()  # best[t]: best total over columns 0..j with column j in row t
    back = np.zeros((rows, cols), dtype=int)
    for j in range(1, cols):
        new = np.empty(rows)
        run_max, run_arg = -np.inf, 0
        for t in range(rows):  # predecessors t' <= t (t' < t when strict): a running maximum, first one kept
            limit = t - 1 if strict else t
            if limit >= 0 and best[limit] > run_max:
                run_max, run_arg = best[limit], limit
            new[t] = run_max + matrix[t, j]
            back[t, j] = run_arg
        best = new
    path = [int(np.argmax(best))]
    total = float(best[path[0]])
    for j in range(cols - 1, 0, -1):
        path.append(int(back[path[-1], j]))
    return path[::-1], total


def _monotone_pairing(matrix: Any, strategy: str, what: str, *, minimise: bool, teacher_blocks, student_blocks,
                      n_teacher_layers, n_student_layers, strict: bool) -> LayerPairing:
    """The monotone path through a [teacher, student] matrix (`monotone_path`; `minimise` negates it), as a
    pairing whose pairs say what each cell was and what each student layer gave up to keep the path monotone."""
    matrix, index, columns = _as_matrix(matrix)
    tb = _blocks(teacher_blocks, index, matrix.shape[0], "teacher")
    sb = _blocks(student_blocks, columns, matrix.shape[1], "student")
    rows = [i for i, b in enumerate(tb) if b >= 0]
    cols = [j for j, b in enumerate(sb) if b >= 0]
    if not rows or not cols:
        raise SemalignError(f"the {what} matrix has no block rows or columns besides the embeddings")
    n_teacher = max(tb) + 1 if n_teacher_layers is None else n_teacher_layers
    n_student = max(sb) + 1 if n_student_layers is None else n_student_layers
    _check_depths(n_teacher, n_student)
    if max(sb) >= n_student:
        raise SemalignError(f"the {what} matrix has a column for student layer {max(sb)}, but the student has "
                            f"{n_student} layers (blocks 0..{n_student - 1})")
    if max(tb) >= n_teacher:
        raise SemalignError(f"the {what} matrix has a row for teacher layer {max(tb)}, but the teacher has "
                            f"{n_teacher} layers (blocks 0..{n_teacher - 1})")
    sub = matrix[np.ix_(rows, cols)]
    sign = -1.0 if minimise else 1.0
    path, total = monotone_path(sign * sub, strict=strict)
    total *= sign
    pairs = []
    for j, i in enumerate(path):
        t, s = tb[rows[i]], sb[cols[j]]
        own = int(np.argmax(sign * sub[:, j]))
        value = float(sub[i, j])
        alone = ("also its best teacher layer alone" if own == i
                 else f"its best alone is teacher layer {tb[rows[own]]} ({what} {sub[own, j]:.3f}), given up to keep "
                      "the path monotone")
        reason = (f"monotone {what} path (dynamic programming, total {total:.3f} over {len(path)} student layers): "
                  f"{what} {value:.3f}; {alone}")
        pairs.append(LayerPair(s, t, t, 0.0, reason, strategy, score=value,
                               cka=value if strategy == "cka" else None))
    return LayerPairing(pairs, n_teacher, n_student, strategy, {"strict": strict, f"total_{strategy}": total})


def pair_by_cka(cka: Any, *, teacher_blocks: Sequence[int] | None = None,
                student_blocks: Sequence[int] | None = None, n_teacher_layers: int | None = None,
                n_student_layers: int | None = None, strict: bool = False) -> LayerPairing:
    """Monotone CKA path (ours): each student layer gets one teacher layer, non-decreasing in depth, maximising
    the total CKA (dynamic programming; `strict=True` forbids two student layers sharing a teacher layer).

    `cka` is a [teacher, student] matrix (tensor, array, or `similarity.cka_wide` DataFrame, whose integer or
    "embed" labels are read as blocks). `teacher_blocks`/`student_blocks` give each row/column's block, −1 for
    the embeddings (skipped); by default row i is block i. Depths default to the largest block + 1.
    """
    return _monotone_pairing(cka, "cka", "CKA", minimise=False, teacher_blocks=teacher_blocks,
                             student_blocks=student_blocks, n_teacher_layers=n_teacher_layers,
                             n_student_layers=n_student_layers, strict=strict)


def pair_by_stitching(penalty: Any, *, teacher_blocks: Sequence[int] | None = None,
                      student_blocks: Sequence[int] | None = None, n_teacher_layers: int | None = None,
                      n_student_layers: int | None = None, strict: bool = False) -> LayerPairing:
    """Monotone stitching path (ours; the paper's future work, "pairing based on layer outputs"): each student
    layer gets one teacher layer, non-decreasing in depth, *minimising* the summed stitching penalty (the
    student's held-out CE increase when its state is replaced by the affinely mapped teacher state).

    `penalty`: a [teacher, student] matrix or `evaluation.stitching.StitchingMap.wide()` (its "embed" row and column are
    skipped); a `StitchingMap` itself is read through its `wide()`. Blocks, depths and `strict` as `pair_by_cka`.
    """
    if hasattr(penalty, "wide") and hasattr(penalty, "penalty"):  # a StitchingMap (pairing imports no measure)
        penalty = penalty.wide()
    return _monotone_pairing(penalty, "stitch", "stitching penalty", minimise=True, teacher_blocks=teacher_blocks,
                             student_blocks=student_blocks, n_teacher_layers=n_teacher_layers,
                             n_student_layers=n_student_layers, strict=strict)


def make_pairing(strategy: str, n_teacher_layers: int, n_student_layers: int, *, scores: Any = None,
                 cka: Any = None, teacher_blocks: Sequence[int] | None = None,
                 student_blocks: Sequence[int] | None = None, stitching: Any = None, **options) -> LayerPairing:
    """Build a pairing by strategy name (for the CLI and reports), annotated with whatever CKA matrix and
    attribution scores are given, so every row of `to_frame()` carries score, CKA and attribution rank.
    `stitching`: the penalty matrix (or `StitchingMap`) the `stitch` strategy pairs by."""
    method = options.pop("method", None)
    builder = {"proportional": pair_proportional, "attribution": pair_by_attribution, "cka": pair_by_cka,
               "stitch": pair_by_stitching}.get(strategy)
    if builder is not None:
        import inspect

        given = {"teacher_blocks", "student_blocks", "n_teacher_layers", "n_student_layers", "method"}
        valid = sorted(n for n, p in inspect.signature(builder).parameters.items()
                       if p.kind is p.KEYWORD_ONLY and n not in given)
        bad = sorted(set(options) - set(valid))
        if bad:
            raise SemalignError(f"unknown option(s) {bad} for the {strategy} strategy; valid options: "
                                f"{', '.join(valid) or 'none'}")
    if strategy == "proportional":
        pairing = pair_proportional(n_teacher_layers, n_student_layers, **options)
    elif strategy == "attribution":
        if scores is None:
            raise SemalignError("the attribution strategy needs per-teacher-layer scores (scores=...)")
        pairing = pair_by_attribution(scores, n_teacher_layers, n_student_layers, method=method, **options)
    elif strategy == "cka":
        if cka is None:
            raise SemalignError("the cka strategy needs a [teacher, student] CKA matrix (cka=...)")
        pairing = pair_by_cka(cka, teacher_blocks=teacher_blocks, student_blocks=student_blocks,
                              n_teacher_layers=n_teacher_layers, n_student_layers=n_student_layers, **options)
    elif strategy == "stitch":
        if stitching is None:
            raise SemalignError("the stitch strategy needs a [teacher, student] stitching-penalty matrix (stitching=..., "
                                "e.g. stitching.stitching_map(teacher, student, fit, heldout))")
        pairing = pair_by_stitching(stitching, teacher_blocks=teacher_blocks, student_blocks=student_blocks,
                                    n_teacher_layers=n_teacher_layers, n_student_layers=n_student_layers, **options)
    else:
        raise SemalignError(f"unknown pairing strategy {strategy!r}; choose one of {ALL_STRATEGIES}")
    if cka is not None or scores is not None:
        pairing = pairing.annotate(cka=cka, scores=scores, teacher_blocks=teacher_blocks,
                                   student_blocks=student_blocks, method=method)
    return pairing
