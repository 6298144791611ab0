"""The reports floor: pages and figures: the HTML page, plots, the pairing page, model cards.

Modules here import only this floor and the floors below it (tests/test_imports.py).
"""

from ..core.rooms import rooms

__getattr__ = rooms(__name__)
