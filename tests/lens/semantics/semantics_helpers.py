"""Helpers of the semantics tests: cosine, random heads, residual states of a model."""

from __future__ import annotations

import torch

F64 = torch.float64


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def random_head(d=8, V=40, seed=0, dtype=F64):
    """W_U [d, V], TransformerLens convention."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, V, generator=g, dtype=dtype)


def resid(model, layers, text="def add(x, y):\n    return x + y\n"):
    """Residual states after the given blocks (one prompt, doc-start first) and the model's logits."""
    ids = [0] + model.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n.endswith("hook_resid_post"))
    # position 0 is dropped: in the tiny models the doc-start token embeds to the zero padding row
    return {layer: cache[f"blocks.{layer}.hook_resid_post"][0, 1:] for layer in layers}, logits[0, 1:]
