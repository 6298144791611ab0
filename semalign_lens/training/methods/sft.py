"""The control: supervised fine-tuning of the student alone on the transfer data (no teacher).

Trains the same parameters (the frontier layers' LoRA adapters, stage by stage) on the same transfer data
and steps as every other row; only the loss differs (next-token cross-entropy). It is the same-data control
that the SemAlign, Seeking and LaTen tables lack: without it, a gain cannot be told from fine-tuning alone.
"""

from __future__ import annotations

from .registry import Method, register_method

register_method(Method(
    "sft", {"ce": 1.0}, "supervised fine-tuning of the student alone (the control)", family="control",
    uses_teacher=False,
    changes="Trains the same parameters (the frontier layers' LoRA adapters, stage by stage) on the same transfer "
            "data and steps as every other row; only the loss differs: the same-data control "
            "that the SemAlign, Seeking and LaTen tables lack."))
