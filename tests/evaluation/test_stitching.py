"""Model stitching against independent references: the closed-form fit against numpy's lstsq, the stitched
cross-entropy recomputed on the plain HF models (their own forward hooks, numpy's fit), a student stitched
with its own states (penalty 0), and the `stitch` pairing against a brute-force search of monotone paths."""

from __future__ import annotations

import itertools
import random
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import tokenize
from semalign_lens.evaluation.stitching import fit_affine_map, stitching_map
from semalign_lens.lens.pairing import ALL_STRATEGIES, STRATEGIES, make_pairing, pair_by_stitching

FIT = ["def add(a, b):\n    return a + b\n" * 4, "import os\nfor name in os.listdir('.'):\n    print(name)\n" * 3,
       "class Point:\n    x: int = 0\n    y: int = 0\n" * 3, "while True:\n    break\nelse:\n    pass\n" * 4]
HELDOUT = ["def mul(x, y):\n    return x * y\n" * 2, "import sys\nprint(sys.argv[1:])\n" * 2, "x = [i for i in y]"]
_RNG = random.Random(0)  # plus seeded character noise: > 65 distinct tokens, so even the embeddings fit at full rank
FIT += ["".join(_RNG.choice(string.ascii_letters + string.digits + string.punctuation + " \n") for _ in range(160))
        for _ in range(2)]


@pytest.fixture(scope="module")
def batches(tiny_hf):
    tokenizer = tiny_hf[2]
    return tokenize(tokenizer, FIT), tokenize(tokenizer, HELDOUT)


def _affine_data(seed=0, n=300, d_in=12, d_out=5):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d_in)) * np.geomspace(0.1, 30.0, d_in) + 4.0  # uneven scales, an offset
    y = x @ g.normal(size=(d_in, d_out)) + g.normal(size=d_out) + 0.1 * g.normal(size=(n, d_out))
    return x, y


@pytest.mark.parametrize("precision,tol", [("float64", 1e-9), ("mixed", 1e-5)])
def test_least_squares_map_equals_numpy_lstsq(precision, tol):
    x, y = _affine_data()
    fitted = fit_affine_map(torch.from_numpy(x), torch.from_numpy(y), precision=precision)
    solution = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    scale = np.abs(solution).max()
    np.testing.assert_allclose(fitted.weight.numpy(), solution[:-1], atol=tol * scale, rtol=0)
    np.testing.assert_allclose(fitted.bias.numpy(), solution[-1], atol=tol * scale * 10, rtol=0)
    np.testing.assert_allclose(fitted(torch.from_numpy(x)).numpy(), np.hstack([x, np.ones((len(x), 1))]) @ solution,
                               atol=tol * np.abs(y).max(), rtol=0)


def test_ridge_map_equals_its_closed_form():
    x, y = _affine_data(seed=1)
    fitted = fit_affine_map(torch.from_numpy(x), torch.from_numpy(y), ridge=0.3, precision="float64")
    xc, yc = x - x.mean(0), y - y.mean(0)
    gram = xc.T @ xc
    weight = np.linalg.solve(gram + 0.3 * np.trace(gram) / len(gram) * np.eye(len(gram)), xc.T @ yc)
    np.testing.assert_allclose(fitted.weight.numpy(), weight, atol=1e-9, rtol=0)
    np.testing.assert_allclose(fitted.bias.numpy(), y.mean(0) - x.mean(0) @ weight, atol=1e-8, rtol=0)


def test_a_student_stitched_with_its_own_states_loses_nothing(tiny_pair, batches):
    fit, heldout = batches
    result = stitching_map(tiny_pair.student, tiny_pair.student, fit, heldout, teacher_points=[1, 2, 3],
                           student_points=[1, 2, 3], precision="fp32")
    assert result.penalty.diagonal().abs().max() < 1e-4
    assert (result.r2.diagonal() - 1).abs().max() < 1e-5
    off = ~torch.eye(3, dtype=torch.bool)
    assert result.r2[off].max() < 0.999 and result.penalty[off].abs().max() > 1e-3  # other layers are other states
    assert (result.mean_ablation > 0).all()
    assert result.teacher_labels == ["0", "1", "2"] and result.own_ce == pytest.approx(float(result.stitched_ce[0, 0]),
                                                                                        abs=1e-4)


def _hf_states(model, tokens):
    """[embeddings, each block's output] of a plain HF Llama, by its own forward hooks."""
    store = []
    hooks = [layer.register_forward_hook(lambda m, a, out: store.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            embed = model(input_ids=tokens, output_hidden_states=True).hidden_states[0]
    finally:
        for h in hooks:
            h.remove()
    return [embed, *store]


def _hf_stitched_ce(model, batch, point, mapped):
    """Mean next-token CE of the HF student with its residual at `point` replaced at positions >= 1."""
    keep = batch.mask.clone()
    keep[:, 0] = False

    def replace(module, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[keep] = mapped.to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    module = model.model.embed_tokens if point == 0 else model.model.layers[point - 1]
    handle = module.register_forward_hook(replace) if mapped is not None else None
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.tokens).logits
    finally:
        if handle is not None:
            handle.remove()
    scored = keep[:, :-1] & batch.mask[:, 1:]
    return float(F.cross_entropy(logits[:, :-1][scored].double(), batch.tokens[:, 1:][scored]))


def test_stitched_cross_entropy_matches_an_independent_hf_recomputation(tiny_pair, tiny_hf, batches):
    teacher_hf, student_hf, _ = tiny_hf
    fit, heldout = batches
    cells = [(0, 0), (3, 2), (6, 3)]  # embeddings -> embeddings, a middle pair, the last block (into the final norm)
    result = stitching_map(tiny_pair.teacher, tiny_pair.student, fit, heldout, teacher_points=[0, 3, 6],
                           student_points=[0, 2, 3], precision="fp32")
    t_fit, s_fit = _hf_states(teacher_hf, fit.tokens), _hf_states(student_hf, fit.tokens)
    t_held = _hf_states(teacher_hf, heldout.tokens)
    fit_keep, held_keep = fit.mask.clone(), heldout.mask.clone()
    fit_keep[:, 0] = held_keep[:, 0] = False
    own = _hf_stitched_ce(student_hf, heldout, 0, None)
    assert result.own_ce == pytest.approx(own, abs=1e-5)
    for (t, s), (i, j) in zip(cells, [(0, 0), (1, 1), (2, 2)], strict=True):
        x = t_fit[t][fit_keep].double().numpy()
        solution = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), s_fit[s][fit_keep].double().numpy(),
                                   rcond=None)[0]
        held = t_held[t][held_keep].double().numpy()
        mapped = torch.from_numpy(np.hstack([held, np.ones((len(held), 1))]) @ solution)
        reference = _hf_stitched_ce(student_hf, heldout, s, mapped)
        assert float(result.stitched_ce[i, j]) == pytest.approx(reference, abs=1e-4), (t, s)
        assert float(result.penalty[i, j]) == pytest.approx(reference - own, abs=1e-4)
        mean_map = torch.from_numpy(s_fit[s][fit_keep].double().mean(0).numpy()).expand(len(held), -1)
        ablated = _hf_stitched_ce(student_hf, heldout, s, mean_map)
        assert float(result.mean_ablation[j]) == pytest.approx(ablated - own, abs=1e-4)


def _brute_force(matrix: np.ndarray, strict: bool) -> tuple[list[int], float]:
    rows, cols = matrix.shape
    paths = itertools.combinations(range(rows), cols) if strict else \
        itertools.combinations_with_replacement(range(rows), cols)
    best = min(paths, key=lambda p: (sum(matrix[r, c] for c, r in enumerate(p)), p))
    return list(best), float(sum(matrix[r, c] for c, r in enumerate(best)))


@pytest.mark.parametrize("strict", [False, True])
def test_stitch_strategy_takes_the_minimum_sum_monotone_path(strict):
    rng = np.random.default_rng(7)
    for _ in range(20):
        matrix = rng.random((7, 4))
        path, total = _brute_force(matrix, strict)
        pairing = pair_by_stitching(matrix, strict=strict)
        assert [p.teacher_low for p in pairing] == path
        assert pairing.params["total_stitch"] == pytest.approx(total)
        assert pairing.strategy == "stitch" and [p.score for p in pairing] == [matrix[r, c] for c, r in enumerate(path)]
    hand = np.array([[0.5, 3.0, 2.0], [0.1, 0.2, 5.0], [2.0, 0.3, 0.05], [4.0, 4.0, 0.01]])
    assert [p.teacher_low for p in make_pairing("stitch", 4, 3, stitching=hand)] == [1, 1, 3]


def test_stitch_pairs_a_stitching_map_without_its_embeddings(tiny_pair, batches):
    fit, heldout = batches
    result = stitching_map(tiny_pair.teacher, tiny_pair.student, fit, heldout, teacher_points=[0, 2, 5],
                           student_points=[0, 1, 3], precision="fp32")
    pairing = make_pairing("stitch", 6, 3, stitching=result)
    assert pairing.student_layers == [0, 2]  # the "embed" column is never paired
    sub = result.penalty[1:, 1:].numpy()
    path, _ = _brute_force(sub, strict=False)
    assert [p.teacher_low for p in pairing] == [[1, 4][r] for r in path]  # rows are blocks 1 and 4
    assert "stitch" in ALL_STRATEGIES and "stitch" not in STRATEGIES


@pytest.mark.parametrize("call,match", [
    (lambda p, b: make_pairing("stitch", 6, 3), "the stitch strategy needs a"),
    (lambda p, b: stitching_map(p.teacher, p.student, *b, teacher_points=[7]), "teacher_points must be residual"),
    (lambda p, b: stitching_map(p.teacher, p.student, *b, ridge=-1), "ridge must be a number >= 0"),
    (lambda p, b: stitching_map(p.teacher, p.student, b[0], b[1].tokens), "heldout must be a TokenBatch"),
    (lambda p, b: fit_affine_map(torch.randn(5, 3), torch.randn(4, 2)), "same token batch"),
])
def test_bad_inputs_get_one_line(tiny_pair, batches, call, match):
    with pytest.raises(SemalignError, match=match) as err:
        call(tiny_pair, batches)
    assert "\n" not in str(err.value)


def test_a_bridge_without_a_plain_copy_is_stitched_through_its_own_hooks(tiny_hf, batches):
    """A TransformerLens-native bridge has no HF model behind it: the forwards run the bridge itself, with the
    residual hook (`blocks.b.hook_out`) doing the replacing."""
    from semalign_lens.models.likelihood import plain_model
    from semalign_lens.models.tiny import TinyArch, tiny_native_bridge

    native = tiny_native_bridge("native_gated", TinyArch(2, 32, 2, 1, 64), tiny_hf[2], 0).eval()
    assert plain_model(native) is native
    fit, heldout = batches
    result = stitching_map(native, native, fit, heldout, teacher_points=[1, 2], student_points=[1, 2],
                           precision="fp32")
    assert result.penalty.diagonal().abs().max() < 1e-4
    assert (result.mean_ablation > 1e-3).all() and result.penalty[0, 1].abs() > 1e-3  # the hook does replace
