"""Tasks with clean/corrupted prompt pairs and continuous metrics, for layer attribution and evaluation.

- `schema`  — `PromptPair`, `Task`, `load_pairs` (a user's JSON/JSONL of pairs), validation with locations;
- `facts`   — factual recall as data (`facts.json`, ≥3 phrasings per fact), `load_facts`, `fact_task`;
- `code`    — `humaneval_task`: a parameter renamed in a HumanEval prompt, answer = solution prefix;
- `batch`   — `tokenize_pairs` → `PairBatch` (teacher-forced answers, length alignment policy);
- `metrics` — `answer_logprob`, `logit_diff`.

`load_task(spec)` resolves a name (`facts`, `humaneval`) or a file path, the way the CLI's `--task` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...core.checks import read_json, read_utf8
from ...core.errors import SemalignError
from .batch import ALIGN, PairBatch, tokenize_pairs
from .code import humaneval_task
from .facts import Fact, FactSet, fact_task, load_facts
from .metrics import METRICS, answer_logprob, check_metric, logit_diff, metric_fn
from .schema import PromptPair, Task, load_pairs

BUILTIN_TASKS = {
    "facts": "factual recall, subject swapped within its type (semalign_lens/data/tasks/facts.json)",
    "humaneval": "HumanEval prompts with a parameter renamed; answer = solution prefix",
}

__all__ = ["ALIGN", "BUILTIN_TASKS", "METRICS", "Fact", "FactSet", "PairBatch", "PromptPair", "Task",
           "answer_logprob", "check_metric", "fact_task", "humaneval_task", "load_facts", "load_pairs",
           "load_task", "logit_diff", "metric_fn", "tokenize_pairs"]


def load_task(spec: str | Path | Task, *, tokenizer=None, n: int | None = None, seed: int = 0) -> Task:
    """A `Task` from a built-in name, a facts file (JSON with 'facts') or a pairs file (JSON list / JSONL).

    tokenizer: lets the builders pick corruptions with the clean prompt's token count.
    n: a seeded sample of `n` pairs.
    """
    if isinstance(spec, Task):
        return spec.subset(n, seed)
    text = str(spec)
    if text == "facts":
        return fact_task(tokenizer=tokenizer, seed=seed, n=n)
    if text == "humaneval":
        return humaneval_task(n, tokenizer=tokenizer, seed=seed)
    path = Path(text)
    if not path.is_file():
        raise SemalignError(f"task {text!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor an "
                            "existing .json/.jsonl file")
    if path.suffix == ".json":
        data = read_json(path, "task file")
        if isinstance(data, dict) and "facts" in data:
            return fact_task(load_facts(path), tokenizer=tokenizer, seed=seed, n=n)
    elif path.suffix == ".jsonl":
        first = next((line for line in read_utf8(path, "task file").splitlines() if line.strip()), "")
        try:
            if "subject" in json.loads(first):
                return fact_task(load_facts(path), tokenizer=tokenizer, seed=seed, n=n)
        except (json.JSONDecodeError, TypeError):
            pass  # load_pairs reports the line
    else:
        raise SemalignError(f"task file {path} must end in .json or .jsonl")
    return load_pairs(path).subset(n, seed)
