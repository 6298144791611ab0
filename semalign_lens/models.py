"""Loading teachers and students as hooked models, and checking that two of them can be paired.

Every model is a TransformerLens 4.x `TransformerBridge`, in **raw mode** by default (logits equal HF's,
`W_U == lm_head.weight.T`), in eval mode, carrying a `Provenance` record at `model.provenance`.
Compatibility mode (`mode="compat"`) folds the final norm into `W_U`, centres it and changes the residual
stream; it is offered only on request and recorded, and a `ModelPair` refuses to mix modes.

Sources accepted by `load_model`: a zoo name (`semalign_lens.zoo.ZOO_NAMES`), a local HF directory, a
`.gguf` file, an in-memory HF model (with `tokenizer=`), or a Hub name (only where the Hub or its local
cache can be reached; with `HF_HUB_OFFLINE=1` or no network it fails within seconds, naming the offline
alternatives).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import SemalignError
from .paths import file_sha256

MODES = ("raw", "compat")


MODEL_PACKAGES = ("semalign-lens", "transformer-lens", "transformers", "torch", "safetensors")


def package_versions(packages: tuple[str, ...] = MODEL_PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` ("not installed" where missing), for provenance records."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class Provenance:
    """Where a model came from and how it was loaded; written into every artefact."""

    source: str
    kind: str  # zoo | local | gguf | hub | memory
    path: str | None
    weights_sha256: str | None
    dtype: str
    mode: str
    versions: dict[str, str] = field(default_factory=package_versions)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _weights_hash(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    import hashlib

    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def _offline_alternatives() -> str:
    from .zoo import ZOO_NAMES

    return (f"use a zoo name ({', '.join(sorted(ZOO_NAMES))}), a local Hugging Face directory, or a .gguf file; "
            "or run where the Hub is reachable once so the model lands in the Hugging Face cache")


def _hub_dir(name: str) -> Path:
    """Resolve a Hub name to a local snapshot, failing fast when it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception:  # not in the local cache
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise SemalignError(f"{name!r} is not a zoo name or local path, and HF_HUB_OFFLINE=1 forbids downloading "
                            f"it from the Hugging Face Hub; {_offline_alternatives()}")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:
        raise SemalignError(f"could not fetch {name!r} from the Hugging Face Hub ({type(err).__name__}); "
                            f"{_offline_alternatives()}") from None


def _resolve_source(source: str | os.PathLike) -> tuple[str, Path]:
    """Map a source string to (kind, local HF directory)."""
    from .zoo import ZOO_NAMES, converted_dir, resolve

    text = str(source)
    if text in ZOO_NAMES:
        return "zoo", resolve(text)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SemalignError(f"{path} is a directory without config.json; point at a Hugging Face model "
                                "directory (config.json + *.safetensors + tokenizer files)")
        return "local", path
    if path.is_file():
        return "gguf", converted_dir(path, path.stem)
    if text.endswith(".gguf"):
        raise SemalignError(f"GGUF file {path} does not exist")
    if "/" not in text or text.startswith((".", "/", "~")):
        raise SemalignError(f"{text!r} is neither a zoo name, an existing path, nor a Hub name (owner/name); "
                            f"valid zoo names: {', '.join(sorted(ZOO_NAMES))}")
    return "hub", _hub_dir(text)


def load_model(source: Any, *, tokenizer: Any = None, name: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, mode: str = "raw"):
    """Load `source` as a TransformerBridge in eval mode, raw mode by default, with `.provenance` set."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    if mode not in MODES:
        raise SemalignError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(source, PreTrainedModel):
        if tokenizer is None:
            raise SemalignError("an in-memory HF model needs its tokenizer: load_model(model, tokenizer=tok)")
        # The bridge rewires the HF modules it wraps, so wrap a copy and leave the caller's model intact.
        hf_model = copy.deepcopy(source).to(dtype)
        kind, path, label = "memory", None, name or source.config.name_or_path or "memory"
        weights_hash = None
    elif isinstance(source, (str, os.PathLike)):
        kind, folder = _resolve_source(source)
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(folder))
        path, label, weights_hash = str(folder), name or str(source), _weights_hash(folder)
    else:
        raise SemalignError(f"cannot load a model from {type(source).__name__}; pass a zoo name, a path, a Hub "
                            "name, or an HF PreTrainedModel with tokenizer=")
    if not hasattr(hf_model, "get_output_embeddings") or hf_model.get_output_embeddings() is None:
        raise SemalignError(f"{label} has no LM head (unembedding); semalign_lens needs a causal LM")
    bridge = TransformerBridge.boot_transformers(label, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype,
                                                 device=device)
    if mode == "compat":
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    bridge.provenance = Provenance(source=label, kind=kind, path=path, weights_sha256=weights_hash,
                                   dtype=str(dtype).replace("torch.", ""), mode=mode)
    return bridge


def model_name(model) -> str:
    prov = getattr(model, "provenance", None)
    return prov.source if prov is not None else str(getattr(model.cfg, "model_name", "model"))


def model_mode(model) -> str:
    prov = getattr(model, "provenance", None)
    return prov.mode if prov is not None else "raw"


def describe(model) -> dict[str, Any]:
    """One row of facts about a model (what `semalign info` prints)."""
    cfg = model.cfg
    return {
        "model": model_name(model),
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "kv_heads": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        "d_mlp": getattr(cfg, "d_mlp", None),
        "vocab": cfg.d_vocab,
        "tokenizer_len": len(model.tokenizer) if model.tokenizer is not None else None,
        "norm": getattr(cfg, "normalization_type", None),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "mode": model_mode(model),
    }


def vocabulary_mismatch(teacher, student) -> str | None:
    """None when the two models share a vocabulary, else a message naming the difference."""
    t_name, s_name = model_name(teacher), model_name(student)
    t_size, s_size = teacher.cfg.d_vocab, student.cfg.d_vocab
    if t_size != s_size:
        return (f"vocabularies differ in size: teacher {t_name} has {t_size} tokens, student {s_name} has "
                f"{s_size}; SemAlign needs one shared vocabulary (same tokenizer)")
    t_vocab = {i: t for t, i in teacher.tokenizer.get_vocab().items()}
    s_vocab = {i: t for t, i in student.tokenizer.get_vocab().items()}
    differing = [i for i in range(t_size) if t_vocab.get(i) != s_vocab.get(i)]
    if differing:
        shown = ", ".join(f"id {i}: {t_vocab.get(i)!r} vs {s_vocab.get(i)!r}" for i in differing[:5])
        return (f"vocabularies of teacher {t_name} and student {s_name} (both {t_size} tokens) differ at "
                f"{len(differing)} ids, first: {shown}; use models that share one tokenizer")
    return None


@dataclass
class ModelPair:
    """A teacher and a student that share a vocabulary and a loading mode (checked on construction)."""

    teacher: Any
    student: Any

    def __post_init__(self) -> None:
        problem = vocabulary_mismatch(self.teacher, self.student)
        if problem:
            raise SemalignError(problem)
        if model_mode(self.teacher) != model_mode(self.student):
            raise SemalignError(f"teacher is in {model_mode(self.teacher)} mode and student in "
                                f"{model_mode(self.student)} mode; load both with the same mode")

    @classmethod
    def load(cls, teacher_source: Any, student_source: Any, **kwargs) -> ModelPair:
        return cls(load_model(teacher_source, **kwargs), load_model(student_source, **kwargs))

    @property
    def tokenizer(self):
        return self.teacher.tokenizer

    def describe(self):
        import pandas as pd

        return pd.DataFrame([dict(role="teacher", **describe(self.teacher)),
                             dict(role="student", **describe(self.student))])
