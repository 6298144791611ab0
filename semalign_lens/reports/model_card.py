"""The shipped student's model card, written from its pretraining run directory.

The card states what a user needs to trust or retrain the student: architecture, data, tokens seen, wall
time, hardware, the validation-loss curve, the side-by-side cross-entropy against the teacher, and the
exact command to retrain. `metrics.json` beside it holds the numbers the tests re-measure.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

from ..core.config import from_dict
from ..core.errors import SemalignError
from ..training.pretrain import PretrainConfig


def _hardware() -> str:
    import os

    from ..core.precision import cpu_summary

    cpu = cpu_summary()
    return (f"{os.cpu_count()} CPU cores ({cpu['cpu']}, {cpu['cpu_isa']}, native bf16 "
            f"{'yes' if cpu['native_bf16'] else 'no'}), no GPU")


def _curve(run_dir: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = pd.DataFrame([r for r in rows if "val_loss" in r])[["step", "tokens", "val_loss"]]
    return curve.drop_duplicates("step").astype({"step": int, "tokens": int})


def _intro(cfg: PretrainConfig, vocab_size: int) -> str:
    if cfg.tokenizer is None:
        return ("A small Llama that shares SmolLM2's tokenizer and 49152-token vocabulary, pretrained from scratch by "
                "semalign_lens on the Python standard library. It is the student half of the embedded default pair "
                "(teacher: `smollm2-135m`): different depth and width, same vocabulary, so SemAlign's "
                "vocabulary-defined semantic bases line up token for token.")
    return (f"A small Llama with its own {vocab_size}-token byte-level BPE (learned by `semalign zoo "
            "train-tokenizer` on the same training files; the tokenizer files ship beside the weights), "
            "pretrained from scratch by semalign_lens on the Python standard library. It is the cross-tokenizer "
            f"student for the teacher `{cfg.teacher}`: the two vocabularies share only some token strings, so the "
            "pair runs through `ModelPair(..., vocab='intersection')`, intersection semantic bases and aligned "
            f"positions (`semalign info {cfg.teacher} {cfg.name}` states the coverage).")


def write_model_card(run_dir: str | Path, out_dir: str | Path, val_loss: float,
                     cross_entropy: pd.DataFrame | None = None, bits_per_byte: pd.DataFrame | None = None) -> Path:
    """Write MODEL_CARD.md and metrics.json into `out_dir` (the exported student directory).

    `cross_entropy`: teacher vs student nats/token on one shared tokenisation (same-vocabulary students);
    `bits_per_byte`: `evaluation.bits_per_byte_table` on identical texts (any tokenizer)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = from_dict(PretrainConfig, json.loads((run_dir / "config.json").read_text()))
    final = json.loads((run_dir / "final.json").read_text())
    data = json.loads((run_dir / "corpus.json").read_text())
    curve = _curve(run_dir)
    a = cfg.arch
    metrics = {"val_loss": val_loss, "tokens_seen": final["tokens_seen"], "wall_time_s": final["elapsed_s"],
               "val_files": data["val_file_list"], "seq_len": cfg.seq_len}
    if cross_entropy is not None:
        metrics["cross_entropy"] = cross_entropy.to_dict(orient="records")
    if bits_per_byte is not None:
        metrics["bits_per_byte"] = bits_per_byte.to_dict(orient="records")
    vocab_size = json.loads((out_dir / "config.json").read_text())["vocab_size"]
    folder = cfg.name.replace("-", "_")  # the zoo's directory and config file of a student are named after it
    config_file = f"{folder}.json"
    retrain = "" if cfg.name == PretrainConfig().name else f" --config semalign_lens/models/zoo/configs/{config_file}"
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    lines = [
        f"# {cfg.name}", "", _intro(cfg, vocab_size), "",
        "## Architecture", "",
        f"Llama, {a.n_layers} layers, d_model {a.d_model}, {a.n_heads} heads ({a.n_kv_heads} KV heads), "
        f"d_mlp {a.d_mlp}, RoPE θ {a.rope_theta:g}, RMSNorm, tied embeddings, context {a.max_position_embeddings}. "
        f"Vocabulary {vocab_size}. Weights stored in bf16 (`model.safetensors`); load with "
        f"`semalign_lens.models.load.load_model('{cfg.name}')`.",
        "",
        "## Data", "",
        f"The CPython {platform.python_version()} standard library `.py` files outside test directories, plus "
        f"`pydoc_data/topics.py` (PSF licence), read from the interpreter. Split by file (hash of the relative path): "
        f"{data['train_files']} train files ({data['train_tokens']:,} tokens), {data['val_files']} validation files "
        f"({data['val_tokens']:,} tokens; listed in `metrics.json`). The standard library's test directories were "
        "never seen: semalign_lens uses them as transfer data.", "",
        "## Training", "",
        f"- tokens seen: {final['tokens_seen']:,} ({cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len}); "
        f"{final['tokens_seen'] / max(1, data['train_tokens']):.2f} epochs",
        f"- AdamW (β 0.9/0.95, weight decay {cfg.weight_decay}), lr {cfg.lr:g} with {cfg.warmup_steps} warmup "
        f"steps and cosine decay to {cfg.min_lr_ratio:g}×, gradient clip {cfg.grad_clip}, precision {cfg.precision}, seed {cfg.seed}",
        f"- wall time: {final['elapsed_s'] / 60:.0f} min on {_hardware()}, while other jobs shared the machine",
        f"- logit distillation from the teacher: {f'weight {cfg.distill_weight:g}' if cfg.distill_weight else 'off'}",
        "", "## Quality", "",
        f"Validation cross-entropy on the held-out files (all {data['val_tokens']:,} tokens, blocks of "
        f"{cfg.seq_len}, fp32 evaluation of the bf16 weights): **{val_loss:.3f} nats/token** "
        "(`tests/models/test_stdlib_student.py` recomputes it with Hugging Face's own loss). Nats per token depend on "
        "the tokenizer: compare models by the bits per byte below.", "",
        f"Validation curve (first 64 validation blocks during training, precision {cfg.precision}):", "",
        curve.to_markdown(index=False, floatfmt=(".0f", ".0f", ".3f")), "",
    ]
    if cross_entropy is not None:
        lines += ["Teacher and student side by side (cross-entropy, nats/token; lower is better). "
                  "This gap is what transfer tries to close:", "",
                  cross_entropy.to_markdown(index=False, floatfmt=".3f"), ""]
    if bits_per_byte is not None:
        lines += ["Bits per byte on identical texts (each model tokenises each text itself; lower is better; "
                  "`evaluation.bits_per_byte_table`):", "",
                  bits_per_byte.drop(columns=["description"]).to_markdown(index=False, floatfmt=".3f"), ""]
    run = f"runs/{cfg.name}"
    lines += ["## Retrain", "", "```bash"]
    if cfg.tokenizer:
        lines += [f"semalign zoo train-tokenizer --vocab-size {vocab_size} --out {cfg.tokenizer}   # deterministic"]
    lines += [f"semalign zoo pretrain-student{retrain} --run-dir {run}   # resumable",
              f"semalign zoo export-student --run-dir {run} --out semalign_lens/models/zoo/{folder}",
              "```", "",
              f"Config: `semalign_lens/models/zoo/configs/{config_file}` (copied to `pretrain_config.json` here).", ""]
    path = out_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def card_from_run(run_dir: str | Path, out_dir: str | Path, max_tokens: int = 16384, progress: bool = True) -> Path:
    """Measure an exported student (fp32 validation CE with HF's loss; bits per byte beside the teacher and
    the shipped students, `evaluation.bits_per_byte_table`) and write its card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data import corpus
    from ..evaluation.bits_per_byte import bits_per_byte_table
    from ..models.load import load_model
    from ..training.pretrain import pretrain_run_config, validation_loss

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = pretrain_run_config(run_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise SemalignError(f"--out {out_dir} holds no exported student (no model.safetensors); run `semalign zoo "
                            f"export-student --run-dir {run_dir} --out {out_dir}` first")
    hf = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    root = corpus.stdlib_root()
    val = [root / f for f in json.loads((run_dir / "corpus.json").read_text())["val_file_list"]]
    val_loss = validation_loss(hf, corpus.blocks(corpus.token_stream(val, tokenizer), cfg.seq_len),
                                  precision="fp32")
    names = dict.fromkeys([cfg.teacher, "stdlib-student", cfg.name])
    models = {n: load_model(str(out_dir) if n == cfg.name else n, name=n) for n in names}
    table = bits_per_byte_table(models, max_tokens=max_tokens, precision="fp32", progress=progress)
    return write_model_card(run_dir, out_dir, val_loss, bits_per_byte=table)
