"""`semalign plan`: what one alignment run needs (GPU memory, host RAM, disk, steps), from the configs alone.

Why: a 13B → 7B run loads 74 GiB of weights before its first step can run out of memory, and its teacher
cache can outgrow the disk after an hour. The plan reads both models' config.json (a zoo name, a local
directory, a config.json file, a converted or raw .gguf, or a Hub name where the Hub is reachable), builds
them on the meta device (exact parameter counts and block layouts; no memory, no weights read), and applies
the formulas below to the run's `AlignConfig`. `check` then refuses a run that will not fit the budgets, in
one line naming the changes that make it fit.

The formulas mirror the trainer as it is (`training/loop.py`, one process): both models loaded in `dtype`;
float32 weights compute under `precision` (bf16: autocast over them), half-precision ones under autocast to
their own dtype, with the stage's trainable parameters upcast to fp32 masters; a step runs in micro-batches
(`train.micro_batch_size`), so every buffer of a forward and backward scales with the micro-batch, not with the
global batch. Bytes; printed in GiB (2^30 B).

Symbols. P_T, P_S: parameters (tied embeddings once); L_T, L_S: blocks; d_T, d_S: widths; V_T, V_S: LM-head
rows. Per student block: h heads, q = h·head_dim, kv = kv_heads·head_dim, f MLP width, m = 3 for a gated
MLP (gate, up, activation) else 2, n_norm norms with a weight, Σin the input widths of its linear layers.
B = data.batch_size, S = data.seq_len, M = the micro-batch (train.micro_batch_size, at most B; unset: B),
n = M·S tokens a forward and backward, N = data.n_sequences, N_d = data.diag_sequences·S diagnostic tokens,
n_c = min(cka_max_tokens, N_d). K = teacher states per token the cache holds: the distinct teacher layers of all
pairs plus the embedding (0 when no term reads the teacher); K_s = those a stage reads (`targets.stage_states`:
its pairs' teacher layers and their predecessors', or the embedding; 2 to 4 in a frontier stage; 0 without a
layer term). w = 2 for a
bfloat16 or float16 `dtype`, else 4 (bytes a weight). b = 2 (the dtype of matmul outputs) for half-precision
models or under bf16 autocast, else 4. r = schedule.lora_rank. "logits" below: some output term
(kl, ce, ...) needs the student's logits, so the student forward runs every block and the head.

GPU, setup (`Trainer.__init__`: both models on the device):
- teacher weights w·P_T, student weights w·P_S;
- teacher diagnostic states 4·(L_T + 1)·N_d·d_T (kept all run);
- cached targets, the cache build's batch (a micro-batch): n·(4·K·d_T + (b + 8)·V_T when logits are stored:
  the logits, their fp32 log-softmax and the top-k temporaries);
- teacher forward: one block's MLP intermediates, b·(m_T + 1)·f_T per token, over max(N_d, n if cached).
GPU, training, the stage that needs most (rows summed: an upper bound, the teacher's and the student's
forwards are not live at once):
- teacher weights w·P_T (online targets only: a cached run releases the teacher after setup);
- student weights w·P_S; teacher diagnostic states as in setup;
- trainable state: P_tr·12 + M (fp32 gradient, AdamW's two moments, and M: the fp32 LoRA adapters, 4·P_tr, or
  the upcast of full half-precision parameters to fp32 masters, (4 − w)·P_tr); P_tr: LoRA r·Σ(in + out) over the
  adapted layers of the trainable blocks, else their parameters;
- teacher targets: n·(4·K_s·d_T + logits): 4·V_T online or from a dense cache, 8·top_k + 4 + 8·tail_samples
  from a top-k cache (int32 ids, fp32 log-probabilities and tail), 0 without teacher logits; a top-k cache of a
  term reading the teacher's lens (lens_kl) adds its cached lens top-k, the same top-k bytes per active pair;
- teacher forward (online): n·b·((m_T + 1)·f_T + V_T if teacher logits);
- student activations saved for backward, per token over the blocks from the stage's shallowest trainable
  block to the last block (logits) or to its deepest paired block:
    frozen block   A = 4·n_norm·(d + 1) + b·(2q + 2kv + m·f) + 4h  (norm inputs and 1/rms; q, k, v, attention
                   output, MLP intermediates; the fused attention's log-sum-exp; eager attention, where the
                   family has no sdpa, adds (4 + 2b)·h·S: the scores' softmax and its cast);
    trainable      A + 4·n_norm·d + b·Σin (full: norm outputs, each linear's input) or A + b·Σ(in + r) over
                   the adapted layers (LoRA);
    with logits    + 4·(d + 1) + b·d (final norm, head input);
  with `train.activation_checkpointing` a block keeps only its input, w·d, and backward recomputes one block at a
  time: Σ w·d over those blocks + the largest one's A (or trainable A) + the head's part as above;
- autocast weight copies: over float32 weights (b = 2), 2·(the linear weights of the blocks on that path +
  V_S·d_S with logits): autocast casts frozen weights at every use and backward keeps the bf16 copies (with
  checkpointing only the recomputed block's: the largest block's linear weights instead of the path's); over
  half-precision weights, 2·P_tr (the fp32 masters' casts);
- vocabulary buffers (logits): n·V_S·(b + Σ c): the student logits, and per output term c = 4 + b for kl (the
  fp32 gradient it keeps and its cast), 12 + b for ce (fp32 log-softmax, the gradient in and out, the cast),
  8 + b for cosine_onehot and shared_kl, 32 + b for uld (two sorted softmaxes), 12 + b for any other;
- layer terms: n·4·(3·d_S + d_T + 3·S) per active pair (mapped target and contribution, the teacher's
  contribution, three S × S Grams a sequence); fisher's vocabulary chunks (16 MiB) are not counted;
- layer readouts, per active pair: a term reading both logit lenses (lens_kl) n·(2·b + 12)·max(V_S, V_T) (the
  two lens logits, the KL's fp32 copies and gradient), from a top-k cache nothing per token (the student's head
  is fused into the KL, `objectives.readout_kl_loss`: chunks of 16 MiB, not counted); an intervention (interchange) a second student pass
  (its activations as above, its logits n·(b + 8)·V_S) and a teacher forward n·b·((m_T + 1)·f_T + V_T), whose
  weights a cached run then keeps;
- backward: one block's activation gradients, n·(8·d_S + b·m·f_S).
The end-to-end stage (`schedule.global_steps`) trains every block on the output terms, no layer term.
Host RAM, setup: the teacher bridge w·P_T; the student bridge and the plain copy made of it before it moves,
2·w·P_S; the data (N + diag_sequences)·S·9 (int64 tokens, bool mask); the teacher's CKA stack
4·(L_T + 1)·n_c·d_T (when `figures`, or the cka pairing); the CKA grid G = 12·n_c·(L_S + 1)·d_S +
20·d_T·(L_S + 1)·d_S (the cka pairing: the student stack and two concatenated copies; per teacher layer its
cross products in fp32, fp64 and squared); the cache build 6·shard_sequences·S·c (a shard as fp32 lists,
their concatenation, the fp16 copy and the serialised buffer). Training (the bridges are freed): the data, the
teacher's CKA stack, G at every stage boundary when `figures`, cached reads 2·n·c_s (a micro-batch's rows of the
stage's states, c_s = 2·K_s·d_T + the logits' bytes below, and their concatenation). The larger of the two
phases.
Disk: the target cache N·S·c, c = 2·K·d_T + 2·V_T (dense logits) or 6·top_k + 2 + 6·tail_samples (top-k), the
top-k bytes once more per pair for a term reading the teacher's lens (the lens readouts);
checkpoints (keep_checkpoints + 1)·(w·P_S + M + 8·P_tr) (the whole student with its fp32 adapters or masters,
AdamW's moments; the newest is written before the oldest goes); the trained student w·P_S.
Steps: stages (paired student layers in frontier mode, else 1) × schedule.stage_steps (or their sum), each of
⌈B / M⌉ micro-batches.

Not counted: the CUDA context and allocator fragmentation (the default GPU budget is the device's free
memory, taken after the context exists), the diagnostics' no-grad passes at stage boundaries (smaller than a
step), a second process (`accelerate launch` splits B over processes; each holds both models).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import apply_overrides, from_dict
from ..core.errors import SemalignError
from .config import AlignConfig, load_align_config

GiB = 1 << 30
TERM_BYTES = {"kl": 4, "ce": 12, "cosine_onehot": 8, "shared_kl": 8, "uld": 32}  # c − b per vocabulary entry
OTHER_TERM_BYTES = 12


@dataclass(frozen=True)
class Block:
    """One decoder block as the plan reads it: its parameters, its linear layers (leaf name, in, out) and how
    many norms with a weight it has."""

    params: int
    linears: tuple[tuple[str, int, int], ...]
    norms: int

    @property
    def linear_weights(self) -> int:
        return sum(i * o for _, i, o in self.linears)

    def adapted(self, targets: list[str]) -> list[tuple[str, int, int]]:
        return [lin for lin in self.linears if lin[0] in targets]


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of one model, read from its config on the meta device."""

    source: str
    family: str
    params: int
    d: int
    heads: int
    q: int
    kv: int
    d_mlp: int
    gated: bool
    vocab: int
    eager: bool
    blocks: tuple[Block, ...]
    lora_defaults: tuple[str, ...]

    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def mlp_factor(self) -> int:
        return 3 if self.gated else 2

    def lora_targets(self, block: Block, configured: list[str] | None) -> list[str]:
        """The trainer's LoRA targets in `block`: the config's, else the family's that the block has."""
        names = {name for name, _, _ in block.linears}
        return list(configured) if configured else [t for t in self.lora_defaults if t in names]

    def frozen_bytes(self, block: Block, b: int, seq_len: int) -> int:
        """Per token: what backward keeps of a frozen block that gradients flow through."""
        eager = (4 + 2 * b) * self.heads * seq_len if self.eager else 0
        return (4 * block.norms * (self.d + 1) + b * (2 * self.q + 2 * self.kv + self.mlp_factor * self.d_mlp)
                + 4 * self.heads + eager)

    def trainable_bytes(self, block: Block, b: int, seq_len: int, lora_rank: int | None,
                        targets: list[str] | None) -> int:
        """Per token: a trainable block (full when `lora_rank` is None)."""
        if lora_rank is None:
            extra = 4 * block.norms * self.d + b * sum(i for _, i, _ in block.linears)
        else:
            extra = b * sum(i + lora_rank for _, i, _ in block.adapted(self.lora_targets(block, targets)))
        return self.frozen_bytes(block, b, seq_len) + extra

    def trainable_params(self, block: Block, lora_rank: int | None, targets: list[str] | None) -> int:
        if lora_rank is None:
            return block.params
        return sum(lora_rank * (i + o) for _, i, o in block.adapted(self.lora_targets(block, targets)))


def read_config(source: str):
    """The transformers config of `source`, read without its weights: a zoo name, a model directory (only its
    config.json is read), a config.json file, a .gguf (its conversion's config.json, else the GGUF header),
    or a Hub name (config.json from the local cache or the Hub)."""
    from transformers import AutoConfig

    from ..models.zoo import ZOO_NAMES, resolve, smollm2_gguf
    from ..models.zoo.gguf import converted_path

    text = str(source)
    path = Path(text).expanduser()
    if text == "smollm2-135m":
        path = smollm2_gguf()
    elif text in ZOO_NAMES:
        path = resolve(text)
    if path.suffix == ".gguf" and not path.is_file():
        raise SemalignError(f"GGUF file {path} does not exist")
    if path.suffix == ".gguf":
        converted, done = converted_path(path, "smollm2-135m" if text == "smollm2-135m" else path.stem)
        if not done:
            return _config_from(AutoConfig, str(path.parent), text, gguf_file=path.name)
        path = converted
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SemalignError(f"{path} has no config.json; point at a Hugging Face model directory or its "
                                "config.json")
        path = path / "config.json"
    elif not path.is_file():
        path = _hub_config(text)
    return _config_from(AutoConfig, str(path), text)


def _config_from(auto, where: str, source: str, **kwargs):
    try:
        return auto.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as err:
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:200]
        raise SemalignError(f"cannot read a model config from {source} ({type(err).__name__}: {detail}); pass a "
                            "Hugging Face model directory or its config.json") from None


def _hub_config(name: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, "config.json"))
    except Exception as err:  # offline, unknown, gated: all one problem here
        raise SemalignError(f"{name!r} is not a zoo name, a local directory or a config.json, and its config.json "
                            f"could not be had from the Hugging Face Hub ({type(err).__name__}); pass a local "
                            "directory or config.json") from None


def model_shape(source: str) -> ModelShape:
    """Build `source` on the meta device from its config and read its shape (`ModelShape`)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from ..models.architectures import architecture
    from ..models.lora import dense_weight
    from ..models.plain import parts

    config = read_config(source)
    error = None
    for attn in ("sdpa", "eager"):  # as the trainer's plain copy (hf.skeleton): sdpa where the family has it
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
            break
        except ValueError as err:
            error = err
    else:
        raise SemalignError(f"transformers cannot build {source} from its config ({error}); this architecture is "
                            "not supported by the trainer yet")
    p = parts(model)
    blocks = []
    for block in p.layers:
        linears = tuple((name.rsplit(".", 1)[-1], *reversed(dense_weight(m).shape))
                        for name, m in block.named_modules() if isinstance(m, (nn.Linear, Conv1D)))
        norms = sum(1 for m in block.modules() if "norm" in type(m).__name__.lower()
                    and getattr(m, "weight", None) is not None)
        blocks.append(Block(sum(w.numel() for w in block.parameters()), linears, norms))
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        source=str(source), family=config.model_type, params=sum(w.numel() for w in model.parameters()),
        d=config.hidden_size, heads=heads, q=heads * head_dim,
        kv=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        d_mlp=(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
               or 4 * config.hidden_size),
        gated=any("gate" in name for blk in blocks for name, _, _ in blk.linears),
        vocab=p.head.weight.shape[0], eager=model.config._attn_implementation == "eager", blocks=tuple(blocks),
        lora_defaults=tuple(architecture(model).lora_targets))


@dataclass
class Plan:
    """A run's needs: GPU memory by phase, host RAM by phase, disk, each as labelled rows of bytes."""

    teacher: ModelShape
    student: ModelShape
    cfg: AlignConfig
    numerics: str  # weights' dtype and the compute dtype, in words
    stages: int
    steps: int
    trainable: int
    worst: str
    teacher_states: int
    stage_states: int = 0  # the most teacher states one stage reads
    gpu_setup: dict[str, int] = field(default_factory=dict)
    gpu_training: dict[str, int] = field(default_factory=dict)
    host_setup: dict[str, int] = field(default_factory=dict)
    host_training: dict[str, int] = field(default_factory=dict)
    disk: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.data.batch_size * self.cfg.data.seq_len

    @property
    def gpu(self) -> int:
        return max(sum(self.gpu_setup.values()), sum(self.gpu_training.values()))

    @property
    def host(self) -> int:
        return max(sum(self.host_setup.values()), sum(self.host_training.values()))

    @property
    def disk_total(self) -> int:
        return sum(self.disk.values())

    def lines(self) -> list[str]:
        cfg, t, s = self.cfg, self.teacher, self.student
        sc = cfg.schedule
        adapter = f"LoRA r{sc.lora_rank}" if sc.adapter == "lora" else "full parameters"
        passes = self.steps * cfg.data.batch_size / cfg.data.n_sequences
        out = [f"semalign plan: {t.source} -> {s.source} (from their configs; no weights read)"]
        for role, m in (("teacher", t), ("student", s)):
            out.append(f"  {role}  {m.family}, {m.params:,} parameters, {m.layers} blocks, d {m.d}, vocab {m.vocab}")
        micro = cfg.micro_batch()
        pieces = -(-cfg.data.batch_size // micro)
        step = "the whole batch in one forward" if pieces == 1 else f"micro-batches of {micro} ({pieces} a step)"
        step += ", activation checkpointing" if cfg.train.activation_checkpointing else ""
        out += [f"  run      {sc.mode}, {self.stages} stage{'s' * (self.stages != 1)}, {self.steps} steps; "
                f"{cfg.data.batch_size} x {cfg.data.seq_len} = {self.tokens_per_step:,} tokens a step, "
                f"{self.steps * self.tokens_per_step:,} "
                f"in all ({passes:.2f} passes over {cfg.data.n_sequences} sequences)",
                f"           {step}",
                f"           {adapter} ({sc.trainable}): at most {self.trainable:,} trainable parameters a stage; "
                f"{self.numerics}",
                f"           teacher targets {cfg.targets.mode}: {self.teacher_states} states a token, at most "
                f"{self.stage_states} read a stage; terms {', '.join(cfg.objective.terms)}"]
        out += _table(f"GPU memory, GiB (worst stage: {self.worst})", ("setup", "training"),
                      self.gpu_setup, self.gpu_training)
        out += _table("host RAM, GiB", ("setup", "training"), self.host_setup, self.host_training)
        out += _table("disk, GiB", ("",), self.disk)
        return [line.rstrip() for line in out]


def _table(title: str, columns: tuple[str, ...], *phases: dict[str, int]) -> list[str]:
    rows = list(dict.fromkeys(k for phase in phases for k in phase))
    width = max(len(r) for r in rows + [title]) + 2
    lines = [f"{title:<{width}}" + "".join(f"{c:>10}" for c in columns)]
    for row in rows:
        lines.append(f"  {row:<{width - 2}}" + "".join(
            f"{phase[row] / GiB:>10.2f}" if row in phase else f"{'-':>10}" for phase in phases))
    lines.append(f"  {'total':<{width - 2}}" + "".join(f"{sum(p.values()) / GiB:>10.2f}" for p in phases))
    return lines


def resolved_precision(cfg: AlignConfig) -> str:
    """"bf16" or "fp32": `auto` is bf16, what it resolves to on a GPU with native bf16, unless
    SEMALIGN_PRECISION says otherwise (as for the trainer)."""
    from ..core.precision import PRECISION_ENV

    precision = cfg.precision
    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV) or "bf16"
    return "bf16" if precision == "bf16" else "fp32"


def pairs_of(cfg: AlignConfig, teacher: ModelShape, student: ModelShape):
    """The run's layer pairs; the cka strategy (known only from the models' states) is counted as one teacher
    layer per student layer, the shape of a CKA path."""
    from .setup import check_pairs, resolve_pairing

    if cfg.pairing.strategy == "cka" and cfg.pairing.pairs is None and not cfg.pairing.path:
        cfg = from_dict(AlignConfig, apply_overrides(cfg.to_dict(), {"pairing.strategy": "proportional",
                                                                      "pairing.interpolate": False}))
    pairs = resolve_pairing(cfg, None, teacher.layers, student.layers)
    check_pairs(pairs, teacher.layers, student.layers, teacher.source, student.source)
    return pairs


def make_plan(cfg: AlignConfig, teacher: ModelShape, student: ModelShape) -> Plan:
    """The needs of the run `cfg` on these two models (module docstring: every row's formula)."""
    from ..models.load import depth_problem
    from .objectives import get_objective
    from .schedule import build_stages
    from .targets import stage_states

    if (problem := depth_problem(teacher.layers, student.layers, teacher.source, student.source)) is not None:
        raise SemalignError(problem)
    t, s, d, sc, tg = teacher, student, cfg.data, cfg.schedule, cfg.targets
    w = 4 if cfg.dtype == "float32" else 2
    b = 2 if w == 2 or resolved_precision(cfg) == "bf16" else 4
    objectives = {name: get_objective(name) for name in cfg.objective.terms}
    logits = any(o.kind == "output" for o in objectives.values())
    layer_terms = any(o.kind == "layer" for o in objectives.values())
    teacher_logits = any(o.needs_teacher_logits for o in objectives.values())
    term_needs = {need for o in objectives.values() for need in o.needs}  # `objectives.NEEDS`
    pairs = pairs_of(cfg, t, s)
    K = len({layer for p in pairs for layer in p.teacher_layers}) + 1 if layer_terms or teacher_logits else 0
    cached = tg.mode == "cached" and K > 0
    store = tg.logits_store if teacher_logits else None
    n, N_d = cfg.micro_batch() * d.seq_len, d.diag_sequences * d.seq_len
    recompute = cfg.train.activation_checkpointing
    n_c = min(cfg.cka_max_tokens, N_d)
    rank = sc.lora_rank if sc.adapter == "lora" else None
    logit_bytes = {"dense": 2 * t.vocab, "topk": 6 * tg.top_k + 2 + 6 * tg.tail_samples}.get(store, 0)
    lens_cached = cached and store == "topk" and "teacher_lens" in term_needs  # lens top-k per pair (`targets`)
    stored = 2 * K * t.d + logit_bytes * (1 + (len(pairs) if lens_cached else 0))  # bytes per token in the cache
    if store is None:
        logits_on_gpu = 4 * t.vocab if teacher_logits else 0
    else:
        logits_on_gpu = 4 * t.vocab if store == "dense" else 8 * tg.top_k + 4 + 8 * tg.tail_samples
    teacher_mlp = b * (t.mlp_factor + 1) * t.d_mlp
    diag_states = 4 * (t.layers + 1) * N_d * t.d
    cka_stack = 4 * (t.layers + 1) * n_c * t.d if cfg.figures or cfg.pairing.strategy == "cka" else 0
    cka_grid = 12 * n_c * (s.layers + 1) * s.d + 20 * t.d * (s.layers + 1) * s.d

    compute = (f"autocast to {cfg.dtype}" if w == 2 else "bf16 autocast" if b == 2 else "fp32")
    plan = Plan(t, s, cfg, f"{cfg.dtype} weights, {compute}", 0, 0, 0, "", teacher_states=K)
    weights = (f"teacher weights ({cfg.dtype})", f"student weights ({cfg.dtype})")
    plan.gpu_setup = {weights[0]: w * t.params, weights[1]: w * s.params, "teacher diagnostic states": diag_states}
    if cached:
        plan.gpu_setup["teacher targets"] = n * (4 * K * t.d + ((b + 8) * t.vocab if store else 0))
    plan.gpu_setup["teacher forward"] = max(N_d, n if cached else 0) * teacher_mlp

    stages = build_stages(sc, pairs)
    plan.stages, plan.steps = len(stages), stages[-1].end
    best: dict[str, int] = {}
    most_masters = most_read = most_lens = 0
    for stage in stages:
        K_s = len(stage_states(stage.pairs, pairs)) if layer_terms and stage.pairs else 0
        everything = sc.trainable == "all" or stage.is_global
        deepest = max((p.student_layer for p in stage.pairs), default=s.layers - 1)
        trained = (range(s.layers) if everything else sorted({p.student_layer for p in stage.pairs}))
        last = s.layers - 1 if logits else deepest
        path = range(0 if everything else trained[0], last + 1)
        if everything and sc.adapter == "full":
            n_train = s.params
        else:
            n_train = sum(s.trainable_params(s.blocks[i], rank, sc.lora_targets) for i in trained)
        kept = [s.trainable_bytes(s.blocks[i], b, d.seq_len, rank, sc.lora_targets) if i in trained
                else s.frozen_bytes(s.blocks[i], b, d.seq_len) for i in path]
        acts = w * s.d * len(path) + max(kept) if recompute else sum(kept)  # recompute: inputs and one block
        acts += 4 * (s.d + 1) + b * s.d if logits else 0
        linear = (max if recompute else sum)(s.blocks[i].linear_weights for i in path)
        masters = n_train * (4 if rank else 4 - w)
        lens_reads = len(stage.pairs) if lens_cached else 0  # the stage's cached lens readouts
        readouts = len(stage.pairs) * n * (
            ((2 * b + 12) * max(s.vocab, t.vocab) if "teacher_lens" in term_needs and not lens_cached else 0)
            + (acts + (b + 8) * s.vocab + teacher_mlp + b * t.vocab if "teacher_model" in term_needs else 0))
        kept_teacher = not cached or "teacher_model" in term_needs  # an intervention runs the teacher
        rows = {weights[0]: w * t.params if kept_teacher else 0, weights[1]: w * s.params,
                "trainable state": 12 * n_train + masters, "teacher diagnostic states": diag_states,
                "teacher targets": n * (4 * K_s * t.d + logits_on_gpu * (1 + lens_reads)),
                "teacher forward": 0 if cached or not K else n * (teacher_mlp
                                                                  + (b * t.vocab if teacher_logits else 0)),
                "student activations": n * acts,
                "autocast weight copies": 2 * n_train if w == 2 else 0 if b == 4 else 2 * (
                    linear + (s.vocab * s.d if logits else 0)),
                "vocabulary buffers": 0 if not logits else n * s.vocab * sum(
                    [b] + [TERM_BYTES.get(name, OTHER_TERM_BYTES) + b
                           for name, o in objectives.items() if o.kind == "output"]),
                "layer terms": n * 4 * (3 * s.d + t.d + 3 * d.seq_len) * len(stage.pairs) if layer_terms else 0,
                "layer readouts": readouts,
                "backward": n * (8 * s.d + b * s.mlp_factor * s.d_mlp)}
        if sum(rows.values()) > sum(best.values()):
            best, plan.worst = rows, f"stage {stage.index}, {stage.label}"
        plan.trainable, most_masters = max(plan.trainable, n_train), max(most_masters, masters)
        most_read, most_lens = max(most_read, K_s), max(most_lens, lens_reads)
    plan.stage_states = most_read
    plan.gpu_training = {k: v for k, v in best.items() if v}

    data_bytes = (d.n_sequences + d.diag_sequences) * d.seq_len * 9
    plan.host_setup = {f"teacher bridge ({cfg.dtype})": w * t.params,
                       f"student bridge and its copy ({cfg.dtype})": 2 * w * s.params,
                       "data": data_bytes, "teacher CKA stack": cka_stack,
                       "CKA grid": cka_grid if cfg.pairing.strategy == "cka" else 0,
                       "target cache build": 6 * tg.shard_sequences * d.seq_len * stored if cached else 0}
    plan.host_training = {"data": data_bytes, "teacher CKA stack": cka_stack,
                          "CKA grid": cka_grid if cfg.figures else 0,
                          "cached reads": 2 * n * (2 * most_read * t.d + logit_bytes * (1 + most_lens)) if cached
                          else 0}
    plan.host_setup = {k: v for k, v in plan.host_setup.items() if v}
    plan.host_training = {k: v for k, v in plan.host_training.items() if v}
    checkpoint = w * s.params + most_masters + 8 * plan.trainable
    plan.disk = {"target cache": d.n_sequences * d.seq_len * stored if cached else 0,
                 f"checkpoints ({cfg.keep_checkpoints} + 1 while writing)":
                     (cfg.keep_checkpoints + 1) * checkpoint,
                 "trained student": w * s.params}
    plan.disk = {k: v for k, v in plan.disk.items() if v}
    return plan


@dataclass(frozen=True)
class Budgets:
    """What the run may use, in bytes (None: not checked), and where each figure came from."""

    gpu: int | None
    host: int | None
    disk: int | None
    where: dict[str, str]


def machine_budgets(cfg: AlignConfig, gpu: float | None = None, host: float | None = None,
                    disk: float | None = None) -> Budgets:
    """The budgets given (GiB), else this machine's: the visible CUDA device's free memory (none without
    one: the GPU figures are then printed, not checked), available host RAM, free disk where the run writes
    most (the target cache directory for cached targets, else run_dir)."""
    import psutil
    import torch

    from ..core.paths import cache_dir

    for name, value in (("--gpu-memory", gpu), ("--host-memory", host), ("--disk", disk)):
        if value is not None and not value > 0:
            raise SemalignError(f"{name} must be a positive number of GiB, got {value}")
    where = {}
    if gpu is None and torch.cuda.is_available():
        gpu, where["gpu"] = torch.cuda.mem_get_info()[0] / GiB, f"free on {torch.cuda.get_device_name()}"
    if host is None:
        host, where["host"] = psutil.virtual_memory().available / GiB, "available"
    if disk is None:
        folder = Path(cfg.targets.cache_dir or cache_dir("targets")) if cfg.targets.mode == "cached" \
            else Path(cfg.run_dir)
        folder = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
        disk, where["disk"] = shutil.disk_usage(folder).free / GiB, f"free at {folder}"
    as_bytes = [None if v is None else int(v * GiB) for v in (gpu, host, disk)]
    return Budgets(*as_bytes, where)


RESOURCES = ("GPU memory", "host RAM", "disk")


def needs(plan: Plan) -> dict[str, int]:
    return dict(zip(RESOURCES, (plan.gpu, plan.host, plan.disk_total), strict=True))


def overruns(plan: Plan, budgets: Budgets) -> list[str]:
    """The checked resources the plan needs more of than its budget."""
    have = dict(zip(RESOURCES, (budgets.gpu, budgets.host, budgets.disk), strict=True))
    return [r for r, need in needs(plan).items() if have[r] is not None and need > have[r]]


def _variant(cfg: AlignConfig, changes: dict[str, Any]) -> AlignConfig | None:
    try:
        trial = from_dict(AlignConfig, apply_overrides(cfg.to_dict(), changes))
        trial.validate()
        return trial
    except SemalignError:
        return None


def _changes(cfg: AlignConfig) -> list[dict[str, Any]]:
    """Single config changes that lower some need, in the order they are proposed."""
    out: list[dict[str, Any]] = [{}, *([{"dtype": "bfloat16"}] if cfg.dtype == "float32" else [])]
    if not cfg.train.activation_checkpointing:
        out.append({"train.activation_checkpointing": True})
    small_shards = {"targets.shard_sequences": 8} if cfg.targets.shard_sequences > 8 else {}
    if cfg.targets.mode == "online":
        needs_logits = any(_needs_logits(name) for name in cfg.objective.terms)
        cached = {"targets.mode": "cached", **({"targets.cache_logits": "topk"}
                                               if needs_logits and not cfg.targets.cache_logits else {})}
        out += [cached, {**cached, **small_shards}] if small_shards else [cached]
    else:
        out += [{"targets.mode": "online"}, *([small_shards] if small_shards else [])]
    if cfg.targets.logits_store == "dense":
        out.append({"targets.cache_logits": "topk"})
    if cfg.schedule.adapter == "full":
        out.append({"schedule.adapter": "lora"})
    if cfg.schedule.trainable == "all":
        out.append({"schedule.trainable": "paired"})
    if resolved_precision(cfg) == "fp32":
        out.append({"precision": "bf16"})
    if cfg.keep_checkpoints > 1:
        out.append({"keep_checkpoints": 1})
    if cfg.figures:
        out.append({"figures": False})
    return out


def _needs_logits(name: str) -> bool:
    from .objectives import get_objective

    return get_objective(name).needs_teacher_logits


def fixes(cfg: AlignConfig, teacher: ModelShape, student: ModelShape, budgets: Budgets, resources: list[str],
          limit: int = 3) -> list[str]:
    """Up to `limit` config changes with which `resources` fit their budgets and nothing else goes over that
    was not over already: one change, or one change and the largest train.micro_batch_size that fits with it (a
    plan is arithmetic, so every candidate is simply tried). The global batch is kept (the paper's 64): every
    need that grows with it grows with the micro-batch instead, so no smaller global batch fits a run that
    micro-batches of one sequence do not."""
    allowed = set(overruns(make_plan(cfg, teacher, student), budgets)) - set(resources)

    def fits(trial: AlignConfig | None) -> bool:
        return trial is not None and set(overruns(make_plan(trial, teacher, student), budgets)) <= allowed

    def need(trial: AlignConfig) -> list[int]:
        return [needs(make_plan(trial, teacher, student))[r] for r in resources]

    found, base = [], need(cfg)
    for changes in _changes(cfg):
        trial = _variant(cfg, changes)
        if trial is None or changes and not any(a < b for a, b in zip(need(trial), base, strict=True)):
            continue  # a change that lowers none of these needs is no fix for them
        micro = trial.micro_batch()
        if not fits(trial):
            low, high = 0, micro - 1  # the largest micro-batch that fits, by bisection
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if fits(_variant(trial, {"train.micro_batch_size": mid})) else (low, mid - 1)
            micro = low
        if micro and not any(c.items() <= changes.items() and m >= micro for c, m in found):  # no fewer changes do
            found.append((changes, micro))
        if len(found) == limit:
            break
    return [" and ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {str(v).lower()}" for k, v in
                         {**c, **({"train.micro_batch_size": m} if m != cfg.micro_batch() else {})}.items())
            for c, m in found]


def check(plan: Plan, budgets: Budgets) -> None:
    """Refuse, in one line, a run that needs more than a budget: per resource, what it needs, the budget and the
    changes with which it fits, or, where no change of the config does, its largest rows."""
    over = overruns(plan, budgets)
    if not over:
        return
    have = dict(zip(RESOURCES, (budgets.gpu, budgets.host, budgets.disk), strict=True))
    rows = {"GPU memory": max(plan.gpu_setup, plan.gpu_training, key=lambda p: sum(p.values())),
            "host RAM": max(plan.host_setup, plan.host_training, key=lambda p: sum(p.values())),
            "disk": plan.disk}
    clauses = []
    for resource in over:
        clause = f"{resource} {needs(plan)[resource] / GiB:.1f} GiB over the {have[resource] / GiB:.1f} GiB budget"
        found = fixes(plan.cfg, plan.teacher, plan.student, budgets, [resource])
        if found:
            clauses.append(f"{clause}: it fits with " + ", or with ".join(found))
        else:
            top = sorted(rows[resource], key=rows[resource].get, reverse=True)[:3]
            clauses.append(f"{clause}, and no single change of the config fits it within the other budgets "
                           "(largest: "
                           + ", ".join(f"{k} {rows[resource][k] / GiB:.1f} GiB" for k in top) + ")")
    raise SemalignError("this run will not fit: " + "; ".join(clauses))


def plan_main(teacher: str, student: str, config: str | Path | None = None, overrides: list[str] | None = None,
              gpu: float | None = None, host: float | None = None, disk: float | None = None) -> Plan:
    """What `semalign plan TEACHER STUDENT [--config run.toml] [--set k=v] [--gpu-memory GiB] ...` runs: print
    the plan and the budgets, then refuse a run that will not fit (a `SemalignError`)."""
    cfg = load_align_config(config, overrides)
    cfg.teacher, cfg.student = teacher, student
    cfg.validate()
    plan = make_plan(cfg, model_shape(cfg.teacher), model_shape(cfg.student))
    budgets = machine_budgets(cfg, gpu, host, disk)
    print("\n".join(plan.lines()))
    have = [f"{what} {value / GiB:.1f} GiB" + (f" ({budgets.where[key]})" if key in budgets.where else "")
            for key, what, value in (("gpu", "GPU", budgets.gpu), ("host", "host RAM", budgets.host),
                                     ("disk", "disk", budgets.disk)) if value is not None]
    print(f"needs: GPU {plan.gpu / GiB:.1f} GiB, host RAM {plan.host / GiB:.1f} GiB, disk "
          f"{plan.disk_total / GiB:.1f} GiB; budgets: {', '.join(have)}"
          + ("" if budgets.gpu is not None else "; no GPU budget (no CUDA device, no --gpu-memory): not "
                                                  "checked"))
    check(plan, budgets)
    return plan
