"""The data floor: tokens, the stdlib corpus, the code-transfer set, vocabulary alignment, bytes, prompt-pair tasks.

Modules here import only this floor and the floors below it (tests/test_imports.py).
"""

from ..core.rooms import rooms

__getattr__ = rooms(__name__)
