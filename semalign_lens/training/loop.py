"""The alignment trainer: setup with every check up front, the step, checkpoints, resume, scale-out.

One step (global batch split over processes):
1. teacher activations for the batch, only the states the stage reads (`targets.stage_states`: online forward
   under no_grad, truncated at the deepest of them, or read from the cache);
2. one student forward capturing the resid_post of the paired blocks (stopping after the deepest one that the
   stage needs when no output term wants logits);
3. per active pair, targets = TransferMap(teacher state / teacher residual change) — a d_S x d_T matmul per
   token, the "Gram trick" reduced to its essence: no vocabulary-sized coefficients ever exist;
4. weighted sum of the objective terms, and its backward;
   steps 1-4 run once per micro-batch (`train.micro_batch_size`), the gradients accumulating;
5. non-finite values stop the run naming step, stage and term; gradient averaging across processes,
   clipping, AdamW.

Scale-out uses Hugging Face Accelerate for the process group, device placement and collective ops, but
averages gradients itself (one flat all-reduce per step) instead of wrapping the student in DDP: the set of
trainable parameters changes at every stage (DDP fixes it at wrap time) and the student's forward may stop
early (DDP expects every forward to finish). Each process, and within it each micro-batch, scales its loss by its
share of the global batch's tokens, so averaged gradients and logged losses equal the single-process,
whole-batch ones on the same global batch. Which processes load the teacher, how the others wait for the main
process's own work (the map, the target cache, diagnostics) and why FSDP/DeepSpeed configs are refused:
`processes.py`. The main process writes every record to `metrics.jsonl` and, where `trackers` names them, to
the experiment trackers (`trackers.py`), and keeps it: the `AlignResult` a run returns carries its records.
"""

from __future__ import annotations

import gc
import json
import math
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.atomic import as_json, write_json_atomic
from ..core.checks import require_int
from ..core.errors import Interrupted, SemalignError, writing
from ..core.precision import autocast, precision_record, resolve_precision
from ..core.runlock import refuse_if_locked, run_lock
from ..data.tokens import TokenBatch, set_document_start
from ..lens.capture import accumulated_resid
from ..lens.interchange import interchange_logits
from ..lens.pairing import LayerPair
from ..models.architectures import lora_problem
from ..models.inspect import trainer_problem
from ..models.load import check_bridge_runs, head_rows, load_model, model_name, vocab_rows
from ..models.lora import save_lora
from ..models.pair import ModelPair
from ..models.plain import clean_copy, parts, skeleton, underlying_hf, weights_fingerprint
from ..models.readout import lens_fn, lens_is_output
from ..models.residuals import ResidualStates, residual_states
from .checkpoint import latest_checkpoint, latest_step, load_checkpoint, save_checkpoint
from .config import AlignConfig, config_diff
from .cross_pair import CrossTargets, gather_positions, teacher_to_student_ids
from .dataset import AlignData, build_data
from .diagnostics import cka_grid, cka_maps, projection_metrics, read_metrics
from .gradcos import backward_by_pieces, loss_pieces
from .objectives import LayerInputs, Objective, OutputInputs, StepContext, ce_loss, get_objective
from .preflight import preflight
from .processes import from_main, refuse_sharding, run_accelerator, teacher_everywhere
from .recompute import recomputed_blocks
from .schedule import Stage, build_stages, close_stage, lr_at, make_optimizer, open_stage, stage_at
from .setup import MainSetup, TeacherFacts, check_pairs, resolve_pairing, resolve_transfer
from .targets import (
    CachedTargets,
    NoTargets,
    OnlineTargets,
    build_cache,
    cache_identity,
    check_cache,
    default_cache_path,
    diagnostic_states,
    lens_target,
    lens_top1,
    stage_states,
    tokenizer_fingerprint,
    unshared_cache,
)
from .terms import balanced_terms, reference_terms, term_scales
from .trackers import TRACKER_DIR, Trackers


class NonFiniteLossError(SemalignError):
    """A loss term or the gradient became NaN/inf; names the step (1-based, as in metrics.jsonl), the stage and
    the term. Raised before the optimizer step, so no checkpoint ever holds the diverged weights."""

    def __init__(self, step: int, stage: Stage, term: str, value: float):
        self.step, self.stage, self.term, self.value = step, stage.index, term, value
        super().__init__(f"non-finite {term} ({value}) at step {step}, stage {stage.index} ({stage.label}); "
                         f"lower the learning rate (stage lr {stage.lr}) or the term's weight, then resume from the "
                         "last checkpoint")


@dataclass
class AlignResult:
    """What a run leaves, as records: the final numbers, every metric record, the CKA maps, the config,
    pairing and provenance it wrote, the saved student (and the page, once `reports.run.draw_run` drew it).
    Each field equals what the run directory's files hold; consumers read the fields, not the files."""

    run_dir: Path
    final: dict
    student_path: Path | None = None
    report_path: Path | None = None
    student: nn.Module | None = None  # the trained plain HF student (in memory)
    records: list[dict] = field(default_factory=list)  # metrics.jsonl: kinds train, diag, heldout, cka, stage, gradcos
    cka: dict[str, dict] = field(default_factory=dict)  # {"cka_stage{i}_{start,end}": matrix, labels, pairs, title}
    config: dict = field(default_factory=dict)
    pairing: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    # a finished run's experiment trackers (`AlignConfig.trackers`), open for the figures drawn above the trainer
    # (`reports.tracking.track_figures`) until `end_trackers()`
    trackers: Trackers | None = None
    # what the fairness rule fixes across the methods of one comparison: trainable parameters per stage, the
    # training data's hash, the steps (set by the trainer; unknown when drawn again from a directory)
    trainable_params: dict[int, int] = field(default_factory=dict)
    data_hash: str = ""
    steps: int = 0

    @property
    def finished(self) -> bool:
        return bool(self.final.get("finished"))

    def end_trackers(self) -> None:
        """Close the run's experiment trackers (nothing without them)."""
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None

    def metrics(self):
        """The metric records as a DataFrame (kinds: train, diag, heldout, cka, stage, gradcos)."""
        import pandas as pd

        return pd.DataFrame(self.records)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, student: nn.Module | None = None) -> AlignResult:
        """A run directory's records (a finished run's, or one drawn again later)."""
        run_dir = Path(run_dir)
        read = lambda name, default: json.loads((run_dir / name).read_text()) if (run_dir / name).exists() \
            else default  # noqa: E731
        final = read("final.json", {"finished": False})
        return cls(run_dir, final, Path(final["student_path"]) if final.get("student_path") else None,
                   student=student, records=read_metrics(run_dir / "metrics.jsonl"), cka=cka_maps(run_dir),
                   config=read("config.json", {}), pairing=read("pairing.json", []),
                   provenance=read("provenance.json", {}))


# ----------------------------------------------------------------------------------------------- trainer

class Trainer:
    """SemAlign training of a student against a teacher; `run()` trains (or resumes) and returns the result.

    Everything that can be wrong with the input is checked in the constructor, before any training: first
    what needs no model (`preflight`: the config, run_dir, data source, model sources, depths), then what needs
    the loaded models (the trainer's own needs of each model, the pairing against both, the transfer map's
    shape, a target cache's identity). The pair itself is checked once, where it is built (`ModelPair`): a pair
    passed in is taken as it is, and a pair loaded from the config's sources is built here.

    The Python API may pass an already-loaded, validated `ModelPair` (`ModelPair(teacher, student)`,
    `ModelPair.load(...)`), a pairing (a `LayerPairing`, `LayerPair`s or rows), a `TransferMap` and token
    batches instead of the config's sources.

    `plugins` (duck-typed, every hook optional) extend a run for methods that need more than loss terms:
    `setup(trainer, teacher)` once after construction (`teacher` is the caller's model, there even when the
    trainer runs from cached targets); `open_stage(trainer, stage, params) -> params` after the stage's
    parameters are unfrozen / LoRA-wrapped (return the list to optimise, extended or replaced);
    `close_stage(trainer, stage)` before LoRA is merged; `extras` — a dict attached to every `LayerInputs`;
    `module` — an `nn.Module` (or None) checkpointed with the student while it exists, so a mid-stage resume
    restores it (`open_stage` must recreate it with the same structure).
    `on_step(trainer, step, total)` after every optimiser step (`step` done of `total`): how a caller's own
    progress display (the demo's stage bar) follows a run whose own bar is off.
    """

    def __init__(self, config: AlignConfig | None = None, pair: ModelPair | None = None, *, pairing=None,
                 transfer=None, data: TokenBatch | None = None, diag_data: TokenBatch | None = None,
                 run_dir: str | Path | None = None, accelerator=None, plugins: Sequence[Any] = ()):
        # every check that needs no loaded model, before anything loads or is written (training/preflight.py)
        self.cfg = preflight(config, run_dir, pair=pair, data=data, pairing=pairing, transfer=transfer)
        self.run_dir = Path(run_dir or self.cfg.run_dir)
        self.plugins = list(plugins)
        self._join_processes(accelerator)
        self._read_objectives()
        teacher, student, shared = self._load_models(pair)
        self._check_models(teacher, student, shared)
        self._read_data(data, diag_data, student, teacher)
        self._copy_models(teacher, student)
        self._pair_layers(pairing, shared)
        self._build_transfer(transfer, teacher, student, shared)
        self._record_run(teacher, student, shared)
        self._check_resume_identity()
        self.targets = self._make_targets()
        self._start_training_state()
        self._start_plugins(teacher)
        self._release_teacher()

    # ------------------------------------------------------------------------------------------- construction
    def _join_processes(self, accelerator) -> None:
        """This process's place in the run: the accelerator (FSDP/DeepSpeed refused, `processes`), its trackers,
        its share of the batch, and a run directory no other process trains in."""
        cfg = self.cfg
        # the process group waits PROCESS_GROUP_TIMEOUT for the main process's own work
        self.acc = accelerator or run_accelerator(cfg.trackers, self.run_dir / TRACKER_DIR)
        refuse_sharding(self.acc)
        missing = sorted(set(cfg.trackers) - {str(t) for t in self.acc.log_with})
        if missing:
            raise SemalignError(f"trackers {missing} are not among the given accelerator's (log_with="
                                f"{[str(t) for t in self.acc.log_with]}); build it with Accelerator(log_with="
                                f"{cfg.trackers}), or leave accelerator unset")
        self.trackers = Trackers(self.acc) if cfg.trackers else None
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.main = self.acc.is_main_process
        self.device = self.acc.device
        if cfg.data.batch_size % self.world:
            raise SemalignError(f"data.batch_size {cfg.data.batch_size} is not divisible by the {self.world} "
                                "processes; choose a multiple of the process count")
        if self.main:  # another process training in run_dir: refused before anything loads (run() takes the lock)
            refuse_if_locked(self.run_dir, "run_dir")

    def _read_objectives(self) -> None:
        """The config's loss terms, what they need (teacher states, logits, a teacher lens), the micro-batch, and
        the precision the steps compute in."""
        cfg = self.cfg
        self.objectives: list[tuple[str, Objective, float, dict]] = [
            (name, get_objective(name), float(w), get_objective(name).options(cfg.objective.options.get(name)))
            for name, w in cfg.objective.terms.items()]
        self.micro_batch = cfg.micro_batch(self.world)  # sequences in one forward/backward of this process
        if self.micro_batch < cfg.data.batch_size // self.world:
            for name, obj, _, _ in self.objectives:
                if obj.batch_statistic:
                    warnings.warn(f"objective {name!r} takes {obj.batch_statistic}: with train.micro_batch_size = "
                                  f"{self.micro_batch} each micro-batch takes its own, so the step's gradient "
                                  "differs from the whole batch's; unset train.micro_batch_size for the exact "
                                  "one", stacklevel=3)
        self.need_logits = any(o.kind == "output" for _, o, _, _ in self.objectives)
        self.need_teacher_logits = any(o.needs_teacher_logits for _, o, _, _ in self.objectives)
        self.need_teacher_states = any(o.kind == "layer" for _, o, _, _ in self.objectives)
        self.balanced = balanced_terms(cfg.objective.options)  # layer terms scaled to the output KL (`terms`)
        self.needs = {need for _, o, _, _ in self.objectives for need in o.needs}  # `training.objectives.NEEDS`
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = lambda: autocast(self.precision, self.device)

    def _load_models(self, pair: ModelPair | None) -> tuple[Any, Any, MainSetup | None]:
        """(teacher, student, what the main process sends): the caller's pair, or the config's sources read into
        host memory (what `semalign plan` counts); the plain copies move to the device later. The teacher only
        where it is used (`processes.teacher_everywhere`); the main process checks the pair and builds the map
        once, and the others wait here for what they need of it (`setup.MainSetup`)."""
        cfg = self.cfg
        # a term reading the teacher's logit lens (lens_kl) reads it from a top-k target cache (`targets`), else
        # keeps the lens (its final norm and head) and runs it every step
        self.lens_cached = ("teacher_lens" in self.needs and cfg.targets.mode == "cached"
                            and cfg.targets.logits_store == "topk")
        runs_teacher = "teacher_model" in self.needs or ("teacher_lens" in self.needs and not self.lens_cached)
        needs_teacher = self.main or teacher_everywhere(
            cfg, self.need_teacher_states or self.need_teacher_logits, self.plugins, runs_teacher)
        if pair is not None:
            teacher, student = (pair.teacher if needs_teacher else None), pair.student
        else:
            teacher = load_model(cfg.teacher, dtype=cfg.torch_dtype, device="cpu") if needs_teacher else None
            student = load_model(cfg.student, dtype=cfg.torch_dtype, device="cpu")
        shared = None if self.main else from_main(self.acc, None, "the teacher's checks, diagnostics and map",
                                                  say=cfg.progress)
        # a half-precision student computes in its dtype: autocast to it, whatever `precision` says, so the fp32
        # master weights of a stage (`schedule._fp32_masters`) run beside its frozen bf16/fp16 weights
        self.half = next((p.dtype for p in student.parameters() if p.dtype in (torch.bfloat16, torch.float16)), None)
        if self.half is not None:
            self.autocast = lambda: torch.autocast(self.device.type, dtype=self.half)
        self.cross = cfg.vocab == "intersection"
        if cfg.data.document_start is not None:  # declared on the tokenizers, so the saved student keeps it
            for model in (student,) if self.cross or teacher is None else (student, teacher):
                set_document_start(model.tokenizer, cfg.data.document_start)
        if pair is None and shared is None:  # the pair's checks, once, where the pair is built
            pair = ModelPair(teacher, student, vocab=cfg.vocab)
        self.alignment = pair.alignment if shared is None else shared.alignment
        return teacher, student, shared

    def _check_models(self, teacher, student, shared: MainSetup | None) -> None:
        """What the trainer needs of each model beyond a valid pair (by the main process; the others take its
        results): the real vocabulary rows, terms that fit the kind of vocabulary, known blocks with an exact
        plain copy, and LoRA targets the student has."""
        self.teacher_facts = TeacherFacts.of(teacher) if shared is None else shared.teacher
        self.depths = (self.teacher_facts.blocks, student.cfg.n_layers)
        self.names = {"teacher": self.teacher_facts.name, "student": model_name(student)}
        if shared is not None:
            self.t_rows, self.s_rows = shared.rows
            return
        # the real vocabulary rows (`models.vocab_rows`) every output term, lens and cached logit reads; None
        # where a head has no padding (nothing is sliced)
        self.t_rows, self.s_rows = (None if vocab_rows(m) == head_rows(m) else vocab_rows(m)
                                    for m in (teacher, student))
        if not self.cross and (self.t_rows or self.s_rows):
            self.t_rows = self.s_rows = vocab_rows(student)  # one tokenizer: the KL compares the common real rows
        self._check_objectives_fit_vocab()
        for role, model in (("teacher", teacher), ("student", student)):  # known blocks, an exact plain copy
            if getattr(model, "provenance", None) is None:  # a bridge not from load_model, so never probed
                check_bridge_runs(model, f"the {role} {model_name(model)}")
            if (problem := trainer_problem(model, f"the {role} {model_name(model)}", trained=role == "student")):
                raise SemalignError(problem)
        if self.cfg.schedule.adapter == "lora" and (problem := lora_problem(
                skeleton(underlying_hf(student)), f"student {model_name(student)}",
                self.cfg.schedule.lora_targets)) is not None:
            raise SemalignError(problem)

    def _check_objectives_fit_vocab(self) -> None:
        """Every term fits the pair's kind of vocabulary (`Objective.vocab_problem`)."""
        for _, obj, _, _ in self.objectives:
            if (problem := obj.vocab_problem(self.cross)) is not None:
                raise SemalignError(problem)

    def _read_data(self, data: TokenBatch | None, diag_data: TokenBatch | None, student, teacher) -> None:
        """The training and diagnostic sequences (the caller's batches or the config's source), and the
        diagnostic positions where teacher and student states compare (all real ones for one vocabulary)."""
        cfg = self.cfg
        self.tokenizer = student.tokenizer
        self.data = (AlignData.from_batches(data, diag_data, cfg.data.diag_sequences) if data is not None
                     else build_data(cfg.data, self.tokenizer))
        if len(self.data) < cfg.data.batch_size:
            raise SemalignError(f"{len(self.data)} training sequences are fewer than one batch of "
                                f"{cfg.data.batch_size}; add data or lower data.batch_size")
        if self.cross:  # the teacher reads its own tokenization of every block
            self.data = self.data.with_teacher_views(student.tokenizer, teacher.tokenizer)
        self.diag_mask = (self.data.diag.mask & self.data.diag_teacher.aligned) if self.cross else self.data.diag.mask

    def _copy_models(self, teacher, student) -> None:
        """Plain HF copies on the device: the teacher's weights shared, the student's copied (the caller's model
        is untouched), and the student's logit lens."""
        self.teacher = (None if teacher is None else
                        clean_copy(teacher, share_weights=True).to(self.device).eval().requires_grad_(False))
        self.student = clean_copy(student, share_weights=False).to(self.device)
        self.student.requires_grad_(False).train()
        self.n_student_layers = len(parts(self.student).layers)
        self.lens = lens_fn(self.student, self.s_rows)
        self.lens_is_output = lens_is_output(self.student, self.lens)  # a lens term may then read the logits

    def _pair_layers(self, pairing, shared: MainSetup | None) -> None:
        """The teacher's diagnostic states and CKA stack (the main process's: diagnostics run there), the layer
        pairs (checked against both depths) and the stages that train them."""
        cfg = self.cfg
        n_teacher, n_student = self.depths
        self.teacher_diag, self.teacher_top1, self.teacher_stack = ResidualStates(), {}, None
        if shared is None:
            diag_tokens = (self.data.diag_teacher if self.cross else self.data.diag).tokens.to(self.device)
            self.teacher_diag = diagnostic_states(self.teacher, diag_tokens, self.autocast).map(
                lambda v: v.to(self.device))
            if self.cross:  # into the student's positions (the unaligned ones are masked out by diag_mask)
                self.teacher_diag = self.teacher_diag.map(lambda v: gather_positions(v, self.data.diag_teacher.index))
            cka_pairing = (pairing is None and cfg.pairing.pairs is None and not cfg.pairing.path
                           and cfg.pairing.strategy == "cka")
            # the teacher's residual stack for CKA maps, taken now: a cached-targets run drops the teacher below
            self.teacher_stack = self._teacher_stack() if cfg.figures or cka_pairing else None
            cka = cka_grid(self.teacher_stack, self._stack(self.student))[0][1:, 1:] if cka_pairing else None
            self.pairs = resolve_pairing(cfg, pairing, n_teacher, n_student, cka)
        else:
            self.pairs = list(shared.pairs)
        check_pairs(self.pairs, n_teacher, n_student, *self.names.values())
        self.pairs.sort(key=lambda p: p.student_layer)
        self.prev = {p.student_layer: (self.pairs[i - 1] if i else None) for i, p in enumerate(self.pairs)}
        self.stages = build_stages(cfg.schedule, self.pairs)
        self.teacher_layers = sorted({t for p in self.pairs for t in p.teacher_layers})
        # the teacher states each stage's layer terms read (none without a layer term)
        self.stage_states = {st.index: stage_states(st.pairs if self.need_teacher_states else (), self.pairs)
                             for st in self.stages}

    def _build_transfer(self, transfer, teacher, student, shared: MainSetup | None) -> None:
        """The teacher's lens top-1 ids at the paired layers (for the diagnostics) and the TransferMap, by the
        main process; the others take its map."""
        if shared is None:
            self.teacher_top1 = lens_top1(self.teacher, self.teacher_diag, [p.nearest_teacher_layer for p in self.pairs],
                                          self.autocast, rows=self.t_rows)
            if self.cross:  # teacher ids -> the student's id of the same string (-1: unshared, never agrees)
                ids = teacher_to_student_ids(self.alignment, self.teacher_facts.head_rows).to(self.device)
                self.teacher_top1 = {k: ids[v] for k, v in self.teacher_top1.items()}
            self.transfer, self.excluded = resolve_transfer(self.cfg, transfer, teacher, student, self.alignment)
        else:
            self.transfer, self.excluded = shared.transfer, shared.excluded
        self.shared_ids = None if not self.cross else (self.alignment.student_ids.to(self.device),
                                                       self.alignment.teacher_ids.to(self.device))

    def _record_run(self, teacher, student, shared: MainSetup | None) -> None:
        """The run's provenance and identity (what a resume must match), then what the main process sends the
        others (what they wait for in `_load_models`)."""
        self.provenance = as_json(self._provenance(student), default=lambda o: o.to_dict() if hasattr(o, "to_dict")
                                  else str(o))
        self.identity = {"teacher_hash": weights_fingerprint(self.teacher) if shared is None else shared.teacher_hash,
                         "student_hash": weights_fingerprint(self.student),
                         "tokenizer_hash": tokenizer_fingerprint(self.tokenizer),
                         "data_hash": self.data.fingerprint,
                         "transfer": repr(self.transfer), "pairs": [p.record() for p in self.pairs]}
        if self.cross:
            self.identity["teacher_tokenizer_hash"] = tokenizer_fingerprint(teacher.tokenizer)
        if self.main:
            from_main(self.acc, MainSetup(self.teacher_facts, self.identity["teacher_hash"], (self.t_rows, self.s_rows),
                                          self.alignment, self.pairs, self.transfer, self.excluded), "")

    def _provenance(self, student) -> dict:
        """Where the models, pairing, map, data and precision of this run came from."""
        provenance = {"teacher": self.teacher_facts.provenance, "student": getattr(student, "provenance", None),
                      "processes": self.world, "pairing": [p.record() for p in self.pairs],
                      "transfer": repr(self.transfer), "transfer_excluded_ids": self.excluded,
                      "data": self.data.source, "precision": {
                          **precision_record(self.cfg.precision, self.device),
                          "model_dtype": {"teacher": self.teacher_facts.dtype,
                                          "student": str(next(student.parameters()).dtype)[6:]},
                          **({"autocast": str(self.half)[6:]} if self.half is not None else {})},
                      "vocab_rows": {"teacher": self.teacher_facts.vocab_rows, "student": vocab_rows(student),
                                     "head_rows": [self.teacher_facts.head_rows, head_rows(student)]}}
        if self.cross:
            provenance["vocab"] = {**self.alignment.describe(),
                                   "aligned_student_positions": self.data.teacher.share,
                                   "aligned_diagnostic_positions": self.data.diag_teacher.share}
        return provenance

    def _start_training_state(self) -> None:
        """No stage open yet, and the run's records as far as they are written (`_resume` reads them back)."""
        self._opt: torch.optim.Optimizer | None = None
        self._params: list[nn.Parameter] = []
        self._open: int | None = None
        self._metrics_path = self.run_dir / "metrics.jsonl"
        self.records: list[dict] = []  # every metric record, as `metrics.jsonl` holds it (main process)
        self.cka_records: dict[str, dict] = {}  # the CKA maps, as `diagnostics/` holds them (main process)
        self.stage_params: dict[int, int] = {}  # trainable parameter count per stage (fairness record)

    def _start_plugins(self, teacher) -> None:
        for plugin in self.plugins:
            if hasattr(plugin, "setup"):
                plugin.setup(self, teacher)

    def _release_teacher(self) -> None:
        """Keep the teacher's final norm and head where a term reads teacher states through its logit lens
        (lens_kl), and drop the teacher itself when no step runs it (the caller may keep it)."""
        self.teacher_lens = (lens_fn(self.teacher, self.t_rows) if "teacher_lens" in self.needs and not self.lens_cached
                             else None)  # a top-k cache holds the lens's top-k instead
        if self.targets.mode in ("cached", "none") and "teacher_model" not in self.needs:  # no step runs the teacher
            self.teacher = None
            gc.collect()

    def _cka_keep(self) -> torch.Tensor:
        """The diagnostic positions CKA compares: the first `cka_max_tokens` of `diag_mask` (deterministic)."""
        keep = self.diag_mask.clone()
        if int(keep.sum()) > self.cfg.cka_max_tokens:
            keep &= keep.flatten().cumsum(0).view_as(keep) <= self.cfg.cka_max_tokens
        return keep

    def _stack(self, model) -> torch.Tensor:
        """`accumulated_resid` of `model` (the student, or a same-vocabulary teacher) at the `_cka_keep` tokens."""
        with self.autocast():
            return accumulated_resid(model, TokenBatch(self.data.diag.tokens, self._cka_keep()))

    def _teacher_stack(self) -> torch.Tensor:
        """The teacher's stack, row for row with the student's: a cross-tokenizer pair's from its diagnostic
        states gathered into the student's positions (the same rows by construction)."""
        if not self.cross:
            return self._stack(self.teacher)
        keep = self._cka_keep().to(self.device)
        return torch.stack([x[keep].float().cpu() for x in self.teacher_diag.stream()])

    # ------------------------------------------------------------------------------------------- setup
    def _check_resume_identity(self) -> None:
        """A run directory with checkpoints resumes only with the same models, data, pairing and config."""
        if latest_checkpoint(self.run_dir) is None:
            return
        path = self.run_dir / "identity.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        now = as_json(self.identity)
        diff = sorted(k for k in now if saved.get(k) != now[k])
        cfg_path = self.run_dir / "config.json"
        if cfg_path.exists():
            diff += [f"config.{k}" for k in config_diff(json.loads(cfg_path.read_text()), self.cfg.to_dict())]
        if diff:
            raise SemalignError(f"run directory {self.run_dir} holds a run with other inputs ({', '.join(diff)}); "
                                "resume with the same config and models, or choose a new run_dir")

    def _make_targets(self):
        if not (self.need_teacher_states or self.need_teacher_logits):
            return NoTargets()
        if self.cfg.targets.mode == "online":
            online = OnlineTargets(self.teacher, self.teacher_layers, self.need_teacher_logits, self.autocast)
            return CrossTargets(online, self.data.teacher) if self.cross else online
        store = self.cfg.targets.logits_store if self.need_teacher_logits else None
        top_k, vocab = self.cfg.targets.top_k, self.t_rows or self.teacher_facts.head_rows
        if store == "topk" and top_k > vocab:
            raise SemalignError(f"targets.top_k = {top_k} exceeds the teacher's vocabulary of {vocab} tokens; use at "
                                f"most {vocab} (top_k = {vocab} keeps the whole distribution)")
        ident = cache_identity(self.identity["teacher_hash"], self.identity["tokenizer_hash"], self.teacher_layers,
                               self.identity["data_hash"], len(self.data), self.data.tokens.shape[1],
                               self.teacher_facts.width, store, self.names["teacher"], top_k=top_k,
                               tail_samples=self.cfg.targets.tail_samples,
                               lens=[lens_target(p) for p in self.pairs] if self.lens_cached else ())
        if store and self.t_rows:  # a padded teacher head: the cache holds logits over the real rows only
            ident["vocab_rows"] = self.t_rows
        path = Path(self.cfg.targets.cache_dir) if self.cfg.targets.cache_dir else default_cache_path(ident)
        meta = None
        if self.main:  # the teacher is here: it checks the cache, and builds it (under its lock) where missing
            meta = check_cache(path, ident) or build_cache(
                path, ident, self.teacher, self.data.tokens.to(self.device), self.cfg.targets.shard_sequences,
                self.micro_batch, self.autocast, progress=self.cfg.progress)
        meta = from_main(self.acc, meta, f"the teacher target cache {path}", say=self.cfg.progress)
        if not self.main and (problem := unshared_cache(path, meta)) is not None:
            raise SemalignError(problem)
        self.cache_path = path
        return CachedTargets(path, meta, logits=store, device=self.device)

    # ------------------------------------------------------------------------------------------- logging
    def _log(self, record: dict) -> None:
        """One metric record: kept (`records`, what `AlignResult` carries), appended to `metrics.jsonl` and sent to
        the experiment trackers, by the main process."""
        if self.main:
            line = json.dumps(record)
            self.records.append(json.loads(line))
            with writing(self._metrics_path), open(self._metrics_path, "a") as f:
                f.write(line + "\n")
            if self.trackers is not None:
                self.trackers.log(record)

    def _metric_lines(self) -> int:
        return len(self._metrics_path.read_text().splitlines()) if self._metrics_path.exists() else 0

    # ------------------------------------------------------------------------------------------- stages
    def _open_stage(self, stage: Stage) -> None:
        params = open_stage(self.student, self.cfg.schedule, stage, self.cfg.seed)
        for plugin in self.plugins:
            if hasattr(plugin, "open_stage"):
                params = list(plugin.open_stage(self, stage, params))
        self._params = params
        self._opt = make_optimizer(self._params, self.cfg.schedule, stage.lr)
        self._open = stage.index
        self.stage_params[stage.index] = sum(p.numel() for p in self._params)

    def _close_stage(self) -> None:
        for plugin in self.plugins:
            if hasattr(plugin, "close_stage"):
                plugin.close_stage(self, self.stages[self._open])
        if self.cfg.schedule.save_adapters and self.cfg.schedule.adapter == "lora" and self.main:
            with writing(self.run_dir / "adapters"):
                save_lora(self.student, self.run_dir / "adapters" / f"stage{self._open}")
        close_stage(self.student)
        self._opt, self._params, self._open = None, [], None

    def _checkpointed(self) -> nn.Module:
        """The student, plus every plugin's `module` that exists now (FitNets' projector, ...), as one module."""
        extra = {f"plugin{i}": p.module for i, p in enumerate(self.plugins)
                 if isinstance(getattr(p, "module", None), nn.Module)}
        return nn.ModuleDict({"student": self.student, **extra}) if extra else self.student

    def _save(self, step: int, stage: Stage, closed: bool, elapsed: float) -> None:
        if self.main:
            state = {"stage": stage.index, "closed": closed, "elapsed_s": elapsed,
                     "metrics_lines": self._metric_lines()}
            save_checkpoint(self.run_dir, step, self._checkpointed(), None if closed else self._opt, state,
                            keep=self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()

    def _resume(self) -> tuple[int, float]:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0, 0.0
        state = json.loads((ckpt / "state.json").read_text())
        stage = self.stages[state["stage"]]
        if not state["closed"]:
            self._open_stage(stage)
        load_checkpoint(ckpt, self._checkpointed(), self._opt)
        if self.main and self._metrics_path.exists():  # drop records written after the checkpoint
            lines = self._metrics_path.read_text().splitlines(keepends=True)[: state["metrics_lines"]]
            self._metrics_path.write_text("".join(lines))
        return int(state["step"]), float(state["elapsed_s"])

    def _read_records(self) -> None:
        """The records a previous start in this run directory left (none in a new one): the steps before a
        resume belong to the run's records."""
        if self.main:
            self.records = read_metrics(self._metrics_path)
            self.cka_records = cka_maps(self.run_dir)

    # ------------------------------------------------------------------------------------------- the step
    def _layer_inputs(self, pair: LayerPair, s_states: ResidualStates, t_states: ResidualStates,
                      mask: torch.Tensor) -> LayerInputs:
        prev = self.prev[pair.student_layer]
        t = pair.target(t_states.post)
        t_prev = prev.target(t_states.post) if prev is not None else t_states.embed
        s = s_states.post[pair.student_layer]
        s_prev = s_states.post[prev.student_layer] if prev is not None else s_states.embed
        t, t_prev = t.to(s.dtype), t_prev.to(s.dtype)
        extras = {k: v for p in self.plugins for k, v in getattr(p, "extras", {}).items()}
        return LayerInputs(pair.student_layer, s, s - s_prev, self.transfer(t), self.transfer(t - t_prev), mask,
                           self.lens, teacher_state=t, teacher_contribution=t - t_prev, extras=extras)

    def _student_layers(self, pairs: tuple[LayerPair, ...]) -> list[int]:
        out = set()
        for p in pairs:
            out.add(p.student_layer)
            if self.prev[p.student_layer] is not None:
                out.add(self.prev[p.student_layer].student_layer)
        return sorted(out)

    def _local_batch(self, step: int) -> tuple[torch.Tensor, TokenBatch]:
        index = self.data.indices(step, self.cfg.data.batch_size, self.cfg.seed)
        per = len(index) // self.world
        index = index[self.rank * per: (self.rank + 1) * per]
        batch = self.data.batch(index)
        return index, TokenBatch(batch.tokens.to(self.device), batch.mask.to(self.device))

    def _reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(values, reduction="sum") if self.world > 1 else values

    def _teacher_batch(self, stage: Stage, tokens: torch.Tensor, index: torch.Tensor) -> ResidualStates:
        """The teacher's part of (a micro-batch of) a step: only the states the stage reads, except for a
        cross-tokenizer pair, whose targets gather every paired layer into the student's positions."""
        if self.cross:
            return self.targets(tokens, index)
        if self.lens_cached:  # and the teacher's cached lens top-k at the stage's pairs
            return self.targets(tokens, index, states=self.stage_states[stage.index],
                                lens=[lens_target(p) for p in stage.pairs])
        return self.targets(tokens, index, states=self.stage_states[stage.index])

    def _context(self, stage: Stage, batch: TokenBatch, teacher: ResidualStates, step: int,
                 logits: torch.Tensor | None) -> StepContext:
        """What the step tells the terms that need more than their tensors (`training.objectives.StepContext`)."""
        return StepContext(step, (step - stage.start) / stage.steps, tuple(self.pairs), self.n_student_layers,
                           batch.tokens, batch.mask, student=self.student, teacher=self.teacher,
                           teacher_lens=self.teacher_lens, teacher_states=teacher, shared=self.shared_ids,
                           rows=(self.s_rows, self.t_rows), autocast=self.autocast, seed=self.cfg.seed,
                           swapped_logits=interchange_logits,
                           student_logits=logits if self.lens_is_output else None)

    def _terms(self, stage: Stage, batch: TokenBatch, teacher: ResidualStates, step: int = 0
               ) -> dict[str, torch.Tensor]:
        """Every term's value on the batch (a layer term: its mean over the stage's pairs, the values per pair kept
        in `_pair_values` for the gradient diagnostics)."""
        layers = self._student_layers(stage.pairs)
        recompute = recomputed_blocks(self.student) if self.cfg.train.activation_checkpointing else nullcontext()
        with self.autocast(), recompute:
            s_states = residual_states(self.student, batch.tokens, layers, embed=True, logits=self.need_logits,
                                       keep_graph=True)
        logits = s_states.logits
        if logits is not None and self.s_rows:  # padded head rows are no tokens: no term reads them
            logits = logits[..., : self.s_rows]
        if isinstance(teacher.logits, torch.Tensor) and self.t_rows:
            teacher.logits = teacher.logits[..., : self.t_rows]
        mask = batch.mask if teacher.mask is None else batch.mask & teacher.mask  # where the teacher compares
        layer_inputs = ([self._layer_inputs(p, s_states, teacher, mask) for p in stage.pairs]
                        if self.need_teacher_states else [])
        out_inputs = (OutputInputs(logits, batch.tokens, batch.mask, teacher.logits, shared=self.shared_ids,
                                   teacher_mask=teacher.mask) if self.need_logits else None)
        context = self._context(stage, batch, teacher, step, logits)
        for pair, x in zip(stage.pairs, layer_inputs, strict=False):  # none in the end-to-end stage
            x.context = context
            x.teacher_readout = teacher.lens.get(lens_target(pair))  # a cached lens readout (`targets`)
        values, self._pair_values = {}, {}
        for name, obj, _, options in self.objectives:
            if obj.kind == "layer":
                if not layer_inputs:  # the end-to-end stage has no pair: its layer terms rest
                    continue
                self._pair_values[name] = [obj.fn(x, **options) for x in layer_inputs]
                values[name] = torch.stack(self._pair_values[name]).mean()
            else:
                values[name] = obj.fn(out_inputs, **options)
        return values

    def _step(self, step: int, stage: Stage) -> dict[str, float]:
        t0 = time.time()
        index, batch = self._local_batch(step)
        lr = lr_at(self.cfg.schedule, stage, step)
        for group in self._opt.param_groups:
            group["lr"] = lr
        global_tokens = self._reduce_sum(batch.mask.sum().float())
        gradcos = bool(self.cfg.gradcos_every) and (step + 1) % self.cfg.gradcos_every == 0
        starts = range(0, len(index), self.micro_batch)
        names, totals = None, None
        for k, start in enumerate(starts):
            part = slice(start, start + self.micro_batch)
            micro = TokenBatch(batch.tokens[part], batch.mask[part])
            teacher = self._teacher_batch(stage, micro.tokens, index[part])
            values = self._terms(stage, micro, teacher, step)
            if names is None:  # the stage's terms (a global stage's layer terms rest)
                names = list(values)
                totals = torch.zeros(len(names), device=self.device)
            share = micro.mask.sum().float() / global_tokens  # this micro-batch's part of every global mean
            totals += torch.stack([values[n].detach().float() for n in names]) * share
            scales = term_scales(values, self.objectives, self.balanced)  # weights x dynamic balance (`terms`)
            # gradients accumulate over the micro-batches; a student wrapped for gradient sync (DDP, FSDP) syncs
            # at the last one only (`no_sync` is no context for the plain module); the all-reduce below averages
            # over processes
            with self.acc.no_sync(self.student) if k < len(starts) - 1 else nullcontext():
                if gradcos:  # one backward per piece (`gradcos`), logged per micro-batch
                    pieces = loss_pieces(values, self._pair_values, self.objectives, scales,
                                         [p.student_layer for p in stage.pairs])
                    for rec in backward_by_pieces(pieces, self._params, float(share * self.world),
                                                  set(reference_terms(self.objectives))):
                        self._log({"kind": "gradcos", "step": step + 1, "stage": stage.index,
                                   **({"micro_batch": k} if len(starts) > 1 else {}), **rec})
                else:
                    loss = sum(scales[n] * values[n] for n in names)
                    (loss * share * self.world).backward()
            del teacher, values  # the next micro-batch's teacher states are not to meet these
        reduced = self._reduce_sum(totals)
        for name, value in zip(names, reduced.tolist(), strict=True):
            if not math.isfinite(value):
                raise NonFiniteLossError(step + 1, stage, name, value)
        grads = [p for p in self._params if p.grad is not None]
        if self.world > 1 and grads:
            flat = self.acc.reduce(torch.cat([p.grad.flatten() for p in grads]), reduction="mean")
            offset = 0
            for p in grads:
                p.grad.copy_(flat[offset: offset + p.numel()].view_as(p))
                offset += p.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.cfg.schedule.grad_clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(step + 1, stage, "gradient norm (terms: " + ", ".join(names) + ")",
                                     float(grad_norm))
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        record = {n: v for n, v in zip(names, reduced.tolist(), strict=True)}
        scales = term_scales({n: torch.tensor(v) for n, v in record.items()}, self.objectives, self.balanced)  # global
        record["loss"] = sum(scales[n] * record[n] for n in names)
        record.update({f"{n}_alpha": scales[n] / w for n, _, w, _ in self.objectives
                       if n in self.balanced and n in scales})  # each balanced term's α
        record.update(lr=lr, grad_norm=float(grad_norm), tok_s=float(global_tokens) / max(1e-9, time.time() - t0))
        return record

    # ------------------------------------------------------------------------------------------- diagnostics
    def _diagnose(self, step: int, stage: Stage, when: str, cka: bool) -> None:
        """Diagnostics by the main process; the others wait for them here, in one barrier (`processes`)."""
        if self.main:
            self._diagnose_main(step, stage, when, cka)
        self.acc.wait_for_everyone()

    @torch.no_grad()
    def _diagnose_main(self, step: int, stage: Stage, when: str, cka: bool) -> None:
        was_training = self.student.training
        self.student.eval()
        tokens, mask = self.data.diag.tokens.to(self.device), self.data.diag.mask.to(self.device)
        with self.autocast():
            s_states = residual_states(self.student, tokens, range(self.n_student_layers), embed=True, logits=True)
        logits, s_states = s_states.logits, s_states.map(torch.Tensor.float)
        # the held-out metric every method shares: next-token CE of the student on the diagnostic batch
        self._log({"kind": "heldout", "step": step, "stage": stage.index, "when": when,
                   "ce": float(ce_loss(logits[..., : self.s_rows or logits.shape[-1]].float(), tokens, mask))})
        for pair in self.pairs:
            x = self._layer_inputs(pair, s_states, self.teacher_diag, self.diag_mask.to(self.device))
            top1 = self.teacher_top1.get(pair.nearest_teacher_layer)
            metrics = projection_metrics(x.state, x.target, x.contribution, x.target_contribution, x.mask,
                                         self.lens, top1)  # x.mask: a cross-tokenizer pair's aligned positions
            self._log({"kind": "diag", "step": step, "stage": stage.index, "when": when,
                       "student_layer": pair.student_layer, **metrics})
        if cka:
            matrix, t_labels, s_labels = cka_grid(self.teacher_stack, self._stack(self.student))
            name = f"cka_stage{stage.index}_{when}"
            title = f"Teacher x student CKA, stage {stage.index} ({stage.label}) {when}, step {step}"
            self._write_cka(name, title, matrix, t_labels, s_labels)
            self._log({"kind": "cka", "step": step, "stage": stage.index, "when": when,
                       "file": f"diagnostics/{name}.json", "diagonal_mean": self._paired_cka(matrix, t_labels, s_labels)})
        self.student.train(was_training)

    def _paired_cka(self, matrix, t_labels, s_labels) -> float:
        vals = [float(matrix[t_labels.index(str(p.nearest_teacher_layer)), s_labels.index(str(p.student_layer))])
                for p in self.pairs]
        return sum(vals) / len(vals)

    def _write_cka(self, name, title, matrix, t_labels, s_labels) -> None:
        """The map as a record (`diagnostics/{name}.json`), with the pairing's cells marked for the page."""
        marks = [(t_labels.index(str(p.nearest_teacher_layer)), s_labels.index(str(p.student_layer)))
                 for p in self.pairs]
        record = {"matrix": matrix.tolist(), "teacher_labels": t_labels, "student_labels": s_labels, "title": title,
                  "pairs": marks}
        (self.run_dir / "diagnostics").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "diagnostics" / f"{name}.json", record)
        self.cka_records[name] = as_json(record)

    # ------------------------------------------------------------------------------------------- run
    def _prepare_run_dir(self) -> None:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", self.cfg.to_dict())
            write_json_atomic(self.run_dir / "identity.json", self.identity)
            write_json_atomic(self.run_dir / "provenance.json", self.provenance)
            write_json_atomic(self.run_dir / "pairing.json", [p.record() for p in self.pairs])
            if hasattr(self.transfer, "save") and not (self.run_dir / "transfer.safetensors").exists():
                with writing(self.run_dir / "transfer.safetensors"):
                    self.transfer.save(self.run_dir / "transfer.safetensors")
        self.acc.wait_for_everyone()

    def run(self, stop_after_steps: int | None = None) -> AlignResult:
        """Train from the last checkpoint (or the start) to the end, or for `stop_after_steps` steps.

        With `stop_after_steps` the call ends after that many steps, having checkpointed: the run directory is
        then exactly what a kill right after a checkpoint leaves (what the resume test uses).

        The main process holds the run directory's lock meanwhile (`runlock`: a second process on it is refused in
        one line). Ctrl-C or SIGTERM raise `Interrupted`, naming the step reached and the checkpoint the same
        command resumes from; the directory stays consistent (records past that checkpoint are dropped on resume).
        """
        if stop_after_steps is not None:
            require_int("stop_after_steps", stop_after_steps)
        self._at: int | None = None  # the step reached, for an interruption's message
        result = None
        with run_lock(self.run_dir, "run_dir") if self.main else nullcontext():
            if self.cfg.flush_denormal:
                torch.set_flush_denormal(True)
            try:
                self._prepare_run_dir()
                result = self._run(stop_after_steps)
                return result
            except KeyboardInterrupt as err:
                raise Interrupted.at_step(self._at, latest_step(self.run_dir), err) from None
            finally:
                if self.cfg.flush_denormal:
                    torch.set_flush_denormal(False)  # torch's default (there is no getter to restore from)
                if self.trackers is not None:  # a finished run's stay open for its figures (`AlignResult.trackers`)
                    if result is not None and result.finished:
                        result.trackers = self.trackers
                    else:
                        self.trackers.finish()

    def _run(self, stop_after_steps: int | None) -> AlignResult:
        step, elapsed = self._resume()
        self._read_records()
        self._at = step
        if self.trackers is not None:
            self.trackers.start(self.cfg.to_dict(), self.run_dir, self.cfg.tracker_project, step)
        total = self.stages[-1].end
        end = total if stop_after_steps is None else min(total, step + stop_after_steps)
        t_start = time.time() - elapsed
        bar = tqdm(total=total, initial=step, desc="align", unit="step", dynamic_ncols=True,
                   disable=not (self.cfg.progress and self.main))
        record: dict = {}
        while step < end:
            stage = stage_at(self.stages, step)
            if self._open != stage.index:
                self._open_stage(stage)
                if step == stage.start:
                    self._log({"kind": "stage", "when": "start", "step": step, "stage": stage.index,
                               "label": stage.label, "lr": stage.lr, "steps": stage.steps})
                    self._diagnose(step, stage, "start", cka=self.cfg.figures)
            record = self._step(step, stage)
            step += 1
            self._at = step
            record.update(kind="train", step=step, stage=stage.index, stage_label=stage.label,
                          elapsed_s=time.time() - t_start)
            if step % self.cfg.log_every == 0 or step == stage.end:
                self._log(record)
            bar.update(1)
            bar.set_postfix(stage=stage.label, loss=f"{record['loss']:.4f}")
            for plugin in self.plugins:
                if hasattr(plugin, "on_step"):
                    plugin.on_step(self, step, self.stages[-1].end)
            if self.cfg.diag_every and step % self.cfg.diag_every == 0 and step != stage.end:
                self._diagnose(step, stage, "during", cka=False)
            if step == stage.end:
                self._close_stage()
                self._diagnose(step, stage, "end", cka=self.cfg.figures)
                self._log({"kind": "stage", "when": "end", "step": step, "stage": stage.index, "label": stage.label,
                           **{k: record[k] for k in ["loss", *self._term_names()] if k in record}})
                self._save(step, stage, closed=True, elapsed=time.time() - t_start)
            elif step % self.cfg.checkpoint_every == 0 or step == end:
                self._save(step, stage, closed=False, elapsed=time.time() - t_start)
        bar.close()
        if step < total:
            return self._result({"step": step, "finished": False})
        return self._finish(total, time.time() - t_start)

    def _term_names(self) -> list[str]:
        return [n for n, _, _, _ in self.objectives]

    def _finish(self, total: int, elapsed: float) -> AlignResult:
        """The final record (`final.json`: each stage's last losses, each paired layer's last diagnostics) and the
        saved student, by the main process."""
        final = {"finished": True, "step": total}
        if self.main:
            stages = [r for r in self.records if r.get("kind") == "stage" and r["when"] == "end"]
            last_diag = {r["student_layer"]: r for r in self.records if r.get("kind") == "diag"}
            final.update(elapsed_s=elapsed, stages=stages,
                         diagnostics={f"L{k}": {m: v for m, v in r.items() if m not in ("kind", "stage", "when")}
                                      for k, r in sorted(last_diag.items())})
            student_dir = self.run_dir / "student"
            self._save_student(student_dir)
            final["student_path"] = str(student_dir)
            write_json_atomic(self.run_dir / "final.json", final)
        self.acc.wait_for_everyone()
        return self._result(final)

    def _result(self, final: dict) -> AlignResult:
        """What the run leaves, from the records the main process kept as it wrote them; another process of a
        finished run reads them from the run directory the main process wrote."""
        if final["finished"] and not self.main:
            result = AlignResult.from_run_dir(self.run_dir, student=self.student)
        else:
            final = as_json(final)
            result = AlignResult(self.run_dir, final, Path(final["student_path"]) if "student_path" in final else None,
                                 student=self.student, records=list(self.records), cka=dict(self.cka_records),
                                 config=self.cfg.to_dict(), pairing=as_json([p.record() for p in self.pairs]),
                                 provenance=self.provenance)
        result.trainable_params = dict(self.stage_params)
        result.data_hash, result.steps = self.identity["data_hash"], self.stages[-1].end
        return result

    def _save_student(self, out: Path) -> None:
        """The trained student as an HF directory (config, model.safetensors, tokenizer): `load_model(out)`."""
        model = self.student  # its attention implementation is the clean copy's (sdpa, or eager where unsupported)
        with writing(out, "then rerun the same command: it writes the student again from the last checkpoint"):
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out), safe_serialization=True)
            self.tokenizer.save_pretrained(str(out))
        write_json_atomic(out / "semalign_align.json", {"config": self.cfg.to_dict(), "provenance": self.provenance})


# ----------------------------------------------------------------------------------------------- entry points

def align(config: AlignConfig | None = None, pair: ModelPair | None = None, *, stop_after_steps: int | None = None,
          **inputs) -> AlignResult:
    """Run (or resume) one alignment of `pair` (a validated `ModelPair`; None: the config's teacher and student).
    `inputs`: pairing, transfer, data, diag_data, run_dir, accelerator, plugins — each optional, overriding the
    config's sources (see `Trainer`)."""
    if stop_after_steps is not None:  # before anything loads
        require_int("stop_after_steps", stop_after_steps)
    return Trainer(config, pair, **inputs).run(stop_after_steps=stop_after_steps)
