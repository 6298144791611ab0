"""HumanEval: the executor with its timeout, completion truncation, cross-entropy on the solutions only."""

from __future__ import annotations

import pytest

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError


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


def test_per_problem_humaneval_ce_averages_to_the_solution_ce(tiny_pair):
    """The token-weighted mean of the per-problem CEs is the pooled HumanEval solution CE."""
    table = ev.humaneval_problem_ce(tiny_pair.student, limit=5, precision="fp32")
    assert len(table) == 5 and table["task_id"].is_unique and (table["tokens"] > 0).all()
    pooled = ev.humaneval_solution_ce(tiny_pair.student, limit=5, precision="fp32")
    assert (table["ce"] * table["tokens"]).sum() / table["tokens"].sum() == pytest.approx(pooled, rel=1e-5)
