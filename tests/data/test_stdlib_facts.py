"""The standard-library facts: every answer checked against the interpreter by a second route, phrasings
disjoint, a clash refused at build time."""

import builtins
import errno
import http
import importlib
import os

import pytest

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tasks.facts import Fact
from semalign_lens.data.tasks.stdlib_facts import TEMPLATES, check_phrasings, stdlib_facts


@pytest.fixture(scope="module")
def facts():
    return stdlib_facts()


def test_every_type_is_present_with_four_phrasings(facts):
    assert len(facts) >= 1000
    assert {f.type for f in facts.facts} == set(TEMPLATES)
    assert all(len(f.templates) == 4 for f in facts.facts)
    assert len({f.id for f in facts.facts}) == len(facts)
    assert all(f.answer.startswith(" ") and f.answer.strip() for f in facts.facts)


def test_answers_are_true(facts):
    """A second route to each answer: import the name from the module, look the code up, evaluate the char."""
    for f in facts.facts:
        a = f.answer[1:]
        if f.type in ("function_module", "constant_module"):
            assert hasattr(importlib.import_module(a), f.subject), f
        elif f.type == "http_phrase":
            assert http.HTTPStatus(int(f.subject)).phrase == a
        elif f.type == "http_code":
            assert http.HTTPStatus(int(a)).phrase == f.subject
        elif f.type == "errno_message":
            assert os.strerror(getattr(errno, f.subject)) == a
        elif f.type == "exception_base":
            assert getattr(builtins, f.subject).__bases__[0].__name__ == a
        elif f.type == "function_doc":
            module = f.prompts()[-1].rsplit("from ", 1)[1].removesuffix(" import")
            assert f.subject in " ".join(line.strip() for line in getattr(importlib.import_module(module), a).__doc__
                                         .splitlines()), f
        elif f.type == "module_doc":
            assert importlib.import_module(a).__doc__.strip().startswith(f.subject), f
        elif f.type == "builtin_doc":
            doc = " ".join(line.strip() for line in getattr(builtins, a).__doc__.splitlines())
            assert f.subject in doc, f


def test_constants_are_capped_per_module(facts):
    from collections import Counter

    counts = Counter(f.answer for f in facts.of_type("constant_module"))
    assert max(counts.values()) == 40 and counts[" socket"] == 40  # socket alone exposes over 300


def test_a_name_defined_in_two_modules_is_left_out(facts):
    subjects = [f.subject for f in facts.of_type("function_module")]
    assert len(subjects) == len(set(subjects))
    assert "deepcopy" in subjects and "namedtuple" in subjects
    assert "sqrt" not in subjects and "dumps" not in subjects  # math and cmath, json and pickle


def test_no_prompt_holds_its_own_answer(facts):
    """A docstring naming its function, or a few-shot example that is the fact itself, is left out."""
    for f in facts.facts:
        for prompt in f.prompts():
            fixed = prompt.replace(f.subject, "\x00")  # the template's own text: a few-shot line "X: answer\n"
            assert f.answer not in prompt and f.answer.strip() + "\n" not in fixed, (f, prompt)
    assert "KeyError" not in {f.subject for f in facts.of_type("exception_base")}  # the few-shot example


def test_held_out_phrasings_are_disjoint_from_transfer_phrasings(facts):
    from semalign_lens import evaluation as ev

    ev.check_no_overlap(ev.fact_transfer_texts(facts.facts), ev.fact_eval_texts(facts.facts), min_chars=10 ** 9)
    clash = Fact("t", "x", " y", ("A {subject}", "B {subject}", "A {subject}"))
    with pytest.raises(SemalignError, match="held-out phrasing 'A x' is also a transfer phrasing"):
        check_phrasings(clash)
