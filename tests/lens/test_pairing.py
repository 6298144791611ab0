"""pairing.py: the paper's worked examples, the block/paper index convention, the DP path vs brute force."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.pairing import (
    LayerPair,
    LayerPairing,
    block_to_paper,
    make_pairing,
    monotone_path,
    pair_by_attribution,
    pair_by_cka,
    pair_proportional,
    paper_interpolation,
    paper_to_block,
    proportional_layer,
)

# ------------------------------------------------------------------ index convention


def test_paper_and_block_numbering():
    assert paper_to_block(1) == 0 and paper_to_block(30) == 29
    assert block_to_paper(0) == 1 and block_to_paper(29) == 30
    assert all(paper_to_block(block_to_paper(b)) == b for b in range(40))
    with pytest.raises(SemalignError, match="start at 1"):
        paper_to_block(0)
    with pytest.raises(SemalignError, match="start at 0"):
        block_to_paper(-1)


def test_pair_block_is_the_resid_post_hook_of_that_block():
    from semalign_lens.lens.capture import hook_name

    pair = pair_proportional(20, 10).pair_for(0)  # paper: student layer 1 <- teacher layer 2
    assert (pair.student_layer, pair.teacher_low) == (0, 1)
    assert hook_name("resid_post", pair.teacher_low) == "blocks.1.hook_out"  # output of the 2nd block


# ------------------------------------------------------------------ proportional: the paper's examples


def test_proportional_20_to_10_is_2k():
    assert [proportional_layer(k, 20, 10) for k in range(1, 11)] == [2 * k for k in range(1, 11)]
    pairing = pair_proportional(20, 10)
    assert len(pairing) == 10
    for p in pairing:
        k = block_to_paper(p.student_layer)
        assert (block_to_paper(p.teacher_low), p.weight) == (2 * k, 0.0) and p.teacher_high == p.teacher_low
        assert p.strategy == "proportional" and "⌊20·" in p.reason
    assert pairing.teacher_layers_needed == list(range(1, 20, 2)) and pairing.deepest_teacher_layer == 19


def test_proportional_40_to_32_interpolates_as_in_paper():
    assert paper_interpolation(1, 40, 32) == (1, 2, 0.25)  # the paper's §2.1: k†=1 -> u=1.25, λ=0.25 between 1 and 2
    pair = pair_proportional(40, 32).pair_for(0)
    assert (pair.teacher_low, pair.teacher_high, pair.weight) == (0, 1, 0.25)
    assert pair.interpolated and pair.teacher_layers == (0, 1) and "λ = 0.25" in pair.reason
    last = pair_proportional(40, 32).pair_for(31)  # u = 40: λ = 1 between 39 and 40, stored as exact layer 40
    assert paper_interpolation(32, 40, 32) == (39, 40, 1.0)
    assert (last.teacher_low, last.teacher_high, last.weight) == (39, 39, 0.0)
    floor = pair_proportional(40, 32, interpolate=False).pair_for(0)
    assert (floor.teacher_low, floor.weight) == (0, 0.0)  # max(1, ⌊1.25⌋) = paper layer 1


def test_integer_ratio_needs_no_interpolation_and_shallow_teacher_repeats():
    assert pair_proportional(30, 6).to_frame()["weight"].eq(0).all()
    assert pair_proportional(30, 6).to_dict()["pairs"] == pair_proportional(30, 6, interpolate=False).to_dict()["pairs"]
    shallow = pair_proportional(2, 4, interpolate=False)  # teacher shallower than student: max(1, ...) floors at 1
    assert [p.teacher_low for p in shallow] == [0, 0, 0, 1]


def test_more_student_layers_than_exist_errors_clearly():
    with pytest.raises(SemalignError, match="student layer 7 was asked for, but the student has 6 layers"):
        pair_proportional(30, 6, student_layers=[2, 7])
    with pytest.raises(SemalignError, match="positive integer"):
        pair_proportional(30, 0)
    with pytest.raises(SemalignError, match="column for student layer 8, but the student has 8 layers"):
        pair_by_cka(np.random.rand(30, 9), n_student_layers=8)
    pairing = pair_proportional(30, 8)
    with pytest.raises(SemalignError, match="built for a 30-layer teacher and a 8-layer student, but the models "
                                            "have 30 and 6"):
        pairing.validate(30, 6)
    with pytest.raises(SemalignError, match="student layer 7 does not exist"):
        LayerPairing([LayerPair(7, 0, 0)], 30, 6, "proportional")


def test_validate_and_check_models(tiny_pair):
    pairing = pair_proportional(6, 3)
    assert pairing.check_models(tiny_pair.teacher, tiny_pair.student) is pairing
    with pytest.raises(SemalignError, match="rebuild"):
        pairing.check_models(tiny_pair.student, tiny_pair.teacher)
    fake = SimpleNamespace(cfg=SimpleNamespace(n_layers=6))
    assert pairing.check_models(fake, SimpleNamespace(cfg=SimpleNamespace(n_layers=3))) is pairing


# ------------------------------------------------------------------ attribution


def test_attribution_figure_3_last_teacher_layer_trains_last_student_layer():
    scores = np.zeros(20)
    scores[19] = 5.0  # paper Fig. 3: teacher layer 20 (of 20) critical -> only student layer 10 (of 10) trained
    pairing = pair_by_attribution(scores, 20, 10)
    assert len(pairing) == 1
    (pair,) = pairing.pairs
    assert (pair.student_layer, pair.teacher_low, pair.weight) == (9, 19, 0.0)
    assert pair.attribution_rank == 1 and pair.score == 5.0 and "proportional partner" in pair.reason


def test_attribution_moves_unpartnered_critical_layer_to_next_partner():
    # 30 -> 6: partners ℓ^T_k = 5k = 5, 10, ..., 30. Critical paper layer 12 (block 11) has none:
    # k† = min{k : 5k >= 12} = 3, trained on teacher layer 15 (block 14).
    scores = pd.Series({11: 0.9, 4: 0.5, 13: 0.2, 0: 0.1})
    pairing = pair_by_attribution(scores, 30, 6, top_k=3)
    frame = pairing.to_frame().set_index("student_layer")
    assert list(frame.index) == [0, 2]  # blocks 4 (paper 5, partner of k=1) and 11, 13 (both -> k†=3)
    assert frame.loc[0, "teacher_low"] == 4 and frame.loc[0, "attribution_rank"] == 2
    assert frame.loc[2, "teacher_low"] == 14 and frame.loc[2, "attribution_rank"] == 1
    assert "no proportional partner; moved to student k† = 3" in frame.loc[2, "reason"]
    assert "teacher layer 13" in frame.loc[2, "reason"]  # the second critical layer sharing k† is named too
    assert pairing.params["critical_teacher_layers"] == [11, 4, 13]


def test_attribution_accepts_rank_tables_and_refuses_bad_scores():
    table = pd.DataFrame({"method": ["gxa"] * 4 + ["patch"] * 4, "layer": [0, 1, 2, 3] * 2,
                          "score": [0.1, 0.9, 0.2, 0.3, 0.8, 0.1, 0.1, 0.1]})
    assert pair_by_attribution(table, 4, 2, method="gxa").pairs[0].attribution_rank == 1
    assert pair_by_attribution(table, 4, 2, method="gxa").params["critical_teacher_layers"] == [1]
    assert pair_by_attribution(table, 4, 2, method="patch").params["critical_teacher_layers"] == [0]
    assert pair_by_attribution(torch.tensor([0.0, 1.0, 0.0, 0.0]), 4, 2).params["critical_teacher_layers"] == [1]
    with pytest.raises(SemalignError, match="several methods"):
        pair_by_attribution(table, 4, 2)
    with pytest.raises(SemalignError, match="teacher layer 7, but the teacher has 4"):
        pair_by_attribution(pd.Series({7: 1.0}), 4, 2)
    with pytest.raises(SemalignError, match="NaN"):
        pair_by_attribution([0.1, float("nan"), 0.2, 0.3], 4, 2)
    with pytest.raises(SemalignError, match="top_k"):
        pair_by_attribution([0.1, 0.2, 0.2, 0.3], 4, 2, top_k=0)


# ------------------------------------------------------------------ CKA path


def brute_force(matrix: np.ndarray, strict: bool) -> float:
    rows, cols = matrix.shape
    paths = itertools.combinations(range(rows), cols) if strict else \
        itertools.combinations_with_replacement(range(rows), cols)
    return max(sum(matrix[t, j] for j, t in enumerate(path)) for path in paths)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strict", [False, True])
def test_dp_path_is_optimal_against_brute_force(seed, strict):
    rng = np.random.default_rng(seed)
    matrix = rng.random((7, 4)) * 2 - 0.5  # debiased CKA can be negative
    path, total = monotone_path(matrix, strict=strict)
    assert len(path) == 4 and all(a <= b if not strict else a < b for a, b in zip(path, path[1:], strict=False))
    assert total == pytest.approx(sum(matrix[t, j] for j, t in enumerate(path)))
    assert total == pytest.approx(brute_force(matrix, strict))


def test_cka_pairing_skips_embeddings_and_explains():
    rng = np.random.default_rng(0)
    matrix = rng.random((7, 4)) * 0.5
    for j, t in enumerate([1, 3, 3, 6]):  # rows 1.. are teacher blocks 0..5; a clear monotone diagonal
        matrix[t, j] = 0.95
    matrix[0, :] = 0.99  # the embeddings row would win everything; it is never paired
    pairing = pair_by_cka(matrix, teacher_blocks=[-1, 0, 1, 2, 3, 4, 5])
    assert [p.teacher_low for p in pairing] == [0, 2, 2, 5]
    assert pairing.n_teacher_layers == 6 and pairing.n_student_layers == 4
    assert all(p.cka == pytest.approx(0.95) and p.strategy == "cka" for p in pairing)
    assert "monotone CKA path" in pairing.pairs[0].reason
    wide = pd.DataFrame(matrix, index=["embed", "0", "1", "2", "3", "4", "5"], columns=["0", "1", "2", "3"])
    assert pair_by_cka(wide).to_dict() == pairing.to_dict()  # residual_labels are read as blocks
    with pytest.raises(SemalignError, match="strictly increasing"):
        pair_by_cka(rng.random((3, 4)), strict=True)


# ------------------------------------------------------------------ LayerPairing object


def test_pair_invariants_and_target():
    with pytest.raises(SemalignError, match="neither exact"):
        LayerPair(0, 1, 3, 0.5)
    with pytest.raises(SemalignError, match="neither exact"):
        LayerPair(0, 1, 1, 0.5)
    with pytest.raises(SemalignError, match="more than one teacher target"):
        LayerPairing([LayerPair(0, 1, 1), LayerPair(0, 2, 2)], 4, 2, "proportional")
    pair = LayerPair(0, 1, 2, 0.25)
    states = {1: torch.full((2, 3), 4.0), 2: torch.full((2, 3), 8.0)}
    assert torch.allclose(pair.target(states), torch.full((2, 3), 5.0))
    assert pair.target_label() == "0.75·1 + 0.25·2"
    with pytest.raises(SemalignError, match="were not captured"):
        pair.target({1: states[1]})


def test_json_round_trip_and_bad_files(tmp_path):
    pairing = make_pairing("attribution", 30, 7, scores=np.linspace(0, 1, 30), top_k=2,
                           cka=np.random.default_rng(0).random((30, 7)))
    path = pairing.save(tmp_path / "sub" / "pairing.json")
    loaded = LayerPairing.load(path)
    assert loaded == pairing and loaded.to_frame().equals(pairing.to_frame())
    data = json.loads(path.read_text())
    assert data["indexing"].startswith("0-based block index") and data["version"] == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SemalignError, match="not valid JSON"):
        LayerPairing.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(SemalignError, match="not a layer pairing"):
        LayerPairing.load(tmp_path / "other.json")
    with pytest.raises(SemalignError, match="does not exist"):
        LayerPairing.load(tmp_path / "missing.json")


def test_make_pairing_annotates_every_pair():
    rng = np.random.default_rng(0)
    cka = rng.random((31, 7))
    scores = rng.random(30)
    blocks = [-1, *range(30)]
    pairing = make_pairing("proportional", 30, 7, cka=cka, scores=scores, teacher_blocks=blocks)
    frame = pairing.to_frame()
    assert frame["cka"].notna().all() and frame["attribution_rank"].notna().all()
    exact = pairing.pairs[-1]  # 30 -> 7, k = 7: exact teacher block 29 = matrix row 30
    assert exact.teacher_low == 29 and exact.cka == pytest.approx(cka[30, 6])
    first = pairing.pairs[0]  # u = 30/7: between blocks 3 and 4 (rows 4, 5)
    assert first.cka == pytest.approx((1 - first.weight) * cka[4, 0] + first.weight * cka[5, 0])
    assert make_pairing("cka", 30, 7, cka=cka, teacher_blocks=blocks).strategy == "cka"
    with pytest.raises(SemalignError, match="unknown pairing strategy"):
        make_pairing("random", 30, 7)
    with pytest.raises(SemalignError, match="needs per-teacher-layer scores"):
        make_pairing("attribution", 30, 7)


def test_pairing_and_trainer_name_the_same_nearest_layer_at_weight_one_half():
    """The pairing report and the trainer share one pair type, so they agree on the one teacher layer of an
    interpolated target, including the tie w = 0.5 (two types once rounded it differently)."""
    from semalign_lens.lens.pairing import LayerPair
    from semalign_lens.training import AlignConfig
    from semalign_lens.training.setup import resolve_pairing

    for weight, nearest in ((0.25, 4), (0.5, 5), (0.75, 5)):
        assert LayerPair(2, 4, 5, weight).nearest_teacher_layer == nearest
        trained = resolve_pairing(AlignConfig(), [[2, 4, 5, weight]], n_teacher=8, n_student=3)
        assert isinstance(trained[0], LayerPair) and trained[0].nearest_teacher_layer == nearest


def test_summary_frame_is_the_narrow_report_table():
    """Six columns, ours and the paper's numbering together, an interpolated target shown as its two layers,
    "–" (never <NA>) where no CKA or rank was measured."""
    pairing = pair_proportional(30, 4, interpolate=True)
    frame = pairing.summary_frame()
    assert list(frame.columns) == ["student ← teacher", "paper numbering", "strategy", "CKA", "attribution rank",
                                   "reason"]
    for row, p in zip(frame.itertuples(index=False), pairing.pairs, strict=True):
        assert row[0] == f"{p.student_layer} ← {p.target_label()}"
        low, high = p.teacher_low + 1, p.teacher_high + 1
        assert row[1] == f"{p.student_layer + 1} ← {low}" + ("" if low == high else f"–{high}")
    assert (frame["CKA"] == "–").all() and (frame["attribution rank"] == "–").all()
    assert "<NA>" not in frame.to_string()
