"""Facts a person would agree are facts, built offline from what ships with Python itself.

The shipped `facts.json` holds 115 hand-written facts, of which the 135M teacher answers 35 exactly: too few
to measure knowledge transfer (`analysis/TRANSFER.md` asks for at least 300). Here every answer is *read from the running interpreter*, so the
set is large, true by construction and needs no download:

- `function_module` — which module defines a public function or class (`deepcopy` → copy), from
  `obj.__module__` over everyday modules and some less common ones (`MODULES`), a package's `__all__`
  counting for the package (`gather` → asyncio); a name two of them define (`sqrt`: math and cmath) is left out;
- `constant_module` — which module exposes a public constant (`AF_INET` → socket), at most 40 per module;
- `function_doc`    — a function or class of a module from the first line of its docstring;
- `module_doc`      — a module from the first line of its docstring;
- `builtin_doc`     — a built-in function from the first line of its docstring (→ `abs`);
- `exception_base`  — the direct base class of each built-in exception (`KeyError` → LookupError);
- `http_phrase` / `http_code` — `http.HTTPStatus`: the reason phrase of a code, and the code of a phrase;
- `errno_message`   — `os.strerror`'s message of an `errno` name (`ENOENT` → No such file or directory).

Every fact has four phrasings. The **last is held out** (the benchmark scores it; the student never trains on
it), the other three are transfer text. Phrasings are chosen by what SmolLM2-135M answers, measured over
every candidate (`python analysis/probe_fact_types.py --phrasings`, `analysis/out/transfer/
fact_phrasing_probe.csv`): the 135M teacher states module facts in code, not in prose (the earlier prose
phrasing `In Python, X is imported from the module`: 7 of 1,961; code comments followed by `from`/`import`:
119-229). So the module
types' transfer phrasings are code too — KD can only pass on what the teacher expresses on the transfer text —
and their held-out phrasing is another code form (`import X` where the transfer text has `from X`). A
docstring that names its own answer, or a few-shot example or context line (`import sys`) that is itself an
answer of the type, is left out, so no prompt contains its answer. `stdlib_facts()` is deterministic for one
Python version and platform (in its description).
"""

from __future__ import annotations

import builtins
import errno
import http
import importlib
import inspect
import os
import sys
from collections.abc import Callable

from ...core.errors import SemalignError
from .facts import Fact, FactSet

# Per type: three transfer phrasings, then the held-out one. `{subject}` is the fact's subject; `{module}` (the
# doc types only) is filled per fact.
TEMPLATES: dict[str, list[str]] = {
    "function_module": [
        "# {subject} comes from the standard library\nfrom",
        "import sys\n\n# {subject} comes from the standard library\nfrom",
        "# uses {subject}\nfrom",
        "import sys\n\n# {subject} is in the standard library\nimport",
    ],
    "constant_module": [
        "# the constant {subject} comes from the standard library\nfrom",
        "import sys\n\n# {subject} comes from the standard library\nfrom",
        "# uses {subject}\nfrom",
        "# {subject} is in the standard library\nimport",
    ],
    "function_doc": [
        "In the {module} module, the function documented as \"{subject}\" is",
        "Q: Which name in Python's {module} module says \"{subject}\"? A:",
        "The {module} module documents one of its names as \"{subject}\"; that name is",
        "# {subject}\nfrom {module} import",
    ],
    "module_doc": [
        "The Python module documented as \"{subject}\" is",
        "Q: Which standard-library module says \"{subject}\"? A:",
        "In the standard library, \"{subject}\" describes the module",
        "# {subject}\nimport",
    ],
    "builtin_doc": [
        "The Python built-in function that does this: \"{subject}\" is",
        "Q: Which Python built-in says \"{subject}\"? A:",
        "In Python, the built-in documented as \"{subject}\" is",
        "\"\"\"{subject}\"\"\"\ndef",
    ],
    "exception_base": [
        "In Python, {subject} is a subclass of",
        "The built-in exception {subject} derives directly from",
        "Q: What is the base class of {subject}? A:",
        "KeyError -> LookupError\nZeroDivisionError -> ArithmeticError\n{subject} ->",
    ],
    "http_phrase": [
        "HTTP status {subject} means",
        "The HTTP response code {subject} has the reason phrase",
        "A server that answers with status {subject} says",
        "HTTP 404 Not Found\nHTTP 200 OK\nHTTP {subject}",
    ],
    "http_code": [
        "A server answers {subject} with the status code",
        "Q: Which HTTP status code means {subject}? A:",
        "The numeric HTTP status of \"{subject}\" is",
        "The HTTP status code for {subject} is",
    ],
    "errno_message": [
        "The errno {subject} means",
        "os.strerror(errno.{subject}) returns the message",
        "The C error code {subject} is described as",
        "ENOENT: No such file or directory\nEACCES: Permission denied\n{subject}:",
    ],
}

# Everyday standard-library modules and subpackages: the ones a code model has seen imported many times.
MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "atexit", "base64", "binascii", "bisect", "bz2", "cProfile",
    "calendar", "cmath", "codecs", "collections", "collections.abc", "colorsys", "concurrent.futures",
    "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "email.mime.multipart", "email.mime.text", "email.utils", "enum",
    "faulthandler", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "getpass",
    "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client",
    "http.cookies", "http.server", "importlib", "importlib.resources", "importlib.util", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox", "math",
    "mimetypes", "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "os.path", "pathlib", "pickle",
    "pkgutil", "platform", "plistlib", "pprint", "pstats", "queue", "quopri", "random", "re", "reprlib", "runpy",
    "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "struct", "subprocess", "sys", "sysconfig",
    "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "tomllib", "traceback",
    "tracemalloc", "types", "typing", "unicodedata", "unittest", "unittest.mock", "urllib.error", "urllib.parse",
    "urllib.request", "urllib.robotparser", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom",
    "xml.etree.ElementTree", "xmlrpc.client", "zipfile", "zlib", "zoneinfo",
    # less everyday, on every platform and not deprecated: each adds names only it defines
    "bdb", "cmd", "code", "compileall", "ctypes", "email.encoders", "email.generator", "email.header", "email.parser",
    "email.policy", "http.cookiejar", "imaplib", "importlib.abc", "importlib.metadata", "logging.config", "mmap",
    "pdb", "pickletools", "poplib", "py_compile", "symtable", "tabnanny", "tkinter", "tkinter.filedialog",
    "tkinter.messagebox", "tkinter.ttk", "trace", "turtle", "venv", "wsgiref.simple_server", "wsgiref.util",
    "xml.sax", "xml.sax.saxutils", "zipapp",
)


def _modules() -> list:
    """The modules of `MODULES` this interpreter can import (a platform may lack one, e.g. `ssl`)."""
    out = []
    for name in MODULES:
        try:
            out.append(importlib.import_module(name))
        except ImportError:
            continue
    return out


def _defined_here(obj, module) -> bool:
    """True when `obj` is defined by `module` (also through its C accelerator: `_pickle` for `pickle`), or by
    one of its own submodules when `module` exports it in `__all__` (asyncio's `gather` lives in
    `asyncio.tasks`; one writes `from asyncio import gather`)."""
    home = getattr(obj, "__module__", None) or ""
    return (home.lstrip("_") == module.__name__ or home == module.__name__.replace(".", "_")
            or (home.startswith(module.__name__ + ".") and hasattr(module, "__all__")))


def _public(module) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return [(n, getattr(module, n)) for n in names
            if hasattr(module, n) and (inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))
                                       or inspect.isbuiltin(getattr(module, n)))]


def _first_line(doc: str | None, name: str = "") -> str:
    """The first descriptive docstring line (signature lines skipped), without its final full stop."""
    for line in (doc or "").strip().splitlines():
        line = line.strip()
        if line and not (name and line.startswith(name + "(")) and "(" not in line[:1]:
            return line.rstrip(".")
    return ""


def _function_module() -> list[tuple[str, str]]:
    owners: dict[str, set[str]] = {}
    for module in _modules():
        for name, obj in _public(module):
            if _defined_here(obj, module):
                owners.setdefault(name, set()).add(module.__name__)
    builtin_names = set(dir(builtins))
    return sorted((name, next(iter(mods))) for name, mods in owners.items()
                  if len(mods) == 1 and name not in builtin_names and len(name) > 2)


def _constant_module(per_module: int = 40) -> list[tuple[str, str]]:
    """(name, module) for public constants (numbers, strings, bytes) that exactly one module exposes; at most
    `per_module` from one module (evenly spaced by name), so that `socket`'s 300 do not make up the set."""
    owners: dict[str, set[str]] = {}
    for module in _modules():
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, (int, float, str, bytes)) and not isinstance(value, bool) and len(name) > 2:
                owners.setdefault(name, set()).add(module.__name__)
    by_module: dict[str, list[str]] = {}
    for name, mods in sorted(owners.items()):
        if len(mods) == 1:
            by_module.setdefault(next(iter(mods)), []).append(name)
    out = []
    for module, names in by_module.items():
        step = max(1, len(names) / per_module)
        out += [(names[int(i * step)], module) for i in range(min(per_module, len(names)))]
    return sorted(out)


def _docstring_ok(text: str, answer: str) -> bool:
    """A usable description: not too short or long, no quote marks, and it does not name its own answer."""
    return 12 <= len(text) <= 100 and '"' not in text and answer.lower() not in text.lower()


def _function_doc() -> list[tuple[str, str, str]]:
    """(docstring line, name, module) for functions and classes whose first docstring line is unique."""
    found: dict[str, list[tuple[str, str]]] = {}
    for module in _modules():
        for name, obj in _public(module):
            if _defined_here(obj, module):
                text = _first_line(obj.__doc__, name)
                if _docstring_ok(text, name) and module.__name__.split(".")[-1].lower() not in text.lower():
                    found.setdefault(text, []).append((name, module.__name__))
    return sorted((text, *hits[0]) for text, hits in found.items() if len(set(hits)) == 1)


def _module_doc() -> list[tuple[str, str]]:
    found: dict[str, set[str]] = {}
    for module in _modules():
        text = _first_line(module.__doc__)
        leaf = module.__name__.split(".")[-1]
        if _docstring_ok(text, leaf) and module.__name__.lower() not in text.lower():
            found.setdefault(text, set()).add(module.__name__)
    return sorted((text, next(iter(mods))) for text, mods in found.items() if len(mods) == 1)


def _builtin_doc() -> list[tuple[str, str]]:
    out, seen = [], set()
    for name in dir(builtins):
        obj = getattr(builtins, name)
        if name.startswith("_") or not inspect.isbuiltin(obj):
            continue
        text = _first_line(obj.__doc__, name)
        if _docstring_ok(text, name) and text not in seen:
            seen.add(text)
            out.append((text, name))
    return sorted(out)


def _exception_base() -> list[tuple[str, str]]:
    return sorted((name, obj.__bases__[0].__name__) for name in dir(builtins)
                  if inspect.isclass(obj := getattr(builtins, name)) and issubclass(obj, BaseException)
                  and obj is not BaseException)


def _http_phrase() -> list[tuple[str, str]]:
    return [(str(s.value), s.phrase) for s in http.HTTPStatus]


def _http_code() -> list[tuple[str, str]]:
    return [(s.phrase, str(s.value)) for s in http.HTTPStatus]


def _errno() -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for code, name in sorted(errno.errorcode.items()):
        message = os.strerror(code)
        if not message.startswith("Unknown error"):
            out.setdefault(name, message)
    return sorted(out.items())


SOURCES: dict[str, Callable[[], list]] = {
    "function_module": _function_module, "constant_module": _constant_module, "function_doc": _function_doc, "module_doc": _module_doc,
    "builtin_doc": _builtin_doc, "exception_base": _exception_base, "http_phrase": _http_phrase,
    "http_code": _http_code, "errno_message": _errno}


def _fact(fact_type: str, subject: str, answer: str, module: str | None = None) -> Fact | None:
    """The fact with its four phrasings, or None when a prompt already holds the answer: a few-shot example
    that is this very fact, or a subject that contains its answer."""
    templates = [t.replace("{module}", module) if module else t for t in TEMPLATES[fact_type]]
    fixed = " ".join(t.replace("{subject}", "\x00") for t in templates)
    if subject in fixed or f" {answer}" in fixed or f"{answer}\n" in fixed:
        return None
    fact = Fact(fact_type, subject, " " + answer, tuple(templates))
    if any(fact.answer in p for p in fact.prompts()):  # `array` from array: the prompt says it
        return None
    check_phrasings(fact)
    return fact


def stdlib_facts() -> FactSet:
    """Every fact of every type above, read from this interpreter; the held-out phrasing is the last one."""
    facts = []
    for fact_type, source in SOURCES.items():
        for item in source():
            subject, answer, *module = item
            fact = _fact(fact_type, subject, answer, module[0] if module else None)
            if fact is not None:
                facts.append(fact)
    version = ".".join(map(str, sys.version_info[:3]))
    return FactSet(facts, "stdlib-facts",
                   f"Facts read from the Python {version} standard library (semalign_lens.data.tasks.stdlib_facts): "
                   f"{len(facts)} facts of {len(TEMPLATES)} types, four phrasings each, the last held out.",
                   f"python {version}", {k: list(v) for k, v in TEMPLATES.items()})


def check_phrasings(fact: Fact, n_eval: int = 1) -> None:
    """Refuse a fact whose held-out phrasing is also one of its transfer phrasings (the benchmark would score
    the student on text it trained on)."""
    prompts = fact.prompts()
    held, train = prompts[-n_eval:], prompts[:-n_eval]
    same = sorted(set(held) & set(train))
    if same:
        raise SemalignError(f"fact {fact.id!r}: the held-out phrasing {same[0]!r} is also a transfer phrasing; "
                            "give the fact distinct phrasings")
