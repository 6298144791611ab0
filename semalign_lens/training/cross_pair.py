"""Training a student against a teacher with another tokenizer (`AlignConfig.vocab = "intersection"`).

The student's blocks stay what they are. Each block's text is tokenised again by the teacher (`TeacherView`),
and every student position where both tokenizations end a token at one character offset is paired with the
teacher's position there (`data.vocab.align_token_ends`, the rule `aligned_positions` documents: both
models have read the same prefix). The teacher's states and logits are then gathered into the student's
positions (`CrossTargets`), so the layer objectives, the diagnostics and CKA run unchanged on the aligned
positions, with every other position masked out. Output terms read the teacher's logits there through the
shared vocabulary (`shared_kl`) or without any mapping (`uld`); the student's own CE still reads every
position.

A block is cut from a token stream, so its first and last student tokens may be pieces of a multi-byte
character: the teacher reads the block's text from the first whole character to the last one. Special
tokens (the document start) are zero-width: the teacher reads its own token of the same name there, and a
special token with no counterpart in the teacher's vocabulary is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from ..core.errors import SemalignError
from ..data.text_bytes import token_bytes
from ..data.tokens import document_start
from ..data.vocab import align_token_ends, char_boundaries, ends_in_text
from ..models.residuals import ResidualStates


@dataclass
class TeacherView:
    """The teacher's tokenization of student blocks: `tokens` [n, T] (right-padded; padding is never aligned,
    and a causal model's earlier positions do not see it) and `index` [n, S], the teacher position aligned
    with each student position, -1 where none is."""

    tokens: Int[torch.Tensor, "n t_pos"]
    index: Int[torch.Tensor, "n s_pos"]

    @property
    def aligned(self) -> Bool[torch.Tensor, "n s_pos"]:
        return self.index >= 0

    def select(self, rows: torch.Tensor) -> TeacherView:
        return TeacherView(self.tokens[rows], self.index[rows])

    @property
    def share(self) -> float:
        """Share of the student's positions that are aligned."""
        return float(self.aligned.float().mean())


def _trim(data: bytes) -> tuple[int, int]:
    """(start, end) of the whole UTF-8 characters of `data`: continuation bytes at the start and an incomplete
    character at the end are left out (a block cut from a token stream may split one)."""
    start = 0
    while start < len(data) and data[start] & 0xC0 == 0x80:
        start += 1
    end = len(data)
    for cut in range(end, max(start, end - 4) - 1, -1):
        try:
            data[start:cut].decode("utf-8")
            return start, cut
        except UnicodeDecodeError:
            continue
    raise SemalignError(f"a training block's text is not UTF-8 ({data[start:start + 40]!r}...); the teacher can only "
                        "read text: train on UTF-8 text (data.source)")


def _teacher_row(ids: list[int], s_pieces, teacher_tokenizer, specials: dict[int, int]) -> tuple[list[int], list[int],
                                                                                                list[int], bytes]:
    """(teacher ids, teacher byte ends, student byte ends, the block's bytes) of one student block."""
    s_ends, t_ids, t_ends, parts = [], [], [], []
    at = 0
    segment: list[int] = []

    def flush():
        nonlocal segment
        data = b"".join(s_pieces[i] for i in segment)
        start, end = _trim(data)
        offset = at - len(data)
        if end > start:
            text = data[start:end].decode("utf-8")
            ids = teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
            ends = ends_in_text(ids, teacher_tokenizer, data[start:end], "teacher", text)
            t_ids.extend(ids)
            t_ends.extend(offset + start + e for e in ends)
        segment = []

    for i in ids:
        piece = s_pieces[i]
        if piece is None:  # a special token: zero-width, read by the teacher as its own token of that name
            flush()
            t_ids.append(specials[i])
            t_ends.append(at)
        else:
            segment.append(i)
            at += len(piece)
            parts.append(piece)
        s_ends.append(at)
    flush()
    return t_ids, t_ends, s_ends, b"".join(parts)


def _special_map(student_tokenizer, teacher_tokenizer, s_pieces) -> dict[int, int]:
    """Each student special token -> the teacher's token of that name (-1: none), the document start -> the
    teacher's document start."""
    t_vocab = teacher_tokenizer.get_vocab()
    s_names = {i: t for t, i in student_tokenizer.get_vocab().items()}
    out = {}
    for i, piece in enumerate(s_pieces):
        if piece is None and i in s_names:
            name = s_names[i]
            out[i] = t_vocab.get(name, -1)
    # a document starts with each model's own start token, whatever their names (Llama's <s>, GPT-2's <|endoftext|>)
    s_start, t_start = document_start(student_tokenizer), document_start(teacher_tokenizer)
    if s_start is not None and t_start is not None:
        out[s_start] = t_start
    return out


def teacher_view(tokens: Int[torch.Tensor, "n s_pos"], mask: Bool[torch.Tensor, "n s_pos"], student_tokenizer,
                 teacher_tokenizer) -> TeacherView:
    """Tokenise the text of each student block (its real positions) with the teacher; align positions."""
    s_pieces = token_bytes(student_tokenizer)
    specials = _special_map(student_tokenizer, teacher_tokenizer, s_pieces)
    rows, index = [], torch.full(tokens.shape, -1, dtype=torch.long)
    for r in range(tokens.shape[0]):
        where = mask[r].nonzero().flatten()
        ids = tokens[r, where].tolist()
        missing = sorted({i for i in ids if s_pieces[i] is None and specials.get(i, -1) < 0})
        if missing:
            names = student_tokenizer.convert_ids_to_tokens(missing)
            raise SemalignError(f"the student's special token(s) {names} have no token of the same name in the "
                                "teacher's vocabulary, so the teacher cannot read those blocks; train on text without "
                                "them (data.source) or add them to the teacher's tokenizer")
        t_ids, t_ends, s_ends, data = _teacher_row(ids, s_pieces, teacher_tokenizer, specials)
        t_pos, s_pos, _ = align_token_ends(t_ends, s_ends, char_boundaries(data))
        index[r, where[torch.tensor(s_pos, dtype=torch.long)]] = torch.tensor(t_pos, dtype=torch.long)
        rows.append(t_ids)
    if not bool((index >= 0).any()):
        raise SemalignError("no student position of the training blocks aligns with a teacher position; the two "
                            "tokenizers split this text nowhere at the same place (check data.source)")
    pad = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for r, t_ids in enumerate(rows):
        out[r, : len(t_ids)] = torch.tensor(t_ids, dtype=torch.long)
    return TeacherView(out, index)


def gather_positions(x: torch.Tensor, index: Int[torch.Tensor, "b s_pos"]) -> torch.Tensor:
    """x [b, t_pos, ...] taken at `index` [b, s_pos] (-1: position 0, masked out by the caller)."""
    idx = index.clamp(min=0).to(x.device)
    idx = idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, idx)


def teacher_to_student_ids(alignment, teacher_vocab: int) -> torch.Tensor:
    """[teacher_vocab]: the student id of each shared teacher token, -1 for the unshared ones (so a teacher
    top-1 outside the intersection never counts as agreement)."""
    out = torch.full((teacher_vocab,), -1, dtype=torch.long)
    out[alignment.teacher_ids] = alignment.student_ids
    return out


class CrossTargets:
    """Teacher targets of a cross-tokenizer pair: `inner` runs on the teacher's tokens of the batch's blocks,
    and its states and logits are gathered into the student's positions; `mask` marks the aligned ones."""

    def __init__(self, inner, view: TeacherView):
        self.inner, self.view = inner, view
        self.mode = inner.mode

    def __call__(self, tokens: torch.Tensor, index: torch.Tensor | None = None) -> ResidualStates:
        if index is None:
            raise SemalignError("cross-tokenizer targets are looked up by dataset index; pass the batch indices")
        view = self.view.select(index.cpu())
        positions = view.index.to(tokens.device)
        got = self.inner(view.tokens.to(tokens.device), index).map(lambda v: gather_positions(v, positions))
        got.logits = None if got.logits is None else gather_positions(got.logits, positions)
        got.mask = positions >= 0
        return got
