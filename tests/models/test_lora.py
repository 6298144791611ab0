"""LoRA through peft: the adapted output is W + (α/r)·B·A computed by hand, merging keeps it, and a GPT-2
block's Conv1D layers are adapted like linear ones."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from semalign_lens.core.errors import SemalignError
from semalign_lens.models.lora import (
    add_lora,
    dense_weight,
    lora_factors,
    lora_layers,
    lora_parameters,
    merge_lora,
)


def _block(conv1d: bool) -> nn.Module:
    torch.manual_seed(0)
    block = nn.Module()
    block.v_proj = Conv1D(5, 7) if conv1d else nn.Linear(7, 5)
    block.keep = nn.Linear(7, 7)
    return block


@pytest.mark.parametrize("conv1d", [False, True])
def test_adapted_output_is_w_plus_scaled_ba_and_merging_keeps_it(conv1d):
    block = _block(conv1d)
    w0 = dense_weight(block.v_proj).detach().clone()
    bias = block.v_proj.bias.detach().clone()
    paths = add_lora(block, ["v_proj"], rank=3, alpha=6.0, generator=torch.Generator().manual_seed(1))
    assert paths == ["v_proj"] and len(lora_parameters(block)) == 2
    (_, layer), = lora_layers(block)
    a, b, scale = lora_factors(layer)
    assert scale == 2.0 and torch.count_nonzero(b) == 0  # a fresh adapter changes nothing
    with torch.no_grad():
        b.copy_(torch.randn_like(b))
    x = torch.randn(4, 7)
    want = x @ (w0 + scale * b.detach() @ a.detach()).t() + bias
    assert torch.allclose(block.v_proj(x), want, atol=1e-5)
    assert merge_lora(block) == 1 and isinstance(block.v_proj, Conv1D if conv1d else nn.Linear)
    assert torch.allclose(block.v_proj(x), want, atol=1e-5)
    assert not lora_layers(block)


def test_seeded_adapters_are_reproducible():
    inits = []
    for _ in range(2):
        block = _block(False)
        add_lora(block, ["v_proj"], 2, 4.0, torch.Generator().manual_seed(7))
        inits.append(lora_factors(lora_layers(block)[0][1])[0].detach().clone())
    assert torch.equal(*inits)


def test_a_target_the_block_lacks_names_its_linear_and_conv1d_layers():
    with pytest.raises(SemalignError, match=r"LoRA target\(s\) \['o_proj'\] are not linear layers of this block; "
                                            r"its linear \(or Conv1D\) layers are \['keep', 'v_proj'\]"):
        add_lora(_block(True), ["o_proj"], 2, 4.0)


def test_a_block_merged_from_the_whole_model_takes_a_new_adapter_without_peft_s_warning(recwarn):
    """A stage adapts blocks and merges from the whole student (`schedule.close_stage`); a later stage (the
    end-to-end one of local-then-global) adapts the same block again: peft finds no stale record of the first
    adapter and says nothing, and the new adapter starts from the merged weight (its B is zero)."""
    model = nn.Module()
    model.block = _block(False)
    add_lora(model.block, ["v_proj"], 2, 4.0, torch.Generator().manual_seed(7))
    with torch.no_grad():
        lora_factors(lora_layers(model)[0][1])[1].fill_(0.5)
    merged = dense_weight(model.block.v_proj).detach().clone()
    x = torch.randn(3, 7)
    before = model.block.v_proj(x).detach()
    assert merge_lora(model) == 1
    add_lora(model.block, ["v_proj"], 2, 4.0, torch.Generator().manual_seed(8))
    assert not [w for w in recwarn if "peft_config" in str(w.message)]
    assert torch.allclose(model.block.v_proj(x), before, atol=1e-6)
    assert not torch.equal(merged, dense_weight(model.block.v_proj))  # the first adapter is in the weight now
