"""One exception type for problems the user can fix.

Command lines print these as a single line (no traceback, `run_reporting_errors`); everything else is a bug
and keeps its traceback. Messages name the problem *and* the fix.
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
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
