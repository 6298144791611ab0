"""Transfer tasks: the knowledge task refuses a malformed facts file."""

from __future__ import annotations

import json

import pytest

from semalign_lens import evaluation as ev
from semalign_lens.errors import SemalignError


def test_knowledge_task_refuses_malformed_facts_file(tmp_path, tiny_pair):
    bad = {"types": {"capital": {"templates": ["The capital of {subject} is", "{subject}: capital", "Q: {subject}"]}},
           "facts": [{"type": "capital", "subject": "France", "answer": " Paris"},
                     {"type": "capital", "subject": "Japan", "answer": "Tokyo"}]}
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SemalignError, match=r"facts\[1\].*'answer'"):
        ev.knowledge_task(tiny_pair.teacher, path)
