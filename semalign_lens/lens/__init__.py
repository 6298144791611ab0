"""The lens floor: looking inside: capture, similarity, attribution, patching, pairing, aligned stacks, semantics.

Modules here import only this floor and the floors below it (tests/test_imports.py).
"""

from ..core.rooms import rooms

__getattr__ = rooms(__name__)
