"""Micro-batches with gradient accumulation (`train.micro_batch_size`): one optimiser step over the global batch
in pieces is the whole batch's step, for every term that is a mean over tokens or sequences; `fitnets`, whose
normaliser is a batch statistic, is warned about and differs; a cross-tokenizer pair is refused."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer, load_align_config
from semalign_lens.training.methods.fitnets import FitNetsPlugin
from semalign_lens.training.objectives import OBJECTIVES, reference


def one_step(tmp_path, tiny_pair, tokens, stage_index=0, plugins=(), **over):
    """The trainer's first step of a stage on a global batch of 8: (its record, the accumulated gradients the
    optimiser saw, the trainable parameters after the step)."""
    cfg = make_cfg(tmp_path, **{"data.batch_size": 8, "schedule.lr": 1e-3, **over})
    trainer = Trainer(cfg, tiny_pair, data=tokens, plugins=plugins)
    stage = trainer.stages[stage_index]
    trainer._open_stage(stage)
    seen: list[torch.Tensor] = []
    step = trainer._opt.step

    def record(*args, **kwargs):
        seen.extend(p.grad.clone() for p in trainer._params)
        return step(*args, **kwargs)

    trainer._opt.step = record
    out = trainer._step(stage.start, stage)
    return out, seen, [p.detach().clone() for p in trainer._params]


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b, strict=True))


TERMS = {"semalign": {"relation": 1.0, "kl": 1.0}, "sft": {"ce": 1.0},
         "others": {"cosine": 1.0, "fisher": 1.0, "cosine_onehot": 1.0, "gram": 1.0}}


@pytest.mark.parametrize("terms", list(TERMS))
@pytest.mark.parametrize("micro", [3, 1])
def test_a_step_in_micro_batches_is_the_whole_batch_step(tmp_path, tiny_pair, tokens, terms, micro):
    """8 sequences as 3 + 3 + 2 (uneven) or 8 x 1: the same logged losses, gradients and AdamW update (fp32)."""
    over = {"objective.terms": TERMS[terms]}
    whole = one_step(tmp_path / "whole", tiny_pair, tokens, **over)
    parts = one_step(tmp_path / "parts", tiny_pair, tokens, **over, **{"train.micro_batch_size": micro})
    for name in [*TERMS[terms], "loss", "grad_norm"]:
        assert parts[0][name] == pytest.approx(whole[0][name], rel=1e-6, abs=1e-7), name
    assert relative(parts[1], whole[1]) < 2e-6
    assert max(float((a - b).abs().max()) for a, b in zip(parts[2], whole[2], strict=True)) < 1e-6


def test_every_registered_term_is_decomposable_or_says_why_not():
    """The trainer warns about exactly the terms that declare a batch statistic; of the built-in ones those are
    fitnets (its normaliser) and interchange (each sequence's source is its neighbour in the batch); laten_l2 reads
    no batch at all; the cross-vocabulary terms are means over aligned tokens, and their pairs refuse micro-batches,
    below."""
    assert sorted(name for name, obj in OBJECTIVES.items() if obj.batch_statistic) == ["fitnets", "interchange"]


def test_fitnets_is_warned_about_and_differs_by_its_normaliser_alone(tmp_path, tiny_pair, tokens, monkeypatch):
    """FitNets divides by the teacher states' mean square over the batch: micro-batches of 2 take it over their
    own sequences. The trainer says so in one warning, and the step's gradient is not the whole batch's; with
    the normaliser multiplied back out (a plain mean over tokens) it is, so the normaliser is the whole
    difference, not a broken accumulation."""
    over = {"objective.terms": {"fitnets": 1.0}}

    def pair_of_steps(name):
        whole = one_step(tmp_path / name / "whole", tiny_pair, tokens, plugins=[FitNetsPlugin()], **over)
        with pytest.warns(UserWarning, match=r"objective 'fitnets' takes its normaliser, the teacher states' mean "
                                             r"square over the batch: with train.micro_batch_size = 2 each "
                                             r"micro-batch takes its own"):
            parts = one_step(tmp_path / name / "parts", tiny_pair, tokens, plugins=[FitNetsPlugin()], **over,
                             **{"train.micro_batch_size": 2})
        return relative(parts[1], whole[1])

    assert pair_of_steps("normalised") > 1e-3
    hint_loss = reference.hint_loss

    def unnormalised(h_student, h_teacher, mask, projector, skip_first=True):
        scored = mask.clone()
        scored[:, 0] &= not skip_first
        return hint_loss(h_student, h_teacher, mask, projector, skip_first) * h_teacher[scored].pow(2).sum(-1).mean()

    monkeypatch.setattr(reference, "hint_loss", unnormalised)
    assert pair_of_steps("unnormalised") < 2e-6


def test_cached_targets_in_micro_batches(tmp_path, tiny_pair, tokens):
    """The cache (built a micro-batch at a time) read per micro-batch: the whole batch's step, up to the
    rounding of its fp16 states, which are the same for both runs (one cache)."""
    over = {"targets.mode": "cached", "targets.cache_dir": str(tmp_path / "cache"), "targets.cache_logits": "topk",
            "targets.top_k": 16, "objective.terms": {"relation": 1.0, "kl": 1.0}}
    whole = one_step(tmp_path / "whole", tiny_pair, tokens, stage_index=1, **over)
    parts = one_step(tmp_path / "parts", tiny_pair, tokens, stage_index=1, **over, **{"train.micro_batch_size": 3})
    assert parts[0]["loss"] == pytest.approx(whole[0]["loss"], rel=1e-6)
    assert relative(parts[1], whole[1]) < 2e-6


def test_micro_batches_of_a_cross_tokenizer_pair_are_refused():
    """A cross-tokenizer pair's token terms average over aligned positions, whose share differs from sequence to
    sequence, so weighting micro-batches by real tokens would not give the batch's step (7-11% of the gradient
    apart on the tiny cross pair at micro-batches of 1): refused in one line; the whole batch in one piece is
    fine."""
    over = {"vocab": "intersection", "data.batch_size": 8}
    with pytest.raises(SemalignError, match=r"cross-tokenizer pair's \(vocab = 'intersection'\) token terms average "
                                            r"over the aligned positions.*; unset train.micro_batch_size$"):
        load_align_config(None, {**over, "train.micro_batch_size": 4})
    assert load_align_config(None, {**over, "train.micro_batch_size": 8}).micro_batch() == 8


@pytest.mark.parametrize("value", [-1, 2.5, True, "4"])
def test_a_bad_micro_batch_size_is_one_line(value):
    with pytest.raises(SemalignError, match=r"train.micro_batch_size must be"):
        load_align_config(None, {"train.micro_batch_size": value})


def test_micro_batch_resolves_against_the_process_share():
    cfg = load_align_config(None, {"data.batch_size": 64, "train.micro_batch_size": 8})
    assert (cfg.micro_batch(), cfg.micro_batch(4), cfg.micro_batch(16)) == (8, 8, 4)
    for unset in (None, 0):
        assert load_align_config(None, {"data.batch_size": 64, "train.micro_batch_size": unset}).micro_batch(2) == 32


def test_a_run_resumes_with_another_micro_batch_size(tmp_path, tiny_pair, tokens):
    """`train` changes how a step is computed, not what it computes: a resume may change it (out of memory
    mid-run: resume in smaller pieces), and ends where the uninterrupted run ends, to fp32 rounding."""
    over = {"objective.terms": {"relation": 1.0, "kl": 1.0}, "schedule.stage_steps": 2}
    whole = run(make_cfg(tmp_path / "a", **over), tiny_pair, tokens)
    run(make_cfg(tmp_path / "b", **over), tiny_pair, tokens, stop_after_steps=3)
    resumed = run(make_cfg(tmp_path / "b", **over, **{"train.micro_batch_size": 1,
                                                      "train.activation_checkpointing": True}), tiny_pair, tokens)
    assert resumed.finished
    a, b = whole.student.state_dict(), resumed.student.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
