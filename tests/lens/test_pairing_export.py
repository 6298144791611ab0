"""Pairing exports to DistillKit (`layer_mapping`) and ModelOpt (criterion layer names): the formats as the tools
declare them (pydantic models written here from their source's type annotations), the indices and names
resolving to the very tensors our layers are (HF `hidden_states`, `named_modules`), round trips, and the CLI.

References: DistillKit `distillkit/configuration.py` (`layer_mapping: list[tuple[int, int]] | Literal["all"] |
None`, pairs (student_layer_idx, teacher_layer_idx)) and `distillkit/lossfuncs/hidden_state.py` (indices into
`outputs.hidden_states`); ModelOpt `modelopt/torch/distill/config.py` (`criterion: dict[tuple[str, str], Loss]`,
keys (student_layer_name, teacher_layer_name)).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
import pytest
import torch
import yaml

from semalign_lens.cli import main
from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.pairing import pair_by_cka, pair_proportional
from semalign_lens.lens.pairing_export import (
    block_path,
    distillkit_layer_mapping,
    export_pairing,
    load_pairs,
    modelopt_criterion,
    modelopt_layer_pairs,
    pairing_from_distillkit,
    pairing_from_modelopt,
)
from semalign_lens.models.residuals import residual_states


class DistillKitLayers(pydantic.BaseModel):
    """DistillKit's field, as `DistillationRunConfig` declares it."""

    layer_mapping: list[tuple[int, int]] | Literal["all"] | None = None


class ModelOptCriterion(pydantic.BaseModel):
    """ModelOpt's `KDLossConfig.criterion` dict form (loss modules as Any: no ModelOpt here)."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    criterion: dict[tuple[str, str], Any]


def _key(pairing) -> list[tuple]:
    return [(p.student_layer, p.teacher_low, p.teacher_high, p.weight) for p in pairing]


def test_distillkit_mapping_is_the_papers_proportional_rule_in_hidden_states_indices(tmp_path):
    """12 -> 6 blocks: paper ℓ^T_k = 2k (1-based, = hidden_states index of block k − 1's output)."""
    path = export_pairing(pair_proportional(12, 6), "distillkit", tmp_path / "map.distillkit.yaml")
    loaded = yaml.safe_load(path.read_text())
    assert set(loaded) == {"layer_mapping"}
    assert DistillKitLayers(**loaded).layer_mapping == [(k, 2 * k) for k in range(1, 7)]
    assert "own loss" in path.read_text()  # the caveat travels with the file


def test_distillkit_indices_are_the_states_our_layers_are(tiny_hf):
    """hidden_states[b + 1] is our layer b (block b's output) for every block but the last, where HF applies the
    final norm (the documented caveat)."""
    teacher, student, tok = tiny_hf
    tokens = torch.tensor([tok("for key, value in items:\n    pass", add_special_tokens=False)["input_ids"]])
    pairing = pair_proportional(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    for (s, t), pair in zip(distillkit_layer_mapping(pairing), pairing, strict=True):
        for model, index, block in ((student, s, pair.student_layer), (teacher, t, pair.nearest_teacher_layer)):
            with torch.no_grad():
                states = model(input_ids=tokens, output_hidden_states=True).hidden_states
                ours = residual_states(model, tokens, [block]).post[block]
            last = block == model.config.num_hidden_layers - 1
            torch.testing.assert_close(states[index], model.model.norm(ours) if last else ours)


def test_modelopt_names_are_the_blocks_whose_outputs_our_layers_are(tiny_hf):
    teacher, student, tok = tiny_hf
    tokens = torch.tensor([tok("import os\nimport sys", add_special_tokens=False)["input_ids"]])
    pairing = pair_proportional(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    names = modelopt_layer_pairs(pairing, block_path(student), block_path(teacher))
    criterion = modelopt_criterion(names, torch.nn.MSELoss)
    assert ModelOptCriterion(criterion=criterion).criterion.keys() == {tuple(n) for n in names}
    assert len({id(loss) for loss in criterion.values()}) == len(names)  # one loss module per pair
    for (s_name, t_name), pair in zip(names, pairing, strict=True):
        for model, name, block in ((student, s_name, pair.student_layer), (teacher, t_name, pair.nearest_teacher_layer)):
            seen = []
            handle = dict(model.named_modules())[name].register_forward_hook(
                lambda m, a, out, seen=seen: seen.append(out[0] if isinstance(out, tuple) else out))
            with torch.no_grad():
                model(input_ids=tokens)
            handle.remove()
            torch.testing.assert_close(seen[0], residual_states(model, tokens, [block]).post[block])


def test_block_paths_follow_the_family():
    assert block_path({"model_type": "gpt2"}) == "transformer.h"
    assert block_path({"model_type": "llama"}) == block_path("qwen2") == "model.layers"


@pytest.mark.parametrize("to", ["distillkit", "modelopt"])
def test_exact_pairings_round_trip(tmp_path, to):
    cka = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.1, 0.7, 0.3], [0.1, 0.2, 0.95]])
    pairing = pair_by_cka(cka)
    path = export_pairing(pairing, to, tmp_path / f"p.{to}.{'yaml' if to == 'distillkit' else 'json'}")
    read = pairing_from_distillkit if to == "distillkit" else pairing_from_modelopt
    back = read(path, pairing.n_teacher_layers, pairing.n_student_layers)
    assert _key(back) == _key(pairing) and back.strategy == to
    if to == "modelopt":
        assert ModelOptCriterion(criterion=modelopt_criterion(path, torch.nn.MSELoss))


def test_interpolated_pairs_are_rounded_and_listed(tmp_path):
    """40 -> 32 (paper's example): non-integer depths interpolate; each tool takes the nearest teacher layer."""
    pairing = pair_proportional(40, 32)
    interpolated = [p for p in pairing if p.interpolated]
    assert interpolated
    path = export_pairing(pairing, "modelopt", tmp_path / "p.modelopt.json")
    written = json.loads(path.read_text())
    assert len(written["rounded"]) == len(interpolated)
    back = pairing_from_modelopt(path, 40, 32)
    assert [p.teacher_low for p in back] == [p.nearest_teacher_layer for p in pairing]
    assert all(p.weight == 0.0 for p in back)


def test_load_pairs_reads_a_saved_pairing_and_a_runs_record(tmp_path):
    pairing = pair_proportional(40, 32)
    saved = pairing.save(tmp_path / "pairing.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "pairing.json").write_text(json.dumps([p.record() for p in pairing]))
    assert _key(load_pairs(saved)) == _key(load_pairs(run)) == _key(pairing)


def test_cli_exports_beside_the_pairing(tmp_path, capsys):
    saved = pair_proportional(12, 6).save(tmp_path / "mine.pairing.json")
    assert main(["export-pairing", str(saved), "--to", "distillkit"]) == 0
    out = tmp_path / "mine.distillkit.yaml"
    assert DistillKitLayers(**yaml.safe_load(out.read_text())).layer_mapping == [(k, 2 * k) for k in range(1, 7)]
    assert main(["export-pairing", str(saved), "--to", "modelopt", "--student", "stdlib-student",
                 "--out", str(tmp_path / "m.json")]) == 0
    names = json.loads((tmp_path / "m.json").read_text())["criterion_layers"]
    assert names[0] == ["model.layers.0", "model.layers.1"]
    printed = capsys.readouterr().out
    assert "own loss" in printed


@pytest.mark.parametrize("mapping,problem", [
    ([[0, 1]], "index 0"), ([[1, 2, 3]], "pair"), ([["1", "2"]], "pair"), ("all", "explicit")])
def test_bad_distillkit_mappings_are_one_line(tmp_path, mapping, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"layer_mapping": mapping}))
    with pytest.raises(SemalignError, match=problem):
        pairing_from_distillkit(path, 12, 6)


def test_a_pairing_file_of_another_kind_is_refused(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["export-pairing", str(bad), "--to", "distillkit"]) == 2
    assert "not a layer pairing" in capsys.readouterr().err


def test_report_pairing_exports_beside_the_report(tmp_path, capsys):
    """`semalign report pairing ... --export`: the pairing the report chose, in all three forms."""
    from semalign_lens.lens.pairing import LayerPairing
    from semalign_lens.models.tiny import write_convention_pair

    teacher, student = write_convention_pair(tmp_path / "pair", "llama3")
    report = tmp_path / "out" / "pairing_report.html"
    assert main(["report", "pairing", str(teacher), str(student), "--prompts", "4", "--methods", "grad_x_act",
                 "--out", str(report), "--no-progress", "--export", "semalign", "distillkit", "modelopt"]) == 0
    capsys.readouterr()
    saved = LayerPairing.load(tmp_path / "out" / "pairing_report.pairing.json")
    mapping = yaml.safe_load((tmp_path / "out" / "pairing_report.distillkit.yaml").read_text())["layer_mapping"]
    names = json.loads((tmp_path / "out" / "pairing_report.modelopt.json").read_text())["criterion_layers"]
    assert mapping == [[p.student_layer + 1, p.nearest_teacher_layer + 1] for p in saved]
    assert names == [[f"model.layers.{p.student_layer}", f"model.layers.{p.nearest_teacher_layer}"] for p in saved]
