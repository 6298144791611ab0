"""Transfer tasks: the knowledge task refuses a malformed facts file; both tasks score a model with another
tokenizer on the same text, in its own tokens."""

from __future__ import annotations

import json

import pytest

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError


def test_knowledge_task_refuses_malformed_facts_file(tmp_path, tiny_pair):
    bad = {"types": {"capital": {"templates": ["The capital of {subject} is", "{subject}: capital", "Q: {subject}"]}},
           "facts": [{"type": "capital", "subject": "France", "answer": " Paris"},
                     {"type": "capital", "subject": "Japan", "answer": "Tokyo"}]}
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SemalignError, match=r"facts\[1\].*'answer'"):
        ev.knowledge_task(tiny_pair.teacher, path)


def test_code_task_scores_a_model_with_another_tokenizer_on_the_same_text(tiny_hf):
    """A cross-tokenizer teacher reads the held-out blocks' text in its own tokens: bits per byte against HF's
    loss on each text, and the bytes are the text's."""
    import math

    import torch

    from semalign_lens.evaluation.bits_per_byte import block_texts
    from semalign_lens.models.tiny import tiny_cross_pair

    pair = tiny_cross_pair(seed=0)
    task = ev.code_task(pair.student.tokenizer, n_transfer=4, seq_len=32, humaneval_limit=2, heldout_tokens=96)
    got = task.evaluate(pair.teacher)
    hf, tok = tiny_hf[0], pair.teacher.tokenizer
    heldout = ev.eval_set("stdlib_test", pair.student.tokenizer, max_tokens=96, max_len=32)
    nll = n_bytes = 0
    for text in block_texts(heldout.batch.tokens, pair.student.tokenizer):
        ids = torch.tensor([[tok.convert_tokens_to_ids("<|endoftext|>")] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = hf(input_ids=ids, labels=ids).loss  # mean over the text's tokens after the document start
        nll += float(loss) * (ids.shape[1] - 1)
        n_bytes += len(text.encode("utf-8"))
    assert math.isclose(got["stdlib_test_bpb"], nll / (math.log(2) * n_bytes), rel_tol=1e-4)
    own = task.evaluate(pair.student)  # the task's own tokenisation for the student
    assert set(own) == set(got) and all(math.isfinite(v) for v in own.values())


def test_knowledge_task_across_tokenizers_trains_and_scores_each_model_in_its_own_tokens():
    from semalign_lens.data.tokens import tokenize
    from semalign_lens.evaluation.knowledge import fact_scores, fact_transfer_texts
    from semalign_lens.evaluation.protocol import _tiny_known_facts
    from semalign_lens.models.tiny import tiny_cross_pair

    pair = tiny_cross_pair(seed=0)
    task = ev.knowledge_task(pair.teacher, _tiny_known_facts(pair.teacher), student_tokenizer=pair.student.tokenizer)
    kept = [f for f in _tiny_known_facts(pair.teacher) if f.id in set(task.meta["kept_ids"])]
    want = tokenize(pair.student.tokenizer, fact_transfer_texts(kept, 1))
    assert (task.transfer.tokens == want.tokens).all()  # the student's own tokens
    for model in (pair.student, pair.teacher):
        ref = fact_scores(model, kept, "eval", 1, model.tokenizer)
        assert task.evaluate(model)["answer_logprob"] == pytest.approx(float(ref["answer_logprob"].mean()))


def test_code_task_scores_humaneval_once_per_problem_and_in_total(tiny_pair):
    """`score` gives the HumanEval per-problem frame from the forwards that give `humaneval_ce`: its token-weighted
    mean is that CE, and each problem's CE is the one a forward of that problem alone gives
    (`humaneval_problem_ce`, batches of one)."""
    import pandas as pd

    task = ev.code_task(tiny_pair.student.tokenizer, n_transfer=4, seq_len=32, humaneval_limit=4, heldout_tokens=96,
                        precision="fp32")
    scores = task.score(tiny_pair.teacher)
    table = scores.per_problem
    assert scores.metrics == task.evaluate(tiny_pair.teacher)
    assert len(table) == 4 and (table["tokens"] > 0).all()
    pooled = (table["ce"] * table["tokens"]).sum() / table["tokens"].sum()
    assert pooled == pytest.approx(scores.metrics["humaneval_ce"], rel=1e-6)
    alone = ev.humaneval_problem_ce(tiny_pair.teacher, limit=4, precision="fp32")
    pd.testing.assert_frame_equal(table, alone, rtol=1e-5)
    again = ev.TaskScores.from_record(json.loads(json.dumps(scores.record())))  # a references cache round trip
    assert again.metrics == scores.metrics
    pd.testing.assert_frame_equal(again.per_problem, table)
