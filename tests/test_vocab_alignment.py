"""Cross-tokenizer alignment against independent references: HF decoding for shared strings and token ends."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from semalign_lens.errors import SemalignError
from semalign_lens.vocab_alignment import (
    align_token_ends,
    align_vocabularies,
    aligned_positions,
    byte_coverage,
    coverage_report,
)
from semalign_lens.zoo import TOKENIZER_8K_DIR, resolve

TEXTS = [
    "def foo(x):\n    return x + 12\n",
    "class Ünïcode:  # naïve café — 日本語 😀\n\tpass\n\n\n",
    "    if a==b and c!=d:\n        print('%s: %d' % (name, 2024))",
    "x",
    "   leading spaces and trailing   ",
    "import os, sys\nfrom collections import OrderedDict as OD\n",
]


@pytest.fixture(scope="module")
def teacher_tok():
    return AutoTokenizer.from_pretrained(str(resolve("smollm2-135m")))


@pytest.fixture(scope="module")
def student_tok():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_8K_DIR))


def _decoded(tok, i: int) -> str | None:
    """Reference string of one token: HF's own decode, or None for specials and partial characters."""
    if i in tok.all_special_ids:
        return None
    s = tok.decode([i])
    return None if "\ufffd" in s or not s else s


def test_vocabulary_alignment_matches_hf_decoding(teacher_tok, student_tok):
    al = align_vocabularies(teacher_tok, student_tok)
    # every pair stands for one string (where HF decoding can show it)
    for t, s in zip(al.teacher_ids.tolist(), al.student_ids.tolist(), strict=True):
        dt, ds = _decoded(teacher_tok, t), _decoded(student_tok, s)
        if dt is not None or ds is not None:
            assert dt == ds
    # and every student token whose decoded string the teacher also has is paired
    teacher_strings = {}
    for i in range(len(teacher_tok)):
        d = _decoded(teacher_tok, i)
        if d is not None:
            teacher_strings.setdefault(d, i)
    paired = set(al.student_ids.tolist())
    missing = [i for i in range(len(student_tok))
               if (d := _decoded(student_tok, i)) is not None and d in teacher_strings and i not in paired]
    assert not missing
    assert al.teacher_ids.tolist() == sorted(al.teacher_ids.tolist())  # one common order: teacher ids
    assert 0.5 < al.student_coverage <= 1 and 0 < al.teacher_coverage < 0.5
    assert al.teacher_size == 49152 and al.student_size == 8192


def _reference_ends(text: str, tok) -> list[int | None]:
    """Character end of each token from decoding prefixes (None where the prefix ends inside a character)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = []
    for k in range(len(ids)):
        prefix = tok.decode(ids[: k + 1])
        out.append(len(prefix) if text.startswith(prefix) and "\ufffd" not in prefix else None)
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_aligned_positions_match_a_prefix_decoding_reimplementation(text, teacher_tok, student_tok):
    got = aligned_positions(text, teacher_tok, student_tok)
    t_ends, s_ends = _reference_ends(text, teacher_tok), _reference_ends(text, student_tok)
    last_t = {e: k for k, e in enumerate(t_ends) if e}
    last_s = {e: k for k, e in enumerate(s_ends) if e}
    shared = sorted(last_t.keys() & last_s.keys())
    assert got.char_end.tolist() == shared
    assert got.teacher.tolist() == [last_t[e] for e in shared]
    assert got.student.tolist() == [last_s[e] for e in shared]
    assert shared[-1] == len(text)  # the end of a text always aligns


def test_sentencepiece_markers_are_normalised(teacher_tok):
    vocab = {"<unk>": 0, "▁def": 1, "<0x0A>": 2, "▁return": 3, "x": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    sp = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    al = align_vocabularies(teacher_tok, sp)
    pairs = {sp.convert_ids_to_tokens(s): teacher_tok.convert_ids_to_tokens(t)
             for t, s in zip(al.teacher_ids.tolist(), al.student_ids.tolist(), strict=True)}
    assert pairs == {"▁def": "Ġdef", "<0x0A>": "Ċ", "▁return": "Ġreturn", "x": "x"}


def test_tiny_intersection_is_refused_with_its_coverage(teacher_tok):
    vocab = {"<unk>": 0, **{f"zzqx{i}": i + 1 for i in range(300)}, "def": 301}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tiny = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    al = align_vocabularies(teacher_tok, tiny, "smollm2", "tiny")
    assert al.n_shared == 1
    with pytest.raises(SemalignError, match=r"share too few tokens.*1 shared tokens.*0\.3% of tiny"):
        al.check_usable(d_model=576)


def test_text_without_aligned_positions_is_refused(teacher_tok, student_tok):
    with pytest.raises(SemalignError, match="no positions of the text '' align"):
        aligned_positions("", teacher_tok, student_tok)


def test_align_token_ends_takes_the_last_of_equal_ends():
    assert align_token_ends([0, 3, 3, 5], [3, 5, 5]) == ([2, 3], [0, 2], [3, 5])
    assert align_token_ends([2, 4], [2, 4], boundaries={4}) == ([1], [1], [4])


def test_byte_coverage_and_report(teacher_tok, student_tok):
    al = align_vocabularies(teacher_tok, student_tok)
    assert byte_coverage(student_tok, torch.arange(len(student_tok)), TEXTS) == 1.0
    assert byte_coverage(student_tok, torch.tensor([], dtype=torch.long), TEXTS) == 0.0
    report = coverage_report(al, teacher_tok, student_tok, TEXTS)
    assert 0 < report["student_byte_coverage"] <= 1 and 0 < report["aligned_share_teacher"] <= 1
    n_t = sum(len(teacher_tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    n_a = sum(aligned_positions(t, teacher_tok, student_tok).n_aligned for t in TEXTS)
    assert report["aligned_share_teacher"] == pytest.approx(n_a / n_t)
