"""Fidelity: the logit lens matches the model, fidelity frames, transfer fidelity, """

from __future__ import annotations

import torch
from semantics_helpers import resid

from semalign_lens.lens.semantics import KINDS, SemanticBasis, TransferMap, fidelity, transfer_fidelity
from semalign_lens.models.readout import logit_lens


def test_logit_lens_matches_the_model(tiny_pair):
    for model in (tiny_pair.teacher, tiny_pair.student):
        states, logits = resid(model, [model.cfg.n_layers - 1])
        assert torch.allclose(logit_lens(model, states[model.cfg.n_layers - 1]), logits, atol=1e-4)


def test_the_two_readouts_are_transformer_lens_own(tiny_pair):
    """Against TL's `ActivationCache` over the bridge's `run_with_cache` (final-norm gain made non-trivial):
    "recompute" (no `final`) is `accumulated_resid(apply_ln=True)` through W_U; "frozen" (`final` = the last
    block's output) is `apply_ln_to_stack` (÷ the cached `ln_final.hook_scale`), then the gain and W_U. They
    differ off the last layer and both give the model's logits on it."""
    model = tiny_pair.teacher
    gain = model.ln_final.weight
    saved = gain.detach().clone()
    try:
        with torch.no_grad():
            gain.copy_(torch.rand(gain.shape, generator=torch.Generator().manual_seed(0)) + 0.5)
            logits, cache = model.run_with_cache(torch.randint(1, 384, (2, 9)))
            stack = cache.accumulated_resid()  # [layer + 1, batch, pos, d]; the last entry is the final residual
            recompute, cached = logit_lens(model, stack), logit_lens(model, stack, final=stack[-1])
            torch.testing.assert_close(recompute, cache.accumulated_resid(apply_ln=True) @ model.W_U)
            torch.testing.assert_close(cached, cache.apply_ln_to_stack(stack) * gain @ model.W_U)
    finally:
        with torch.no_grad():
            gain.copy_(saved)
    for read in (recompute, cached):
        torch.testing.assert_close(read[-1], logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(recompute[:-1], cached[:-1], atol=1e-2)


def test_fidelity_frame(tiny_pair, tiny_bases):
    teacher = tiny_pair.teacher
    states, _ = resid(teacher, [1, 5])
    # the input basis leaves out id 0, whose embedding is the zero padding row in the tiny models
    bases = {"output": tiny_bases[0], "input": SemanticBasis.from_embedding(teacher, tokens=range(1, 384)),
             "random": tiny_bases[0].random_like(seed=3)}
    df = fidelity(states, bases, teacher, metrics=("cosine", "cosine_min", "top1", "top10", "kl", "coef_top1"))
    assert list(df.columns) == ["model", "layer", "basis", "kind", "metric", "value", "n", "readout"]
    cosines = df.metric.str.startswith("cosine")
    assert df[cosines].readout.isna().all() and set(df[~cosines].readout) == {"recompute"}
    assert len(df) == 2 * 3 * 3 * 6 and set(df.basis) == set(bases) and (df.n == states[1].shape[0]).all()
    v = df.set_index(["layer", "basis", "kind", "metric"]).value
    for layer in (1, 5):
        for basis in bases:
            for kind in ("dual", "logits"):
                assert v[layer, basis, kind, "cosine_min"] > 1 - 1e-6
                assert v[layer, basis, kind, "top1"] == 1.0 and v[layer, basis, kind, "top10"] == 1.0
                assert abs(v[layer, basis, kind, "kl"]) < 1e-4
        assert v[layer, "output", "paper", "cosine"] < 0.999
    assert df.value.between(-1e-4, 1e3).all()
    chunked = fidelity(states, bases, teacher, chunk_size=3)
    merged = df[df.metric != "coef_top1"].reset_index(drop=True)
    assert torch.allclose(torch.tensor(chunked.value.values), torch.tensor(merged.value.values), atol=1e-5)
    cos_only = fidelity(states[1], tiny_bases[0], metrics=("cosine",))
    assert set(cos_only.metric) == {"cosine"} and set(cos_only.layer) == {-1}


def test_transfer_fidelity(tiny_pair, tiny_bases):
    t_states, _ = resid(tiny_pair.teacher, [5])
    s_states, _ = resid(tiny_pair.student, [2])
    maps = [TransferMap(*tiny_bases, kind=k) for k in KINDS]
    df = transfer_fidelity(t_states, maps, tiny_pair.teacher, tiny_pair.student, student_states={5: s_states[2]})
    assert set(df.kind) == {*KINDS, "student"}
    assert set(df.metric) == {"top1", "top10", "kl", "cosine_to_student"}
    assert df[df.metric.isin(["top1", "top10"])].value.between(0, 1).all()
    assert set(df[df.metric != "cosine_to_student"].readout) == {"recompute"}
