"""Input checks shared by every entry point: hooked models, output paths, text files, positive sizes.

Each raises `SemalignError` naming the problem *and* the fix, so the command line prints one line (exit
code 2, `errors.run_reporting_errors`) and the Python API refuses before any work starts: the checks are
called at the top of each entry point, before a model loads or a file is written, so a refused call leaves
existing outputs as they were. The table of handled bad inputs is `docs/bad_inputs.md`.
"""

from __future__ import annotations

import json
import numbers
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import SemalignError

LOAD_HINT = "semalign_lens.models.load.load_model(model, tokenizer=tok)"


# ------------------------------------------------------------------------------------------ models

def is_hf_model(obj: Any) -> bool:
    """A plain transformers `PreTrainedModel` (checked by class name: no transformers import needed)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(obj).__mro__)


def is_bridge(obj: Any) -> bool:
    """A hooked model: a TransformerBridge from `models.load.load_model` (anything with `run_with_hooks`)."""
    return hasattr(obj, "run_with_hooks")


def require_hooked(model: Any, role: str = "model") -> None:
    """Refuse what is not a hooked model (a TransformerBridge from `models.load.load_model`, or anything with its
    `.cfg`): most often a plain HF model passed where the bridge is expected."""
    if hasattr(model, "cfg"):
        return
    if is_hf_model(model):
        raise SemalignError(f"the {role} is a plain Hugging Face model ({type(model).__name__}), but a hooked model "
                            f"(TransformerBridge) is expected; wrap it first: {LOAD_HINT}")
    hint = (f"semalign_lens.models.load.load_model({str(model)!r})" if isinstance(model, (str, os.PathLike))
            else LOAD_HINT)
    raise SemalignError(f"the {role} must be a model source (zoo name, HF directory, .gguf, Hub name) loaded as a "
                        f"hooked model (TransformerBridge), got {type(model).__name__}; load it with {hint}")


# ------------------------------------------------------------------------------------------ output paths

def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path) -> bool:
    """Whether files can be created in `folder` (a real probe: permission bits say nothing to root, nor
    about read-only mounts)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".semalign-write-test-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """`path` is (or can be created as) a writable directory; refuse an existing file or a read-only place.

    Creates nothing: call it before any work, so a refused call leaves the file system as it was.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SemalignError(f"{what} {path} is an existing file, not a directory; choose a directory path "
                            "(a new or existing directory), or move the file away")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise SemalignError(f"{what} {path} cannot be created: {base} is a file, not a directory; choose a "
                            "path under an existing directory")
    if not _writable(base):
        where = "is" if base == path else f"would be created in {base}, which is"
        raise SemalignError(f"{what} {path} {where} not writable (read-only or permission denied); choose a "
                            "writable directory or fix its permissions")
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file",
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """`path` can be written as a file: not a directory, the right suffix, in a writable directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        example = path / f"report{suffixes[0] if suffixes else ''}"
        raise SemalignError(f"{what} {path} is a directory; give a file path, e.g. {example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise SemalignError(f"{what} {path} must end in {' or '.join(suffixes)}; e.g. {path.with_suffix(suffixes[0])}")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise SemalignError(f"{what} {path} cannot be written: {base} is a file, not a directory; choose a path "
                            "in an existing directory")
    if not _writable(base):
        raise SemalignError(f"{what} {path} cannot be written: {base} is not writable (read-only or permission "
                            "denied); choose a writable directory or fix its permissions")
    if path.exists() and not os.access(path, os.W_OK):
        raise SemalignError(f"{what} {path} exists and is read-only; choose another path or fix its permissions")
    return path


# ------------------------------------------------------------------------------------------ input files

def read_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """The text of `path` (UTF-8, universal newlines, a leading BOM dropped), or a one-line error naming the
    file: missing, a directory, unreadable, or not UTF-8 (with the first bad byte and its offset)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SemalignError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise SemalignError(f"{what} {path} is a directory; point at a file") from None
    except PermissionError:
        raise SemalignError(f"{what} {path} cannot be read (permission denied); fix its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SemalignError(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, "
                            f"line {line}); "
                            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 OLD > NEW) or point at another "
                            "file") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_json(path: str | os.PathLike, what: str = "file", fix: str = "") -> Any:
    """The JSON value in `path` (read as `read_utf8` reads it), or a one-line error naming the file, where its JSON
    breaks, and `fix` (what to do instead)."""
    try:
        return json.loads(read_utf8(path, what))
    except json.JSONDecodeError as err:
        raise SemalignError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
                            + (f"; {fix}" if fix else "")) from None


_ST_HEADER_LIMIT = 100 << 20  # safetensors refuses headers above 100 MB


def check_safetensors(path: str | os.PathLike, what: str = "weights file",
                      fix: str = "re-download or re-export the model (its weights file is damaged)") -> None:
    """Refuse a missing, truncated or corrupted safetensors file from its header alone (no tensor is read):
    the 8-byte header length, the JSON header, and tensors that end exactly at the end of the file."""
    path = Path(path)
    if not path.is_file():
        raise SemalignError(f"{what} {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        problem = None
        if n < 0:
            problem = f"truncated: {size} bytes, too short for a safetensors header"
        elif n > min(size - 8, _ST_HEADER_LIMIT):
            problem = (f"truncated or corrupt: its header claims {n} bytes but the file has {size}" if n < _ST_HEADER_LIMIT
                       else "corrupt: not a safetensors header")
        else:
            try:
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                problem = "corrupt: its header is not valid safetensors JSON"
            else:
                expected = 8 + n + end
                if expected != size:
                    problem = (f"truncated: {size} bytes on disk, its header needs {expected}" if size < expected
                               else f"corrupt: {size - expected} bytes beyond the last tensor")
    if problem:
        raise SemalignError(f"{what} {path} is {problem}; {fix}")


def require_tokenizer(tokenizer: Any) -> None:
    """Refuse what is not a Hugging Face tokenizer (None, a path string, ...)."""
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) or not callable(tokenizer):
        raise SemalignError(f"expected a Hugging Face tokenizer (model.tokenizer, or "
                            f"transformers.AutoTokenizer.from_pretrained(DIR)), got {type(tokenizer).__name__}")


# ------------------------------------------------------------------------------------------ numbers

def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= `minimum` (bools and non-whole numbers refused)."""
    whole = isinstance(value, numbers.Integral) or isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not whole or value < minimum:
        raise SemalignError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def require_choices(name: str, values: Iterable[str], valid: Iterable[str]) -> list[str]:
    """`values` as a non-empty list, each one of `valid`."""
    values, valid = list(values), tuple(valid)
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise SemalignError(f"unknown {name} {bad}; valid: {', '.join(valid)}" if bad else
                            f"{name} is empty; choose at least one of {', '.join(valid)}")
    return values
