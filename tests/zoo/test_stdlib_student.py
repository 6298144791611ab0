"""The shipped student: loads offline by zoo name, pairs with the teacher, and its card's numbers hold."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semalign_lens.zoo import STUDENT_DIR, corpus, resolve

CARD = json.loads((STUDENT_DIR / "metrics.json").read_text())


def test_student_loads_by_zoo_name_offline():
    from semalign_lens.models import load_model

    model = load_model("stdlib-student")
    assert model.cfg.d_vocab == 49152 and model.provenance.kind == "zoo"
    assert (STUDENT_DIR / "model.safetensors").stat().st_size < 40 * 2**20
    assert (STUDENT_DIR / "MODEL_CARD.md").exists()


def test_validation_loss_matches_card():
    """Recompute the held-out cross-entropy with Hugging Face's own loss (independent of our evaluator)."""
    folder = resolve("stdlib-student")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    root = corpus.stdlib_root()
    files = [root / name for name in CARD["val_files"]]
    if not all(f.exists() for f in files):
        pytest.skip(f"this Python's standard library lacks some of the card's validation files (card: {root})")
    blocks = corpus.blocks(corpus.token_stream(files, tokenizer), CARD["seq_len"])
    total, count = 0.0, 0
    with torch.no_grad():
        for block in blocks.split(8):
            n = block[:, 1:].numel()
            total += model(input_ids=block, labels=block).loss.item() * n
            count += n
    assert total / count == pytest.approx(CARD["val_loss"], abs=0.05)
    assert CARD["val_loss"] <= 3.2 and CARD["tokens_seen"] >= 5_000_000


@pytest.mark.slow
def test_default_pair_is_pairable(smollm2):
    from semalign_lens.models import ModelPair, load_model

    pair = ModelPair(smollm2, load_model("stdlib-student"))
    assert pair.student.cfg.n_layers < pair.teacher.cfg.n_layers
    assert pair.student.cfg.d_model < pair.teacher.cfg.d_model
