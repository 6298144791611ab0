"""The one registry: a taken name is refused unless replaced, an unknown name is one line listing the valid ones."""

from __future__ import annotations

import pytest

from semalign_lens.core.errors import SemalignError
from semalign_lens.core.registry import Registry


def test_register_lookup_and_names():
    colours = Registry("colour")
    colours.register("red", 1)
    colours.register("blue", 2)
    assert colours.lookup("blue") == 2 and colours.names() == ("red", "blue") and list(colours) == ["red", "blue"]
    with pytest.raises(SemalignError, match="colour 'red' is already registered; .*replace=True"):
        colours.register("red", 3)
    assert colours.register("red", 3, replace=True) == 3 and colours.lookup("red") == 3
    with pytest.raises(SemalignError, match=r"^unknown colour 'green'; valid colours: red, blue$"):
        colours.lookup("green")
