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

from ..config import from_dict
from .pretrain import PretrainConfig


def _hardware() -> str:
    import os

    from ..precision import cpu_summary

    cpu = cpu_summary()
    return (f"{os.cpu_count()} CPU cores ({cpu['cpu']}, {cpu['cpu_isa']}, native bf16 "
            f"{'yes' if cpu['native_bf16'] else 'no'}), no GPU")


def _curve(run_dir: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = pd.DataFrame([r for r in rows if "val_loss" in r])[["step", "tokens", "val_loss"]]
    return curve.drop_duplicates("step").astype({"step": int, "tokens": int})


def write_model_card(run_dir: str | Path, out_dir: str | Path, val_loss: float,
                     cross_entropy: pd.DataFrame | None = None) -> Path:
    """Write MODEL_CARD.md and metrics.json into `out_dir` (the exported student directory)."""
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
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    lines = [
        "# stdlib-student", "",
        "A small Llama that shares SmolLM2's tokenizer and 49152-token vocabulary, pretrained from scratch by "
        "semalign_lens on the Python standard library. It is the student half of the embedded default pair "
        "(teacher: `smollm2-135m`): different depth and width, same vocabulary, so SemAlign's "
        "vocabulary-defined semantic bases line up token for token.", "",
        "## Architecture", "",
        f"Llama, {a.n_layers} layers, d_model {a.d_model}, {a.n_heads} heads ({a.n_kv_heads} KV heads), "
        f"d_mlp {a.d_mlp}, RoPE θ {a.rope_theta:g}, RMSNorm, tied embeddings, context {a.max_position_embeddings}. "
        "Weights stored in bf16 (`model.safetensors`); load with `semalign_lens.models.load_model('stdlib-student')`.",
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
        "(`tests/zoo/test_stdlib_student.py` recomputes it with Hugging Face's own loss).", "",
        f"Validation curve (first 64 validation blocks during training, precision {cfg.precision}):", "",
        curve.to_markdown(index=False, floatfmt=(".0f", ".0f", ".3f")), "",
    ]
    if cross_entropy is not None:
        lines += ["Teacher and student side by side (cross-entropy, nats/token; lower is better). "
                  "This gap is what transfer tries to close:", "",
                  cross_entropy.to_markdown(index=False, floatfmt=".3f"), ""]
    lines += ["## Retrain", "", "```bash", "semalign zoo pretrain-student --run-dir runs/stdlib-student   # resumable",
              "semalign zoo export-student --run-dir runs/stdlib-student", "```", "",
              "Config: `semalign_lens/zoo/configs/stdlib_student.json` (copied to `pretrain_config.json` here).", ""]
    path = out_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
