"""Factual recall: facts as data, several phrasings each, corrupted by swapping the subject within a type.

A fact is (type, subject, answer); its type holds the phrasings (templates with `{subject}`), and a fact may
add phrasings of its own. The corrupted prompt uses the same phrasing with the subject of another fact of
the same type whose answer differs (France → Japan in "The capital of {subject} is"), so that only the
subject changes and the answer (" Paris" vs " Tokyo") follows it.

Why several phrasings: the knowledge-transfer benchmark trains on some phrasings of a fact and evaluates on
held-out ones (`Fact.prompts()` indexes them in a stable order). Answers start with a space so that they are
the continuation token(s) of the prompt, as a model would write them.

The shipped set lives in `facts.json` in this package (read through importlib.resources); `load_facts(path)`
reads a user's file in the same format, or a JSONL file with one fact per line carrying its own templates.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ...core.checks import read_json
from ...core.errors import SemalignError
from .schema import PromptPair, Task, check_fields, raise_problems, read_records

FACT_FIELDS = {"type": True, "subject": True, "answer": True, "templates": False, "id": False}
MIN_PHRASINGS = 3


@dataclass(frozen=True)
class Fact:
    """One fact; `templates` are all its phrasings (its type's, then its own)."""

    type: str
    subject: str
    answer: str
    templates: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.type}:{self.subject}"

    def prompt(self, template: int) -> str:
        return self.templates[template].format(subject=self.subject)

    def prompts(self) -> list[str]:
        """Every phrasing of the fact, in template order (index = phrasing id)."""
        return [t.format(subject=self.subject) for t in self.templates]


@dataclass
class FactSet:
    """All facts of a file, with the description and source shown in reports."""

    facts: list[Fact]
    name: str = "facts"
    description: str = ""
    source: str = ""
    types: dict[str, list[str]] = field(default_factory=dict)  # type -> its shared templates

    def __len__(self) -> int:
        return len(self.facts)

    def of_type(self, fact_type: str) -> list[Fact]:
        return [f for f in self.facts if f.type == fact_type]


def _template_problems(templates: Any, where: str) -> list[str]:
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        return [f"{where}: 'templates' must be a list of strings containing {{subject}}"]
    problems = []
    for i, t in enumerate(templates):
        if t.count("{subject}") != 1:
            problems.append(f"{where}: templates[{i}] {t!r} must contain {{subject}} exactly once")
        elif t.endswith(" "):
            problems.append(f"{where}: templates[{i}] {t!r} ends with a space; put the space in the answer "
                            "instead (answers start with a space)")
        else:
            try:
                t.format(subject="x")
            except (KeyError, IndexError, ValueError):
                problems.append(f"{where}: templates[{i}] {t!r} has braces other than {{subject}}; "
                                "write literal braces as {{ and }}")
    return problems


def _fact_problems(record: Any, where: str, types: Mapping[str, list[str]], standalone: bool) -> list[str]:
    problems = check_fields(record, FACT_FIELDS, where, ("type", "subject", "answer"))
    if problems:
        return problems
    if "templates" in record:
        problems += _template_problems(record["templates"], where)
    if not standalone and record["type"] not in types:
        problems.append(f"{where}: type {record['type']!r} is not declared under 'types' "
                        f"(declared: {sorted(types)})")
    if not record["answer"].startswith(" ") or not record["answer"].strip():
        problems.append(f"{where}: field 'answer' {record['answer']!r} must start with a space and contain text, "
                        "so that it is the continuation of the prompt (e.g. ' Paris')")
    n = len(types.get(record["type"], [])) + len(record.get("templates", []) or [])
    if not problems and n < MIN_PHRASINGS:
        problems.append(f"{where}: has {n} phrasing(s); give each fact at least {MIN_PHRASINGS} templates "
                        "(its type's plus its own 'templates')")
    return problems


def _read_fact_file(path: Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """(header, records): a JSON object with 'types' and 'facts', or a JSONL file of standalone facts."""
    if path.suffix == ".jsonl":
        return {"name": path.stem}, read_records(path)
    data = read_json(path, "facts file")
    if not isinstance(data, Mapping) or "facts" not in data:
        raise SemalignError(f"{path} must be a JSON object with 'facts' (a list) and 'types' "
                            "({type: {templates: [...]}}); see semalign_lens/data/tasks/facts.json")
    if not isinstance(data["facts"], list):
        raise SemalignError(f"{path}: 'facts' must be a list of {{type, subject, answer}} objects")
    return data, [(f"facts[{i}]", record) for i, record in enumerate(data["facts"])]


def load_facts(path: str | Path | None = None) -> FactSet:
    """The shipped facts (no argument) or a user's facts file (.json like the shipped one, or .jsonl)."""
    if path is None:
        ref = resources.files("semalign_lens.data.tasks").joinpath("facts.json")
        with resources.as_file(ref) as real:
            return load_facts(real)
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"facts file {path} does not exist")
    header, records = _read_fact_file(path)
    problems: list[str] = []
    types: dict[str, list[str]] = {}
    for name, spec in (header.get("types") or {}).items():
        where = f"{path} types.{name}"
        if not isinstance(spec, Mapping) or "templates" not in spec:
            problems.append(f"{where}: expected {{\"templates\": [...]}}")
            continue
        found = _template_problems(spec["templates"], where)
        problems += found
        types[name] = list(spec["templates"]) if not found else []
    facts, seen = [], set()
    for position, record in records:
        where = f"{path} {position}" + (f" (subject {record.get('subject')!r})" if isinstance(record, Mapping) else "")
        found = _fact_problems(record, where, types, standalone=path.suffix == ".jsonl")
        key = (record.get("type"), record.get("subject")) if isinstance(record, Mapping) else None
        if not found and key in seen:
            found.append(f"{where}: duplicate fact {key[0]}:{key[1]}; each (type, subject) must appear once")
        problems += found
        if not found:
            seen.add(key)
            templates = tuple(types.get(record["type"], [])) + tuple(record.get("templates", []))
            facts.append(Fact(record["type"], record["subject"], record["answer"], templates))
    raise_problems(problems, str(path))
    if not facts:
        raise SemalignError(f"{path} holds no facts; add at least two facts of one type")
    return FactSet(facts, header.get("name", path.stem), header.get("description", ""), str(path), types)


def _prompt_len(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fact_task(facts: FactSet | str | Path | None = None, *, templates: Sequence[int] | None = None,
              types: Sequence[str] | None = None, tokenizer=None, seed: int = 0, n: int | None = None) -> Task:
    """Clean/corrupted pairs from facts: each (fact, phrasing) becomes one pair.

    templates: phrasing indices to use (default all; the knowledge-transfer benchmark passes a train or a
        held-out subset). A fact without that phrasing is skipped.
    types: restrict to these fact types.
    tokenizer: when given, the corrupting subject is chosen among those whose prompt has the same number of
        tokens as the clean one, so that clean and corrupted runs align position by position; when no such
        subject exists, any same-type subject is used and `tokenize_pairs(align=...)` decides.
    n: keep a seeded sample of `n` pairs.
    """
    if not isinstance(facts, FactSet):
        facts = load_facts(facts)
    rng = random.Random(seed)
    wanted = set(types) if types is not None else None
    if wanted is not None and not wanted & {f.type for f in facts.facts}:
        raise SemalignError(f"none of the fact types {sorted(wanted)} exists; "
                            f"available: {sorted({f.type for f in facts.facts})}")
    pairs = []
    for fact in facts.facts:
        if wanted is not None and fact.type not in wanted:
            continue
        others = [o for o in facts.of_type(fact.type) if o.answer != fact.answer]
        if not others:
            continue
        for t in templates if templates is not None else range(len(fact.templates)):
            if not 0 <= t < len(fact.templates):
                continue
            clean = fact.prompt(t)
            candidates = others
            if tokenizer is not None:
                length = _prompt_len(tokenizer, clean)
                same = [o for o in others if t < len(o.templates) and _prompt_len(tokenizer, o.prompt(t)) == length]
                candidates = same or others
            candidates = [o for o in candidates if t < len(o.templates)]
            if not candidates:
                continue
            other = rng.choice(candidates)
            pairs.append(PromptPair(clean, other.prompt(t), fact.answer, other.answer, id=f"{fact.id}#{t}",
                                    meta={"type": fact.type, "subject": fact.subject, "template": t,
                                          "corrupted_subject": other.subject}))
    if not pairs:
        raise SemalignError("no fact pairs could be built (each type needs two facts with different answers, "
                            "and the requested templates must exist)")
    task = Task(facts.name, pairs, facts.description, facts.source)
    return task.subset(n, seed)
