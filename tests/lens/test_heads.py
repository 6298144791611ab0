"""The sub-layer and head view: block writes and attention patterns against the plain HF models' own modules
(the independent reference), and head-by-head pattern similarity against a float64 Jensen-Shannon reference
written here (scipy's `jensenshannon`, one query at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import tokenize
from semalign_lens.lens.capture import attention_patterns, capture, parse_hook_name, sublayer_writes
from semalign_lens.lens.heads import REFERENCES, head_similarity

TEXTS = ["def add(a, b):\n    return a + b\n", "import os", "class Point:\n    x: int = 0", "x = [i for i in y]"]


@pytest.fixture(scope="module")
def batch(tiny_hf):
    return tokenize(tiny_hf[2], TEXTS)


def test_block_writes_equal_the_hf_modules_outputs_and_sum_to_the_block_write(tiny_pair, tiny_hf, batch, hf_outputs):
    hf = tiny_hf[0]
    reference = hf_outputs(hf, batch.tokens)
    writes = sublayer_writes(tiny_pair.teacher, batch, drop_first=True)
    keep = batch.mask.clone()
    keep[:, 0] = False
    n = hf.config.num_hidden_layers
    for point in ("attn_out", "mlp_out"):
        assert writes[point].shape == (n, int(keep.sum()), hf.config.hidden_size)
        for layer in range(n):
            torch.testing.assert_close(writes[point][layer], reference[point][layer][keep], atol=1e-5, rtol=1e-5)
    cap = capture(tiny_pair.teacher, batch, range(n), points=("block_write",), progress=False)
    for layer in range(n):
        torch.testing.assert_close(writes["attn_out"][layer] + writes["mlp_out"][layer],
                                   cap.get("block_write", layer)[keep], atol=1e-5, rtol=1e-5)
    assert parse_hook_name("blocks.2.hook_attn_out") == ("attn_out", 2)
    assert parse_hook_name("blocks.2.mlp.hook_out") == ("mlp_out", 2)


def test_attention_patterns_equal_hf_eager_attentions(tiny_pair, tiny_hf, batch):
    with torch.no_grad():
        reference = tiny_hf[1](input_ids=batch.tokens, output_attentions=True).attentions
    patterns = attention_patterns(tiny_pair.student, batch.tokens, [0, 2])
    for layer in (0, 2):
        torch.testing.assert_close(patterns[layer], reference[layer], atol=1e-5, rtol=1e-5)


def _reference_similarity(p_t: np.ndarray, p_s: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[teacher heads + references, student heads] 1 − mean JSD (bits), one query at a time, float64."""
    ht, hs = p_t.shape[1], p_s.shape[1]
    total, count = np.zeros((ht + len(REFERENCES), hs)), 0
    for b in range(mask.shape[0]):
        real = np.flatnonzero(mask[b])
        for q in real[1:]:
            keys = q + 1
            uniform = np.zeros(keys)
            uniform[real[0]: keys] = 1 / (keys - real[0])
            first = np.zeros(keys)
            first[real[0]] = 1
            rows = [p_t[b, a, q, :keys] for a in range(ht)] + [uniform, first]
            for a, row in enumerate(rows):
                for c in range(hs):
                    total[a, c] += jensenshannon(row, p_s[b, c, q, :keys], base=2) ** 2
            count += 1
    return 1 - total / count


def test_head_similarity_matches_a_float64_jensen_shannon_reference(tiny_pair, tiny_hf, batch):
    with torch.no_grad():
        t_att = tiny_hf[0](input_ids=batch.tokens, output_attentions=True).attentions
        s_att = tiny_hf[1](input_ids=batch.tokens, output_attentions=True).attentions
    result = head_similarity(tiny_pair.teacher, tiny_pair.student, batch, [(4, 1), (5, 2)], batch_size=3)
    mask = batch.mask.numpy()
    for got, (t, s) in zip(result, [(4, 1), (5, 2)], strict=True):
        want = _reference_similarity(t_att[t].double().numpy(), s_att[s].double().numpy(), mask)
        assert (got.teacher_layer, got.student_layer) == (t, s)
        assert got.n_queries == int(mask.sum()) - len(TEXTS)
        np.testing.assert_allclose(got.similarity.numpy(), want, atol=1e-6)
        assert list(got.frame().index[-2:]) == list(REFERENCES)
        best = got.best()
        assert best["teacher_head"].tolist() == want[:-2].argmax(0).tolist()
        np.testing.assert_allclose(best["margin"], want[:-2].max(0) - want[-2:].max(0), atol=1e-6)


def test_a_model_against_itself_matches_head_for_head(tiny_pair, batch):
    (same,) = head_similarity(tiny_pair.teacher, tiny_pair.teacher, batch, [(3, 3)])
    heads = tiny_pair.teacher.cfg.n_heads
    np.testing.assert_allclose(same.similarity[:heads].diagonal().numpy(), 1.0, atol=1e-6)
    assert same.best()["teacher_head"].tolist() == list(range(heads))


def test_blocks_without_attention_are_refused_in_one_line_and_the_inspection_leaves_those_views_out(tiny_pair):
    from semalign_lens.lens.inspection import inspect_pairing
    from semalign_lens.models.load import load_model
    from semalign_lens.models.pair import ModelPair
    from semalign_lens.models.tiny import MATRIX_TEACHER, family_tokenizer, special_ids, tiny_family_model

    tok = family_tokenizer("mamba")
    mamba, llama = (load_model(tiny_family_model(family, MATRIX_TEACHER, len(tok), seed=seed, ids=special_ids(tok)),
                               tokenizer=tok, name=family) for seed, family in enumerate(("mamba", "llama")))
    batch = tokenize(tok, TEXTS)
    with pytest.raises(SemalignError, match="mamba has no hook blocks.0.attn.hook_pattern: that block has no"):
        attention_patterns(mamba, batch.tokens, [0])
    with pytest.raises(SemalignError, match="mamba has no hook blocks.0.attn.hook_out"):
        sublayer_writes(mamba, batch)
    out = inspect_pairing(ModelPair(mamba, llama), "facts", n_prompts=4, methods=["grad_x_act"], n_boot=10,
                          cka_prompts=8, fidelity_tokens=16, permutations=2, sublayers=True, progress=False)
    assert not out.heads and not out.sublayers and len(out.measures) == 4
    assert any(n.startswith("The head view is left out: mamba has no hook") for n in out.notes)
    assert any(n.startswith("The sub-layer maps are left out: mamba has no hook") for n in out.notes)


def test_head_similarity_bad_input(tiny_pair, batch, tiny_hf):
    with pytest.raises(SemalignError, match="no layer pairs"):
        head_similarity(tiny_pair.teacher, tiny_pair.student, batch, [])
    with pytest.raises(SemalignError, match="out of range"):
        head_similarity(tiny_pair.teacher, tiny_pair.student, batch, [(9, 0)])
    with pytest.raises(SemalignError, match="no query position"):
        head_similarity(tiny_pair.teacher, tiny_pair.student, tokenize(tiny_hf[2], ["a"], prepend_doc_start=False),
                        [(0, 0)])
    with pytest.raises(SemalignError, match="sublayer_writes reads"):
        sublayer_writes(tiny_pair.teacher, batch, points=("resid_post",))
