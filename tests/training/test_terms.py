"""How the trainer weighs its terms: Minitron's dynamic balance α = L_KL / L_layer (detached), and the one-line
refusals of terms that cannot train together."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.objectives import get_objective
from semalign_lens.training.terms import term_scales


def _terms(**weights):
    return [(n, get_objective(n), w, {}) for n, w in weights.items()]


def test_a_balanced_term_enters_at_the_output_kl_s_size_with_a_detached_factor():
    theta = torch.tensor([0.3, -1.2], requires_grad=True)
    relation, kl = (theta ** 2).sum() * 3, theta.sum() ** 2
    values = {"relation": relation, "kl": kl}
    scales = term_scales(values, _terms(relation=2.0, kl=1.0), {"relation"})
    alpha = kl.item() / relation.item()
    assert scales == {"relation": pytest.approx(2.0 * alpha), "kl": 1.0}
    loss = sum(scales[n] * values[n] for n in values)
    assert loss.item() == pytest.approx(3 * kl.item())  # weight 2 x the KL's size, plus the KL
    (grad,) = torch.autograd.grad(loss, theta)
    d_relation, d_kl = 6 * theta.detach(), 2 * theta.detach().sum() * torch.ones(2)
    assert torch.allclose(grad, 2.0 * alpha * d_relation + d_kl)  # α is a constant: no gradient through it
    assert term_scales({"relation": relation * 0, "kl": kl}, _terms(relation=1.0, kl=1.0), {"relation"})[
        "relation"] == 0.0  # a resting term stays at rest


def test_the_trainer_logs_alpha_and_the_balanced_loss(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"objective.options": {"relation": {"balance": True}}, "schedule.stage_steps": 1})
    train = run(cfg, tiny_pair, tokens).metrics().query("kind == 'train'")
    assert train["relation_alpha"].to_numpy() == pytest.approx((train["kl"] / train["relation"]).to_numpy(), rel=1e-5)
    assert train["loss"].to_numpy() == pytest.approx((2 * train["kl"]).to_numpy(), rel=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"objective.options": {"kl": {"balance": True}}}, r"unknown option\(s\) \['balance'\] for objective 'kl'"),
    ({"objective.options": {"relation": {"balance": 1}}}, "balance must be true or false, got 1"),
    ({"objective.terms": {"relation": 1.0, "ce": 1.0}, "objective.options": {"relation": {"balance": True}}},
     r"balance scales 'relation' by α = L_out / L_relation.*no output term that reads teacher logits"),
    ({"gradcos_every": 2, "objective.terms": {"kl": 1.0}}, "gradcos_every compares each layer term's gradient"),
    ({"gradcos_every": -1}, "gradcos_every must be a whole number >= 0"),
])
def test_terms_that_cannot_train_together_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(SemalignError, match=message) as err:
        make_cfg(tmp_path, **overrides)
    assert "\n" not in str(err.value)


def test_every_layer_term_takes_balance_and_does_not_receive_it():
    for name in ("cosine", "relation", "fisher", "lens_kl", "interchange", "relation_kl", "gram"):
        assert "balance" not in get_objective(name).options({"balance": True})


def test_the_trainer_keeps_what_the_terms_need_with_cached_targets(tmp_path, tiny_pair, tokens):
    """Cached targets release the teacher; `lens_kl` keeps its logit lens (not with a top-k cache, which holds the
    lens's top-k), `interchange` the whole model."""
    from semalign_lens.training import Trainer

    kept = {}
    for store in ("dense", "topk"):
        for terms in ({"kl": 1.0}, {"lens_kl": 1.0, "kl": 1.0}, {"interchange": 1.0, "kl": 1.0}):
            cfg = make_cfg(tmp_path / "run", **{"objective.terms": terms, "targets.mode": "cached",
                                                "targets.cache_logits": store, "targets.top_k": 16,
                                                "targets.cache_dir": str(tmp_path / f"c-{store}-{len(kept)}")})
            trainer = Trainer(cfg, tiny_pair, data=tokens)
            kept[f"{next(iter(terms))} {store}"] = (trainer.teacher is not None, trainer.teacher_lens is not None)
    assert kept == {"kl dense": (False, False), "lens_kl dense": (False, True), "interchange dense": (True, False),
                    "kl topk": (False, False), "lens_kl topk": (False, False), "interchange topk": (True, False)}


def test_unknown_needs_and_a_cross_tokenizer_interchange_are_refused():
    from semalign_lens.training.objectives import Objective, register_objective

    with pytest.raises(SemalignError, match=r"needs \['gpu'\], which the trainer does not provide"):
        register_objective(Objective("x_needs_gpu", "layer", lambda x: x.state.sum(), needs=frozenset({"gpu"})))
    assert "swaps or compares positions one for one" in get_objective("interchange").vocab_problem(True)
    assert get_objective("interchange").vocab_problem(False) is None
    assert get_objective("lens_kl").vocab_problem(True) is None  # two tokenizers: on the shared strings
