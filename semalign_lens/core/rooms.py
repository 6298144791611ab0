"""A floor's modules as attributes of its package, imported on first use (PEP 562): `sl.data.tokens` works as
`import semalign_lens.data.tokens` does, while `import semalign_lens.data` alone loads nothing (no torch)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType


def rooms(package: str) -> Callable[[str], ModuleType]:
    """The `__getattr__` of the floor package named `package`."""

    def __getattr__(name: str) -> ModuleType:
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
