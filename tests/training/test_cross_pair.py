"""Training across two tokenizers (`training/cross_pair.py`) against independent references: each tokenizer's
own encoding, `vocab_alignment.aligned_positions` on the decoded text, and the teacher's plain HF forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch
from semalign_lens.data.vocab import aligned_positions
from semalign_lens.lens.semantics import SemanticBasis, TransferMap
from semalign_lens.models.plain import clean_copy
from semalign_lens.models.tiny import tiny_cross_pair
from semalign_lens.models.zoo import STUDENT_8K_DIR, resolve
from semalign_lens.training import Trainer, align, load_align_config
from semalign_lens.training.cross_pair import gather_positions, teacher_to_student_ids, teacher_view

TEXTS = [
    "def foo(x):\n    return x + 12\n",
    "class Ünïcode:  # naïve café — 日本語 😀\n\tpass\n\n\n",
    "    if a==b and c!=d:\n        print('%s: %d' % (name, 2024))",
    "import os, sys\nfrom collections import OrderedDict as OD\n",
]

DOC_START = "<|endoftext|>"  # both embedded tokenizers' document start (declared, and the 8k one's BOS)


@pytest.fixture(scope="module")
def real_toks():
    return (AutoTokenizer.from_pretrained(str(resolve("smollm2-135m"))),
            AutoTokenizer.from_pretrained(str(STUDENT_8K_DIR)))


@pytest.fixture(scope="module")
def cross_pair():
    return tiny_cross_pair(seed=0)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _blocks(tok, texts, doc_start: bool):
    """Right-padded student blocks of `texts` (optionally each after the document-start token)."""
    rows = [([tok.convert_tokens_to_ids(DOC_START)] if doc_start else []) + _ids(tok, t) for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), True
    return ids, mask


@pytest.mark.parametrize("doc_start", [False, True])
def test_teacher_view_matches_each_tokenizer_and_aligned_positions(real_toks, doc_start):
    teacher_tok, student_tok = real_toks
    ids, mask = _blocks(student_tok, TEXTS, doc_start)
    view = teacher_view(ids, mask, student_tok, teacher_tok)
    shift = int(doc_start)
    for r, text in enumerate(TEXTS):
        want_t = ([teacher_tok.convert_tokens_to_ids(DOC_START)] if doc_start else []) + _ids(teacher_tok, text)
        assert view.tokens[r, : len(want_t)].tolist() == want_t  # the teacher's own encoding of the text
        ref = aligned_positions(text, teacher_tok, student_tok)
        want = {s + shift: t + shift for s, t in zip(ref.student.tolist(), ref.teacher.tolist(), strict=True)}
        if doc_start:
            want[0] = 0  # both have read only the document start
        got = {s: int(t) for s, t in enumerate(view.index[r].tolist()) if t >= 0}
        assert got == want
    assert not view.aligned[~mask].any()  # padding never aligns


def test_block_cut_inside_a_character_starts_at_the_next_whole_one(real_toks):
    teacher_tok, student_tok = real_toks
    text = "日本語 means Japanese"
    full = _ids(student_tok, text)
    spell = next(k for k in range(1, len(full) + 1) if student_tok.decode(full[:k]) == "日")
    assert spell > 1  # the 8k BPE spells 日 with byte tokens
    cut = full[1:]  # the block starts on a continuation byte of 日
    view = teacher_view(torch.tensor([cut]), torch.ones(1, len(cut), dtype=torch.bool), student_tok, teacher_tok)
    want = _ids(teacher_tok, text[1:])  # the teacher reads from 本 on
    assert view.tokens[0, : len(want)].tolist() == want
    ref = aligned_positions(text[1:], teacher_tok, student_tok)
    offset = spell - 1  # the block's tokens of the partial 日
    got = {s: int(t) for s, t in enumerate(view.index[0].tolist()) if t >= 0}
    assert got == {s + offset: t for s, t in zip(ref.student.tolist(), ref.teacher.tolist(), strict=True)}


def test_one_tokenizer_gives_the_identity_view(real_toks):
    _, student_tok = real_toks
    ids, mask = _blocks(student_tok, TEXTS, doc_start=True)
    view = teacher_view(ids, mask, student_tok, student_tok)
    assert torch.equal(view.tokens[mask], ids[mask])
    aligned = view.aligned & mask
    assert torch.equal(view.index[aligned], torch.arange(ids.shape[1]).expand_as(ids)[aligned])
    # every position aligns except byte tokens ending inside a multi-byte character (only the Unicode text)
    ascii_rows = [r for r, t in enumerate(TEXTS) if t.isascii()]
    assert bool(aligned[ascii_rows].eq(mask[ascii_rows]).all())
    unicode_row = TEXTS.index(TEXTS[1])
    inside = [p for p in range(int(mask[unicode_row].sum()))
              if "\ufffd" in student_tok.decode(ids[unicode_row, 1: p + 1])]
    assert (~view.aligned[unicode_row, : int(mask[unicode_row].sum())]).nonzero().flatten().tolist() == inside


def test_gather_positions_matches_a_loop():
    x = torch.randn(2, 5, 3)
    index = torch.tensor([[4, -1, 0], [1, 2, -1]])
    got = gather_positions(x, index)
    for b in range(2):
        for s in range(3):
            assert torch.equal(got[b, s], x[b, max(0, int(index[b, s]))])
    assert gather_positions(torch.arange(10).view(2, 5), index).tolist() == [[4, 0, 0], [6, 7, 5]]


def test_teacher_top1_maps_to_the_student_id_of_the_same_string(cross_pair):
    ids = teacher_to_student_ids(cross_pair.alignment, cross_pair.teacher.cfg.d_vocab)
    t_tok, s_tok = cross_pair.teacher.tokenizer, cross_pair.student.tokenizer
    for t in range(cross_pair.teacher.cfg.d_vocab):
        s = int(ids[t])
        if s >= 0:
            assert t_tok.convert_ids_to_tokens(t) == s_tok.convert_ids_to_tokens(s)
    assert int((ids >= 0).sum()) == cross_pair.alignment.n_shared


# ------------------------------------------------------------------------------------------------ the trainer
def _text_blocks(tok, n: int, seq_len: int) -> TokenBatch:
    import inspect
    import textwrap

    stream = _ids(tok, inspect.getsource(textwrap))
    ids = torch.tensor(stream[: n * seq_len]).view(n, seq_len)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))


def _cfg(tmp_path, **overrides):
    base = {"run_dir": str(tmp_path / "run"), "progress": False, "report": False, "figures": False,
            "vocab": "intersection", "data.batch_size": 4, "data.diag_sequences": 2, "schedule.stage_steps": 2,
            "schedule.lr": 1e-2, "checkpoint_every": 1, "objective.terms": {"relation": 1.0, "shared_kl": 1.0}}
    return load_align_config(None, {**base, **overrides})


def test_targets_are_the_teachers_states_at_aligned_positions(tmp_path, cross_pair):
    data = _text_blocks(cross_pair.student.tokenizer, 8, 24)
    tr = Trainer(_cfg(tmp_path, **{"objective.terms": {"cosine": 1.0, "shared_kl": 1.0}}),
                 cross_pair, data=data)
    index = torch.tensor([5, 2])
    got = tr.targets(data.tokens[index], index)
    hf = clean_copy(cross_pair.teacher, share_weights=True).eval()
    s_tok, t_tok = cross_pair.student.tokenizer, cross_pair.teacher.tokenizer
    layer = tr.teacher_layers[0]  # HF's last hidden state is after the final norm; a middle block's is not
    assert layer < cross_pair.teacher.cfg.n_layers - 1
    for row, i in enumerate(index.tolist()):
        text = s_tok.decode(data.tokens[i])  # ASCII source: the block is whole characters
        ref = aligned_positions(text, t_tok, s_tok)
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([_ids(t_tok, text)]), output_hidden_states=True)
        assert torch.equal(got.mask[row].nonzero().flatten(), ref.student)
        torch.testing.assert_close(got.post[layer][row, ref.student],
                                   out.hidden_states[layer + 1][0, ref.teacher], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.logits[row, ref.student], out.logits[0, ref.teacher], rtol=1e-4, atol=1e-4)
    assert tr.provenance["vocab"]["shared_tokens"] == cross_pair.alignment.n_shared
    assert tr.transfer.teacher["vocab_key"] == cross_pair.alignment.key  # the intersection map


def test_diagnostics_read_only_aligned_positions(tmp_path, cross_pair):
    """The logged cos_state at step 0 against HF forwards of both models: the teacher's block output at each
    aligned position of the diagnostic text, mapped, against the student's at the same text position."""
    import json

    import torch.nn.functional as F

    data = _text_blocks(cross_pair.student.tokenizer, 10, 24)
    cfg = _cfg(tmp_path, **{"objective.terms": {"cosine": 1.0, "shared_kl": 1.0}, "schedule.stage_steps": 1,
                            "precision": "fp32"})
    tr = Trainer(cfg, cross_pair, data=data)
    tr.run(stop_after_steps=1)
    first = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("kind") == "diag")
    pair = next(p for p in tr.pairs if p.student_layer == first["student_layer"])
    t_hf = clean_copy(cross_pair.teacher, share_weights=True).eval()
    s_hf = clean_copy(cross_pair.student, share_weights=False).eval()
    s_tok, t_tok = cross_pair.student.tokenizer, cross_pair.teacher.tokenizer
    cosines = []
    for row in data.tokens[:2]:  # the diagnostic blocks (API data: the first diag_sequences)
        text = s_tok.decode(row)
        ref = aligned_positions(text, t_tok, s_tok)
        with torch.no_grad():
            t_out = t_hf(input_ids=torch.tensor([_ids(t_tok, text)]), output_hidden_states=True).hidden_states
            s_out = s_hf(input_ids=row[None], output_hidden_states=True).hidden_states
        target = tr.transfer(t_out[pair.teacher_low + 1][0, ref.teacher].float())
        cosines.append(F.cosine_similarity(s_out[pair.student_layer + 1][0, ref.student].float(), target, dim=-1))
    assert first["cos_state"] == pytest.approx(float(torch.cat(cosines).mean()), abs=2e-4)


def test_cross_pair_trains_and_resumes_exactly(tmp_path, cross_pair):
    data = _text_blocks(cross_pair.student.tokenizer, 12, 24)
    whole = align(_cfg(tmp_path / "a"), cross_pair, data=data)
    assert whole.finished
    stopped = align(_cfg(tmp_path / "b"), cross_pair, stop_after_steps=3, data=data)
    assert not stopped.finished
    resumed = align(_cfg(tmp_path / "b"), cross_pair, data=data)
    a, b = whole.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = clean_copy(cross_pair.student, share_weights=False).state_dict()
    assert any(not torch.equal(before[k], a[k]) for k in a)  # it trained
    losses = whole.metrics().query("kind == 'train'")
    assert losses["shared_kl"].notna().all() and (losses["shared_kl"] > 0).all()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"objective.terms": {"kl": 1.0}}, "use 'shared_kl'"),
    ({"vocab": "shared"}, "the pair was built with vocab='intersection' but the config trains vocab = 'shared'"),
])
def test_cross_pair_refusals(tmp_path, cross_pair, overrides, message):
    data = _text_blocks(cross_pair.student.tokenizer, 8, 24)
    with pytest.raises(SemalignError, match=message):
        Trainer(_cfg(tmp_path, **overrides), cross_pair, data=data)


def test_cached_targets_are_refused_for_a_cross_pair(tmp_path):
    with pytest.raises(SemalignError, match="targets.mode = 'online'"):
        _cfg(tmp_path, **{"targets.mode": "cached"}).validate()


def test_shared_kl_needs_a_cross_pair(tmp_path, tiny_pair, tokens):
    with pytest.raises(SemalignError, match="with one shared vocabulary use 'kl'"):
        Trainer(_cfg(tmp_path, vocab="shared"), tiny_pair, data=tokens)


def test_a_full_vocabulary_map_is_refused_on_a_cross_pair(tmp_path, cross_pair, tiny_pair, tokens):
    full = TransferMap(SemanticBasis.from_model(tiny_pair.teacher), SemanticBasis.from_model(tiny_pair.student))
    data = _text_blocks(cross_pair.student.tokenizer, 8, 24)
    with pytest.raises(SemalignError, match="built on the full vocabulary"):
        Trainer(_cfg(tmp_path), cross_pair, data=data, transfer=full)
