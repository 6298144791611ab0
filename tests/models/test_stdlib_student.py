"""The shipped students: load offline by zoo name, pair with the teacher, and their cards' numbers hold."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semalign_lens.data import corpus
from semalign_lens.models.zoo import STUDENT_8K_DIR, STUDENT_DIR, resolve

STUDENTS = {"stdlib-student": (STUDENT_DIR, 49152, 3.2, 5_000_000),  # folder, vocab, max val CE, min tokens
            "stdlib-student-8k": (STUDENT_8K_DIR, 8192, 3.4, 3_900_000)}


@pytest.mark.parametrize("name", STUDENTS)
def test_student_loads_by_zoo_name_offline(name):
    from semalign_lens.models.load import load_model

    folder, vocab, _, _ = STUDENTS[name]
    model = load_model(name)
    assert model.cfg.d_vocab == vocab and model.provenance.kind == "zoo"
    assert (folder / "model.safetensors").stat().st_size < 40 * 2**20
    assert (folder / "MODEL_CARD.md").exists()


@pytest.mark.parametrize("name", STUDENTS)
def test_validation_loss_matches_card(name):
    """Recompute the held-out cross-entropy with Hugging Face's own loss (independent of our evaluator)."""
    folder = resolve(name)
    card = json.loads((folder / "metrics.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    root = corpus.stdlib_root()
    files = [root / f for f in card["val_files"]]
    if not all(f.exists() for f in files):
        pytest.skip(f"this Python's standard library lacks some of the card's validation files (card: {root})")
    blocks = corpus.blocks(corpus.token_stream(files, tokenizer), card["seq_len"])
    total, count = 0.0, 0
    with torch.no_grad():
        for block in blocks.split(8):
            n = block[:, 1:].numel()
            total += model(input_ids=block, labels=block).loss.item() * n
            count += n
    _, _, max_ce, min_tokens = STUDENTS[name]
    assert total / count == pytest.approx(card["val_loss"], abs=0.05)
    assert card["val_loss"] <= max_ce and card["tokens_seen"] >= min_tokens


@pytest.mark.slow
def test_default_pair_is_pairable(smollm2):
    from semalign_lens.models.load import load_model
    from semalign_lens.models.pair import ModelPair

    pair = ModelPair(smollm2, load_model("stdlib-student"))
    assert pair.student.cfg.n_layers < pair.teacher.cfg.n_layers
    assert pair.student.cfg.d_model < pair.teacher.cfg.d_model
