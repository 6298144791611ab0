"""`lens_kl` (DistillLens-style logit-lens KL) against a by-hand float64 computation, its depth weights and
annealing, its two-tokenizer form, and the trainer's identity: at the last layer pair it is the output KL."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semalign_lens.core.errors import SemalignError
from semalign_lens.models.readout import LogitLens
from semalign_lens.training.objectives import LayerInputs, StepContext, get_objective, lens_kl_loss
from semalign_lens.training.objectives.lens_kl import anneal_factor, depth_weight


class _RMS(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _lens(d: int, vocab: int, seed: int) -> LogitLens:
    torch.manual_seed(seed)
    return LogitLens(_RMS(d), nn.Linear(d, vocab, bias=False))


@torch.no_grad()
def _by_hand(h_s, h_t, mask, lens_s, lens_t, temperature, shared=None):
    """Σ_v p_T (log p_T − log p_S) at τ, times τ², averaged over real positions, in float64, from the parts."""
    def read(lens, h):
        w = lens.norm.weight.double()
        x = h.double() * torch.rsqrt(h.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w
        return x @ lens.head.weight.double().T

    zs, zt = read(lens_s, h_s)[mask], read(lens_t, h_t)[mask]
    if shared is not None:
        zs, zt = zs[:, shared[0]], zt[:, shared[1]]
    total = 0.0
    for a, b in zip(zs, zt, strict=True):
        log_p = torch.log_softmax(b / temperature, -1)
        log_q = torch.log_softmax(a / temperature, -1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total / int(mask.sum()) * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_lens_kl_equals_the_kl_of_the_two_readouts_by_hand(temperature):
    lens_s, lens_t = _lens(5, 11, 0), _lens(7, 11, 1)
    h_s, h_t = torch.randn(2, 4, 5, requires_grad=True), torch.randn(2, 4, 7)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = lens_kl_loss(h_s, h_t, mask, lens_s, lens_t, temperature=temperature)
    assert got.item() == pytest.approx(_by_hand(h_s, h_t, mask, lens_s, lens_t, temperature), rel=1e-5)
    # the gradient reaches the student state (and only through real positions), the teacher side is a constant
    got.backward()
    assert h_s.grad[0, 3].abs().max() == 0 and h_s.grad[:, :3].abs().max() > 0


def test_lens_kl_on_two_vocabularies_compares_the_shared_strings_renormalised():
    lens_s, lens_t = _lens(5, 9, 0), _lens(6, 13, 1)
    shared = (torch.tensor([0, 3, 4, 8]), torch.tensor([12, 1, 5, 2]))  # the same strings, in one order
    h_s, h_t = torch.randn(1, 3, 5), torch.randn(1, 3, 6)
    mask = torch.ones(1, 3, dtype=torch.bool)
    got = lens_kl_loss(h_s, h_t, mask, lens_s, lens_t, shared=shared)
    assert got.item() == pytest.approx(_by_hand(h_s, h_t, mask, lens_s, lens_t, 1.0, shared), rel=1e-5)


def test_depth_weights_and_the_linear_anneal():
    assert [depth_weight(k, 4, 1.0) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert depth_weight(0, 4, 0.0) == 1.0
    assert [anneal_factor(p, 0.5) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.5, 0.0, 0.0]
    assert anneal_factor(0.9, 0.5, "none") == 1.0


def _inputs(progress: float, layer: int, lens_s, lens_t, h_s, h_t, mask) -> LayerInputs:
    context = StepContext(0, progress, (), 4, torch.zeros(1, 3, dtype=torch.long), mask, teacher_lens=lens_t)
    zero = torch.zeros_like(h_s)
    return LayerInputs(layer, h_s, zero, zero, zero, mask, lens_s, teacher_state=h_t, context=context)


def test_the_registered_term_weighs_by_depth_anneals_and_skips_the_readout_at_zero():
    lens_s, lens_t = _lens(5, 11, 0), _lens(7, 11, 1)
    h_s, h_t = torch.randn(1, 3, 5, requires_grad=True), torch.randn(1, 3, 7)
    mask = torch.ones(1, 3, dtype=torch.bool)
    term = get_objective("lens_kl")
    options = term.options(None)
    base = lens_kl_loss(h_s, h_t, mask, lens_s, lens_t).item()
    # layer 1 of 4 (weight 0.5), a quarter into the stage with the default anneal to 0 at half (factor 0.5)
    assert term.fn(_inputs(0.25, 1, lens_s, lens_t, h_s, h_t, mask), **options).item() == pytest.approx(0.25 * base)

    def fail(_):
        raise AssertionError("the readout ran although the term is annealed away")

    annealed = term.fn(_inputs(0.5, 3, fail, fail, h_s, h_t, mask), **options)
    assert annealed.item() == 0.0 and annealed.requires_grad
    with pytest.raises(SemalignError, match="through the teacher's logit lens"):
        term.fn(LayerInputs(0, h_s, h_s, h_s, h_s, mask, lens_s, teacher_state=h_t), **options)
    with pytest.raises(SemalignError, match="anneal_until must be a positive"):
        term.fn(_inputs(0.0, 1, lens_s, lens_t, h_s, h_t, mask), **{**options, "anneal_until": 0})


def test_lens_kl_needs_the_output_kl_beside_it(tmp_path):
    from trainer_helpers import make_cfg

    with pytest.raises(SemalignError, match=r"'lens_kl' needs the output KL beside it.*add kl = 1.0"):
        make_cfg(tmp_path, **{"objective.terms": {"lens_kl": 1.0}})


def test_at_the_last_pair_the_trainer_s_lens_kl_is_the_output_kl(tmp_path, tiny_pair, tokens):
    """The student's lens at its last block is its own head, and so is the teacher's at its last block: with no
    anneal and depth weight 1 the term equals the output KL on the same batch (the trainer hands both over)."""
    from trainer_helpers import make_cfg, run

    cfg = make_cfg(tmp_path, **{"objective.terms": {"lens_kl": 1.0, "kl": 1.0}, "pairing.student_layers": [2],
                                "objective.options": {"lens_kl": {"anneal": "none"}}, "schedule.stage_steps": 2})
    train = run(cfg, tiny_pair, tokens).metrics().query("kind == 'train'")
    assert train["lens_kl"].to_numpy() == pytest.approx(train["kl"].to_numpy(), rel=1e-6)
