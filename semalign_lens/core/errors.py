"""One exception type for problems the user can fix, and how commands report them and interruptions.

Command lines print these as a single line (no traceback, `run_reporting_errors`; a multi-line message is
joined into one); everything else is a bug and keeps its traceback. Messages name the problem *and* the fix.
Shared input checks (hooked models, output paths, UTF-8 files) live in `semalign_lens.core.checks`.

Two faults are not bugs either, and get one line too: a write the file system refuses (disk full, quota,
read-only, file-size limit, permissions: `writing` names the file at the write sites, and any such `OSError`
that reaches `run_reporting_errors` is reported the same way, exit code 2), and Ctrl-C / SIGTERM (`Interrupted`,
exit code 128 + the signal), a normal way to stop a run that resumes from its last checkpoint.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class SemalignError(ValueError):
    """Bad input or a missing resource, with a message that says how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM. A `KeyboardInterrupt`, so code that lets interrupts through still does; its
    message is the one line a command prints, saying how to go on (a trainer names the step it resumes from)."""

    def __init__(self, message: str = "interrupted; rerun the same command to run it again",
                 signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum

    @classmethod
    def at_step(cls, step: int | None, resume: int, cause: BaseException) -> Interrupted:
        """A training loop's line: the step reached (if known), and the checkpoint the same command resumes from."""
        at = f" at step {step}" if step is not None else ""
        return cls(f"interrupted{at}; the same command resumes from step {resume}",
                   getattr(cause, "signum", signal.SIGINT))


# errno -> what to do about it (the reason itself is the OS's text, os.strerror)
_WRITE_FIXES = {
    errno.ENOSPC: "free disk space there (or write elsewhere)",
    errno.EDQUOT: "free space within your disk quota (or write elsewhere)",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or write to a file system that allows larger files",
    errno.EROFS: "the file system is read-only: remount it writable or write elsewhere",
    errno.EACCES: "fix its permissions or write elsewhere",
    errno.EPERM: "fix its permissions or write elsewhere",
}


def _os_errno(err: BaseException) -> int | None:
    """The OS error number of an `OSError`, or of a safetensors `SafetensorError` that wraps one (it carries
    only the text, e.g. 'No space left on device (os error 28)')."""
    if isinstance(err, OSError):
        return err.errno
    if type(err).__name__ == "SafetensorError" and (m := re.search(r"os error (\d+)", str(err))):
        return int(m.group(1))
    return None


def write_failure(err: BaseException, path: str | os.PathLike | None = None,
                  then: str = "then rerun the same command") -> SemalignError | None:
    """A refused write (`_WRITE_FIXES`) as one `SemalignError` naming the file, the reason and the fix; None
    for any other error (a bug, or a failure that is not the file system's refusal). Without `path` (no
    `writing` site: the file comes from the error) a permission error may be a read's, so it says "access"."""
    code = _os_errno(err)
    if code not in _WRITE_FIXES:
        return None
    verb = "access" if path is None and code in (errno.EACCES, errno.EPERM) else "write"
    path = path or getattr(err, "filename", None)
    return SemalignError(f"cannot {verb} {path or 'a file'}: {os.strerror(code)}; {_WRITE_FIXES[code]}, {then}")


@contextmanager
def writing(path: str | os.PathLike, then: str = "then rerun the same command") -> Iterator[None]:
    """Around a write site: a refused write becomes one `SemalignError` naming `path` (a write that fails
    mid-file raises an `OSError` without a file name, and safetensors' error names none)."""
    try:
        yield
    except Exception as err:
        failure = write_failure(err, path, then)
        if failure is None:
            raise
        raise failure from err


def run_reporting_errors(func: Callable[..., Any], *args: Any, prog: str = "semalign",
                         interrupted: str | None = None, **kwargs: Any) -> int:
    """Call `func` as a command's body and return its exit code: its own int result (0 for anything else);
    2 after printing a `SemalignError` (or a refused write) as one line `prog: error: ...` on stderr; 128 + the
    signal after Ctrl-C or SIGTERM, printing `prog: interrupted...` (`interrupted` replaces a generic line or
    one that names a step, e.g. for a command whose resume is another flag)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main_thread else None
    try:
        result = func(*args, **kwargs)
    except KeyboardInterrupt as err:
        message = interrupted or (str(err) if isinstance(err, Interrupted) else Interrupted().args[0])
        _report(f"{prog}: {message}")
        return 128 + getattr(err, "signum", signal.SIGINT)
    except Exception as err:
        failure = err if isinstance(err, SemalignError) else write_failure(err)
        if failure is None:
            raise
        _report(f"{prog}: error: {one_line(str(failure))}")
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else 0


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum=signum)


def _report(line: str) -> None:
    _close_progress_bars()  # so that no bar redraws itself after the line
    sys.stdout.flush()  # what the command printed before comes first; this is the last line of stderr
    print(line, file=sys.stderr, flush=True)


def _close_progress_bars() -> None:
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", []) or []):
        try:
            bar.close()
        except Exception:  # a bar that cannot close must not hide the user's error
            pass


def one_line(message: str) -> str:
    """A message on one line: a multi-line one (e.g. a list of malformed records) joined with '; '."""
    out = ""
    for part in (p.strip() for p in message.splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out
