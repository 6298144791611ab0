"""Activation checkpointing (`train.activation_checkpointing`): the same loss and gradients as without it, the
blocks on the gradient path recomputed in backward and no other, far less kept for backward, the model left as
it was."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_cfg

from semalign_lens.models.plain import parts
from semalign_lens.training import Trainer


def first_step(tmp_path, tiny_pair, tokens, checkpointing: bool, adapter: str, stage_index: int):
    """Stage `stage_index`'s first step up to its backward: (the terms, the gradients, how often each block's MLP
    ran, the bytes autograd kept for backward outside any checkpoint, the student)."""
    cfg = make_cfg(tmp_path, **{"train.activation_checkpointing": checkpointing, "schedule.adapter": adapter,
                                "schedule.lora_rank": 4})
    trainer = Trainer(cfg, tiny_pair, data=tokens)
    stage = trainer.stages[stage_index]
    trainer._open_stage(stage)
    index, batch = trainer._local_batch(stage.start)
    teacher = trainer._teacher_batch(stage, batch.tokens, index)
    blocks = parts(trainer.student).layers
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    params = {p.untyped_storage().data_ptr() for p in trainer.student.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        values = trainer._terms(stage, batch, teacher)
    sum(values.values()).backward()
    grads = [p.grad.clone() for p in trainer._params]
    return {k: float(v.detach()) for k, v in values.items()}, grads, calls, sum(kept.values()), trainer.student


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(tmp_path, tiny_pair, tokens, adapter):
    """Stage 1 (student block 1 trains; relation + kl read the logits): block 0 runs once (no gradient reaches
    it), blocks 1 and 2 run again in backward; the terms and gradients are exactly the plain step's, and what
    the forward keeps for backward outside the checkpoints shrinks to the head's and the terms' share."""
    plain = first_step(tmp_path / "plain", tiny_pair, tokens, False, adapter, 1)
    recomputed = first_step(tmp_path / "recomputed", tiny_pair, tokens, True, adapter, 1)
    assert recomputed[0] == plain[0]
    assert all(torch.equal(a, b) for a, b in zip(recomputed[1], plain[1], strict=True))
    assert plain[2] == [1, 1, 1] and recomputed[2] == [1, 2, 2]
    assert recomputed[3] < 0.5 * plain[3]
    student = recomputed[4]
    assert all("forward" not in block.__dict__ for block in parts(student).layers)  # the wrapper is gone
