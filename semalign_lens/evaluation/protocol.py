"""What `semalign demo` and the transfer benchmark (`analysis/transfer_table.py`) share: the sizes of a run,
the pair, one AlignConfig for every method, and a transfer task with its before/teacher references.

Keeping these in one place is what makes the demo's two rows and the benchmark's table comparable: the same
profile fields produce the same data, pairing, frontier schedule, LoRA adapters, steps and learning rate
for every method, and only the method's loss terms differ (`baselines.method_config`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..core.atomic import write_json_atomic
from ..core.errors import SemalignError
from ..data.tokens import TokenBatch
from . import TransferTask, code_task, gap_closed, greedy_generate, knowledge_task
from .transfer_tasks import TaskScores


@dataclass
class RunProfile:
    """Sizes shared by every trained method of one comparison (the fairness rule).

    Code task: `n_transfer` stdlib test-file chunks of `seq_len` tokens, at most `per_file` from one file (plus
    `diag_sequences` held out for training diagnostics); headline = CE on `heldout_tokens` tokens of held-out
    stdlib test files, HumanEval canonical-solution CE on `humaneval_limit` problems (None: all 164) beside it.
    Knowledge task: `facts` = "stdlib" (`data.tasks.stdlib_facts`, read from this Python), "shipped"
    (`tasks/facts.json`) or a facts file. Training: frontier schedule over `student_layers` (proportional
    pairing), `stage_steps` steps each, LoRA of rank `lora_rank`, learning rate `lr`, `precision` (training and
    evaluation; "auto" = bf16 only where native, `semalign_lens.core.precision`). teacher / student: zoo names, HF
    directories, or "tiny" (random tiny pair).
    """

    teacher: str = "smollm2-135m"
    student: str = "stdlib-student"
    vocab: str = "shared"  # "intersection": a student with its own tokenizer (teacher targets online)
    n_transfer: int = 96
    diag_sequences: int = 4
    seq_len: int = 32
    batch_size: int = 8
    student_layers: tuple[int, ...] = (1, 3, 5)
    stage_steps: int = 4
    lr: float = 2e-3
    lora_rank: int = 16
    precision: str = "auto"
    humaneval_limit: int | None = 16
    heldout_tokens: int = 16384
    facts: str = "stdlib"
    per_file: int = 2


def load_pair(teacher: str, student: str, vocab: str = "shared"):
    """A `ModelPair` (vocabulary and mode checked); teacher "tiny" gives the seeded random tiny pair (with
    `vocab="intersection"` the tiny pair of two tokenizers). `vocab="auto"`: "intersection" exactly when the
    two tokenizers differ."""
    if teacher == "tiny":
        from ..models.tiny import tiny_cross_pair, tiny_pair

        return tiny_cross_pair(seed=0) if vocab == "intersection" else tiny_pair(seed=0)
    from ..models.load import load_model
    from ..models.pair import ModelPair, vocabulary_mismatch

    if vocab == "auto":
        t, s = load_model(teacher), load_model(student)
        return ModelPair(t, s, vocab="intersection" if vocabulary_mismatch(t, s) else "shared")
    return ModelPair.load(teacher, student, vocab=vocab)


def shared_config(profile: RunProfile, n_sequences: int, *, seed: int = 0, run_dir: str | Path | None = None,
                  cache_dir: str | Path | None = None, cka_max_tokens: int = 256):
    """The one `AlignConfig` every method of a comparison starts from; `baselines.method_config` then swaps
    only the loss terms. `cache_dir`: teacher targets (states and logits) cached there instead of online."""
    from ..core.config import from_dict
    from ..training import AlignConfig

    spec = {
        "teacher": profile.teacher, "student": profile.student, "vocab": profile.vocab, "seed": seed,
        "data": {"seq_len": profile.seq_len, "n_sequences": n_sequences, "batch_size": profile.batch_size,
                 "diag_sequences": profile.diag_sequences},
        "pairing": {"strategy": "proportional", "student_layers": list(profile.student_layers)},
        "schedule": {"mode": "frontier", "trainable": "paired", "adapter": "lora", "lora_rank": profile.lora_rank,
                     "lora_alpha": 2.0 * profile.lora_rank, "stage_steps": profile.stage_steps, "lr": profile.lr},
        "precision": profile.precision, "report": False, "progress": False, "cka_max_tokens": cka_max_tokens}
    if run_dir is not None:
        spec["run_dir"] = str(run_dir)
    if cache_dir is not None and profile.vocab == "shared":  # a cross-tokenizer pair reads its teacher online
        spec["targets"] = {"mode": "cached", "cache_logits": True, "cache_dir": str(cache_dir)}
    return from_dict(AlignConfig, spec)


def split_transfer(batch: TokenBatch, n_diag: int) -> tuple[TokenBatch, TokenBatch]:
    """(training sequences, held-out diagnostic sequences): the last `n_diag` never train."""
    n = len(batch)
    if n <= n_diag:
        raise SemalignError(f"only {n} transfer sequences; need more than diag_sequences = {n_diag}")
    return batch.select(torch.arange(n - n_diag)), batch.select(torch.arange(n - n_diag, n))


@dataclass
class TaskRun:
    """A transfer task ready to train on: training and diagnostic sequences, and the reference scores (the
    untrained student's and the teacher's metrics; `references` holds their full `TaskScores`)."""

    task: TransferTask
    data: TokenBatch
    diag: TokenBatch
    n_transfer: int
    before: dict[str, float]
    teacher: dict[str, float]
    references: dict[str, TaskScores] = field(default_factory=dict)  # "before", "teacher"


def build_task(name: str, profile: RunProfile, teacher, student, n_transfer: int | None = None,
               cache: Path | None = None) -> TaskRun:
    """The `code` or `knowledge` task of `evaluation`, split, with the untrained student's and the teacher's
    scores (cached in the JSON file `cache` when given: the teacher's pass is the slowest part of a re-run)."""
    tok = student.tokenizer
    if name == "code":
        n = n_transfer or profile.n_transfer
        task = code_task(tok, n + profile.diag_sequences, profile.seq_len, profile.humaneval_limit,
                            heldout_tokens=profile.heldout_tokens, precision=profile.precision,
                            per_file=profile.per_file)
        data, diag = split_transfer(task.transfer, profile.diag_sequences)
    elif name == "knowledge":
        facts = _tiny_known_facts(teacher) if profile.teacher == "tiny" else _facts(profile.facts)
        task = knowledge_task(teacher, facts, precision=profile.precision, student_tokenizer=student.tokenizer)
        data = task.transfer  # few short texts: all train; the diagnostics (no training) look at the first few
        diag = data.select(torch.arange(min(profile.diag_sequences, len(data))))
        n = len(data)
    else:
        raise SemalignError(f"unknown task {name!r}; valid: code, knowledge")
    refs = _references(task, teacher, student, cache)
    return TaskRun(task, data, diag, n, before=refs["before"].metrics, teacher=refs["teacher"].metrics,
                   references=refs)


def _facts(spec: str):
    """The knowledge task's facts: "stdlib" (read from this Python), "shipped" (facts.json) or a file."""
    from ..data.tasks.facts import load_facts
    from ..data.tasks.stdlib_facts import stdlib_facts

    return stdlib_facts() if spec == "stdlib" else load_facts(None if spec == "shipped" else spec)


def _weights_id(model) -> str | None:
    return getattr(getattr(model, "provenance", None), "weights_sha256", None)


def _references(task: TransferTask, teacher, student, cache: Path | None) -> dict[str, TaskScores]:
    """{"before": the untrained student's scores, "teacher": the teacher's}, cached by weights hashes and the task
    spec (not the transfer data)."""
    spec = {k: v for k, v in task.meta.items()
            if k not in ("teacher_table", "n_transfer", "transfer_files", "transfer_texts")}
    key = json.dumps([task.name, _weights_id(teacher), _weights_id(student), spec], sort_keys=True, default=str)
    usable = cache is not None and None not in (_weights_id(teacher), _weights_id(student))
    store = json.loads(cache.read_text()) if usable and cache.exists() else {}
    if key in store:  # an entry holds each model's metrics and, since per-problem scores exist, those too
        return {role: TaskScores.from_record(r if "metrics" in r else {"metrics": r}) for role, r in store[key].items()}
    refs = {"before": task.score(student), "teacher": task.score(teacher)}
    if usable:
        store[key] = {role: scores.record() for role, scores in refs.items()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, store)  # an interrupt never leaves half a file for the next run to read
    return refs


def _tiny_known_facts(teacher):
    """For the tiny pipeline check: facts whose answer is the tiny teacher's own greedy next token."""
    from ..data.tasks.facts import Fact

    templates = ("{subject} is", "So {subject} is", "Q: {subject}? A:")
    facts = []
    for s in ("alpha", "beta", "gamma", "delta", "omega", "kappa", "red", "green", "blue", "one", "two", "three",
              "list", "dict", "json", "path", "file", "name", "value", "item"):
        answer = greedy_generate(teacher, templates[-1].format(subject=s), 1)
        if answer.startswith(" ") and answer.strip():
            facts.append(Fact("t", s, answer, templates))
    return facts or [Fact("t", "x", " x", templates)]


def results_table(metric: str, higher_is_better: bool, before: dict, teacher: dict,
                  after: dict[str, dict]) -> pd.DataFrame:
    """Rows: student before, teacher, each method; columns: every metric, and gap closed on `metric`."""
    rows = [{"model": "student (before)", **before}, {"model": "teacher", **teacher}]
    rows += [{"model": f"student + {name}", **scores} for name, scores in after.items()]
    table = pd.DataFrame(rows)
    table[f"gap_closed ({metric})"] = [
        gap_closed(before[metric], r[metric], teacher[metric], higher_is_better) for r in rows]
    return table
