"""Pretrain the embedded student: a small Llama with SmolLM2's tokenizer on the Python standard library.

Why this exists: SemAlign transfers into an already-pretrained student that shares the teacher's vocabulary,
and no such student can be downloaded offline, so the project trains one (`semalign zoo pretrain-student`).

Design:
- The data order is a pure function of (seed, step): batch `s` takes blocks `perm_e[(s*B) % n ...]` of the
  epoch-`e` permutation. Resuming therefore needs no data-loader state, and a resumed run reproduces the
  uninterrupted one step for step.
- Checkpoints (`semalign_lens.training.checkpoint`) are written every `checkpoint_minutes` and at the end; a resumed
  run with a different config is refused, naming the keys that differ.
- `precision = "auto"`: bf16 autocast where the CPU computes it natively (AMX/AVX512-BF16 roughly double
  throughput), fp32 elsewhere (emulated bf16 is ~67x slower on AVX2); master weights stay fp32.
- Optional logit distillation from a teacher (`distill_weight > 0`): loss = (1-w)·CE + w·T²·KL(p_T‖p_S).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.atomic import as_json, write_json_atomic
from ..core.checks import check_output_dir, read_json
from ..core.config import from_dict, require_positive, to_dict
from ..core.errors import Interrupted, SemalignError, writing
from ..core.precision import autocast, check_precision, precision_record
from ..core.runlock import run_lock
from ..data import corpus
from ..data.tokens import as_batch, require_document_start
from ..models.likelihood import token_nll
from .checkpoint import latest_checkpoint, latest_step, load_checkpoint, save_checkpoint
from .schedule import warmup_then_decay


@dataclass
class StudentArch:
    """Llama-style architecture of the student (vocabulary comes from the tokenizer)."""

    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 768
    max_position_embeddings: int = 1024
    rope_theta: float = 100000.0

    def validate(self) -> None:
        require_positive(self, "n_layers", "d_model", "n_heads", "n_kv_heads", "d_mlp")
        if self.d_model % self.n_heads:
            raise SemalignError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; choose "
                                f"n_heads from {[h for h in range(1, 17) if self.d_model % h == 0]}")
        if self.n_heads % self.n_kv_heads:
            raise SemalignError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")

    def hf_config(self, vocab_size: int, bos_id: int, eos_id: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.d_model, intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads, max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta, tie_word_embeddings=True, rms_norm_eps=1e-5,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)


@dataclass
class PretrainConfig:
    arch: StudentArch = field(default_factory=StudentArch)
    teacher: str = "smollm2-135m"  # zoo name or HF directory: supplies the tokenizer (and logits if distilling)
    tokenizer: str | None = None  # a tokenizer directory of the student's own (`zoo train-tokenizer`); None = teacher's
    name: str = "stdlib-student"  # the exported model's name_or_path
    corpus: str | None = None  # directory of .py files; None = this interpreter's standard library
    val_fraction: float = 0.02
    seq_len: int = 512
    batch_size: int = 8
    total_tokens: int = 5_000_000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 (semalign_lens.core.precision)
    log_every: int = 10
    eval_every: int = 100
    eval_blocks: int = 64
    checkpoint_minutes: float = 5.0
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    def validate(self) -> None:
        check_precision(self.precision)
        require_positive(self, "seq_len", "batch_size", "total_tokens", "lr", "eval_every", "log_every",
                         "checkpoint_minutes", "distill_temperature")
        if not 0 <= self.distill_weight <= 1:
            raise SemalignError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.tokenizer is not None and self.distill_weight > 0:
            raise SemalignError("distill_weight > 0 needs the teacher's tokenizer (logit distillation compares "
                                "token for token); unset `tokenizer` or set distill_weight=0")
        if self.seq_len > self.arch.max_position_embeddings:
            raise SemalignError(f"seq_len {self.seq_len} exceeds arch.max_position_embeddings "
                                f"{self.arch.max_position_embeddings}")

    @property
    def steps(self) -> int:
        return max(1, self.total_tokens // (self.batch_size * self.seq_len))


def source_dir(source: str) -> Path:
    """A zoo name or an existing directory (with tokenizer files) as a local path."""
    from ..models.zoo import ZOO_NAMES, resolve

    if source in ZOO_NAMES:
        return resolve(source)
    path = Path(source)
    if not path.is_dir():
        raise SemalignError(f"teacher {source!r} is neither a zoo name ({', '.join(sorted(ZOO_NAMES))}) nor a "
                            "directory with tokenizer files")
    return path


def tokenizer_dir(cfg: PretrainConfig) -> Path:
    """Where the student's tokenizer comes from: its own directory if configured, else the teacher's."""
    if cfg.tokenizer is None:
        return source_dir(cfg.teacher)
    path = Path(cfg.tokenizer).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise SemalignError(f"tokenizer {path} has no tokenizer.json; create one with `semalign zoo train-tokenizer "
                            f"--out {path}` or unset `tokenizer` to use the teacher's")
    return path


def batch_indices(n_blocks: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Block indices of batch `step`: a deterministic function of (seed, step)."""
    start = step * batch_size
    idx = []
    while len(idx) < batch_size:
        epoch, offset = divmod(start + len(idx), n_blocks)
        perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        take = min(batch_size - len(idx), n_blocks - offset)
        idx.extend(perm[offset: offset + take].tolist())
    return torch.tensor(idx)


def load_corpus(cfg: PretrainConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor, dict]:
    root = Path(cfg.corpus) if cfg.corpus else corpus.stdlib_root()
    files = corpus.stdlib_files(root)
    train_files, val_files = corpus.split_files(files, root, cfg.val_fraction)
    if not val_files or not train_files:
        raise SemalignError(f"the {len(files)} corpus files under {root} give an empty train or validation split "
                            f"at val_fraction={cfg.val_fraction}; use more files or another val_fraction")
    train = corpus.blocks(corpus.token_stream(train_files, tokenizer), cfg.seq_len)
    val = corpus.blocks(corpus.token_stream(val_files, tokenizer), cfg.seq_len)
    info = {"root": str(root), "train_files": len(train_files), "val_files": len(val_files),
            "train_tokens": train.numel(), "val_tokens": val.numel(),
            "val_file_list": [p.relative_to(root).as_posix() for p in val_files]}
    return train, val, info


def validation_loss(model, token_blocks: torch.Tensor, precision: str = "auto") -> float:
    """Mean next-token cross-entropy (nats/token) over every predicted position of the unpadded `token_blocks`
    (`models.likelihood.token_nll`, the loop every score of the package runs)."""
    total, count = token_nll(model, as_batch(token_blocks), precision=precision)
    return total / count


def _check_resume_config(run_dir: Path, cfg: PretrainConfig) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = as_json(to_dict(cfg))
    ignorable = {"checkpoint_minutes", "log_every"}
    defaults = as_json(to_dict(PretrainConfig()))
    diff = sorted(k for k in set(saved) | set(now) if k not in ignorable
                  and saved.get(k, defaults.get(k)) != now.get(k))  # a key added since keeps its default
    if diff:
        raise SemalignError(
            f"run directory {run_dir} was started with a different config (keys differ: {diff}); resume with the "
            f"saved config ({saved_path}) or choose a new run directory")


def pretrain(cfg: PretrainConfig, run_dir: str | Path, stop_after_steps: int | None = None,
             progress: bool = True) -> dict:
    """Train (or resume) the student in `run_dir`. Returns the final metrics.

    `stop_after_steps` ends this call after that many steps, having checkpointed: the state on disk is then
    exactly what a kill right after a checkpoint leaves, which is what the resume test needs. One process at a
    time trains in `run_dir` (`runlock`); Ctrl-C or SIGTERM raise `Interrupted` naming the checkpoint the same
    command resumes from.
    """
    run_dir = check_output_dir(run_dir, "--run-dir (the pretraining run directory)")
    with run_lock(run_dir, "--run-dir"):
        try:
            return _pretrain(cfg, run_dir, stop_after_steps, progress)
        except KeyboardInterrupt as err:
            raise Interrupted.at_step(None, latest_step(run_dir), err) from None


def _pretrain(cfg: PretrainConfig, run_dir: Path, stop_after_steps: int | None, progress: bool) -> dict:
    from transformers import AutoTokenizer, LlamaForCausalLM

    _check_resume_config(run_dir, cfg)
    write_json_atomic(run_dir / "config.json", to_dict(cfg))

    teacher_dir = source_dir(cfg.teacher)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(cfg)))
    train, val, info = load_corpus(cfg, tokenizer)
    write_json_atomic(run_dir / "corpus.json", info)
    write_json_atomic(run_dir / "machine.json", precision_record(cfg.precision))  # this session's CPU and precision

    torch.manual_seed(cfg.seed)
    eos = require_document_start(tokenizer, "the corpus's documents")  # BOS = EOS = the separator
    hf_cfg = cfg.arch.hf_config(len(tokenizer), bos_id=eos, eos_id=eos)
    model = LlamaForCausalLM(hf_cfg)
    model.config._attn_implementation = "sdpa"
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    teacher = None
    if cfg.distill_weight > 0:
        teacher = LlamaForCausalLM.from_pretrained(str(teacher_dir)).eval().requires_grad_(False)

    start, elapsed = 0, 0.0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt)
        start, elapsed = state["step"], state["elapsed_s"]
    eval_idx = torch.arange(min(cfg.eval_blocks, len(val)))
    metrics_path = run_dir / "metrics.jsonl"
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def log(record: dict) -> None:
        with writing(metrics_path), open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    model.train()
    last_ckpt = time.time()
    t_start = time.time() - elapsed
    end = cfg.steps if stop_after_steps is None else min(cfg.steps, start + stop_after_steps)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress, desc="pretrain",
               unit="step", dynamic_ncols=True)
    loss_value = float("nan")
    for step in bar:
        t0 = time.time()
        x = train[batch_indices(len(train), cfg.batch_size, step, cfg.seed)]
        lr = warmup_then_decay(cfg.lr, step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)  # over the whole run
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(cfg.precision, x.device):
            out = model(input_ids=x, labels=x)
            loss = out.loss
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=x).logits.float()
                tau = cfg.distill_temperature
                kl = F.kl_div(F.log_softmax(out.logits.float() / tau, -1), F.log_softmax(t_logits / tau, -1),
                              log_target=True, reduction="batchmean") / x.shape[1]
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * tau**2 * kl
        if not torch.isfinite(loss):
            raise SemalignError(f"non-finite loss {loss.item()} at step {step}; lower lr (now {cfg.lr}) and resume")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        done = step + 1
        tok_s = tokens_per_step / max(1e-9, time.time() - t0)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            log({"step": done, "tokens": done * tokens_per_step, "loss": loss_value, "lr": lr,
                 "grad_norm": float(grad_norm), "tok_s": tok_s, "elapsed_s": time.time() - t_start})
        if done % cfg.eval_every == 0 or done == cfg.steps:
            val_loss = validation_loss(model, val[eval_idx], precision=cfg.precision)
            log({"step": done, "tokens": done * tokens_per_step, "val_loss": val_loss,
                 "elapsed_s": time.time() - t_start})
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60 or done == end:
            save_checkpoint(run_dir, done, model, opt, {"elapsed_s": time.time() - t_start, "loss": loss_value})
            last_ckpt = time.time()
    bar.close()
    final = {"step": end, "loss": loss_value, "elapsed_s": time.time() - t_start, "finished": end == cfg.steps}
    if end == cfg.steps:
        final["val_loss_full"] = validation_loss(model, val, precision=cfg.precision)
        final["tokens_seen"] = cfg.steps * tokens_per_step
        write_json_atomic(run_dir / "final.json", final)
    return final


def pretrain_run_config(run_dir: Path) -> PretrainConfig:
    """The config of a pretraining run directory, or a one-line error saying what `run_dir` is instead."""
    saved = run_dir / "config.json"
    if not run_dir.is_dir():
        raise SemalignError(f"--run-dir {run_dir} is not a directory; point at the run directory of `semalign zoo "
                            "pretrain-student` (default runs/stdlib-student)")
    if not saved.is_file():
        raise SemalignError(f"{run_dir} is not a pretraining run directory (no config.json); point --run-dir at the "
                            "directory `semalign zoo pretrain-student --run-dir` wrote")
    data = read_json(saved, "run config", "restore it or start a new run")
    if not isinstance(data, dict) or "model_type" in data or {"teacher", "student"} <= set(data):
        what = "a model directory" if isinstance(data, dict) and "model_type" in data else (
            "a `semalign align` run directory" if isinstance(data, dict) else "not a run directory")
        raise SemalignError(f"{run_dir} is {what}, not a pretraining run; point --run-dir at the directory "
                            "`semalign zoo pretrain-student --run-dir` wrote")
    return from_dict(PretrainConfig, data, where=str(saved))


def _is_model_config(path: Path) -> bool:
    try:
        return "model_type" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, OSError, UnicodeDecodeError):
        return False


def export_student(run_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the latest checkpoint of `run_dir` as a loadable HF directory (weights in `dtype`)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    run_dir, out_dir = Path(run_dir).expanduser(), Path(out_dir).expanduser()
    cfg = pretrain_run_config(run_dir)
    try:
        ckpt = latest_checkpoint(run_dir)
    except (ValueError, KeyError, TypeError):
        raise SemalignError(f"{run_dir / 'latest.json'} is corrupt; restore it or resume the run to rewrite "
                            "it") from None
    if ckpt is None:
        raise SemalignError(f"{run_dir} has no checkpoint to export; run `semalign zoo pretrain-student` first")
    if not (ckpt / "model.safetensors").is_file():
        raise SemalignError(f"the latest checkpoint {ckpt} has no model.safetensors; point latest.json at an "
                            "intact checkpoint or resume the run")
    from ..models.load import check_safetensors

    check_safetensors(ckpt / "model.safetensors")
    check_output_dir(out_dir, "--out (the export directory)")
    if (out_dir / "config.json").is_file() and not _is_model_config(out_dir / "config.json"):
        raise SemalignError(f"--out {out_dir} holds a config.json that is not a model's (a run directory?); the "
                            "export would overwrite it: choose another --out")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(cfg)))
    eos = require_document_start(tokenizer, "the corpus's documents")  # BOS = EOS = the separator
    model = LlamaForCausalLM(cfg.arch.hf_config(len(tokenizer), bos_id=eos, eos_id=eos))
    load_checkpoint(ckpt, model, None)
    model.to(dtype)
    model.config.name_or_path = cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "pretrain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return out_dir
