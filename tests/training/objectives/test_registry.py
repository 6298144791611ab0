"""The objective registry: the paper's terms and kinds, unknown names and options, new terms, interfaces."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.objectives import (
    OBJECTIVES,
    LayerInputs,
    Objective,
    OutputInputs,
    get_objective,
    register_objective,
)


def test_registry_has_the_papers_terms_with_their_kinds():
    kinds = {name: OBJECTIVES[name].kind for name in ("cosine", "relation", "fisher", "kl", "cosine_onehot", "ce")}
    assert kinds == {"cosine": "layer", "relation": "layer", "fisher": "layer", "kl": "output",
                     "cosine_onehot": "output", "ce": "output"}
    assert get_objective("kl").needs_teacher_logits
    assert all(OBJECTIVES[n].source for n in kinds)


def test_unknown_objective_and_option_are_named():
    with pytest.raises(SemalignError, match="unknown objective 'cosin'; valid objectives: .*cosine, relation"):
        get_objective("cosin")
    with pytest.raises(SemalignError, match="unknown option.*temprature.*valid options.*temperature"):
        get_objective("kl").options({"temprature": 2.0})


def test_register_a_baseline_objective_and_use_it_through_the_inputs():
    obj = Objective("test_mse", "layer", lambda x, scale: scale * (x.state - x.target).pow(2)[x.mask].mean(),
                    {"scale": 1.0}, source="test")
    register_objective(obj, replace=True)
    with pytest.raises(SemalignError, match="already registered"):
        register_objective(obj)
    h = torch.zeros(1, 2, 3)
    x = LayerInputs(0, h, h, torch.ones(1, 2, 3), h, torch.ones(1, 2, dtype=torch.bool), lambda v: v)
    assert get_objective("test_mse").fn(x, **obj.options({"scale": 2.0})) == 2.0
    out = OutputInputs(torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(SemalignError, match="needs teacher logits"):
        get_objective("kl").fn(out, **get_objective("kl").options(None))
    del OBJECTIVES["test_mse"]


def test_layer_interface_option_picks_state_or_contribution():
    mask = torch.ones(1, 4, dtype=torch.bool)
    s, c = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    x = LayerInputs(0, s, c, s.clone(), -c, mask, lambda v: v)
    cos = get_objective("cosine")
    assert cos.fn(x, interface="state") < 1e-6
    assert abs(cos.fn(x, interface="contribution") - 2.0) < 1e-6
    with pytest.raises(SemalignError, match="interface"):
        cos.fn(x, interface="output")
