"""Knowledge scoring: answer scores against greedy decoding, the teacher filter, held-out phrasings."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tasks.facts import Fact
from semalign_lens.data.tokens import TokenBatch, tokenize


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
