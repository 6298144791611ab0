"""One exception type for problems the user can fix.

Command lines print these as a single line (no traceback, `run_reporting_errors`; a multi-line message is
joined into one); everything else is a bug and keeps its traceback. Messages name the problem *and* the fix.
Shared input checks (hooked models, output paths, UTF-8 files) live in `semalign_lens.checks`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class SemalignError(ValueError):
    """Bad input or a missing resource, with a message that says how to fix it."""


def run_reporting_errors(func: Callable[..., Any], *args: Any, prog: str = "semalign", **kwargs: Any) -> int:
    """Call `func` as a command's body and return its exit code: its own int result (0 for anything else), or
    2 after printing a `SemalignError` as one line `prog: error: ...` on stderr."""
    try:
        result = func(*args, **kwargs)
    except SemalignError as err:
        _close_progress_bars()  # so that no bar redraws itself after the error line
        sys.stdout.flush()  # what the command printed before comes first; the error is the last line of stderr
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr, flush=True)
        return 2
    return result if isinstance(result, int) else 0


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
