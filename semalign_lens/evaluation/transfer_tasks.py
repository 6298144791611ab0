"""Transfer tasks: the data every method trains on, and how each is scored (`TransferTask`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import SemalignError
from ..data.tasks.facts import Fact, FactSet, load_facts
from ..data.text_bytes import bits_per_byte, scored_bytes
from ..data.tokens import TokenBatch, prompt_answer_batch, tokenize
from ..data.transfer import check_no_overlap, code_transfer_data, code_transfer_texts
from ..models.likelihood import sequence_nll, token_nll
from .eval_sets import eval_set
from .humaneval import humaneval_solution_batch, problem_table
from .knowledge import fact_eval_texts, fact_scores, fact_transfer_texts, teacher_known_facts
from .scoring import model_tokenizer


@dataclass
class TaskScores:
    """One model's scores on a task: {metric: value}, and one row per item where the task has items worth
    seeing one by one (the code task's HumanEval problems: task_id, ce, tokens, bpb), from the same forwards."""

    metrics: dict[str, float]
    per_problem: Any = None  # a DataFrame, or None

    def record(self) -> dict:
        """As JSON (a references cache)."""
        rows = None if self.per_problem is None else self.per_problem.to_dict("records")
        return {"metrics": self.metrics, "per_problem": rows}

    @classmethod
    def from_record(cls, record: dict) -> TaskScores:
        import pandas as pd

        rows = record.get("per_problem")
        return cls(record["metrics"], None if rows is None else pd.DataFrame(rows))


@dataclass
class TransferTask:
    """Everything a method needs for one task: transfer data, and a scorer of a model.

    `score(model)` returns its `TaskScores`, `evaluate(model)` just their {metric: value}; `metric` is the
    headline one, `higher_is_better` its direction.
    """

    name: str
    transfer: TokenBatch
    score: Callable[[Any], TaskScores]
    metric: str
    higher_is_better: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, model) -> dict[str, float]:
        return self.score(model).metrics


def code_task(tokenizer, n_transfer: int = 256, seq_len: int = 128, humaneval_limit: int | None = 48,
              heldout_tokens: int = 16384, precision: str = "auto", per_file: int = 2) -> TransferTask:
    """Code: transfer on stdlib test chunks; headline score = CE on held-out stdlib test files (lower is better).

    Transfer: `n_transfer` chunks of `seq_len` tokens, up to `per_file` per file (`code_transfer_data`).
    The held-out files (`heldout_tokens` tokens of the stdlib test files' evaluation slice, in blocks of
    `seq_len`) are the same distribution as the transfer data and never in it: the score where transfer can
    show (`analysis/TRANSFER.md`). HumanEval solution CE given the prompt is the out-of-distribution score beside it. Every
    CE comes with its bits per byte (`*_bpb`, `text_bytes`). Both evaluation sets are checked against the
    transfer files for verbatim overlap before anything trains.
    """
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    if heldout_tokens < seq_len:
        raise SemalignError(f"heldout_tokens = {heldout_tokens} is less than one block of seq_len = {seq_len}; the "
                            "code task's headline score needs held-out tokens: raise heldout_tokens (default 16384)")
    transfer, n_files = code_transfer_data(tokenizer, n_transfer, seq_len, per_file)
    batch, score, problems = humaneval_solution_batch(tokenizer, limit=humaneval_limit)
    sources = code_transfer_texts(n_files)
    check_no_overlap(sources, [p["canonical_solution"] for p in problems] + [p["prompt"] for p in problems],
                     names=("code transfer (stdlib test files)", "HumanEval"))
    heldout = eval_set("stdlib_test", tokenizer, max_tokens=heldout_tokens, max_len=seq_len)
    check_no_overlap(sources, heldout.texts, names=("code transfer (stdlib test files)", "held-out stdlib tests"))
    # name -> (batch, score mask, the bytes its scored tokens spell)
    scored = {name: (b, m, scored_bytes(tokenizer, b, m))
              for name, (b, m) in (("stdlib_test", (heldout.batch, None)), ("humaneval", (batch, score)))}

    foreign: dict[int, dict] = {}  # another tokenizer's own tokenisation of the same texts, built once

    def score_model(model) -> TaskScores:
        own = getattr(model, "tokenizer", None)
        if own is None or own.get_vocab() == tokenizer.get_vocab():
            own, sets = tokenizer, scored
        else:
            if id(own) not in foreign:
                foreign[id(own)] = _same_texts(own, heldout, tokenizer, problems)
            sets = foreign[id(own)]
        out = {}
        for name, (b, m, n_bytes) in sets.items():
            if name == "humaneval":  # per problem from the same forwards (`sequence_nll`)
                total, count, nll, counts = sequence_nll(model, b, m, batch_size=8, precision=precision)
                per_problem = problem_table(own, b, m, problems, nll, counts)
            else:
                total, count = token_nll(model, b, m, batch_size=8, precision=precision)
            out[f"{name}_ce"], out[f"{name}_bpb"] = total / count, bits_per_byte(total, n_bytes)
        return TaskScores(out, per_problem)

    return TransferTask("code", transfer, score_model, "stdlib_test_ce", higher_is_better=False,
                        meta={"n_transfer": n_transfer, "seq_len": seq_len, "humaneval_problems": len(problems),
                              "transfer_files": n_files, "heldout_tokens": heldout.n_tokens,
                              "heldout_files": heldout.meta["files"], "heldout_bytes": scored["stdlib_test"][2],
                              "scored_tokens": int((score & batch.mask)[:, 1:].sum())})


def _same_texts(tokenizer, heldout, task_tokenizer, problems) -> dict:
    """The code task's scored sets for a model with another tokenizer (a cross-tokenizer teacher): the held-out
    blocks spelled back to text and each read after the model's own document start, and the same HumanEval
    problems; (batch, score mask, scored bytes) each. Its CE is then per its own token; its bits per byte are
    on the same bytes (up to each block's first token, which the task's own tokenisation does not score)."""
    from .bits_per_byte import block_texts

    texts = block_texts(heldout.batch.tokens, task_tokenizer)
    batch = tokenize(tokenizer, texts)
    he_batch, he_score = prompt_answer_batch(tokenizer, [p["prompt"] for p in problems],
                                             [p["canonical_solution"] for p in problems])
    return {"stdlib_test": (batch, None, sum(len(t.encode("utf-8")) for t in texts)),
            "humaneval": (he_batch, he_score, scored_bytes(tokenizer, he_batch, he_score))}


def knowledge_task(teacher, facts: FactSet | Sequence[Fact] | str | Path | None = None, n_eval: int = 1,
                   tokenizer=None, precision: str = "auto", student_tokenizer=None) -> TransferTask:
    """Knowledge: teacher-known facts; transfer on training phrasings + answer; score held-out phrasings.

    Headline metric: mean answer log-prob on held-out phrasings (higher is better); exact match is also
    returned. The teacher filter is measured here and recorded in `meta`. `facts`: a `FactSet`, a list of
    facts, a facts file (`semalign_lens.data.tasks.load_facts` validates it, naming record and field), or None for
    the shipped `tasks/facts.json`. `student_tokenizer`: the transfer texts' tokenizer when the student has
    its own (a cross-tokenizer pair); every model is scored in its own tokens (the answer log-prob is then
    log P(answer text | prompt text) under each model, comparable across tokenizers).
    """
    if facts is None or isinstance(facts, (str, Path)):
        facts = load_facts(facts)
    if isinstance(facts, FactSet):
        facts = facts.facts
    tok = model_tokenizer(teacher, tokenizer)
    kept, table = teacher_known_facts(teacher, facts, n_eval, tok, precision)
    if not kept:
        raise SemalignError(f"the teacher answers none of the {len(facts)} facts on their held-out phrasings; "
                            "use easier facts or another teacher")
    texts = fact_transfer_texts(kept, n_eval)
    check_no_overlap(texts, fact_eval_texts(kept, n_eval), min_chars=10 ** 9,
                     names=("knowledge transfer phrasings", "held-out phrasings"))
    transfer = tokenize(getattr(student_tokenizer, "tokenizer", None) or student_tokenizer or tok, texts)

    def score_model(model) -> TaskScores:
        scores = fact_scores(model, kept, "eval", n_eval, getattr(model, "tokenizer", None) or tok, precision)
        return TaskScores({"answer_logprob": float(scores["answer_logprob"].mean()),
                           "exact_match": float(scores["exact_match"].mean())})

    return TransferTask("knowledge", transfer, score_model, "answer_logprob", higher_is_better=True,
                        meta={"facts": len(facts), "teacher_known": len(kept), "n_eval": n_eval,
                              "transfer_texts": len(texts), "kept_ids": [f.id for f in kept],
                              "teacher_table": table})
