"""The one readout, both views, against HF's own forward: final norm then head, read on the last residual."""

from __future__ import annotations

import torch

from semalign_lens.models.plain import clean_copy, parts
from semalign_lens.models.readout import Readout, final_norm, lens_fn


def _hf_last_residual_and_logits(plain, ids):
    """HF's logits, and the residual that entered its final norm (a forward hook on the norm module)."""
    seen = {}

    def keep_input(module, args, out) -> None:  # returns None: a forward hook's return value replaces the output
        seen["h"] = args[0]

    handle = parts(plain).norm.register_forward_hook(keep_input)
    try:
        logits = plain(ids).logits
    finally:
        handle.remove()
    return seen["h"], logits


def test_both_views_read_what_hf_computes(tiny_pair):
    """`LogitLens` (the module view, on a plain copy) and `Readout` (the tensor view, from the bridge) each turn
    the residual entering HF's final norm into HF's logits, with the final-norm gain made non-trivial so the norm
    is really read (the bridge's own parameter, restored afterwards: the fixture is shared)."""
    model = tiny_pair.teacher
    gain = final_norm(model)["weight"]  # detached, same storage as the bridge's parameter
    kept = gain.clone()
    try:
        with torch.no_grad():
            gain.copy_(torch.linspace(0.5, 1.5, model.cfg.d_model))
            plain = clean_copy(model, share_weights=True)
            ids = torch.randint(0, model.cfg.d_vocab, (2, 7))
            h, logits = _hf_last_residual_and_logits(plain, ids)
            torch.testing.assert_close(lens_fn(plain)(h), logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(Readout.from_model(model)(h), logits, atol=1e-4, rtol=1e-4)
    finally:
        with torch.no_grad():
            gain.copy_(kept)


def test_the_module_and_tensor_views_read_alike_at_both_scales(tiny_pair):
    """The module view (a plain copy's own norm and head) and the tensor view (the bridge's detached fp32 parts)
    give the same logits, the norm's scale recomputed on each state and frozen at the final residual's."""
    model = tiny_pair.teacher
    lens, readout = lens_fn(clean_copy(model, share_weights=True)), Readout.from_model(model)
    torch.manual_seed(0)
    h, final = torch.randn(2, 5, model.cfg.d_model) * 3, torch.randn(2, 5, model.cfg.d_model)
    with torch.no_grad():
        torch.testing.assert_close(lens(h), readout(h), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lens(h, final), readout(h, final), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(lens(h), lens(h, final), atol=1e-3)  # the two scales differ: both were read


def test_the_module_view_carries_gradients_to_the_head_and_norm(tiny_pair):
    """What the trainer needs of the module view, and the tensor view cannot give: a trainable head and norm. The
    gradients are HF's own, through its norm and head modules' forwards."""
    plain = clean_copy(tiny_pair.student, share_weights=False)
    norm, head = parts(plain).norm, parts(plain).head
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, norm.weight.numel()))
    h = torch.randn(3, tiny_pair.student.cfg.d_model)
    grads = []
    for read in (lens_fn(plain), lambda x: head(norm(x))):
        plain.zero_grad()
        read(h).logsumexp(-1).sum().backward()
        grads.append((head.weight.grad.clone(), norm.weight.grad.clone()))
    (head_grad, norm_grad), (hf_head_grad, hf_norm_grad) = grads
    assert head_grad.abs().sum() > 0 and norm_grad.abs().sum() > 0
    torch.testing.assert_close(head_grad, hf_head_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(norm_grad, hf_norm_grad, atol=1e-6, rtol=1e-5)


def test_the_lens_on_the_last_block_is_the_output_unless_the_head_does_more():
    """`lens_is_output`: a Llama's (final norm, then head) lens on its last block's output is its logits; a
    Gemma-2 with a logit soft-cap of 1 (real ones use 30 on logits of that size) and a model whose head output is
    scaled afterwards are not (their logits are not lens(h)), so no lens term may read their logits for it."""
    from semalign_lens.models.readout import lens_is_output
    from semalign_lens.models.tiny import TINY_STUDENT, tiny_family_model

    llama = tiny_family_model("llama", TINY_STUDENT, 64, seed=0)
    assert lens_is_output(llama, lens_fn(llama))
    gemma = tiny_family_model("gemma2", TINY_STUDENT, 64, seed=0)
    gemma.config.final_logit_softcapping = 1.0
    with torch.no_grad():  # logits well past the cap, as a trained model's are
        gemma.lm_head.weight.mul_(50.0)
    assert not lens_is_output(gemma, lens_fn(gemma))
    scaled = tiny_family_model("llama", TINY_STUDENT, 64, seed=1)
    scaled.lm_head.register_forward_hook(lambda module, args, out: out * 0.5)
    assert not lens_is_output(scaled, lens_fn(scaled))
