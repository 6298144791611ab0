"""One exception type for problems the user can fix.

The CLI prints these as a single line (no traceback); everything else is a bug and keeps its traceback.
Messages name the problem *and* the fix.
"""


class SemalignError(ValueError):
    """Bad input or a missing resource, with a message that says how to fix it."""
