"""A name -> entry map with the package's errors (ours): the objectives and the methods register themselves in one.

A `Registry` is a plain dict (entries read, listed and removed as in one) with two additions: `register`
refuses a taken name unless told to replace it, and `lookup` turns an unknown name into one line that names it
and lists the valid ones.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import SemalignError

Entry = TypeVar("Entry")


class Registry(dict, Generic[Entry]):
    """Entries by name, in registration order; `noun` names an entry in messages ("objective", "method")."""

    def __init__(self, noun: str, entries: dict[str, Entry] | None = None):
        super().__init__(entries or {})
        self.noun = noun

    def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        """Add `entry` under `name`; a taken name is an error unless `replace`."""
        if name in self and not replace:
            raise SemalignError(f"{self.noun} {name!r} is already registered; pick another name or pass replace=True")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> Entry:
        """The entry under `name`; an unknown name is an error listing the valid ones."""
        try:
            return self[name]
        except KeyError:
            raise SemalignError(f"unknown {self.noun} {name!r}; valid {self.noun}s: {', '.join(self.names())}"
                                ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self)
