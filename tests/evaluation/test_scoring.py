"""Scoring: cross-entropy against independent computations (HF loss, padding, answer-only masks), errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch, tokenize

TEXTS = ["def add(a, b):\n    return a + b\n", "import json\nprint(json.dumps({'a': 1}))",
         "class A:\n    pass"]


def test_cross_entropy_matches_hf_labels_loss_on_one_sequence(tiny_hf, tiny_pair):
    _, student_hf, tok = tiny_hf
    batch = tokenize(tok, TEXTS[:1])
    with torch.no_grad():
        reference = student_hf(input_ids=batch.tokens, labels=batch.tokens).loss.item()
    assert ev.cross_entropy(student_hf, TEXTS[:1], tokenizer=tok) == pytest.approx(reference, rel=1e-5)
    assert ev.cross_entropy(tiny_pair.student, TEXTS[:1]) == pytest.approx(reference, rel=1e-5)


def test_padding_is_masked(tiny_hf):
    _, student_hf, tok = tiny_hf
    total = count = 0.0
    for text in TEXTS:  # each sequence alone, unpadded: the token-weighted mean is the reference
        b = tokenize(tok, [text])
        with torch.no_grad():
            loss = student_hf(input_ids=b.tokens, labels=b.tokens).loss.item()
        n = b.tokens.shape[1] - 1
        total, count = total + loss * n, count + n
    got = ev.cross_entropy(student_hf, TEXTS, tokenizer=tok, batch_size=3)
    assert got == pytest.approx(total / count, rel=1e-5)
    # and the same with batches of one (different padding widths)
    assert ev.cross_entropy(student_hf, TEXTS, tokenizer=tok, batch_size=1) == pytest.approx(got, rel=1e-5)


def test_blocks_score_as_hf_computes_its_loss(tiny_hf):
    """Unpadded blocks (what pretraining validates on): the token-weighted mean of HF's own `labels=` loss."""
    from semalign_lens.training.pretrain import validation_loss

    _, student_hf, _ = tiny_hf
    blocks = torch.randint(1, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = sum(student_hf(input_ids=b[None], labels=b[None]).loss.item() for b in blocks) / len(blocks)
    assert ev.cross_entropy(student_hf, blocks, precision="fp32") == pytest.approx(reference, rel=1e-5)
    assert validation_loss(student_hf, blocks, precision="fp32") == pytest.approx(reference, rel=1e-5)


def test_sequence_nll_is_token_nll_with_each_sequence_beside_it(tiny_hf):
    """The total of `sequence_nll` is `token_nll`'s to the bit (same batches); each sequence's NLL and count are
    HF's `labels=` loss on that sequence alone, unpadded, times its predicted tokens."""
    _, student_hf, tok = tiny_hf
    batch = tokenize(tok, TEXTS)
    total, count, nll, counts = ev.sequence_nll(student_hf, batch, batch_size=2, precision="fp32")
    assert (total, count) == ev.token_nll(student_hf, batch, batch_size=2, precision="fp32")
    for text, got, n in zip(TEXTS, nll, counts, strict=True):
        ids = tokenize(tok, [text]).tokens
        with torch.no_grad():
            loss = student_hf(input_ids=ids, labels=ids).loss.item()
        assert n == ids.shape[1] - 1 and got == pytest.approx(loss * n, rel=1e-5)
    assert sum(nll) == pytest.approx(total, rel=1e-6) and sum(counts) == count


def test_score_mask_scores_only_answer_tokens(tiny_hf):
    _, student_hf, tok = tiny_hf
    batch, score = ev.prompt_answer_batch(tok, ["def f(x):\n", "x ="], ["    return x", " 1"])
    got = ev.cross_entropy(student_hf, batch, score_mask=score)
    nll, n = 0.0, 0
    for i in range(2):  # independent: each row alone, unpadded, manual log-softmax
        real = batch.mask[i]
        tokens = batch.tokens[i, real][None]
        with torch.no_grad():
            logp = F.log_softmax(student_hf(input_ids=tokens).logits[0, :-1], -1)
        targets = tokens[0, 1:]
        picked = score[i, real][1:]
        nll -= logp[torch.arange(len(targets)), targets][picked].sum().item()
        n += int(picked.sum())
    assert got == pytest.approx(nll / n, rel=1e-5)
    # the answer mask covers exactly the answer characters
    for i, answer in enumerate(["    return x", " 1"]):
        text = tok.decode(batch.tokens[i][score[i]])
        assert text == answer


def test_cross_entropy_errors(tiny_hf):
    _, student_hf, tok = tiny_hf
    with pytest.raises(SemalignError, match="tokenizer"):
        ev.cross_entropy(student_hf, TEXTS)
    with pytest.raises(SemalignError, match="no token was scored"):
        ev.cross_entropy(student_hf, TokenBatch(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)))


def test_the_plain_copy_is_built_the_same_inside_a_callers_autocast(tiny_pair):
    """Scoring builds its plain copy on first use, often inside the caller's bf16 autocast: the copy's check
    against the bridge must run in fp32 there too (in bf16 eager and sdpa attention round differently, the check
    failed, and scores silently ran through the slower bridge with other bf16 numerics)."""
    import copy

    from semalign_lens.core.checks import is_hf_model
    from semalign_lens.core.precision import autocast
    from semalign_lens.models.likelihood import plain_model

    bridge = copy.deepcopy(tiny_pair.teacher)  # not yet in the copy cache
    with autocast("bf16", torch.device("cpu")):
        plain = plain_model(bridge)
    assert plain is not bridge and is_hf_model(plain)
    tokens = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=tokens).logits, bridge(tokens, return_type="logits"), atol=1e-4)
