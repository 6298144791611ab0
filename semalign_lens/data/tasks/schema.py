"""Text-level task definitions: a `Task` is a named list of clean/corrupted `PromptPair`s.

Why pairs: every causal layer ranker (activation patching, resample ablation) needs a corrupted input that
differs from the clean one in one controlled detail (a subject, an identifier) so that the answer changes
and nothing else does. A pair carries the clean answer (the continuation the metric scores, teacher-forced)
and, where it exists, the corrupted answer (for a logit difference).

Tasks are data: `load_pairs` reads a JSON list or a JSONL file of pairs that a user writes by hand, and
`Task.save` writes one back. Every malformed record is reported with its file, line (JSONL) or index (JSON)
and field, all of them at once, so a user fixes a file in one pass.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.checks import check_output_file, read_utf8
from ...core.errors import SemalignError

PAIR_FIELDS = {"clean": True, "corrupted": True, "answer": True, "corrupted_answer": False, "id": False,
               "meta": False}


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted prompt pair; `answer` is the clean continuation (scored teacher-forced)."""

    clean: str
    corrupted: str
    answer: str
    corrupted_answer: str | None = None
    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"clean": self.clean, "corrupted": self.corrupted, "answer": self.answer}
        if self.corrupted_answer is not None:
            out["corrupted_answer"] = self.corrupted_answer
        if self.id:
            out["id"] = self.id
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


@dataclass
class Task:
    """A named list of prompt pairs plus where they came from (shown in reports)."""

    name: str
    pairs: list[PromptPair]
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.pairs:
            raise SemalignError(f"task {self.name!r} has no prompt pairs; give it at least one clean/corrupted pair")

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def subset(self, n: int | None, seed: int = 0) -> Task:
        """`n` pairs drawn without replacement (seeded), keeping the file order; all pairs when n is None."""
        if n is None or n >= len(self.pairs):
            return self
        if n < 1:
            raise SemalignError(f"asked for {n} pairs of task {self.name!r}; ask for at least 1")
        keep = sorted(random.Random(seed).sample(range(len(self.pairs)), n))
        return Task(self.name, [self.pairs[i] for i in keep], self.description, self.source)

    def save(self, path: str | Path) -> Path:
        """Write the pairs as JSONL (one pair per line), the format `load_pairs` reads back."""
        path = check_output_file(path, "task file")
        path.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self.pairs))
        return path


def _where(source: str, position: str, record: Any) -> str:
    hint = ""
    if isinstance(record, Mapping):
        text = record.get("id") or record.get("subject") or record.get("clean")
        if isinstance(text, str) and text:
            hint = f" ({text[:40]!r})"
    return f"{source} {position}{hint}"


def check_fields(record: Any, spec: Mapping[str, bool], where: str, str_fields: Iterable[str]) -> list[str]:
    """Problems with one record: not an object, missing required or unknown fields, non-string text."""
    if not isinstance(record, Mapping):
        return [f"{where}: expected an object with fields {sorted(spec)}, got {type(record).__name__}"]
    problems = []
    for name, required in spec.items():
        if required and name not in record:
            problems.append(f"{where}: missing field {name!r}")
    for name in sorted(set(record) - set(spec)):
        problems.append(f"{where}: unknown field {name!r} (valid fields: {sorted(spec)})")
    for name in str_fields:
        value = record.get(name)
        if name in record and value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return problems


def raise_problems(problems: Sequence[str], source: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise SemalignError(f"{len(problems)} malformed record(s) in {source}; fix them and reload:\n  {shown}{more}")


def read_records(path: str | Path) -> list[tuple[str, Any]]:
    """(position, record) for a JSON list / {"pairs": [...]} file, or a JSONL file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"task file {path} does not exist")
    text = read_utf8(path, "task file")
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise SemalignError(f"{path} line {number} is not valid JSON ({err.msg}, column {err.colno}); "
                                    "each line of a .jsonl file must be one JSON object") from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SemalignError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if isinstance(data, Mapping) and "pairs" in data:
        data = data["pairs"]
    if not isinstance(data, list):
        raise SemalignError(f"{path} must hold a JSON list of pairs (or {{\"pairs\": [...]}}), "
                            f"got {type(data).__name__}")
    return [(f"pairs[{i}]", record) for i, record in enumerate(data)]


def pairs_from_records(records: Sequence[tuple[str, Any]], source: str) -> list[PromptPair]:
    """Validate every record (collecting all problems) and build the pairs."""
    problems: list[str] = []
    pairs = []
    for position, record in records:
        where = _where(source, position, record)
        found = check_fields(record, PAIR_FIELDS, where, ("clean", "corrupted", "answer", "corrupted_answer"))
        if not found and record["clean"] == record["corrupted"]:
            found.append(f"{where}: 'clean' and 'corrupted' are the same text; the corruption must change "
                         "the prompt")
        if not found and "meta" in record and not isinstance(record["meta"], Mapping):
            found.append(f"{where}: field 'meta' must be an object")
        problems += found
        if not found:
            pairs.append(PromptPair(record["clean"], record["corrupted"], record["answer"],
                                    record.get("corrupted_answer"), str(record.get("id", position)),
                                    dict(record.get("meta", {}))))
    raise_problems(problems, source)
    return pairs


def load_pairs(path: str | Path, name: str | None = None, description: str = "") -> Task:
    """A `Task` from a user's JSON / JSONL file of pairs (fields: clean, corrupted, answer[, corrupted_answer,
    id, meta])."""
    path = Path(path)
    pairs = pairs_from_records(read_records(path), str(path))
    return Task(name or path.stem, pairs, description, source=str(path))


def read_jsonl(path: str | Path, fields: dict[str, type], min_items: dict[str, int] | None = None) -> list[dict]:
    """Read a JSONL task file, checking each line is an object with `fields` of the right types.

    Errors name the file, the 1-based line and the field, and say what to write instead.
    """
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"task file {path} does not exist")
    min_items = min_items or {}
    items = []
    for lineno, line in enumerate(read_utf8(path, "task file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SemalignError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno}); write one JSON "
                                "object per line") from None
        if not isinstance(item, dict):
            raise SemalignError(f"{path}:{lineno}: expected a JSON object, got {type(item).__name__}")
        for name, kind in fields.items():
            if name not in item:
                raise SemalignError(f"{path}:{lineno}: missing field {name!r} (required fields: {sorted(fields)})")
            value = item[name]
            if not isinstance(value, kind) or (kind is str and not value.strip()):
                raise SemalignError(f"{path}:{lineno}: field {name!r} must be a non-empty {kind.__name__}, got "
                                    f"{value!r:.60}")
            if kind is list:
                bad = [v for v in value if not isinstance(v, str) or not v.strip()]
                if bad:
                    raise SemalignError(f"{path}:{lineno}: field {name!r} must hold non-empty strings, got {bad[0]!r}")
                if len(value) < min_items.get(name, 0):
                    raise SemalignError(f"{path}:{lineno}: field {name!r} has {len(value)} items; need at least "
                                        f"{min_items[name]}")
        items.append(item)
    if not items:
        raise SemalignError(f"task file {path} has no items")
    return items


def load_texts_jsonl(path: str | Path) -> list[str]:
    """Transfer texts from JSONL lines {"text": str}."""
    return [item["text"] for item in read_jsonl(path, {"text": str})]
