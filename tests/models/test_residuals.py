"""The one capture engine against independent references: HF's `output_hidden_states` on a plain model, the
bridge's own `run_with_cache`, autograd for the kept graph."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import tokenize
from semalign_lens.models.residuals import ResidualStates, residual_states

TEXTS = ["def add(a, b):\n    return a + b\n", "import os", "class Point:\n    x: int = 0"]


@pytest.fixture(scope="module")
def batch(tiny_hf):
    return tokenize(tiny_hf[2], TEXTS)


def test_plain_model_states_are_hf_hidden_states(tiny_hf, batch):
    """embed = hidden_states[0], post[l] = hidden_states[l + 1]; HF's last entry is after the final norm, so the
    last block's output is compared through that norm; the logits are the model's; the mask is carried."""
    model = tiny_hf[0]
    n = model.config.num_hidden_layers
    states = residual_states(model, batch.tokens, range(n), embed=True, logits=True, mask=batch.mask)
    with torch.no_grad():
        ref = model(input_ids=batch.tokens, output_hidden_states=True)
    torch.testing.assert_close(states.embed, ref.hidden_states[0])
    for layer in range(n - 1):
        torch.testing.assert_close(states.post[layer], ref.hidden_states[layer + 1])
    torch.testing.assert_close(model.model.norm(states.post[n - 1]), ref.hidden_states[n], atol=1e-5, rtol=1e-5)
    assert (states.post[n - 1] - ref.hidden_states[n]).abs().max() > 1e-2  # the norm is not the identity here
    torch.testing.assert_close(states.logits, ref.logits)
    assert torch.equal(states.mask, batch.mask) and not batch.mask.all()  # padded, and the padding carried
    assert states.stream() == [states.embed, *(states.post[layer] for layer in range(n))]


def test_bridge_states_are_its_run_with_cache(tiny_pair, batch):
    """On a TransformerBridge: post[l] = `blocks.{l}.hook_resid_post`, embed = `blocks.0.hook_resid_pre` of the
    bridge's own cache, logits its output."""
    model = tiny_pair.teacher
    n = model.cfg.n_layers
    states = residual_states(model, batch.tokens, range(n), embed=True, logits=True, mask=batch.mask)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.tokens)
    torch.testing.assert_close(states.embed, cache["blocks.0.hook_resid_pre"])
    for layer in range(n):
        torch.testing.assert_close(states.post[layer], cache[f"blocks.{layer}.hook_resid_post"])
    torch.testing.assert_close(states.logits, logits)
    assert torch.equal(states.mask, batch.mask)


def test_without_the_graph_nothing_requires_grad(tiny_hf, batch):
    states = residual_states(tiny_hf[0], batch.tokens, [1, 3], embed=True)
    assert all(not x.requires_grad and x.grad_fn is None for x in (states.embed, *states.post.values()))
    assert states.logits is None and states.mask is None and sorted(states.post) == [1, 3]


def test_the_kept_graph_reaches_the_embedding_weights(tiny_hf, batch):
    """With `keep_graph` a gradient of a state reaches an input-side parameter (the token embedding), and is
    the one of a forward through HF's own hidden states; with `leaf_embed` too, none reaches it."""
    model = tiny_hf[0]
    weight = model.model.embed_tokens.weight
    states = residual_states(model, batch.tokens, [2], keep_graph=True)
    (got,) = torch.autograd.grad(states.post[2].square().sum(), weight)
    hidden = model(input_ids=batch.tokens, output_hidden_states=True).hidden_states[3]
    (want,) = torch.autograd.grad(hidden.square().sum(), weight)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want)
    cut = residual_states(model, batch.tokens, [2], keep_graph=True, leaf_embed=True)  # the stream starts at a leaf
    assert torch.autograd.grad(cut.post[2].square().sum(), weight, allow_unused=True) == (None,)


def test_a_leaf_embedding_gives_every_state_a_gradient_path_on_a_frozen_bridge(tiny_pair, batch):
    """`leaf_embed`: block 0's input is a leaf that requires grad, so a frozen model's states have gradients with
    respect to it and none flows into the embedding weights; d post[2] / d embed along a random direction equals
    the derivative in α of a forward whose block-0 input is embed + α·direction (autograd on α, another path)."""
    model = tiny_pair.teacher
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        states = residual_states(model, batch.tokens, range(3), embed=True, keep_graph=True, leaf_embed=True)
        assert states.embed.is_leaf and states.embed.requires_grad
        assert all(states.post[layer].requires_grad for layer in range(3))
        (grad,) = torch.autograd.grad(states.post[2].square().sum(), states.embed)
        direction = torch.randn_like(states.embed)
        alpha = torch.zeros((), requires_grad=True)

        def moved(module, args, kwargs):
            x = states.embed.detach() + alpha * direction
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        handle = model.blocks[0].register_forward_pre_hook(moved, with_kwargs=True)
        try:
            post = residual_states(model, batch.tokens, [2], keep_graph=True).post[2]
        finally:
            handle.remove()
        (along,) = torch.autograd.grad(post.square().sum(), alpha)
        assert float((grad * direction).sum()) == pytest.approx(float(along), rel=1e-4)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@pytest.mark.parametrize("kind", ["plain", "bridge"])
def test_the_forward_stops_after_the_deepest_block(kind, tiny_hf, tiny_pair, batch):
    """Neither later blocks nor the head run unless the logits are asked for; only the embedding: no block."""
    model = tiny_hf[0] if kind == "plain" else tiny_pair.teacher
    blocks, head = (model.model.layers, model.lm_head) if kind == "plain" else (model.blocks, model.unembed)
    ran: list[str] = []
    handles = [blocks[i].register_forward_hook(lambda *a, i=i: ran.append(f"block {i}")) for i in (0, 3)]
    handles.append(head.register_forward_hook(lambda *a: ran.append("head")))
    try:
        residual_states(model, batch.tokens, [1])
        assert ran == ["block 0"]
        ran.clear()
        assert residual_states(model, batch.tokens, embed=True).embed is not None and ran == []
        residual_states(model, batch.tokens, [1], logits=True)
        assert ran == ["block 0", "block 3", "head"]
    finally:
        for handle in handles:
            handle.remove()


def test_a_sink_receives_each_state_and_the_record_keeps_none(tiny_hf, batch):
    model = tiny_hf[0]
    seen: dict = {}
    kept = residual_states(model, batch.tokens, [0, 4], embed=True, sink=seen.__setitem__)
    assert kept.post == {} and kept.embed is None
    ref = residual_states(model, batch.tokens, [0, 4], embed=True)
    assert sorted(seen, key=lambda k: -1 if k is None else k) == [None, 0, 4]
    torch.testing.assert_close(seen[None], ref.embed)
    for layer in (0, 4):
        torch.testing.assert_close(seen[layer], ref.post[layer])


def test_record_map_and_stream():
    x = torch.ones(1, 2, 3)
    states = ResidualStates({0: x, 1: 2 * x}, embed=0 * x, logits="kept", mask=torch.ones(1, 2, dtype=torch.bool))
    doubled = states.map(lambda t: 2 * t)
    assert [float(t.sum()) for t in doubled.stream()] == [0.0, 12.0, 24.0]
    assert doubled.logits == "kept" and doubled.mask is states.mask
    with pytest.raises(SemalignError, match=r"needs the embedding and blocks 0\.\.L; these states hold blocks \[0, 2\]"):
        ResidualStates({0: x, 2: x}).stream()


def test_a_layer_out_of_range_names_the_valid_ones(tiny_hf, batch):
    with pytest.raises(SemalignError, match=r"layer index 6 is out of range .* valid layers are 0\.\.5"):
        residual_states(tiny_hf[0], batch.tokens, [6])
