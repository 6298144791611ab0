"""Transfer data: disjoint from evaluation (stdlib split, overlap), code transfer batches, JSONL errors."""

from __future__ import annotations

import pytest
import torch

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError


def test_stdlib_test_split_is_disjoint():
    transfer, evaluation = ev.stdlib_test_split()
    assert evaluation and transfer
    assert not set(transfer) & set(evaluation)


def test_jsonl_errors_name_line_and_field(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "ok"}\n\n{"txt": "typo"}\n')
    with pytest.raises(SemalignError, match=r"texts.jsonl:3: missing field 'text'"):
        ev.load_texts_jsonl(path)
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(SemalignError, match=r":2: field 'text' must be a non-empty str"):
        ev.load_texts_jsonl(path)
    path.write_text('{"text": "ok"}\n{"text": "a",\n')
    with pytest.raises(SemalignError, match=r":2: not valid JSON"):
        ev.load_texts_jsonl(path)
    path.write_text('{"text": "ok"}\n["a"]\n')
    with pytest.raises(SemalignError, match=r":2: expected a JSON object"):
        ev.load_texts_jsonl(path)
    path.write_text('{"text": "fine"}\n')
    assert ev.load_texts_jsonl(path) == ["fine"]


def test_overlap_refused_for_exact_duplicates_and_copies():
    transfer = ["alpha beta gamma", "def f(x):\n    return x + 1\n" * 4, "unrelated"]
    with pytest.raises(SemalignError, match=r"evaluation item #1 .*transfer item #0"):
        ev.check_no_overlap(transfer, ["zeta", "alpha   beta\ngamma"])
    copy = "def f(x):\n    return x + 1\n" * 3  # verbatim inside transfer item #1, long enough
    with pytest.raises(SemalignError, match=r"transfer item #1"):
        ev.check_no_overlap(transfer, [copy])
    ev.check_no_overlap(transfer, ["alpha beta", "totally new text"])  # short substrings are fine


def test_code_transfer_data_is_unseen_superset_and_clean(tiny_hf):
    _, _, tok = tiny_hf
    small, n_small = ev.code_transfer_data(tok, 6, seq_len=32)
    big, n_big = ev.code_transfer_data(tok, 12, seq_len=32)
    assert small.tokens.shape == (6, 32) and bool(small.mask.all())
    assert torch.equal(big.tokens[:6], small.tokens)
    assert n_big >= n_small
    assert bool((small.tokens[:, 0] == tok.convert_tokens_to_ids("<|endoftext|>")).all())
    problems = ev.humaneval_problems()[:20]
    ev.check_no_overlap(ev.code_transfer_texts(n_big), [p["canonical_solution"] for p in problems])
    with pytest.raises(SemalignError, match="HumanEval"):
        ev.check_no_overlap(ev.code_transfer_texts(n_big) + [problems[3]["prompt"]],
                            [p["prompt"] for p in problems], names=("transfer", "HumanEval"))
