"""Cross-tokenizer alignment: which tokens two vocabularies share, and which positions two tokenizations share.

SemAlign, Seeking and LaTen need one shared vocabulary. Vocabulary-defined semantics extends to two
tokenizers through the *strings* they share (our extension, not the paper's):

- **Vocabulary alignment** (`align_vocabularies`). A teacher token and a student token correspond when they
  stand for the same bytes (`data.text_bytes.token_bytes`: byte-level characters become their bytes,
  sentencepiece's `▁` a space and `<0xNN>` the byte). Special tokens are not text and never correspond. The
  shared tokens come in one common order (the teacher's id order), so the i-th shared column of either model's
  basis means the same string. Where one vocabulary holds the same bytes twice, the lowest id is kept.
- **Coverage**: the share of each vocabulary's text tokens with a counterpart (`VocabAlignment`), and the
  share of a text's bytes that each tokenizer spells with shared tokens (`byte_coverage`, on held-out text).
- **Position alignment** (`aligned_positions`). Two tokenizations of one text split it at different places.
  A position is aligned when both tokenizations end a token at the same character offset: there both models
  have read exactly the same prefix, so their states and next-token distributions describe the same context.
  Of the cross-tokenizer distillation methods, DSKD learns a soft token alignment (cross-model attention),
  MinED pairs tokens by minimum edit distance and ULD only truncates both sequences to one length; the
  same-prefix rule needs no learned part and no heuristic, and is exact where it applies. A boundary inside
  a multi-byte character is no character offset and never aligns. Where several tokens end at one offset
  (a zero-width special token), the last one is the aligned position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from ..core.errors import SemalignError
from ..core.hashing import sha256_hex, tensor_bytes
from .text_bytes import token_bytes

# Below this many shared tokens the intersection is refused: an output-side basis restricted to the shared
# tokens is the pinv of those rows of the head, which needs at least d_model rows, and a pair sharing under
# a tenth of the smaller vocabulary has too little common ground to call "the same semantic directions".
MIN_SHARED_FRACTION = 0.10


@dataclass(frozen=True)
class VocabAlignment:
    """The tokens a teacher and a student vocabulary share, in one common order (teacher id order)."""

    teacher_ids: Int[Tensor, " n"]
    student_ids: Int[Tensor, " n"]
    teacher_size: int
    student_size: int
    teacher_text_tokens: int  # vocabulary entries that are text (not special)
    student_text_tokens: int
    teacher: str = "teacher"
    student: str = "student"

    @property
    def n_shared(self) -> int:
        return int(self.teacher_ids.numel())

    @property
    def teacher_coverage(self) -> float:
        """Share of the teacher's text tokens that have an exact counterpart in the student's vocabulary."""
        return self.n_shared / max(1, self.teacher_text_tokens)

    @property
    def student_coverage(self) -> float:
        return self.n_shared / max(1, self.student_text_tokens)

    @property
    def key(self) -> str:
        """sha256 of the id pairs: what a basis or map built on this intersection records."""
        return sha256_hex(f"{self.teacher_size}:{self.student_size}",
                          tensor_bytes(torch.stack([self.teacher_ids, self.student_ids])))

    def summary(self) -> str:
        return (f"{self.n_shared} shared tokens: {self.teacher_coverage:.1%} of {self.teacher}'s "
                f"{self.teacher_text_tokens} text tokens, {self.student_coverage:.1%} of {self.student}'s "
                f"{self.student_text_tokens}")

    def describe(self) -> dict:
        return {"teacher": self.teacher, "student": self.student, "teacher_vocab": self.teacher_size,
                "student_vocab": self.student_size, "shared_tokens": self.n_shared,
                "teacher_coverage": self.teacher_coverage, "student_coverage": self.student_coverage,
                "key": self.key}

    def check_usable(self, d_model: int = 0) -> None:
        """Refuse an empty or tiny intersection (below `MIN_SHARED_FRACTION` of the smaller vocabulary, or
        below `d_model` tokens, the fewest a restricted pinv basis can have), stating the coverage."""
        smaller = min(self.teacher_text_tokens, self.student_text_tokens)
        need = max(int(MIN_SHARED_FRACTION * smaller), d_model, 1)
        if self.n_shared < need:
            raise SemalignError(
                f"the vocabularies of {self.teacher} and {self.student} share too few tokens for an intersection "
                f"basis: {self.summary()}; at least {need} are needed ({MIN_SHARED_FRACTION:.0%} of the smaller "
                f"vocabulary and no fewer than d_model={d_model}); choose a student whose tokenizer overlaps more")


def _first_ids(pieces: Sequence[bytes | None]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for i, b in enumerate(pieces):
        if b:  # specials (None) and zero-byte entries are not text
            out.setdefault(b, i)
    return out


def align_vocabularies(teacher_tokenizer, student_tokenizer, teacher: str = "teacher",
                       student: str = "student") -> VocabAlignment:
    """Map teacher and student tokens that stand for the same bytes (see the module docstring)."""
    t_pieces, s_pieces = token_bytes(teacher_tokenizer), token_bytes(student_tokenizer)
    t_first, s_first = _first_ids(t_pieces), _first_ids(s_pieces)
    pairs = sorted((t_id, s_first[b]) for b, t_id in t_first.items() if b in s_first)
    t_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    s_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return VocabAlignment(t_ids, s_ids, len(t_pieces), len(s_pieces), len(t_first), len(s_first), teacher, student)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def byte_coverage(tokenizer, shared_ids: Int[Tensor, " n"], texts: Sequence[str]) -> float:
    """Share of the UTF-8 bytes of `texts` that `tokenizer` spells with tokens in `shared_ids`."""
    pieces = token_bytes(tokenizer)
    shared = set(shared_ids.tolist())
    total = covered = 0
    for text in texts:
        for i in _encode(tokenizer, text):
            n = len(pieces[i] or b"")
            total += n
            covered += n if i in shared else 0
    return covered / total if total else float("nan")


def coverage_report(alignment: VocabAlignment, teacher_tokenizer, student_tokenizer,
                    texts: Sequence[str]) -> dict:
    """`alignment.describe()` plus the byte coverage of both tokenizers and the aligned-position share."""
    out = alignment.describe()
    out["teacher_byte_coverage"] = byte_coverage(teacher_tokenizer, alignment.teacher_ids, texts)
    out["student_byte_coverage"] = byte_coverage(student_tokenizer, alignment.student_ids, texts)
    n_t = n_s = n_a = 0
    for text in texts:
        if not text:
            continue
        pos = aligned_positions(text, teacher_tokenizer, student_tokenizer)
        n_t, n_s, n_a = n_t + pos.n_teacher, n_s + pos.n_student, n_a + pos.n_aligned
    out["aligned_share_teacher"] = n_a / n_t if n_t else float("nan")
    out["aligned_share_student"] = n_a / n_s if n_s else float("nan")
    return out


# ------------------------------------------------------------------------------------------ positions
def byte_ends(ids: Sequence[int], tokenizer) -> list[int]:
    """Byte offset at which each token of `ids` ends in the text the tokens spell (specials add 0 bytes)."""
    pieces = token_bytes(tokenizer)
    ends, at = [], 0
    for i in ids:
        at += len(pieces[i] or b"")
        ends.append(at)
    return ends


def spelled(ids: Sequence[int], tokenizer) -> bytes:
    pieces = token_bytes(tokenizer)
    return b"".join(pieces[i] or b"" for i in ids)


def char_boundaries(data: bytes) -> set[int]:
    """Byte offsets in `data` that start a character (or end the text): UTF-8 non-continuation bytes."""
    return {k for k, b in enumerate(data) if b & 0xC0 != 0x80} | {len(data)}


@dataclass(frozen=True)
class PositionAlignment:
    """Aligned positions of two tokenizations of one text: `teacher[k]` and `student[k]` both end at
    character offset `char_end[k]`."""

    teacher: Int[Tensor, " n"]
    student: Int[Tensor, " n"]
    char_end: Int[Tensor, " n"]
    n_teacher: int
    n_student: int

    @property
    def n_aligned(self) -> int:
        return int(self.teacher.numel())

    @property
    def share(self) -> tuple[float, float]:
        """(aligned / teacher positions, aligned / student positions)."""
        return self.n_aligned / max(1, self.n_teacher), self.n_aligned / max(1, self.n_student)


def ends_in_text(ids: list[int], tokenizer, data: bytes, which: str, text: str) -> list[int]:
    got = spelled(ids, tokenizer)
    ends = byte_ends(ids, tokenizer)
    if got == data:
        return ends
    if got == b" " + data:  # sentencepiece's dummy prefix: a space the text does not have
        return [max(0, e - 1) for e in ends]
    raise SemalignError(f"the {which} tokenizer does not spell the text back byte for byte (it normalises it: "
                        f"{got[:40]!r} vs {data[:40]!r}); position alignment needs tokenizers that keep the text "
                        f"as it is, text {text[:40]!r}")


def align_token_ends(teacher_ends: Sequence[int], student_ends: Sequence[int],
                     boundaries: set[int] | None = None) -> tuple[list[int], list[int], list[int]]:
    """(teacher positions, student positions, offsets) where both sequences end a token at the same offset.

    `boundaries` (optional) limits the offsets to character boundaries. Of several positions ending at one
    offset, the last is taken.
    """
    last_t = {e: k for k, e in enumerate(teacher_ends)}
    last_s = {e: k for k, e in enumerate(student_ends)}
    offsets = sorted(e for e in last_t.keys() & last_s.keys() if boundaries is None or e in boundaries)
    return [last_t[e] for e in offsets], [last_s[e] for e in offsets], offsets


def aligned_positions(text: str, teacher_tokenizer, student_tokenizer) -> PositionAlignment:
    """Positions of `text`'s two tokenizations (no special tokens added) that end at one character offset."""
    data = text.encode("utf-8")
    t_ids, s_ids = _encode(teacher_tokenizer, text), _encode(student_tokenizer, text)
    t_ends = ends_in_text(t_ids, teacher_tokenizer, data, "teacher", text)
    s_ends = ends_in_text(s_ids, student_tokenizer, data, "student", text)
    t_pos, s_pos, offsets = align_token_ends(t_ends, s_ends, char_boundaries(data))
    offsets = [e for e in offsets if e > 0]  # a zero-width start is no token of the text
    if not offsets:
        first_t = teacher_tokenizer.convert_ids_to_tokens(t_ids[:3])
        first_s = student_tokenizer.convert_ids_to_tokens(s_ids[:3])
        raise SemalignError(f"no positions of the text {text[:40]!r} align: the teacher splits it as {first_t}..., "
                            f"the student as {first_s}..., and no token ends at the same character offset in "
                            "both; pass a longer text (a non-empty one always aligns at its end)")
    t_pos, s_pos = t_pos[-len(offsets):], s_pos[-len(offsets):]
    chars = [len(data[:e].decode("utf-8")) for e in offsets]
    return PositionAlignment(torch.tensor(t_pos), torch.tensor(s_pos), torch.tensor(chars), len(t_ids), len(s_ids))


def held_out_texts() -> list[str]:
    """The standard-library validation files: held out from both embedded students' training."""
    from . import corpus

    root = corpus.stdlib_root()
    return [corpus.read_text(p) for p in corpus.split_files(corpus.stdlib_files(root), root)[1]]


def held_out_coverage(teacher, student, teacher_name: str = "teacher", student_name: str = "student"):
    """`coverage_report` of two loaded models' tokenizers on `held_out_texts`, as a labelled pandas Series."""
    import pandas as pd

    alignment = align_vocabularies(teacher.tokenizer, student.tokenizer, teacher_name, student_name)
    r = coverage_report(alignment, teacher.tokenizer, student.tokenizer, held_out_texts())
    return pd.Series({
        "shared tokens": f"{r['shared_tokens']} (vocabularies {r['teacher_vocab']} and {r['student_vocab']})",
        f"{teacher_name} vocabulary with a counterpart": f"{r['teacher_coverage']:.1%}",
        f"{student_name} vocabulary with a counterpart": f"{r['student_coverage']:.1%}",
        f"text bytes {teacher_name} spells with shared tokens": f"{r['teacher_byte_coverage']:.1%}",
        f"text bytes {student_name} spells with shared tokens": f"{r['student_byte_coverage']:.1%}",
        f"{teacher_name} positions aligned": f"{r['aligned_share_teacher']:.1%}",
        f"{student_name} positions aligned": f"{r['aligned_share_student']:.1%}",
    })
