"""The alignment config: bad values refused with a clear message; the config files in the repo parse."""

from __future__ import annotations

import pytest
from trainer_helpers import REPO

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import load_align_config


@pytest.mark.parametrize("overrides,message", [
    ({"learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\].*valid keys"),
    ({"schedule": {"lrr": 1e-3}}, r"unknown key\(s\) \['lrr'\] in config.schedule; valid keys.*'lr'"),
    ({"schedule.lr": 0.0}, "schedule.lr must be positive"),
    ({"schedule.lr": [1e-3, -1e-3, 1e-3]}, "schedule.lr must be positive"),
    ({"objective.terms": {"kl": 0.0}}, "objective.terms.kl must be a positive weight"),
    ({"objective.terms": {"relation": -1.0}}, "objective.terms.relation must be a positive weight"),
    ({"objective.terms": {"klx": 1.0}}, "unknown objective 'klx'"),
    ({"objective.options": {"kl": {"temp": 2}}}, r"unknown option\(s\) \['temp'\] for objective 'kl'"),
    ({"schedule.mode": "layerwise"}, "mode must be one of"),
    ({"targets.mode": "cached"}, r"\['kl'\] need teacher logits"),
])
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(SemalignError, match=message):
        load_align_config(None, {"objective.terms": {"relation": 1.0, "kl": 1.0}, **overrides})


def test_config_files_in_the_repo_parse():
    files = sorted((REPO / "configs").glob("align_*.toml"))
    assert files
    for path in files:
        load_align_config(path)
