"""Trainer setup: layer pairings (saved, by CKA, interpolated targets), refused when they do not fit."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer


def test_pairing_from_a_saved_layer_pairing_and_by_cka(tmp_path, tiny_pair, tokens):
    from semalign_lens.lens.pairing import pair_proportional

    saved = pair_proportional(6, 3, student_layers=[1, 2]).save(tmp_path / "pairing.json")
    trainer = Trainer(make_cfg(tmp_path / "a", **{"pairing.path": str(saved)}), tiny_pair, data=tokens)
    assert [(p.student_layer, p.teacher_low) for p in trainer.pairs] == [(1, 3), (2, 5)]
    assert len(trainer.stages) == 2
    trainer = Trainer(make_cfg(tmp_path / "b", **{"pairing.strategy": "cka"}), tiny_pair, data=tokens)
    lows = [p.teacher_low for p in trainer.pairs]
    assert [p.student_layer for p in trainer.pairs] == [0, 1, 2] and lows == sorted(lows)
    with pytest.raises(SemalignError, match="built for a 8-layer teacher .* the models have 6 and 3 layers"):
        Trainer(make_cfg(tmp_path / "c"), tiny_pair, data=tokens,
                pairing=pair_proportional(8, 3))


@pytest.mark.parametrize("pairing,message", [
    ([[5, 1, 1, 0.0]], "student layer 5, but student .* has 3 blocks"),
    ([[0, 9, 9, 0.0]], "teacher layer 9, but teacher .* has 6 blocks"),
    ([[0, 1, 1, 0.0], [0, 3, 3, 0.0]], "student layer 0 is paired twice"),
    ([[0, 3, 1, 0.5]], "teacher_low <= teacher_high"),
])
def test_pairing_that_does_not_fit_the_models_is_refused_before_training(tmp_path, tiny_pair, tokens, pairing,
                                                                         message):
    with pytest.raises(SemalignError, match=message):
        run(make_cfg(tmp_path), tiny_pair, tokens, pairing=pairing)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_list_of_wrong_length_and_wrong_transfer_shape(tmp_path, tiny_pair, tokens):
    with pytest.raises(SemalignError, match="lists 2 values but there are 3 stages"):
        run(make_cfg(tmp_path, **{"schedule.stage_steps": [1, 2]}), tiny_pair, tokens)

    class Wrong:
        matrix = torch.zeros(5, 5)

        def __call__(self, h):
            return h

    with pytest.raises(SemalignError, match=r"transfer map has shape \(5, 5\).*\[32, 64\]"):
        run(make_cfg(tmp_path), tiny_pair, tokens, transfer=Wrong())


def test_pair_target_interpolates_two_teacher_layers():
    """The trainer reads targets from a record's block outputs (`ResidualStates.post`); degenerate config rows
    (weight 0 or 1, low == high) become the exact pair on the one layer they name."""
    from semalign_lens.training.setup import _pairs_from

    states = {i: torch.full((1, 2, 3), float(i)) for i in range(4)}
    interpolated, same, low, high = _pairs_from([[0, 2, 3, 0.25], [1, 1, 1, 0.5], [2, 3, 3, 0.0], [3, 2, 3, 1.0]])
    assert torch.equal(interpolated.target(states), torch.full((1, 2, 3), 2.25))
    assert same.target(states) is states[1] and low.target(states) is states[3] and high.target(states) is states[3]
    with pytest.raises(SemalignError, match="adjacent layers"):
        _pairs_from([[0, 1, 3, 0.5]])


def test_pairing_rows_that_are_not_numbers_are_refused_in_one_line():
    from semalign_lens.core.errors import SemalignError
    from semalign_lens.training import AlignConfig
    from semalign_lens.training.setup import resolve_pairing

    for rows in ([[0, None]], [[0, 1.5, 2, 0.5]], [[0, 1, 2, "x"]]):
        with pytest.raises(SemalignError, match="integer layer indices and a numeric weight"):
            resolve_pairing(AlignConfig(), rows, 8, 3)
    with pytest.raises(SemalignError, match="'a' is neither a block index nor a residual hook name"):
        resolve_pairing(AlignConfig(), [["a", 1]], 8, 3)


def test_pairing_layers_may_be_transformer_lens_hook_names():
    """Config rows and student_layers name layers by hook as `--set` writes them: the same `LayerPair`s as the
    integer form (blocks.b.hook_resid_pre is block b − 1's output); a bad name is one line naming the forms."""
    from semalign_lens.training import load_align_config
    from semalign_lens.training.setup import resolve_pairing

    named = load_align_config(overrides=['pairing.pairs=[["blocks.1.hook_resid_post", "blocks.4.hook_resid_pre"], '
                                         '[2, "blocks.3.hook_out", "blocks.4.hook_resid_post", 0.25]]'])
    plain = load_align_config(overrides=["pairing.pairs=[[1, 3], [2, 3, 4, 0.25]]"])
    assert resolve_pairing(named, None, 6, 3) == resolve_pairing(plain, None, 6, 3)
    chosen = load_align_config(overrides=['pairing.student_layers=["blocks.2.hook_resid_pre", 2]'])
    assert [p.student_layer for p in resolve_pairing(chosen, None, 6, 3)] == [1, 2]
    for name, message in (("blocks.1.hook_attn_out", "blocks.b.hook_resid_post"), ("blocks.0.hook_resid_pre",
                                                                                    "the embeddings")):
        with pytest.raises(SemalignError, match=message) as err:
            load_align_config(overrides=[f'pairing.pairs=[["{name}", 1]]'])
        assert "\n" not in str(err.value)
