"""Which other kinds of stdlib facts does the teacher know? A probe for growing the knowledge task.

The knowledge task keeps only facts the teacher answers exactly on the held-out phrasing (of the candidates in
`semalign_lens.data.tasks.stdlib_facts`). This script measures candidate fact *types* that are not in the set yet,
each read from the running interpreter and each tried with two phrasings (a prose and a code form): the
teacher's greedy exact match on the answer, as the task's filter computes it (`evaluation.fact_scores`).

With `--phrasings` it measures, instead, candidate phrasings of the set's two largest types on every fact of
the type: which phrasing the teacher answers, and so which to hold out and which to train on
(`stdlib_facts.TEMPLATES`; output `fact_phrasing_probe.csv`, one column of exact matches per phrasing).

    python analysis/probe_fact_types.py                 # SmolLM2-135M: ~1 min, 2-core Xeon, no native bf16 (fp32)
    python analysis/probe_fact_types.py --phrasings     # ~13 min, 2-core AMD EPYC, native bf16 (bf16)
    python analysis/probe_fact_types.py --teacher tiny  # the pipeline on a tiny random model (numbers meaningless)
"""

from __future__ import annotations

import argparse
import builtins
import calendar
import inspect
import mimetypes
import sys
import token
import unicodedata
from pathlib import Path

import pandas as pd

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import run_reporting_errors
from semalign_lens.data.tasks.facts import Fact
from semalign_lens.models.load import load_model

OUT = Path(__file__).parent / "out" / "transfer" / "fact_type_probe.csv"
OUT_PHRASINGS = OUT.with_name("fact_phrasing_probe.csv")

# Candidate phrasings of the set's module types: the prose forms the set used first, a few-shot one, and code
# comments followed by `from` / `import` with and without a line of context before them.
PHRASINGS = {
    "function_module": [
        "In Python, {subject} is imported from the module",
        "Q: Which Python module provides set_trace? A: pdb\nQ: Which Python module provides CDLL? A: ctypes\n"
        "Q: Which Python module provides {subject}? A:",
        "# {subject} comes from the standard library\nfrom",
        "import sys\n\n# {subject} comes from the standard library\nfrom",
        "# uses {subject}\nfrom",
        "import sys\n\n# uses {subject}\nfrom",
        "# import {subject}\nfrom",
        "# {subject} is in the standard library\nimport",
        "import sys\n\n# {subject} is in the standard library\nimport",
        "#!/usr/bin/env python3\n\n# {subject} is in the standard library\nimport",
    ],
    "constant_module": [
        "In Python, the constant {subject} is imported from the module",
        "# the constant {subject} comes from the standard library\nfrom",
        "import sys\n\n# {subject} comes from the standard library\nfrom",
        "# uses {subject}\nfrom",
        "# {subject} is in the standard library\nimport",
    ],
}


def _chars() -> list[str]:
    return [chr(c) for c in range(33, 127) if chr(c) not in "'\\"]


def _exception_doc() -> list[tuple[str, str]]:
    out = []
    for name in dir(builtins):
        obj = getattr(builtins, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__doc__:
            line = obj.__doc__.strip().splitlines()[0]
            if name not in line:
                out.append((line, name))
    return out


# type -> (source of (subject, answer) pairs, two phrasings)
CANDIDATES = {
    "unicode_name": (lambda: [(c, unicodedata.name(c)) for c in _chars() + list("éüñçß€£¥©°±×÷→←αβπΩ")],
                     ["unicodedata.name('{subject}') returns",
                      "import unicodedata\nprint(unicodedata.name('{subject}'))  # prints"]),
    "ord_code": (lambda: [(c, str(ord(c))) for c in _chars()], ["ord('{subject}') returns", ">>> ord('{subject}')\n"]),
    "mime_type": (lambda: sorted(mimetypes.MimeTypes(filenames=()).types_map[True].items()),
                  ["The MIME type of a {subject} file is",
                   "mimetypes.guess_type('file{subject}')[0] returns the MIME type"]),
    "month_name": (lambda: [(str(i), calendar.month_name[i]) for i in range(1, 13)],
                   ["calendar.month_name[{subject}] is",
                    "import calendar\nprint(calendar.month_name[{subject}])  # prints"]),
    "day_name": (lambda: [(str(i), calendar.day_name[i]) for i in range(7)],
                 ["calendar.day_name[{subject}] is", "import calendar\nprint(calendar.day_name[{subject}])  # prints"]),
    "exception_doc": (_exception_doc, ["# {subject}\nraise", "The built-in exception documented as \"{subject}\" is"]),
    "token_name": (lambda: sorted((s, token.tok_name[t]) for s, t in token.EXACT_TOKEN_TYPES.items() if "'" not in s),
                   ["In Python's token module, the token type of '{subject}' is", "# tokenize: '{subject}' is token."]),
}


def probe(teacher, control: int = 200) -> pd.DataFrame:
    """One row per (type, phrasing); the first row is the control: the first `control` facts of the set's own
    `function_module` type on its held-out phrasing, so a row of zeros means the type, not the instrument."""
    from semalign_lens.data.tasks.stdlib_facts import stdlib_facts

    known = stdlib_facts().of_type("function_module")[:control]
    table = ev.fact_scores(teacher, known, "eval", 1)
    rows = [{"type": "function_module (in the set: control)", "phrasing": known[0].templates[-1],
             "candidates": len(known), "teacher_exact": int(table["exact_match"].sum())}]
    for kind, (source, phrasings) in CANDIDATES.items():
        items = source()
        for phrasing in phrasings:
            facts = [Fact(kind, subject, " " + answer, ("{subject}", phrasing)) for subject, answer in items]
            table = ev.fact_scores(teacher, facts, "eval", 1)
            rows.append({"type": kind, "phrasing": phrasing, "candidates": len(facts),
                         "teacher_exact": int(table["exact_match"].sum())})
    return pd.DataFrame(rows)


def column(phrasing: str) -> str:
    """A phrasing as a one-line CSV column name (newlines written as \\n)."""
    return phrasing.replace("\n", "\\n")


def probe_phrasings(teacher, facts=None) -> pd.DataFrame:
    """One row per fact of the `PHRASINGS` types, one 0/1 column per phrasing (`column`): the teacher's exact
    match. A phrasing that holds a fact's answer (a few-shot example) scores 0 for that fact."""
    from semalign_lens.data.tasks.stdlib_facts import stdlib_facts

    facts = facts or stdlib_facts()
    frames = []
    for kind, phrasings in PHRASINGS.items():
        known = facts.of_type(kind)
        frame = pd.DataFrame({"type": kind, "fact": [f.id for f in known]})
        for phrasing in phrasings:
            probes = [Fact(kind, f.subject, f.answer, ("{subject}", phrasing)) for f in known]
            table = ev.fact_scores(teacher, probes, "eval", 1)
            clean = [f.answer not in p.prompts()[-1] for f, p in zip(known, probes, strict=True)]
            frame[column(phrasing)] = (table["exact_match"].to_numpy() * clean).astype(int)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="smollm2-135m", help="zoo name, HF directory or .gguf (or 'tiny')")
    parser.add_argument("--out", help=f"output CSV (default {OUT.name}, with --phrasings {OUT_PHRASINGS.name})")
    parser.add_argument("--phrasings", action="store_true", help="probe phrasings of the set's module types")
    args = parser.parse_args(argv)
    if args.teacher == "tiny":
        from semalign_lens.models.tiny import tiny_pair

        teacher = tiny_pair(seed=0).teacher
    else:
        teacher = load_model(args.teacher)
    out = Path(args.out or (OUT_PHRASINGS if args.phrasings else OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.phrasings:
        table = probe_phrasings(teacher)
        table.to_csv(out, index=False)
        for kind, group in table.groupby("type", sort=False):
            print(f"\n{kind}: {len(group)} facts; teacher exact per phrasing")
            for phrasing in PHRASINGS[kind]:
                print(f"  {int(group[column(phrasing)].sum()):5d}  {column(phrasing)}")
        print(f"wrote {out}")
        return 0
    table = probe(teacher)
    table.to_csv(out, index=False)
    print(table.assign(phrasing=table["phrasing"].str.replace("\n", "\\n")).to_markdown(index=False))
    new = table.iloc[1:]
    print(f"\nnew types: {int(new['teacher_exact'].sum())} exact of {int(new['candidates'].sum())} tries; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
