"""`AlignConfig`: everything one alignment run needs, as strict dataclasses (unknown keys, wrong types named).

A *method* is only `objective.terms` (name -> weight). Data, pairing, schedule and trainable parameters
live elsewhere in the config, so an SFT control (`terms = {ce = 1.0}`) or a baseline trains on the same data
for the same steps with the same trainable parameters as SemAlign — only the loss terms are swapped.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.config import load_config, require_positive, setting, to_dict
from ..core.errors import SemalignError
from ..core.precision import PRECISIONS
from .trackers import check_trackers

# `AlignConfig.dtype`: the dtypes models may be loaded in
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MODES = ("frontier", "joint")
TRAINABLE = ("paired", "all")
ADAPTERS = ("full", "lora")
TARGET_MODES = ("online", "cached")
LOGIT_CACHES = ("dense", "topk")
LR_DECAYS = ("cosine", "constant")


@dataclass
class DataConfig:
    """Training text, cut into fixed-length blocks (no padding) in a deterministic order.

    `source`: `code-transfer` (the project's code transfer set: the standard library's test files outside
    the evaluation slice, unseen by the shipped student), `stdlib` (the student's own pretraining corpus), a
    directory (its .py, .txt, .md, .rst files), or one .txt / .jsonl file (jsonl: a "text" field per line).
    """

    source: str = setting("code-transfer", doc="code-transfer, stdlib, a directory, or one .txt/.jsonl file")
    seq_len: int = setting(256, doc="tokens per training block")
    n_sequences: int = setting(512, doc="training blocks")
    batch_size: int = setting(8, doc="global batch: split over processes under `accelerate launch`")
    diag_sequences: int = setting(8, doc="held-out blocks for diagnostics (CKA, projections), never trained on")
    document_start: str | None = setting(None, doc="the token that starts each document (unset: the tokenizer's "
                                                   "declared document_start, else its BOS, else its EOS)")

    def validate(self) -> None:
        require_positive(self, "seq_len", "n_sequences", "batch_size", "diag_sequences")


@dataclass
class PairingConfig:
    """Which teacher depth supervises which student layer (0-based block indices, resid_post; pairing.py).

    A layer may also be a TransformerLens hook name: `blocks.3.hook_resid_post` is layer 3, and
    `blocks.3.hook_resid_pre` layer 2 (the same state). In order of precedence: `pairs` — explicit rows
    [student_layer, teacher_low, teacher_high, weight] (target = (1-w)·h_T[low] + w·h_T[high]); `path` — a saved `LayerPairing` JSON (e.g. an attribution
    pairing from `pairing.make_pairing("attribution", scores=...)`); else `strategy`: `proportional` (the
    paper's depth rule, interpolated when the depth ratio is not an integer and `interpolate`) or `cka` (the
    monotone path of highest teacher x student CKA on the diagnostic batch). `student_layers` restricts the
    strategies to those student layers.
    """

    strategy: str = setting("proportional", doc="proportional (the paper's depth rule) or cka")
    student_layers: list[int | str] | None = setting(None, doc="pair only these student layers (unset: all)")
    interpolate: bool = setting(True, doc="blend two teacher layers when the depth ratio is not whole")
    path: str | None = setting(None, doc="a saved LayerPairing JSON (over strategy)")
    pairs: list[list[float | str]] | None = setting(None, doc="rows [student, teacher_low, teacher_high, weight] or "
                                                              "[student, teacher] (over path); a layer is a block "
                                                              "index or a hook name, e.g. blocks.3.hook_resid_post")

    def validate(self) -> None:
        from ..lens.pairing import layer_of

        for value in [v for row in self.pairs or [] for v in row[:3]] + list(self.student_layers or []):
            layer_of(value)  # a bad hook name fails here, when the config is read
        if self.strategy not in ("proportional", "cka"):
            raise SemalignError(f"pairing.strategy must be 'proportional' or 'cka', got {self.strategy!r}; for an "
                                "attribution pairing build it with semalign_lens.lens.pairing.make_pairing('attribution', "
                                "scores=...), save it, and set pairing.path")


@dataclass
class TransferConfig:
    """The teacher->student map (`semalign_lens.lens.semantics.TransferMap`): kind paper | dual | logits.

    Default `dual`: the paper's cosine coefficients recomposed with the dual frame, so the mapped target keeps
    the teacher state's readout exactly (the paper's own `paper` recomposition keeps cos 0.7-0.8 of it).
    """

    kind: str = setting("dual", doc="paper, dual or logits")
    fold_final_norm: bool = setting(True, doc="fold the final norm's gain into the semantic basis")
    path: str | None = setting(None, doc="load a saved TransferMap instead of building one")


@dataclass
class ObjectiveConfig:
    """Loss terms (registry name -> positive weight) and per-term options (`options.kl.temperature`...)."""

    terms: dict[str, float] = setting(factory=lambda: {"relation": 1.0, "kl": 1.0},
                                      doc="loss term name -> positive weight: the method")
    options: dict[str, dict[str, Any]] = setting(factory=dict, doc="per-term options, e.g. options.kl.temperature")

    def validate(self) -> None:
        from .objectives import get_objective

        if not isinstance(self.terms, dict) or not self.terms:
            raise SemalignError("objective.terms must name at least one loss term with a weight, e.g. "
                                "{relation = 1.0, kl = 1.0}")
        for name, weight in self.terms.items():
            obj = get_objective(name)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise SemalignError(f"objective.terms.{name} must be a positive weight, got {weight!r}; "
                                    "remove the term instead of giving it weight 0")
            obj.options(self.options.get(name))
        extra = sorted(set(self.options) - set(self.terms))
        if extra:
            raise SemalignError(f"objective.options has entries {extra} for terms that are not in objective.terms "
                                f"({sorted(self.terms)})")


@dataclass
class ScheduleConfig:
    """Which parameters train when, and how fast.

    `mode`: `frontier` (v2: one stage per paired student layer, shallow to deep, only that layer's loss)
    or `joint` (v1: one stage, all paired layers' losses at once). `trainable`: `paired` (the stage's
    layer(s): earlier layers frozen) or `all` (every student parameter: SFT-style controls). `adapter`:
    `full` parameters or `lora` (rank `lora_rank` on `lora_targets`, merged at the end of each stage).
    `stage_steps` and `lr` are one value for all stages or a list with one value per stage. `global_steps` > 0
    follows those stages with one end-to-end stage (local then global: MOHAWK arXiv 2408.10189, Puzzle
    2411.19146, LoLCATs 2410.10254 end their local alignment so): every student layer trains, with the stages'
    adapter, on the output terms only (the layer terms have no pair there).
    """

    mode: str = setting("frontier", doc="frontier (a stage per paired layer, shallow to deep) or joint (one stage)")
    trainable: str = setting("paired", doc="paired (the stage's layers) or all (every student parameter)")
    adapter: str = setting("full", doc="full parameters or lora")
    lora_rank: int = setting(16, doc="LoRA rank")
    lora_alpha: float = setting(32.0, doc="LoRA alpha (update scale alpha / rank)")
    lora_targets: list[str] | None = setting(None, doc="linear layers LoRA adapts (unset: the family's v/o/up/down "
                                                       "equivalents, semalign_lens.models.architectures)")
    stage_steps: int | list[int] = setting(50, doc="optimizer steps per stage (or a list, one per stage)")
    lr: float | list[float] = setting(3e-4, doc="peak learning rate (or a list, one per stage)")
    warmup_steps: int = setting(0, doc="linear warmup steps at the start of each stage")
    lr_decay: str = setting("constant", doc="cosine or constant after warmup")
    min_lr_ratio: float = setting(0.1, doc="cosine decay floor, as a fraction of lr")
    weight_decay: float = setting(0.0, doc="AdamW weight decay")
    grad_clip: float = setting(1.0, doc="gradient norm clipping threshold")
    save_adapters: bool = setting(False, doc="lora: also save each stage's adapters in peft's format "
                                             "(run_dir/adapters/stage{i}) before they are merged")
    global_steps: int = setting(0, doc="steps of one final end-to-end stage after the others: every student layer "
                                       "trains on the output terms only (local then global); 0 = none")
    global_lr: float | None = setting(None, doc="learning rate of that stage (unset: the last stage's)")

    def validate(self) -> None:
        _choice(self, "mode", MODES)
        _choice(self, "trainable", TRAINABLE)
        _choice(self, "adapter", ADAPTERS)
        _choice(self, "lr_decay", LR_DECAYS)
        require_positive(self, "lora_rank", "lora_alpha", "grad_clip")
        for name in ("stage_steps", "lr"):
            values = getattr(self, name)
            for v in values if isinstance(values, list) else [values]:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise SemalignError(f"schedule.{name} must be positive (or a list of positive values, one per "
                                        f"stage), got {values!r}")
        if any(isinstance(v, float) and not v.is_integer() for v in _as_list(self.stage_steps)):
            raise SemalignError(f"schedule.stage_steps must be whole numbers, got {self.stage_steps!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise SemalignError("schedule.warmup_steps and weight_decay must be >= 0 and min_lr_ratio in [0, 1]")
        if isinstance(self.global_steps, bool) or not isinstance(self.global_steps, int) or self.global_steps < 0:
            raise SemalignError(f"schedule.global_steps must be a whole number >= 0 (0 = no end-to-end stage), got "
                                f"{self.global_steps!r}")
        if self.global_lr is not None and (isinstance(self.global_lr, bool) or not self.global_lr > 0):
            raise SemalignError(f"schedule.global_lr must be positive (or unset: the last stage's), got "
                                f"{self.global_lr!r}")
        if self.lora_targets is not None and not self.lora_targets:
            raise SemalignError("schedule.lora_targets is empty; name the linear layers to adapt, e.g. "
                                "['v_proj', 'o_proj', 'up_proj', 'down_proj'], or leave it unset for the family's")


@dataclass
class TargetsConfig:
    """Teacher targets: `online` (teacher forward under no_grad, truncated at the deepest paired layer) or
    `cached` (teacher states precomputed once into fp16 safetensors shards; the teacher is then not held in
    memory during training). `kl` needs teacher logits: online, or cached with `cache_logits = "topk"` (the
    teacher's `top_k` tokens per position plus the tail's mass: 386 B per token at k = 64; KL over those
    buckets, see `semalign_lens.training.objectives.sparse_logits`; `tail_samples` adds ids drawn from the tail, 6 B
    each, which make the forward KL's value at τ = 1 unbiased; the gradient stays the bucket KL's) or
    `"dense"` (= `true`; fp16, 98 KB per token at V = 49152 — small data only)."""

    mode: str = setting("online", doc="online (teacher forward each step) or cached (precomputed once)")
    cache_dir: str | None = setting(None, doc="cache directory (unset: the user cache, keyed by inputs)")
    cache_logits: bool | str = setting(False, doc="teacher logits in the cache (kl needs them): false, 'topk' "
                                                  "(6·top_k + 2 bytes/token) or 'dense' (= true; 2·vocab bytes)")
    top_k: int = setting(64, doc="teacher tokens kept per position when cache_logits = 'topk'")
    tail_samples: int = setting(0, doc="with cache_logits = 'topk': token ids drawn from the teacher's tail per "
                                       "position (6 bytes each): the forward KL's value at τ = 1 unbiased, its "
                                       "gradient unchanged; 0 = none")
    shard_sequences: int = setting(64, doc="sequences per cache shard")

    def validate(self) -> None:
        _choice(self, "mode", TARGET_MODES)
        require_positive(self, "shard_sequences", "top_k")
        if isinstance(self.tail_samples, bool) or not isinstance(self.tail_samples, int) or self.tail_samples < 0:
            raise SemalignError(f"targets.tail_samples must be a whole number >= 0 (0 = none), got "
                                f"{self.tail_samples!r}")
        if self.tail_samples and self.logits_store != "topk":
            raise SemalignError(f"targets.tail_samples = {self.tail_samples} refines a top-k cache; set "
                                "targets.cache_logits = 'topk' (or tail_samples = 0)")
        if isinstance(self.cache_logits, str) and self.cache_logits not in LOGIT_CACHES:
            raise SemalignError(f"targets.cache_logits must be false, true, 'dense' or 'topk', got "
                                f"{self.cache_logits!r}")

    @property
    def logits_store(self) -> str | None:
        """How the cache holds teacher logits: 'dense', 'topk' or None (`true` means 'dense')."""
        return logits_store(self.cache_logits)


@dataclass
class TrainConfig:
    """How one optimiser step is computed, not what it computes (ours): the same gradient, less memory.

    `micro_batch_size`: sequences one process runs through a forward and backward at a time; their gradients
    accumulate until the process's share of `data.batch_size` is done, each micro-batch's loss weighted by its
    share of the global batch's real tokens (as each process's is), so the step is the whole batch's wherever
    every sequence weighs the same in a term's mean: the trainer's own data (fixed-length blocks, no padding)
    with every built-in term but `fitnets` (a batch statistic, `objectives.Objective.batch_statistic`: warned
    about). Not so, and refused, for a cross-tokenizer pair, whose token terms average over aligned positions
    (measured on the tiny cross pair: 7-11% of the gradient at micro-batches of 1); with padded token batches
    passed to `Trainer` a per-sequence or next-token mean is weighted by real tokens, near but not equal. The
    cache build and the online teacher forwards run a micro-batch at a time too.
    `activation_checkpointing`: each student block keeps only its input for backward and recomputes the rest
    (torch.utils.checkpoint), trading one extra block forward per block for its activations.
    """

    micro_batch_size: int | None = setting(None, doc="sequences a process runs through one forward/backward "
                                                     "(gradients accumulate to the global data.batch_size); "
                                                     "unset or 0: its whole share of the batch")
    activation_checkpointing: bool = setting(False, doc="recompute each student block in backward instead of "
                                                        "keeping its activations (torch.utils.checkpoint)")

    def validate(self) -> None:
        m = self.micro_batch_size
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise SemalignError(f"train.micro_batch_size must be a whole number of sequences >= 1 (0 or unset: the "
                                f"whole batch), got {m!r}")


def logits_store(value: bool | str | None) -> str | None:
    """A `cache_logits` value (config, or a cache's meta.json) as 'dense', 'topk' or None: `true` is 'dense',
    the meaning it had before logits had modes."""
    return "dense" if value is True else value or None


@dataclass
class AlignConfig:
    """One SemAlign run. Models are source strings (zoo name, HF directory, .gguf, Hub name)."""

    teacher: str = setting("smollm2-135m", doc="teacher model: zoo name, HF directory, .gguf file or Hub name")
    student: str = setting("stdlib-student", doc="student model (same forms)")
    vocab: str = setting("shared", doc="shared (one vocabulary) or intersection (another tokenizer: shared token "
                                       "strings, aligned positions, teacher targets online; training/cross_pair.py)")
    run_dir: str = setting("runs/align", doc="output directory: checkpoints, metrics, report, trained student")
    seed: int = setting(0, doc="seed of the data order and of adapter initialisation")
    precision: str = setting("auto", doc="auto (bf16 autocast only where the CPU/GPU computes bf16 natively), "
                                         "fp32 or bf16")
    dtype: str = setting("float32", doc="the dtype teacher and student are loaded in from their sources: float32, "
                                        "bfloat16 or float16 (half the memory; models passed in keep theirs). A "
                                        "half-precision student computes in its dtype (autocast, whatever "
                                        "precision says) and trains fp32 master weights of each stage")
    # Flush denormal floats to zero while training (CPU): softmax probabilities and their gradients are full
    # of denormals, and x86 matmuls with denormal inputs ran 3x slower here (fisher/kl/ce backward); the
    # numerical effect is nil (values below 1.2e-38).
    flush_denormal: bool = setting(True, doc="flush denormal floats to zero while training (CPU speed)")
    data: DataConfig = setting(factory=DataConfig, doc="training text, cut into fixed-length blocks")
    pairing: PairingConfig = setting(factory=PairingConfig, doc="which teacher depth supervises which student layer")
    transfer: TransferConfig = setting(factory=TransferConfig, doc="the teacher->student state map")
    objective: ObjectiveConfig = setting(factory=ObjectiveConfig, doc="loss terms (the method) and their options")
    schedule: ScheduleConfig = setting(factory=ScheduleConfig, doc="which parameters train when, and how fast")
    targets: TargetsConfig = setting(factory=TargetsConfig, doc="teacher targets: computed online or cached")
    train: TrainConfig = setting(factory=TrainConfig, doc="how a step is computed: micro-batches, activation "
                                                          "checkpointing (the same gradient, less memory)")
    log_every: int = setting(1, doc="write training metrics every N steps")
    diag_every: int = setting(0, doc="projection diagnostics every N steps (0: only at stage start and end)")
    gradcos_every: int = setting(0, doc="gradient diagnostics every N steps: per paired layer, the cosine and norm "
                                        "ratio of each layer term's gradient against the output KL's (records of "
                                        "kind 'gradcos'); 0 = off")
    checkpoint_every: int = setting(50, doc="checkpoint every N steps")
    keep_checkpoints: int = setting(2, doc="checkpoints kept on disk (older ones are deleted)")
    cka_max_tokens: int = setting(2048, doc="CKA matrices use at most the first N diagnostic tokens")
    figures: bool = setting(True, doc="CKA heatmaps per stage, loss/projection figures (false: metrics JSONL only)")
    report: bool = setting(True, doc="write report.html (needs figures)")
    progress: bool = setting(True, doc="show progress bars")
    trackers: list[str] = setting(factory=list, doc="experiment trackers that also receive the metrics, config and "
                                                    "figures: tensorboard, wandb, trackio, ... (accelerate's; "
                                                    "empty: none; training/trackers.py)")
    tracker_project: str = setting("semalign", doc="the trackers' project (W&B project, trackio project, "
                                                   "TensorBoard folder under run_dir/trackers)")

    def validate(self) -> None:
        from ..models.pair import VOCAB_MODES

        _choice(self, "precision", PRECISIONS)
        _choice(self, "dtype", tuple(DTYPES))
        _choice(self, "vocab", VOCAB_MODES)
        if self.vocab == "intersection" and self.targets.mode == "cached":
            raise SemalignError("a cross-tokenizer pair (vocab = 'intersection') reads the teacher online, on its own "
                                "tokenization of each block; set targets.mode = 'online'")
        require_positive(self, "log_every", "checkpoint_every", "keep_checkpoints", "cka_max_tokens")
        check_trackers(self.trackers)
        if self.diag_every < 0:
            raise SemalignError(f"diag_every must be >= 0 (0 = only at stage boundaries), got {self.diag_every}")
        if isinstance(self.gradcos_every, bool) or not isinstance(self.gradcos_every, int) or self.gradcos_every < 0:
            raise SemalignError(f"gradcos_every must be a whole number >= 0 (0 = off), got {self.gradcos_every!r}")
        for sub in (self.data, self.pairing, self.objective, self.schedule, self.targets, self.train):
            sub.validate()
        if self.vocab == "intersection" and self.micro_batch() < self.data.batch_size:
            raise SemalignError("micro-batches weight each piece of a batch by its share of the real tokens, but a "
                                "cross-tokenizer pair's (vocab = 'intersection') token terms average over the aligned "
                                "positions, a different share per sequence, so the step would not be the batch's; "
                                "unset train.micro_batch_size")
        from .terms import term_problem

        if (problem := term_problem(self)) is not None:
            raise SemalignError(problem)
        needs_logits = [n for n in self.objective.terms if _needs_teacher_logits(n)]
        if self.targets.mode == "cached" and needs_logits and not self.targets.cache_logits:
            raise SemalignError(f"objective term(s) {needs_logits} need teacher logits, which cached targets do not "
                                "hold by default; set targets.mode = 'online', or targets.cache_logits = 'topk' "
                                "(the teacher's top_k tokens: 6·top_k + 2 bytes per token) or 'dense' (2·vocab)")
        # the terms that read top-k from a top-k cache: the output KLs, and a teacher-lens term's cached readout
        topk_readers = needs_logits + [n for n in self.objective.terms if _reads_teacher_lens(n)]
        tempered = [n for n in topk_readers if (self.objective.options.get(n) or {}).get("temperature", 1.0) != 1.0]
        if self.targets.mode == "cached" and self.targets.logits_store == "topk" and tempered:
            warnings.warn(f"objective term(s) {tempered} read top-k teacher logits at a temperature other than 1: the "
                          "cache's tail mass is then modelled, not known (measured biased at τ = 2, "
                          "semalign_lens.training.objectives.sparse_logits); use temperature 1 or cache_logits = 'dense'", stacklevel=2)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(to_dict(self)))

    def micro_batch(self, processes: int = 1) -> int:
        """Sequences in one forward/backward of one of `processes` processes (`train.micro_batch_size`, at most
        the process's share of `data.batch_size`)."""
        share = self.data.batch_size // processes
        return min(self.train.micro_batch_size or share, share)

    @property
    def torch_dtype(self):
        """`dtype` as a torch dtype."""
        return DTYPES[self.dtype]


def _needs_teacher_logits(name: str) -> bool:
    from .objectives import get_objective

    return get_objective(name).needs_teacher_logits


def _reads_teacher_lens(name: str) -> bool:
    from .objectives import get_objective

    return "teacher_lens" in get_objective(name).needs


def _choice(obj: Any, name: str, valid: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in valid:
        raise SemalignError(f"{type(obj).__name__}.{name} must be one of {valid}, got {value!r}")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def load_align_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
                      ) -> AlignConfig:
    """Read a TOML/JSON file (or start from the defaults) and apply overrides; strict keys and types throughout."""
    return load_config(AlignConfig, path, overrides)


# Keys that may change between a run and its resumption (they do not change what is trained; `train` changes how
# a step is computed, not its gradient).
RESUMABLE_KEYS = {"progress", "log_every", "report", "figures", "checkpoint_every", "keep_checkpoints", "diag_every",
                  "cka_max_tokens", "run_dir", "train", "gradcos_every", "trackers", "tracker_project"}


# Keys added since runs were first saved (dotted), with the value a run saved before them had.
ADDED_KEYS = {"dtype": "float32", "schedule.global_steps": 0, "schedule.global_lr": None}


def config_diff(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a saved run config and this one (resumable keys aside)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if not prefix and key in RESUMABLE_KEYS:
            continue
        a, b = saved.get(key, ADDED_KEYS.get(prefix + key)), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out
