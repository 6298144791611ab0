"""Helpers of the trainer tests: configs and runs on the tiny pair, changed weights, CLI models on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from semalign_lens.models.plain import clean_copy
from semalign_lens.training import AlignConfig, align, load_align_config

REPO = Path(__file__).resolve().parents[2]
N_STUDENT = 3  # tiny student: 3 blocks, paired proportionally with the 6-block teacher (1, 3, 5)


def make_cfg(tmp_path: Path, **overrides) -> AlignConfig:
    base = {"run_dir": str(tmp_path / "run"), "progress": False, "report": False, "figures": False,
            "data.batch_size": 4,
            "data.diag_sequences": 4, "schedule.stage_steps": 2, "schedule.lr": 1e-2, "checkpoint_every": 1,
            "objective.terms": {"relation": 1.0, "kl": 1.0}}
    return load_align_config(None, {**base, **overrides})


def run(cfg, tiny_pair, tokens, stop_after_steps=None, **kw):
    return align(cfg, tiny_pair, data=tokens,
                 stop_after_steps=stop_after_steps, **kw)


def initial_student(tiny_pair):
    return {k: v.clone() for k, v in clean_copy(tiny_pair.student, share_weights=False).state_dict().items()}


def changed(before: dict, model) -> set[str]:
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def layer_of(name: str) -> str:
    parts = name.split(".")
    return f"layer{parts[2]}" if parts[:2] == ["model", "layers"] else name


def _write_tiny_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    from semalign_lens.models.tiny import tiny_hf_pair

    teacher, student, tok = tiny_hf_pair(seed=0)
    dirs = []
    for name, model in (("teacher", teacher), ("student", student)):
        out = tmp_path / name
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        dirs.append(out)
    text = tmp_path / "text"
    text.mkdir()
    import json as json_module
    import textwrap

    for module in (json_module, textwrap):
        shutil.copy(module.__file__, text / Path(module.__file__).name)
    return dirs[0], dirs[1], text


def _cli_config(tmp_path: Path) -> Path:
    teacher, student, text = _write_tiny_models(tmp_path)
    cfg = {"teacher": str(teacher), "student": str(student), "progress": False, "report": False,
           "data": {"source": str(text), "seq_len": 32, "n_sequences": 16, "batch_size": 4, "diag_sequences": 4},
           "schedule": {"stage_steps": 2, "lr": 1e-2}, "objective": {"terms": {"relation": 1.0, "kl": 1.0}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def _train_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("kind") == "train"]
