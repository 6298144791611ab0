"""Bits per byte across tokenizers, against Hugging Face's own loss on the same texts."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semalign_lens.evaluation.bits_per_byte import bits_per_byte_table, block_texts, set_texts
from semalign_lens.models.load import load_model
from semalign_lens.models.zoo import STUDENT_8K_DIR, STUDENT_DIR


def test_block_texts_split_at_specials_and_spell_the_text():
    tok = AutoTokenizer.from_pretrained(str(STUDENT_8K_DIR))
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    a, b = "def f(x):\n    return x\n", "naïve = 'café'\n"
    row = [sep, *tok(a, add_special_tokens=False)["input_ids"], sep, *tok(b, add_special_tokens=False)["input_ids"]]
    assert block_texts(torch.tensor([row]), tok) == [a, b]


def _hf_bpb(folder, texts) -> float:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    start = tok.convert_tokens_to_ids("<|endoftext|>")
    nll = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[start, *tok(text, add_special_tokens=False)["input_ids"]]])
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    return nll / (math.log(2) * sum(len(t.encode()) for t in texts))


def test_table_matches_hf_loss_for_two_tokenizers():
    models = {"same": load_model("stdlib-student"), "bpe8k": load_model("stdlib-student-8k")}
    table = bits_per_byte_table(models, names=["stdlib_val", "humaneval"], max_tokens=600, progress=False)
    for name in ("stdlib_val", "humaneval"):
        texts = set_texts(name, models["same"].tokenizer, max_tokens=600)
        row = table.set_index("set").loc[name]
        assert row["bytes"] == sum(len(t.encode()) for t in texts)
        for label, folder in (("same", STUDENT_DIR), ("bpe8k", STUDENT_8K_DIR)):
            assert row[f"{label}_bpb"] == pytest.approx(_hf_bpb(folder, texts), rel=2e-3)
    assert (table.same_tokens != table.bpe8k_tokens).all()  # two tokenizers, one set of bytes


def test_humaneval_and_facts_score_with_either_tokenizer():
    """HumanEval per-problem scoring (CE and bits per byte of the solution) and the knowledge task run on a
    same-vocabulary and a cross-tokenizer student; bits per byte = NLL / (ln 2 · bytes of the scored tokens):
    the solution plus the prompt characters of a token that straddles the boundary (HF offsets tell them)."""
    from semalign_lens.data.tasks.code import humaneval_problems
    from semalign_lens.data.tasks.facts import load_facts
    from semalign_lens.evaluation import fact_scores, humaneval_problem_ce

    problems = {p["task_id"]: p for p in humaneval_problems()}
    facts = load_facts().facts[:6]
    for name in ("stdlib-student", "stdlib-student-8k"):
        model = load_model(name)
        per = humaneval_problem_ce(model, limit=3)
        for row in per.itertuples():
            prompt, text = problems[row.task_id]["prompt"], problems[row.task_id]["prompt"] + problems[row.task_id][
                "canonical_solution"]
            offsets = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            first = min(start for start, end in offsets if end > len(prompt))
            want = row.ce * row.tokens / (math.log(2) * len(text[first:].encode()))
            assert row.bpb == pytest.approx(want, rel=1e-6)
        scores = fact_scores(model, facts, which="all")
        assert len(scores) >= len(facts) and (scores.answer_logprob < 0).all()
