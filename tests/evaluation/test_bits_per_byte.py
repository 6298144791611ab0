"""Bits per byte across tokenizers, against Hugging Face's own loss on the same texts."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semalign_lens.evaluation.bits_per_byte import bits_per_byte_table, block_texts, set_texts
from semalign_lens.models import load_model
from semalign_lens.zoo import STUDENT_8K_DIR, STUDENT_DIR


def test_block_texts_split_at_specials_and_spell_the_text():
    tok = AutoTokenizer.from_pretrained(str(STUDENT_8K_DIR))
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    a, b = "def f(x):\n    return x\n", "naïve = 'café'\n"
    row = [sep, *tok(a, add_special_tokens=False)["input_ids"], sep, *tok(b, add_special_tokens=False)["input_ids"]]
    assert block_texts(torch.tensor([row]), tok) == [a, b]


def _hf_bpb(folder, texts) -> float:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    start = tok.convert_tokens_to_ids("<|endoftext|>")
    nll = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[start, *tok(text, add_special_tokens=False)["input_ids"]]])
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
    return nll / (math.log(2) * sum(len(t.encode()) for t in texts))


def test_table_matches_hf_loss_for_two_tokenizers():
    models = {"same": load_model("stdlib-student"), "bpe8k": load_model("stdlib-student-8k")}
    table = bits_per_byte_table(models, names=["stdlib_val", "humaneval"], max_tokens=600, progress=False)
    for name in ("stdlib_val", "humaneval"):
        texts = set_texts(name, models["same"].tokenizer, max_tokens=600)
        row = table.set_index("set").loc[name]
        assert row["bytes"] == sum(len(t.encode()) for t in texts)
        for label, folder in (("same", STUDENT_DIR), ("bpe8k", STUDENT_8K_DIR)):
            assert row[f"{label}_bpb"] == pytest.approx(_hf_bpb(folder, texts), rel=2e-3)
    assert (table.same_tokens != table.bpe8k_tokens).all()  # two tokenizers, one set of bytes
