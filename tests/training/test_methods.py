"""Baselines: registry errors, config swaps only the loss, each method trains only what it should."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from semalign_lens.core.config import from_dict
from semalign_lens.core.errors import SemalignError
from semalign_lens.evaluation import code_transfer_batch
from semalign_lens.models.lora import add_lora, lora_factors, lora_layers
from semalign_lens.training import AlignConfig
from semalign_lens.training import methods as baselines
from semalign_lens.training.methods import fitnets, laten, relation, seeking

PAIRED = (0, 2)  # the tiny student has 3 blocks; block 1 is never trained
LORA_TARGETS = ("self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def base_config():
    return from_dict(AlignConfig, {
        "data": {"seq_len": 24, "n_sequences": 12, "batch_size": 4, "diag_sequences": 2},
        "schedule": {"adapter": "lora", "stage_steps": 2, "lora_rank": 4, "lr": 1e-2},
        "pairing": {"student_layers": list(PAIRED)}, "report": False, "progress": False, "cka_max_tokens": 64})


@pytest.fixture(scope="module")
def transfer(tiny_pair):
    return code_transfer_batch(tiny_pair.student.tokenizer, 16, 24)


def _weights(model) -> dict[str, torch.Tensor]:
    from semalign_lens.models.plain import clean_copy

    return {k: v.detach().clone() for k, v in clean_copy(model, share_weights=True).state_dict().items()}


def test_unknown_method_lists_valid_ones():
    with pytest.raises(SemalignError, match=r"unknown method 'sfft'; valid methods: sft, kd, fitnets"):
        baselines.get_method("sfft")


def test_method_config_swaps_only_the_loss(base_config):
    for name in baselines.METHODS:
        cfg = baselines.method_config(base_config, name).to_dict()
        ref = base_config.to_dict()
        assert cfg["objective"]["terms"] == baselines.METHODS[name].terms
        for key in ("data", "pairing", "schedule", "targets", "seed"):
            assert cfg[key] == ref[key], (name, key)
    assert base_config.objective.terms == {"relation": 1.0, "kl": 1.0}  # the base is not mutated


@pytest.fixture(scope="module")
def cross_pair():
    from semalign_lens.models.tiny import tiny_cross_pair

    return tiny_cross_pair(seed=0)


@pytest.mark.parametrize("name", list(baselines.METHODS))
def test_each_method_trains_only_the_paired_layers(name, tiny_pair, cross_pair, base_config, transfer, tmp_path):
    if baselines.get_method(name).cross_vocab:  # a cross-tokenizer row: the tiny pair of two tokenizers
        tiny_pair, base_config = cross_pair, copy.deepcopy(base_config)
        base_config.vocab = "intersection"
        transfer = code_transfer_batch(cross_pair.student.tokenizer, 16, 24)
    before = _weights(tiny_pair.student)
    result = baselines.run_method(name, base_config, tiny_pair,
                                  data=transfer, run_dir=tmp_path)
    assert result.finished
    after = {k: v.detach() for k, v in result.student.state_dict().items()}
    changed = {k for k in before if not torch.allclose(before[k], after[k], atol=1e-7)}
    allowed = {f"model.layers.{layer}.{t}.weight" for layer in PAIRED for t in LORA_TARGETS}
    if name == "laten":
        allowed = {f"model.layers.{layer}.mlp.{m}.weight" for layer in PAIRED for m in ("up_proj", "down_proj")}
    assert changed, f"{name} changed no weight"
    assert changed <= allowed, f"{name} changed {sorted(changed - allowed)}"
    assert {int(re.search(r"layers\.(\d+)", k).group(1)) for k in changed} == set(PAIRED)
    assert torch.equal(_weights(tiny_pair.student)["model.layers.0.mlp.up_proj.weight"],
                       before["model.layers.0.mlp.up_proj.weight"])  # the caller's model is untouched
    if name == "laten":  # only the located neurons: rows of up_proj, columns of down_proj
        k = int(tiny_pair.student.cfg.d_mlp * 0.1)
        up = (before["model.layers.0.mlp.up_proj.weight"] != after["model.layers.0.mlp.up_proj.weight"]).any(1)
        down = (before["model.layers.0.mlp.down_proj.weight"] != after["model.layers.0.mlp.down_proj.weight"]).any(0)
        assert 0 < int(up.sum()) <= k and 0 < int(down.sum()) <= k


# ------------------------------------------------------------------------------------------ Seeking pieces

def test_best_block_matches_brute_force():
    score = torch.rand(9, 7, generator=torch.Generator().manual_seed(3))
    r, c = seeking.best_block(score, 4, 3)
    sums = {(i, j): float(score[i: i + 4, j: j + 3].sum()) for i in range(6) for j in range(5)}
    assert (r, c) == max(sums, key=sums.get)
    with pytest.raises(SemalignError, match="at least as wide"):
        seeking.best_block(score, 10, 3)


@pytest.mark.parametrize("conv1d", [False, True])
def test_seeking_init_keeps_the_function_and_uses_the_teacher_subspace(conv1d):
    """On a peft LoRA layer over nn.Linear and over GPT-2's Conv1D (weight stored [in, out])."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    block_module = nn.Module()
    block_module.v_proj = Conv1D(5, 6) if conv1d else nn.Linear(6, 5)
    add_lora(block_module, ["v_proj"], rank=2, alpha=4.0, generator=torch.Generator().manual_seed(0))
    (_, layer), = lora_layers(block_module)
    x = torch.randn(3, 6)
    y0 = layer(x).detach().clone()
    block = torch.randn(5, 6)
    seeking.init_lora_from_block(layer, block)
    assert torch.allclose(layer(x), y0, atol=1e-5)  # W - BA + (scale * B/scale) A = W
    u, s, vh = torch.linalg.svd(block)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    a, b, scale = lora_factors(layer)
    assert torch.allclose(scale * b @ a, best, atol=1e-5)


def test_seeking_requires_lora(tiny_pair, base_config, transfer, tmp_path):
    cfg = from_dict(AlignConfig, {**base_config.to_dict(), "schedule": {**base_config.to_dict()["schedule"],
                                                                        "adapter": "full"}})
    with pytest.raises(SemalignError, match="adapter = 'lora'"):
        baselines.run_method("seeking", cfg, tiny_pair, data=transfer,
                             run_dir=tmp_path)


# ------------------------------------------------------------------------------------------ FitNets / Gram / LaTen

def test_ridge_projector_recovers_a_linear_map_and_hint_loss_vanishes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 4, generator=g)
    w = torch.randn(4, 7, generator=g)
    mask = torch.ones(2, 40, dtype=torch.bool)
    proj = fitnets.ridge_projector(x.reshape(-1, 4), (x @ w).reshape(-1, 7), ridge=1e-9)
    assert fitnets.hint_loss(x, x @ w, mask, proj) < 1e-8
    assert fitnets.hint_loss(x, x @ w + 1.0, mask, proj) > 1e-3


def test_gram_loss_is_zero_for_same_geometry_and_width_free():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    y = torch.cat([x, torch.zeros(2, 6, 3)], -1) @ q * 3.0  # rotated, scaled, wider: same token geometry
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert relation.sp_loss(x, y, mask) < 1e-10
    assert relation.sp_loss(x, torch.randn(2, 6, 8, generator=g), mask) > 1e-3
    mask[1, 4:] = False  # padding never matters
    z = y.clone()
    z[1, 4:] = 100.0
    assert relation.sp_loss(x, z, mask) < 1e-10


def test_plugin_objectives_refuse_to_run_without_their_plugin(tiny_pair, base_config, transfer, tmp_path):
    from semalign_lens.training import Trainer

    for term in ("fitnets", "laten_l2"):
        cfg = from_dict(AlignConfig, {**base_config.to_dict(), "objective": {"terms": {term: 1.0}}})
        with pytest.raises(SemalignError, match="run_method"):
            Trainer(cfg, tiny_pair, data=transfer,
                    run_dir=tmp_path / term).run()


def test_neuron_delta_adds_only_at_located_neurons():
    net = laten.Hypernet(4, 3, 5, std=0.5, generator=torch.Generator().manual_seed(0))
    vectors, index = torch.randn(2, 4), torch.tensor([1, 3])
    w = torch.zeros(6, 5)
    out = laten.NeuronDelta(net, vectors, index, axis=0)(w)
    assert torch.equal(out[index], net(vectors)) and not out[[0, 2, 4, 5]].any()
    out = laten.NeuronDelta(net, vectors, index, axis=1)(torch.zeros(5, 6))
    assert torch.equal(out[:, index], net(vectors).T) and not out[:, [0, 2, 4, 5]].any()


def test_the_method_table_lists_every_registered_method_in_row_order():
    """The package docstring's table is the reader's list of methods: it names each registered one, in row order."""
    import re

    from semalign_lens.training import methods

    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", methods.__doc__, flags=re.MULTILINE)
    assert listed == list(methods.ROW_ORDER) == [m for m in methods.METHODS if m in methods.ROW_ORDER]
