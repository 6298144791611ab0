"""Cross-tokenizer alignment against independent references: HF decoding for shared strings and token ends."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.vocab import (
    align_token_ends,
    align_vocabularies,
    aligned_positions,
    byte_coverage,
    coverage_report,
)
from semalign_lens.models.zoo import STUDENT_8K_DIR, resolve

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
    return AutoTokenizer.from_pretrained(str(STUDENT_8K_DIR))


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


def _linear_cka(x, y) -> float:
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((x.T @ y).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_aligned_stacks_match_hf_hidden_states_at_reference_positions():
    """Two students with different tokenizers: our aligned CKA grid against HF hidden states picked at the
    positions of the prefix-decoding reimplementation, and a by-hand linear CKA."""
    from transformers import AutoModelForCausalLM

    from semalign_lens.lens.aligned import aligned_stacks
    from semalign_lens.lens.similarity import cka_matrix
    from semalign_lens.models.load import load_model
    from semalign_lens.models.zoo import STUDENT_8K_DIR, STUDENT_DIR

    a, b = load_model("stdlib-student"), load_model("stdlib-student-8k")
    texts = TEXTS[:3] + ["for i in range(10):\n    total += i * i  # squares\n"]
    got = aligned_stacks(a, b, texts)
    rows = {"a": [], "b": []}
    for label, folder, tok in (("a", STUDENT_DIR, a.tokenizer), ("b", STUDENT_8K_DIR, b.tokenizer)):
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        start = tok.convert_tokens_to_ids("<|endoftext|>")
        for text in texts:
            ends_a, ends_b = _reference_ends(text, a.tokenizer), _reference_ends(text, b.tokenizer)
            last_a = {e: k for k, e in enumerate(ends_a) if e}
            last_b = {e: k for k, e in enumerate(ends_b) if e}
            shared = sorted(last_a.keys() & last_b.keys())
            pos = [(last_a if label == "a" else last_b)[e] + 1 for e in shared]  # +1: the doc-start token
            ids = torch.tensor([[start, *tok(text, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                hidden = hf(input_ids=ids, output_hidden_states=True).hidden_states
            rows[label].append(torch.stack([h[0, pos] for h in hidden[:-1]]))  # HF's last entry is normed
    ref_a, ref_b = torch.cat(rows["a"], 1), torch.cat(rows["b"], 1)
    assert got.n_aligned == ref_a.shape[1] == ref_b.shape[1]
    for layer in range(len(ref_a)):
        assert torch.allclose(got.teacher[layer], ref_a[layer], atol=1e-3, rtol=1e-3)
        assert torch.allclose(got.student[layer], ref_b[layer], atol=1e-3, rtol=1e-3)
    grid = cka_matrix(got.teacher, got.student)
    assert float(grid[3, 2]) == pytest.approx(_linear_cka(ref_a[3], ref_b[2]), abs=1e-4)
    n_a = sum(len(a.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert got.share[0] == pytest.approx(got.n_aligned / n_a) and 0.5 < got.share[1] <= 1


def test_pairing_report_runs_on_two_tokenizers_and_refuses_them_by_default(tmp_path, capsys):
    """`semalign report pairing --vocab intersection` on the two shipped students (49152 vs 8192 tokens): the
    page states the coverage and the aligned positions; without --vocab the pair is refused in one line."""
    from semalign_lens.cli import main

    out = tmp_path / "p.html"
    base = ["report", "pairing", "stdlib-student", "stdlib-student-8k", "--methods", "grad_x_act", "--prompts", "4",
            "--out", str(out), "--no-progress"]
    assert main(base) == 2
    assert 'vocab="intersection"' in capsys.readouterr().err and not out.exists()
    assert main([*base, "--vocab", "intersection"]) == 0
    html = out.read_text()
    assert "Two tokenizers (vocab=&#x27;intersection&#x27;)" in html or "Two tokenizers (vocab='intersection')" in html
    assert "aligned positions" in html and "shared tokens" in html


def test_pair_sources_check_vocab_sizes_unless_asked_for_the_intersection():
    from semalign_lens.models.pair import check_pair_sources

    with pytest.raises(SemalignError, match=r"has 49152 tokens, student stdlib-student-8k has 8192.*intersection"):
        check_pair_sources("stdlib-student", "stdlib-student-8k")
    assert check_pair_sources("stdlib-student", "stdlib-student-8k", vocab="intersection") == (6, 6)
    with pytest.raises(SemalignError, match="vocab must be one of"):
        check_pair_sources("stdlib-student", "stdlib-student-8k", vocab="union")
