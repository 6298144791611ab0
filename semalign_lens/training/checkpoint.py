"""Atomic training checkpoints: safetensors for tensors, JSON for everything else. Never pickle.

A checkpoint is a directory `step-000123/` holding `model.safetensors`, `optimizer.safetensors` and
`state.json`. It is written under a temporary name, its files and folder are flushed to disk (fsync), it is
renamed into place, and only then is `latest.json` replaced atomically, so a kill, a Ctrl-C, a full disk or a
power loss at any moment leaves the previous checkpoint intact and pointed to (a half-written checkpoint is
removed, and a refused write is one line naming it: `errors.writing`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..core.atomic import fsync_path, write_json_atomic
from ..core.errors import SemalignError, writing

LATEST = "latest.json"
RESUMES = "then rerun the same command: it resumes from the last complete checkpoint"


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, torch.Tensor]:
    return {"rng.torch": torch.get_rng_state()}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`."""
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(final, RESUMES):
            tmp.mkdir(parents=True)
            save_model(model, str(tmp / "model.safetensors"))
            extra = dict(rng_state())
            meta = {}
            if optimizer is not None:
                opt_tensors, meta = optimizer_to_tensors(optimizer)
                extra.update({f"opt.{k}": v for k, v in opt_tensors.items()})
            save_file(extra, str(tmp / "optimizer.safetensors"))
            with open(tmp / "state.json", "w") as f:
                json.dump({"step": step, "optimizer": meta, **state}, f, indent=2, default=str)
            for path in (*tmp.iterdir(), tmp):
                fsync_path(path)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_path(ckpt_root)
    except BaseException:  # a refused write or an interrupt: no half-written checkpoint stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json_atomic(run_dir / LATEST, {"step": step, "path": str(final.relative_to(run_dir))})
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    return Path(run_dir) / json.loads(pointer.read_text())["path"]


def latest_step(run_dir: Path) -> int:
    """The step of the last complete checkpoint (0: none), where a rerun of the same command resumes."""
    pointer = Path(run_dir) / LATEST
    return int(json.loads(pointer.read_text())["step"]) if pointer.exists() else 0


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model, optimizer and RNG from `ckpt`; return its JSON state."""
    ckpt = Path(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise SemalignError(
            f"checkpoint {ckpt} does not match the model (missing {list(missing)[:3]}, unexpected "
            f"{list(unexpected)[:3]}); resume with the config that wrote it or start a fresh run directory")
    extra = load_file(str(ckpt / "optimizer.safetensors"))
    torch.set_rng_state(extra.pop("rng.torch"))
    if optimizer is not None:
        optimizer_from_tensors(optimizer, {k[4:]: v for k, v in extra.items() if k.startswith("opt.")},
                               state["optimizer"])
    return state
