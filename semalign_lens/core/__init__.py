"""The core floor: errors, checks, paths, config, precision, progress, run-directory locks: what every floor uses.

Modules here import only this floor and the floors below it (tests/test_imports.py).
"""

from .rooms import rooms

__getattr__ = rooms(__name__)
