"""The models floor: loading, pairs, plain copies, residual states, native and GGUF models, architectures, LoRA, the
zoo, tiny models.

Modules here import only this floor and the floors below it (tests/test_imports.py).
"""

from ..core.rooms import rooms

__getattr__ = rooms(__name__)
