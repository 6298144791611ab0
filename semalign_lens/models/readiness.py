"""Which stages a model or a pair can run (`semalign info`'s "pairable"), from the same checks the stages run."""

from __future__ import annotations

from .inspect import tokenizer_problem, trainer_problem
from .load import depth_problem, model_mode
from .pair import _intersection_problem, document_start_mismatch, vocabulary_mismatch


def stage_readiness(teacher, student=None, teacher_name: str = "teacher", student_name: str = "student"
                    ) -> dict[str, str | None]:
    """Per stage of the pipeline: None when `teacher` (and `student`, when given) can run it, else the one-line
    reason. What `semalign info` prints, so that a pair that cannot be trained says so before any analysis."""
    from .architectures import architecture as architecture_of
    from .plain import skeleton, underlying_hf

    models = [(teacher, teacher_name)] + ([(student, student_name)] if student is not None else [])
    trainable = next((p for m, n in models if (p := trainer_problem(m, n, trained=m is models[-1][0]))), None)
    depth = None if student is None else depth_problem(teacher.cfg.n_layers, student.cfg.n_layers, teacher_name,
                                                       student_name)
    tokens = next((p for m, n in models if (p := tokenizer_problem(m, n))), None)
    analysis = tokens
    if student is not None:
        modes = {model_mode(teacher), model_mode(student)}
        analysis = tokens or vocabulary_mismatch(teacher, student) or document_start_mismatch(teacher, student) or (
            None if len(modes) == 1 else f"loading modes differ (teacher {model_mode(teacher)}, student "
                                          f"{model_mode(student)}); load both the same way")
    train = analysis or trainable or depth
    out = {"capture, bases, CKA, rankers, pairing report, evaluation": analysis,
           "align (frontier/joint, full/LoRA), reload the student": train}
    from .architectures import lora_problem

    out["LoRA on the family's default targets (else set schedule.lora_targets, or train full)"] = train or (
        lora_problem(skeleton(underlying_hf(models[-1][0])), models[-1][1]))
    if student is not None and analysis is not None and tokens is None and len(modes) == 1:
        cross = _intersection_problem(teacher, student, teacher_name, student_name)
        out["cross-tokenizer (vocab='intersection'): coverage, intersection basis, aligned positions, "
            "cross-vocabulary losses"] = cross
        out["align across tokenizers (vocab = 'intersection'; sft, kd-shared, uld, semalign-shared, "
            "semalign-layer)"] = cross or trainable or depth
    if student is not None:
        from .architectures import role_of

        def roles(model) -> set:
            hf = underlying_hf(model)
            return {role_of(hf, t) for t in architecture_of(hf).lora_targets} - {None}

        out["seeking baseline (copies teacher weight blocks, by role across families)"] = train or (
            None if roles(teacher) & roles(student) else "the two families' LoRA targets share no role (v, o, "
                                                         "up, down)")
        from .architectures import mlp_problem

        out["laten baseline (FFN neurons: one up and one down projection)"] = train or next(
            (p for (m, n), role in zip(models, ("teacher", "student"), strict=True)
             if (p := mlp_problem(underlying_hf(m), role if n == role else f"{role} {n}")) is not None), None)
    return out
