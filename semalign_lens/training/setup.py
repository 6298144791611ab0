"""Resolving a run's inputs before training: the layer pairing and the teacher->student TransferMap, and what
the main process of a run of several sends the others (`MainSetup`).

Everything here raises `SemalignError` on input that does not fit the models, so a bad pairing or map is
refused before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import SemalignError
from ..lens.pairing import LayerPair, LayerPairing, layer_of, make_pairing
from .config import AlignConfig


def _pairs_from(pairing: Any) -> list[LayerPair]:
    """Pairs from a `LayerPairing`, a list of `LayerPair`s (or objects with their fields), or rows
    [s, t] / [s, low, high, weight] whose layers are block indices or hook names (`pairing.layer_of`). A row
    with weight 0 (or low == high) is the exact pair on `low`, weight 1 the exact pair on `high`; anything else
    must interpolate adjacent layers (`LayerPair` checks)."""
    rows = getattr(pairing, "pairs", pairing)
    out = []
    for row in rows:
        if isinstance(row, LayerPair):
            out.append(row)
            continue
        if hasattr(row, "student_layer"):
            row, reason = [row.student_layer, row.teacher_low, row.teacher_high, getattr(row, "weight", 0.0)], \
                str(getattr(row, "reason", ""))
        else:
            row, reason = list(row), "explicit"
            if len(row) not in (2, 4):
                raise SemalignError(f"pairing row {row} must be [student_layer, teacher_layer] or "
                                    "[student_layer, teacher_low, teacher_high, weight]")
            if len(row) == 2:
                row = [row[0], row[1], row[1], 0.0]
            row = [*(layer_of(v) for v in row[:3]), row[3]]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row) \
            and all(float(v).is_integer() for v in row[:3])  # 9.0 from a JSON file is layer 9
        if not numbers:
            raise SemalignError(f"pairing row {row} must hold integer layer indices and a numeric weight, e.g. "
                                "[1, 3] or [1, 3, 4, 0.25]")
        s, low, high, weight = int(row[0]), int(row[1]), int(row[2]), float(row[3])
        if not 0.0 <= weight <= 1.0 or low > high:
            raise SemalignError(f"pairing row {row} needs teacher_low <= teacher_high and a weight in [0, 1]")
        if weight == 0.0 or low == high:
            high, weight = low, 0.0
        elif weight == 1.0:
            low, weight = high, 0.0
        out.append(LayerPair(s, low, high, weight, reason))
    return out


def check_pairs(pairs: list[LayerPair], n_teacher: int, n_student: int, teacher: str, student: str) -> None:
    """Refuse pairs that do not fit the models, before anything else runs."""
    if not pairs:
        raise SemalignError("the pairing has no pairs; pair at least one student layer with a teacher layer")
    seen = set()
    for p in pairs:
        if not 0 <= p.student_layer < n_student:
            raise SemalignError(f"pairing uses student layer {p.student_layer}, but student {student} has {n_student} "
                                f"blocks (valid 0..{n_student - 1}); build the pairing for these models")
        for t in (p.teacher_low, p.teacher_high):
            if not 0 <= t < n_teacher:
                raise SemalignError(f"pairing uses teacher layer {t}, but teacher {teacher} has {n_teacher} blocks "
                                    f"(valid 0..{n_teacher - 1}); build the pairing for these models")
        if p.student_layer in seen:
            raise SemalignError(f"student layer {p.student_layer} is paired twice; SemAlign pairs exactly one teacher "
                                "target with each student layer")
        seen.add(p.student_layer)


def resolve_pairing(cfg: AlignConfig, given: Any, n_teacher: int, n_student: int,
                    cka: torch.Tensor | None = None) -> list[LayerPair]:
    """Pairs from the API argument, or the config (explicit rows, a saved LayerPairing, or a strategy).

    `cka` [teacher blocks, student blocks] is needed by the `cka` strategy (computed on the diagnostic batch).
    """
    pc = cfg.pairing
    student_layers = None if pc.student_layers is None else [layer_of(v) for v in pc.student_layers]
    if given is not None:
        obj = given
    elif pc.pairs is not None:
        obj = pc.pairs
    elif pc.path:
        obj = LayerPairing.load(pc.path)
    elif pc.strategy == "cka":
        obj = make_pairing("cka", n_teacher, n_student, cka=cka.numpy())
    else:
        obj = make_pairing("proportional", n_teacher, n_student, interpolate=pc.interpolate,
                           student_layers=student_layers)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(n_teacher, n_student)
    pairs = _pairs_from(obj)
    if student_layers is not None and given is None and pc.pairs is None:
        pairs = [p for p in pairs if p.student_layer in set(student_layers)]
    return pairs


def resolve_transfer(cfg: AlignConfig, given: Any, teacher, student, alignment=None):
    """The TransferMap from the API argument, a saved file, or built from both models' semantic bases.

    Built maps leave out token ids with an all-zero head row in either model (`semantics.live_head_tokens`);
    the excluded ids are listed in the run's provenance (`transfer_excluded_ids`). With a cross-tokenizer
    pair's `alignment` the bases are the intersection bases (`semantics.intersection_bases`), and a given map
    must have been built on that same intersection.
    """
    from ..lens.semantics import SemanticBasis, TransferMap, intersection_bases, live_head_tokens

    excluded = torch.empty(0, dtype=torch.long)
    if given is not None:
        transfer = given
    elif cfg.transfer.path:
        transfer = TransferMap.load(cfg.transfer.path)
    elif alignment is not None:
        transfer = TransferMap(*intersection_bases(teacher, student, alignment,
                                                   fold_final_norm=cfg.transfer.fold_final_norm),
                               kind=cfg.transfer.kind)
    else:
        tokens, excluded = live_head_tokens(teacher, student)
        kw = {"fold_final_norm": cfg.transfer.fold_final_norm, "tokens": tokens}
        transfer = TransferMap(SemanticBasis.from_model(teacher, **kw), SemanticBasis.from_model(student, **kw),
                               kind=cfg.transfer.kind)
    built_on = (getattr(transfer, "teacher", None) or {}).get("vocab_key", "")
    want = alignment.key if alignment is not None else ""
    if isinstance(getattr(transfer, "teacher", None), dict) and built_on != want:
        built = "an intersection of two vocabularies" if built_on else "the full vocabulary"
        pair = ("a cross-tokenizer pair (this one's intersection)" if want else "one shared vocabulary")
        raise SemalignError(f"the transfer map was built on {built}, but this run trains {pair}; leave "
                            "transfer.path unset to build the map for these models, or rebuild it from their bases "
                            "(semantics.intersection_bases for a cross-tokenizer pair)")
    matrix = getattr(transfer, "matrix", None)
    want = (student.cfg.d_model, teacher.cfg.d_model)
    if matrix is None or tuple(matrix.shape) != want or not callable(transfer):
        got = None if matrix is None else tuple(matrix.shape)
        raise SemalignError(f"the transfer map has shape {got}, but these models need [d_S, d_T] = {list(want)}; "
                            "build it with TransferMap(SemanticBasis.from_model(teacher), "
                            "SemanticBasis.from_model(student), kind=...)")
    if not torch.isfinite(matrix).all():
        raise SemalignError("the transfer map has NaN/inf entries; check both models' LM heads (an all-zero row "
                            "gives an undefined basis direction: build the bases with tokens= that leave it out)")
    return transfer, excluded.tolist()


@dataclass
class TeacherFacts:
    """What the trainer reads of the teacher besides its forwards: a process that has not loaded it trains with
    these (ours; `processes.teacher_everywhere`)."""

    name: str
    provenance: Any
    blocks: int
    width: int
    head_rows: int
    vocab_rows: int
    dtype: str

    @classmethod
    def of(cls, teacher) -> TeacherFacts:
        """The facts of a loaded teacher (a bridge from `load_model`)."""
        from ..models.load import head_rows, model_name, vocab_rows

        return cls(model_name(teacher), getattr(teacher, "provenance", None), teacher.cfg.n_layers,
                   teacher.cfg.d_model, head_rows(teacher), vocab_rows(teacher),
                   str(next(teacher.parameters()).dtype).removeprefix("torch."))


@dataclass
class MainSetup:
    """What the main process of a run of several resolves with the teacher and sends the others
    (`processes.from_main`; ours): they take its checks, pairing, map and fingerprint instead of repeating them,
    so the semantic bases' pinv runs once, and a process that runs no teacher forward never loads the teacher.
    `rows`: the (teacher, student) real vocabulary rows the output terms read (None: the whole head)."""

    teacher: TeacherFacts
    teacher_hash: str
    rows: tuple[int | None, int | None]
    alignment: Any
    pairs: list[LayerPair]
    transfer: Any
    excluded: list[int]
