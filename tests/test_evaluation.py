"""Evaluation: cross-entropy against independent computations, gap closed, intervals, overlap and file errors."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from semalign_lens import evaluation as ev
from semalign_lens.data import TokenBatch, tokenize
from semalign_lens.errors import SemalignError
from semalign_lens.tasks.facts import Fact

TEXTS = ["def add(a, b):\n    return a + b\n", "import json\nprint(json.dumps({'a': 1}))",
         "class A:\n    pass"]


# ------------------------------------------------------------------------------------------ cross-entropy

def test_cross_entropy_matches_hf_labels_loss_on_one_sequence(tiny_hf, tiny_pair):
    _, student_hf, tok = tiny_hf
    batch = tokenize(tok, TEXTS[:1])
    with torch.no_grad():
        reference = student_hf(input_ids=batch.tokens, labels=batch.tokens).loss.item()
    assert ev.cross_entropy(student_hf, TEXTS[:1], tokenizer=tok) == pytest.approx(reference, rel=1e-5)
    assert ev.cross_entropy(tiny_pair.student, TEXTS[:1]) == pytest.approx(reference, rel=1e-5)


def test_padding_is_masked(tiny_hf):
    _, student_hf, tok = tiny_hf
    total = count = 0.0
    for text in TEXTS:  # each sequence alone, unpadded: the token-weighted mean is the reference
        b = tokenize(tok, [text])
        with torch.no_grad():
            loss = student_hf(input_ids=b.tokens, labels=b.tokens).loss.item()
        n = b.tokens.shape[1] - 1
        total, count = total + loss * n, count + n
    got = ev.cross_entropy(student_hf, TEXTS, tokenizer=tok, batch_size=3)
    assert got == pytest.approx(total / count, rel=1e-5)
    # and the same with batches of one (different padding widths)
    assert ev.cross_entropy(student_hf, TEXTS, tokenizer=tok, batch_size=1) == pytest.approx(got, rel=1e-5)


def test_blocks_agree_with_pretraining_metric(tiny_hf):
    from semalign_lens.zoo.pretrain import mean_cross_entropy

    _, student_hf, _ = tiny_hf
    blocks = torch.randint(1, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    reference = mean_cross_entropy(student_hf, blocks, precision="fp32")
    assert ev.cross_entropy(student_hf, blocks) == pytest.approx(reference, rel=1e-5)


def test_score_mask_scores_only_answer_tokens(tiny_hf):
    _, student_hf, tok = tiny_hf
    batch, score = ev.prompt_answer_batch(tok, ["def f(x):\n", "x ="], ["    return x", " 1"])
    got = ev.cross_entropy(student_hf, batch, score_mask=score)
    nll, n = 0.0, 0
    for i in range(2):  # independent: each row alone, unpadded, manual log-softmax
        real = batch.mask[i]
        tokens = batch.tokens[i, real][None]
        with torch.no_grad():
            logp = F.log_softmax(student_hf(input_ids=tokens).logits[0, :-1], -1)
        targets = tokens[0, 1:]
        picked = score[i, real][1:]
        nll -= logp[torch.arange(len(targets)), targets][picked].sum().item()
        n += int(picked.sum())
    assert got == pytest.approx(nll / n, rel=1e-5)
    # the answer mask covers exactly the answer characters
    for i, answer in enumerate(["    return x", " 1"]):
        text = tok.decode(batch.tokens[i][score[i]])
        assert text == answer


def test_cross_entropy_errors(tiny_hf):
    _, student_hf, tok = tiny_hf
    with pytest.raises(SemalignError, match="tokenizer"):
        ev.cross_entropy(student_hf, TEXTS)
    with pytest.raises(SemalignError, match="no token was scored"):
        ev.cross_entropy(student_hf, TokenBatch(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)))


# ------------------------------------------------------------------------------------------ eval sets

def test_eval_sets_are_deterministic_and_capped(tiny_hf):
    _, _, tok = tiny_hf
    for name in ev.EVAL_SETS:
        a = ev.eval_set(name, tok, max_tokens=512, max_len=64)
        b = ev.eval_set(name, tok, max_tokens=512, max_len=64)
        assert torch.equal(a.batch.tokens, b.batch.tokens)
        assert a.n_tokens <= 2000
    with pytest.raises(SemalignError, match="valid: stdlib_val"):
        ev.eval_set("nope", tok)


def test_compare_table_has_both_models(tiny_pair):
    table = ev.compare_cross_entropy(tiny_pair.teacher, tiny_pair.student, ["pydoc"], max_tokens=256, max_len=64,
                                     progress=False)
    assert list(table["set"]) == ["pydoc"]
    row = table.iloc[0]
    assert row["gap"] == pytest.approx(row["student_ce"] - row["teacher_ce"])
    assert 0 < row["teacher_ce"] < 20 and 0 < row["student_ce"] < 20


def test_stdlib_test_split_is_disjoint():
    transfer, evaluation = ev.stdlib_test_split()
    assert evaluation and transfer
    assert not set(transfer) & set(evaluation)


# ------------------------------------------------------------------------------------------ knowledge

def test_answer_scores_match_greedy_decoding(tiny_hf):
    _, student_hf, tok = tiny_hf
    prompt = tokenize(tok, ["def f(x):"]).tokens
    with torch.no_grad():
        out = student_hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=False,
                                  pad_token_id=0)
    score = torch.zeros_like(out, dtype=torch.bool)
    score[:, prompt.shape[1]:] = True
    batch = TokenBatch(out, torch.ones_like(out, dtype=torch.bool))
    logprob, exact = ev.answer_scores(student_hf, batch, score)
    assert bool(exact[0])
    with torch.no_grad():
        logp = F.log_softmax(student_hf(input_ids=out).logits[0, :-1], -1)
    expected = sum(logp[t - 1, out[0, t]].item() for t in range(prompt.shape[1], out.shape[1]))
    assert logprob[0].item() == pytest.approx(expected, rel=1e-5)
    wrong = out.clone()
    wrong[0, -1] = (wrong[0, -1] + 1) % 384  # not the argmax any more
    _, exact = ev.answer_scores(student_hf, TokenBatch(wrong, batch.mask), score)
    assert not bool(exact[0])


def _facts():
    templates = ("The capital of {subject} is", "{subject}'s capital is", "Q: capital of {subject}? A:")
    return [Fact("capital", s, a, templates) for s, a in (("France", " Paris"), ("Japan", " Tokyo"))]


def test_teacher_filter_keeps_facts_known_on_every_held_out_phrasing(tiny_pair, monkeypatch):
    facts = _facts()
    table = pd.DataFrame({"fact": ["capital:France", "capital:Japan"], "phrasing": [0, 0],
                          "answer_logprob": [-0.1, -3.0], "exact_match": [1.0, 0.0]})
    monkeypatch.setattr(ev.knowledge, "fact_scores", lambda *a, **k: table)
    kept, measured = ev.teacher_known_facts(tiny_pair.teacher, facts)
    assert [f.id for f in kept] == ["capital:France"]
    assert measured is table


def test_fact_split_trains_and_holds_out_distinct_phrasings():
    facts = _facts()
    train = ev.fact_transfer_texts(facts, n_eval=1)
    held = ev.fact_eval_texts(facts, n_eval=1)
    assert len(train) == 4 and len(held) == 2
    assert not set(train) & set(held)
    assert held[0] == "Q: capital of France? A: Paris"
    with pytest.raises(SemalignError, match="need at least 4"):
        ev.split_facts(facts, n_eval=3)


def test_knowledge_task_refuses_malformed_facts_file(tmp_path, tiny_pair):
    bad = {"types": {"capital": {"templates": ["The capital of {subject} is", "{subject}: capital", "Q: {subject}"]}},
           "facts": [{"type": "capital", "subject": "France", "answer": " Paris"},
                     {"type": "capital", "subject": "Japan", "answer": "Tokyo"}]}
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SemalignError, match=r"facts\[1\].*'answer'"):
        ev.knowledge_task(tiny_pair.teacher, path)


# ------------------------------------------------------------------------------------------ task files

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


# ------------------------------------------------------------------------------------------ overlap

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


# ------------------------------------------------------------------------------------------ gap closed, CI

def test_gap_closed_closed_forms():
    assert ev.gap_closed(0.2, 0.5, 0.8) == pytest.approx(0.5)
    assert ev.gap_closed(0.2, 0.8, 0.8) == pytest.approx(1.0)
    assert ev.gap_closed(0.2, 0.1, 0.8) == pytest.approx(-1 / 6)
    # losses: lower is better; same formula, direction only checks the teacher is better
    assert ev.gap_closed(3.0, 2.5, 2.0, higher_is_better=False) == pytest.approx(0.5)
    assert ev.gap_closed(3.0, 3.5, 2.0, higher_is_better=False) == pytest.approx(-0.5)
    assert math.isnan(ev.gap_closed(2.0, 2.5, 3.0, higher_is_better=False))  # teacher worse: no gap
    assert math.isnan(ev.gap_closed(0.5, 0.6, 0.5))


def test_mean_ci_is_a_student_t_interval():
    mean, lo, hi = ev.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2} * sd / sqrt(n)
    assert mean - lo == pytest.approx(hi - mean)
    m1, lo1, hi1 = ev.mean_ci([5.0])
    assert m1 == 5.0 and math.isnan(lo1) and math.isnan(hi1)


def test_summarize_seeds_computes_gap_per_seed():
    s = ev.summarize_seeds(3.0, [2.5, 2.0, 3.0], 2.0, higher_is_better=False)
    assert s["score"] == pytest.approx(2.5)
    assert s["gap_closed"] == pytest.approx(0.5)
    assert s["n_seeds"] == 3 and s["gap_lo"] < 0.5 < s["gap_hi"]


# ------------------------------------------------------------------------------------------ HumanEval

def test_executor_runs_tests_with_timeout():
    problem = ev.humaneval_problems()[0]
    ok = ev.check_completion(problem, problem["canonical_solution"], executor="subprocess")
    assert ok["passed"]
    bad = ev.check_completion(problem, "    return True\n", executor="subprocess")
    assert not bad["passed"] and bad["result"].startswith("failed")
    slow = ev.check_completion(problem, "    while True:\n        pass\n", timeout=1.0, executor="subprocess")
    assert not slow["passed"] and slow["result"] == "timed out"
    with pytest.raises(SemalignError, match="valid: auto"):
        ev.check_completion(problem, "", executor="docker")


def test_truncate_completion_stops_at_next_top_level_statement():
    assert ev.truncate_completion("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert ev.truncate_completion("    return 1") == "    return 1"


def test_humaneval_solution_ce_scores_only_solutions(tiny_pair):
    batch, score, problems = ev.humaneval_solution_batch(tiny_pair.student.tokenizer, limit=3)
    assert len(problems) == 3
    ce = ev.humaneval_solution_ce(tiny_pair.student, limit=3)
    assert ce == pytest.approx(ev.cross_entropy(tiny_pair.student, batch, score_mask=score))
    assert ce != pytest.approx(ev.cross_entropy(tiny_pair.student, batch))


def test_paired_difference_matches_scipys_paired_t_interval():
    from scipy import stats

    a, b = [4.03, 4.02, 4.05], [4.07, 4.08, 4.06]
    mean, lo, hi = ev.paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(sum(a) / 3 - sum(b) / 3) and (lo, hi) == pytest.approx((ci.low, ci.high))
    with pytest.raises(SemalignError, match="one value per seed on both sides, got 3 and 2"):
        ev.paired_difference(a, b[:2])
