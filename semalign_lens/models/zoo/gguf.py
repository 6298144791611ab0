"""GGUF → Hugging Face safetensors conversion, cached by the GGUF file's hash.

transformers reads GGUF (dequantising to fp32) but leaves two markers behind that break `save_pretrained`
and later loads: the `hf_quantizer` attribute and `config.quantization_config`. Both are cleared before
saving. The converted directory is written under a temporary name and renamed, so an interrupted
conversion never leaves a half-written cache entry.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ...core.errors import SemalignError
from ...core.hashing import file_sha256
from ...core.paths import cache_dir
from ...data.tokens import set_document_start

GGUF_MAGIC = b"GGUF"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise SemalignError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise SemalignError(
            f"{path} is not a GGUF file (its first bytes are {magic!r}, a GGUF starts with b'GGUF'); "
            "pass a .gguf model file, a Hugging Face model directory, or a zoo name")


# Bumped when a conversion writes something new (v2: the tokenizer's declared document start), so older
# conversions in a user's cache are redone once instead of read without it.
CONVERSION_VERSION = "v2"


def converted_path(gguf_path: Path, label: str) -> tuple[Path, bool]:
    """(where the conversion of `gguf_path` lives in the cache, whether it is already there)."""
    gguf_path = Path(gguf_path)
    check_gguf(gguf_path)
    target = cache_dir("converted") / f"{label}-{CONVERSION_VERSION}-{file_sha256(gguf_path)[:16]}"
    return target, all((target / name).exists() for name in _REQUIRED)


def converted_dir(gguf_path: Path, label: str, document_start: str | None = None) -> Path:
    """Return a local HF directory for `gguf_path`, converting on first use; `document_start` is written into
    the tokenizer's config where the model's document separator is not its BOS (`data.tokens.document_start`)."""
    gguf_path = Path(gguf_path)
    target, done = converted_path(gguf_path, label)
    if done:
        return target
    digest = target.name.rsplit("-", 1)[-1]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...core.progress import note

    note(f"semalign: converting {gguf_path.name} to safetensors once (~20 s); later runs reuse {target}")

    t0 = time.time()
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if document_start is not None:
        set_document_start(tokenizer, document_start)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = label
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"converted from {gguf_path} (sha256 prefix {digest}) in {time.time() - t0:.1f}s\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
