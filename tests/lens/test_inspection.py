"""The pairing inspection's state flow: one capture per model on the similarity batch, whose record every measure,
the fidelity and the sub-layer view read; its numbers against the same measures on the residual stack and the
block writes taken apart (each tested against HF in test_capture / test_heads)."""

from __future__ import annotations

import torch

from semalign_lens.lens.capture import accumulated_resid, sublayer_writes
from semalign_lens.lens.inspection import InspectionSettings, inspect_pairing, similarity_batch
from semalign_lens.lens.measures import measure_null


def _count_forwards(model, monkeypatch) -> list[torch.Tensor]:
    """The token batches of every forward of `model` from now on (its forward wrapped, restored after the test)."""
    calls: list[torch.Tensor] = []
    forward = model.forward

    def counted(tokens, *args, **kwargs):
        calls.append(tokens)
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return calls


def test_each_model_reads_the_similarity_batch_once_for_every_measure_and_the_sublayer_view(tiny_pair, monkeypatch):
    settings = dict(n_prompts=4, methods=["grad_x_act"], n_boot=10, cka_prompts=20, fidelity_tokens=16,
                    permutations=1, measures=["cka", "procrustes"], sublayers=True, heads=False)
    cka_batch = similarity_batch(tiny_pair.tokenizer, _facts(tiny_pair), InspectionSettings.make(**settings))
    chunks = [part.tokens for part in cka_batch.split(16)]  # the capture's sequences per forward
    assert len(chunks) == 2
    teacher_calls = _count_forwards(tiny_pair.teacher, monkeypatch)
    student_calls = _count_forwards(tiny_pair.student, monkeypatch)
    out = inspect_pairing(tiny_pair, "facts", progress=False, **settings)

    def on_similarity_batch(calls):
        return [c for c in calls if any(c.shape == t.shape and torch.equal(c.cpu(), t) for t in chunks)]

    assert len(student_calls) == len(on_similarity_batch(student_calls)) == len(chunks)  # before: 2 per chunk
    assert len(on_similarity_batch(teacher_calls)) == len(chunks)  # the teacher's other forwards are the rankers'
    assert set(out.sublayers) == {"attn_out", "mlp_out"} and out.fidelity is not None

    monkeypatch.undo()
    t_stack, s_stack = (accumulated_resid(m, cka_batch, drop_first=True) for m in (tiny_pair.teacher, tiny_pair.student))
    t_writes, s_writes = (sublayer_writes(m, cka_batch, drop_first=True) for m in (tiny_pair.teacher, tiny_pair.student))
    for name in ("cka_debiased", "cka", "procrustes"):
        want = measure_null(name, t_stack, s_stack, n_permutations=1, seed=0)
        torch.testing.assert_close(out.measures[name].observed, want.observed, rtol=0, atol=0)
        torch.testing.assert_close(out.measures[name].null, want.null, rtol=0, atol=0)
        for point in ("attn_out", "mlp_out"):
            want = measure_null(name, t_writes[point], s_writes[point], n_permutations=1, seed=0)
            torch.testing.assert_close(out.sublayers[point][name].observed, want.observed, rtol=0, atol=0)


def _facts(pair):
    from semalign_lens.data.tasks import load_task

    return load_task("facts", tokenizer=pair.teacher.tokenizer, seed=0)
