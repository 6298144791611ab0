"""A teacher and a student that can be paired: one vocabulary (or, with `vocab="intersection"`, enough shared token
strings), one loading mode, the same document start; `ModelPair` holds two models that passed, and the source
checks (`check_pair_sources`) refuse a pair from its files before anything loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..core.checks import require_hooked
from ..core.errors import SemalignError
from .inspect import describe, tokenizer_problem
from .load import (
    _resolve_source,
    config_depth,
    depth_problem,
    inspect_source,
    load_model,
    model_mode,
    model_name,
    vocab_rows,
)


def document_start_mismatch(teacher, student) -> str | None:
    """A shared-vocabulary pair reads one token batch with both models: both must start documents alike."""
    from ..data.tokens import document_start

    t, s = document_start(teacher.tokenizer), document_start(student.tokenizer)
    if t == s:
        return None
    shown = [("nothing" if i is None else repr(m.tokenizer.convert_ids_to_tokens(i))) for i, m in
             ((t, teacher), (s, student))]
    return (f"teacher {model_name(teacher)} starts documents with {shown[0]} and student {model_name(student)} with "
            f"{shown[1]}; declare one separator for both: data.document_start = '<token>' in the align config")


def intersection_alignment(teacher, student, teacher_name: str | None = None, student_name: str | None = None):
    """The `VocabAlignment` of two loaded models' tokenizers, refused when too small for an intersection basis
    of the wider model (`VocabAlignment.check_usable`)."""
    from ..data.vocab import align_vocabularies

    alignment = align_vocabularies(teacher.tokenizer, student.tokenizer, teacher_name or model_name(teacher),
                                   student_name or model_name(student))
    alignment.check_usable(max(teacher.cfg.d_model, student.cfg.d_model))
    return alignment


def _intersection_problem(teacher, student, teacher_name: str, student_name: str) -> str | None:
    try:
        intersection_alignment(teacher, student, teacher_name, student_name)
    except SemalignError as err:
        return str(err)
    return None


def _vocab_size_message(t_name: str, t_size: int, s_name: str, s_size: int) -> str:
    return (f"vocabularies differ in size: teacher {t_name} has {t_size} tokens, student {s_name} has "
            f"{s_size}; SemAlign needs one shared vocabulary (same tokenizer)")


def tokenizer_mismatch(t_tok, s_tok, t_name: str, s_name: str, t_rows: int, s_rows: int) -> str | None:
    """None when two tokenizers number the same tokens the same way over their models' real rows (`vocab_rows`:
    `t_rows`, `s_rows`), else a message naming the difference. Head rows beyond the tokenizer do not count."""
    if t_rows != s_rows:
        return _vocab_size_message(t_name, t_rows, s_name, s_rows)
    t_vocab = {i: t for t, i in t_tok.get_vocab().items()}
    s_vocab = {i: t for t, i in s_tok.get_vocab().items()}
    differing = [i for i in range(t_rows) if t_vocab.get(i) != s_vocab.get(i)]
    if differing:
        shown = ", ".join(f"id {i}: {t_vocab.get(i)!r} vs {s_vocab.get(i)!r}" for i in differing[:5])
        return (f"vocabularies of teacher {t_name} and student {s_name} (both {t_rows} tokens) differ at "
                f"{len(differing)} ids, first: {shown}; use models that share one tokenizer")
    return None


def _source_tokenizer(source: Any):
    """The tokenizer in a source's directory where it is there to read without converting or downloading
    anything, else None."""
    try:
        _, path = _resolve_source(source, fetch=False)
        if path is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception:  # noqa: BLE001 - the full load says what is wrong; here we only look cheaply
        return None


def _sources_vocab_problem(teacher: Any, student: Any, facts: list[tuple]) -> str | None:
    """`tokenizer_mismatch` of two sources before they load, where their heads differ in size and both
    tokenizers can be read (`facts`: (name, depth, head rows) per source); None otherwise."""
    (t_name, _, v_t), (s_name, _, v_s) = facts
    if v_t is None or v_s is None or v_t == v_s:
        return None
    toks = [getattr(src, "tokenizer", None) if not isinstance(src, (str, os.PathLike)) else _source_tokenizer(src)
            for src in (teacher, student)]
    if any(tok is None for tok in toks):
        return None
    return tokenizer_mismatch(toks[0], toks[1], t_name, s_name, min(v_t, len(toks[0])), min(v_s, len(toks[1])))


def sources_differ_in_vocabulary(teacher: Any, student: Any) -> bool:
    """Whether two sources' tokenizers differ, from their directories without loading a model (heads of one
    size are taken as one tokenizer here; `vocabulary_mismatch` checks the loaded models)."""
    facts = []
    for source in (teacher, student):
        size = (inspect_source(source) or {}).get("vocab_size")
        facts.append((str(source), None, size if isinstance(size, int) else None))
    return _sources_vocab_problem(teacher, student, facts) is not None


def check_pair_sources(teacher: Any, student: Any, vocab: str = "shared") -> tuple[int | None, int | None]:
    """Before anything loads: check both sources (`inspect_source`; loaded models must be hooked) and, where
    their configs tell it cheaply, that they share a vocabulary (unless `vocab="intersection"`) and the teacher
    is at least as deep as the student. Returns both depths (None where unknown until the model loads).

    Heads of different sizes alone are no mismatch (a padded head, `vocab_rows`): only then are both tokenizers
    read and compared; where one cannot be read yet the comparison waits for the loaded models."""
    if vocab not in VOCAB_MODES:
        raise SemalignError(f"vocab must be one of {VOCAB_MODES}, got {vocab!r}")
    facts = []
    for role, source in (("teacher", teacher), ("student", student)):
        if isinstance(source, (str, os.PathLike)):
            config = inspect_source(source) or {}
            size = config.get("vocab_size")
            facts.append((str(source), config_depth(config), size if isinstance(size, int) else None))
        else:
            require_hooked(source, role)
            facts.append((model_name(source), getattr(source.cfg, "n_layers", None),
                          getattr(source.cfg, "d_vocab", None)))
    (t_name, n_t, v_t), (s_name, n_s, v_s) = facts
    if vocab == "shared" and (problem := _sources_vocab_problem(teacher, student, facts)):
        raise SemalignError(problem + '; or pair them through their shared token strings (vocab="intersection")')
    problem = depth_problem(n_t, n_s, t_name, s_name)
    if problem:
        raise SemalignError(problem)
    return n_t, n_s


def vocabulary_mismatch(teacher, student) -> str | None:
    """None when the two models share a vocabulary (their tokenizers over their real rows, `vocab_rows`; a
    padded head is no difference), else a message naming the difference."""
    require_hooked(teacher, "teacher")
    require_hooked(student, "student")
    return tokenizer_mismatch(teacher.tokenizer, student.tokenizer, model_name(teacher), model_name(student),
                              vocab_rows(teacher), vocab_rows(student))


VOCAB_MODES = ("shared", "intersection")


@dataclass


class ModelPair:
    """A teacher and a student in one loading mode, the teacher at least as deep as the student (checked on
    construction; both must be hooked models from `load_model`).

    `vocab="shared"` (default) needs one shared vocabulary and refuses two tokenizers, naming both.
    `vocab="intersection"` accepts different tokenizers: `alignment` then holds the tokens whose strings
    both vocabularies share (`vocab_alignment`), and a tiny intersection is refused with its coverage.
    """

    teacher: Any
    student: Any
    vocab: str = "shared"
    alignment: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.vocab not in VOCAB_MODES:
            raise SemalignError(f"vocab must be one of {VOCAB_MODES}, got {self.vocab!r}")
        for model, role in ((self.teacher, "teacher"), (self.student, "student")):
            require_hooked(model, role)
            if (problem := tokenizer_problem(model, f"{role} {model_name(model)}")) is not None:
                raise SemalignError(problem)
        problem = vocabulary_mismatch(self.teacher, self.student)
        if problem and self.vocab == "shared":
            raise SemalignError(problem + '; or pass vocab="intersection" to pair them through their shared '
                                "token strings")
        if self.vocab == "shared" and (problem := document_start_mismatch(self.teacher, self.student)):
            raise SemalignError(problem)
        if self.vocab == "intersection":
            self.alignment = intersection_alignment(self.teacher, self.student)
        if model_mode(self.teacher) != model_mode(self.student):
            raise SemalignError(f"teacher is in {model_mode(self.teacher)} mode and student in "
                                f"{model_mode(self.student)} mode; load both with the same mode")
        problem = depth_problem(getattr(self.teacher.cfg, "n_layers", None), getattr(self.student.cfg, "n_layers", None),
                                model_name(self.teacher), model_name(self.student))
        if problem:
            raise SemalignError(problem)

    @classmethod
    def load(cls, teacher_source: Any, student_source: Any, vocab: str = "shared", **kwargs) -> ModelPair:
        """Both models by source (`load_model(..., **kwargs)`), paired with `vocab`."""
        return cls(load_model(teacher_source, **kwargs), load_model(student_source, **kwargs), vocab=vocab)

    @property
    def tokenizer(self):
        """The one tokenizer of a shared-vocabulary pair (an intersection pair has two: use each model's)."""
        if self.alignment is not None:
            raise SemalignError("this pair has two tokenizers (vocab='intersection'); use pair.teacher.tokenizer "
                                "and pair.student.tokenizer")
        return self.teacher.tokenizer

    def describe(self):
        import pandas as pd

        frame = pd.DataFrame([dict(role="teacher", **describe(self.teacher)),
                              dict(role="student", **describe(self.student))])
        if self.alignment is not None:
            frame.attrs["vocab"] = self.alignment.summary()
        return frame
