"""Bits per byte: token byte lengths against the UTF-8 length of the text, and bpb against a hand computation."""

import math

import pytest
import torch

from semalign_lens import evaluation as ev
from semalign_lens.data.text_bytes import bits_per_byte, scored_bytes, token_byte_lengths
from semalign_lens.data.tokens import TokenBatch

TEXTS = ["def f(x):\n    return x ** 2  # square\n", "naïve café — 東京 ✓ \U0001F600\ttab", "   leading spaces\n\n\n"]


@pytest.fixture(scope="module")
def student_tokenizer():
    from semalign_lens.models.load import load_model

    return load_model("stdlib-student").tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_sum_to_the_utf8_length_of_the_text(student_tokenizer, text):
    """Byte-level BPE: a text's tokens hold exactly its UTF-8 bytes, multi-byte characters split or not."""
    ids = student_tokenizer(text, add_special_tokens=False)["input_ids"]
    lengths = token_byte_lengths(student_tokenizer)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_special_tokens_have_no_bytes(student_tokenizer):
    lengths = token_byte_lengths(student_tokenizer)
    assert len(lengths) == len(student_tokenizer)
    for i in student_tokenizer.all_special_ids:
        assert lengths[i] == 0


def test_sentencepiece_byte_fallback_pieces():
    """`<0xNN>` is one byte and `▁` a space (a sentencepiece vocabulary, built in memory)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<0x0A>": 1, "▁the": 2, "é": 3, "▁": 4}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>")
    assert token_byte_lengths(tok).tolist() == [0, 1, 4, 2, 1]


def test_bits_per_byte_of_a_scored_batch(student_tokenizer):
    """bpb = summed NLL / (ln 2 x bytes of the scored targets); position 0 and padding are never scored."""
    text = TEXTS[0]
    ids = torch.tensor([[student_tokenizer.eos_token_id, *student_tokenizer(text, add_special_tokens=False)["input_ids"]]])
    batch = TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    assert scored_bytes(student_tokenizer, batch) == len(text.encode())
    score = torch.zeros_like(batch.mask)
    score[0, -2:] = True
    last_two = student_tokenizer.decode(ids[0, -2:])
    assert scored_bytes(student_tokenizer, batch, score) == len(last_two.encode())
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 0))


def test_code_task_reports_bpb_beside_every_ce(tiny_pair):
    task = ev.code_task(tiny_pair.student.tokenizer, n_transfer=4, seq_len=32, humaneval_limit=2,
                        heldout_tokens=128, precision="fp32")
    scores = task.evaluate(tiny_pair.student)
    assert task.metric == "stdlib_test_ce" and not task.higher_is_better
    for name in ("stdlib_test", "humaneval"):
        assert 0 < scores[f"{name}_bpb"] < scores[f"{name}_ce"] / math.log(2) * 2
    es = ev.eval_set("stdlib_test", tiny_pair.student.tokenizer, max_tokens=128, max_len=32)
    total, count = ev.token_nll(tiny_pair.student, es.batch, precision="fp32")
    n_bytes = scored_bytes(tiny_pair.student.tokenizer, es.batch)
    assert scores["stdlib_test_bpb"] == pytest.approx(total / (math.log(2) * n_bytes), rel=1e-4)
    assert scores["stdlib_test_ce"] == pytest.approx(total / count, rel=1e-5)


def test_code_task_needs_held_out_tokens(tiny_pair):
    from semalign_lens.core.errors import SemalignError

    with pytest.raises(SemalignError, match="heldout_tokens = 0 is less than one block"):
        ev.code_task(tiny_pair.student.tokenizer, n_transfer=4, seq_len=32, heldout_tokens=0)
