"""`AlignConfig`: everything one alignment run needs, as strict dataclasses (unknown keys are named).

A *method* is only `objective.terms` (name -> weight). Data, pairing, schedule and trainable parameters
live elsewhere in the config, so an SFT control (`terms = {ce = 1.0}`) or a baseline trains on the same data
for the same steps with the same trainable parameters as SemAlign — only the loss terms are swapped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, read_config_file, require_positive, to_dict
from ..errors import SemalignError

MODES = ("frontier", "joint")
TRAINABLE = ("paired", "all")
ADAPTERS = ("full", "lora")
TARGET_MODES = ("online", "cached")
PRECISIONS = ("fp32", "bf16")
LR_DECAYS = ("cosine", "constant")


@dataclass
class DataConfig:
    """Training text, cut into fixed-length blocks (no padding) in a deterministic order.

    `source`: `code-transfer` (the project's code transfer set: the standard library's test files outside
    the evaluation slice, unseen by the shipped student), `stdlib` (the student's own pretraining corpus), a
    directory (its .py, .txt, .md, .rst files), or one .txt / .jsonl file (jsonl: a "text" field per line).
    """

    source: str = "code-transfer"
    seq_len: int = 256
    n_sequences: int = 512
    batch_size: int = 8  # global batch: split over processes under `accelerate launch`
    diag_sequences: int = 8  # held-out blocks for diagnostics (CKA, projections)

    def validate(self) -> None:
        require_positive(self, "seq_len", "n_sequences", "batch_size", "diag_sequences")


@dataclass
class PairingConfig:
    """Which teacher depth supervises which student layer (0-based block indices, resid_post; pairing.py).

    In order of precedence: `pairs` — explicit rows [student_layer, teacher_low, teacher_high, weight]
    (target = (1-w)·h_T[low] + w·h_T[high]); `path` — a saved `LayerPairing` JSON (e.g. an attribution
    pairing from `pairing.make_pairing("attribution", scores=...)`); else `strategy`: `proportional` (the
    paper's depth rule, interpolated when the depth ratio is not an integer and `interpolate`) or `cka` (the
    monotone path of highest teacher x student CKA on the diagnostic batch). `student_layers` restricts the
    strategies to those student layers.
    """

    strategy: str = "proportional"
    student_layers: list[int] | None = None
    interpolate: bool = True
    path: str | None = None
    pairs: list[list[float]] | None = None

    def validate(self) -> None:
        if self.strategy not in ("proportional", "cka"):
            raise SemalignError(f"pairing.strategy must be 'proportional' or 'cka', got {self.strategy!r}; for an "
                                "attribution pairing build it with semalign_lens.pairing.make_pairing('attribution', "
                                "scores=...), save it, and set pairing.path")


@dataclass
class TransferConfig:
    """The teacher->student map (`semalign_lens.semantics.TransferMap`): kind paper | dual | logits.

    Default `dual`: the paper's cosine coefficients recomposed with the dual frame, so the mapped target keeps
    the teacher state's readout exactly (the paper's own `paper` recomposition keeps cos 0.7-0.8 of it).
    """

    kind: str = "dual"
    fold_final_norm: bool = True
    path: str | None = None  # load a saved TransferMap instead of building one


@dataclass
class ObjectiveConfig:
    """Loss terms (registry name -> positive weight) and per-term options (`options.kl.temperature`...)."""

    terms: dict[str, float] = field(default_factory=lambda: {"relation": 1.0, "kl": 1.0})
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        from ..objectives import get_objective

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
    `stage_steps` and `lr` are one value for all stages or a list with one value per stage.
    """

    mode: str = "frontier"
    trainable: str = "paired"
    adapter: str = "full"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: ["v_proj", "o_proj", "up_proj", "down_proj"])
    stage_steps: int | list[int] = 50
    lr: float | list[float] = 3e-4
    warmup_steps: int = 0
    lr_decay: str = "constant"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0

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
        if not self.lora_targets:
            raise SemalignError("schedule.lora_targets is empty; name the linear layers to adapt, e.g. "
                                "['v_proj', 'o_proj', 'up_proj', 'down_proj']")


@dataclass
class TargetsConfig:
    """Teacher targets: `online` (teacher forward under no_grad, truncated at the deepest paired layer) or
    `cached` (teacher states precomputed once into fp16 safetensors shards; the teacher is then not held in
    memory during training). `kl` needs teacher logits: online, or cached with `cache_logits = true`
    (vocabulary-sized, fp16: 98 KB per token at V = 49152 — small data only)."""

    mode: str = "online"
    cache_dir: str | None = None  # None: the user cache, keyed by teacher/layers/tokenizer/data
    cache_logits: bool = False
    shard_sequences: int = 64

    def validate(self) -> None:
        _choice(self, "mode", TARGET_MODES)
        require_positive(self, "shard_sequences")


@dataclass
class AlignConfig:
    """One SemAlign run. Models are source strings (zoo name, HF directory, .gguf, Hub name)."""

    teacher: str = "smollm2-135m"
    student: str = "stdlib-student"
    run_dir: str = "runs/align"
    seed: int = 0
    precision: str = "fp32"
    # Flush denormal floats to zero while training (CPU): softmax probabilities and their gradients are full
    # of denormals, and x86 matmuls with denormal inputs ran 3x slower here (fisher/kl/ce backward); the
    # numerical effect is nil (values below 1.2e-38).
    flush_denormal: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    log_every: int = 1
    diag_every: int = 0  # projection diagnostics every N steps (0: only at stage start and end)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    cka_max_tokens: int = 2048
    figures: bool = True  # CKA heatmaps per stage, loss/projection figures (False: metrics JSONL only)
    report: bool = True  # report.html (needs figures)
    progress: bool = True

    def validate(self) -> None:
        _choice(self, "precision", PRECISIONS)
        require_positive(self, "log_every", "checkpoint_every", "keep_checkpoints", "cka_max_tokens")
        if self.diag_every < 0:
            raise SemalignError(f"diag_every must be >= 0 (0 = only at stage boundaries), got {self.diag_every}")
        for sub in (self.data, self.pairing, self.objective, self.schedule, self.targets):
            sub.validate()
        needs_logits = [n for n in self.objective.terms if _needs_teacher_logits(n)]
        if self.targets.mode == "cached" and needs_logits and not self.targets.cache_logits:
            raise SemalignError(f"objective term(s) {needs_logits} need teacher logits, which cached targets do not "
                                "hold by default; set targets.mode = 'online', or targets.cache_logits = true "
                                "(fp16 logits on disk: 2·vocab bytes per token)")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(to_dict(self)))


def _needs_teacher_logits(name: str) -> bool:
    from ..objectives import get_objective

    return get_objective(name).needs_teacher_logits


def _choice(obj: Any, name: str, valid: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in valid:
        raise SemalignError(f"{type(obj).__name__}.{name} must be one of {valid}, got {value!r}")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _parse_value(text: str) -> Any:
    """A command-line override value: JSON/TOML literal when it parses, else the string itself."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Merge overrides into a config dict. Keys may be dotted (`schedule.lr`); a list holds `key=value` strings."""
    if not overrides:
        return data
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise SemalignError(f"override {item!r} is not of the form key=value (e.g. schedule.lr=1e-3)")
            key, value = item.split("=", 1)
            pairs[key.strip()] = _parse_value(value.strip())
        overrides = pairs
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SemalignError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_align_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
                      ) -> AlignConfig:
    """Read a TOML/JSON file (or start from the defaults) and apply overrides; strict keys throughout."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(AlignConfig, apply_overrides(data, overrides), where=str(path or "config"))
