"""The stage schedule on the tiny pair: what each stage trains (frontier layer, LoRA matrices, joint, all)."""

from __future__ import annotations

import pytest
from trainer_helpers import changed, initial_student, layer_of, make_cfg, run

from semalign_lens.core.errors import SemalignError


def test_frontier_trains_exactly_the_frontier_layer(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path)
    before = initial_student(tiny_pair)
    first = run(cfg, tiny_pair, tokens, stop_after_steps=2)  # stage 0 complete
    block0 = {k for k in before if layer_of(k) == "layer0"}
    assert changed(before, first.student) == block0
    after0 = {k: v.clone() for k, v in first.student.state_dict().items()}
    second = run(cfg, tiny_pair, tokens, stop_after_steps=2)  # resumes, runs stage 1
    assert changed(after0, second.student) == {k for k in before if layer_of(k) == "layer1"}


def test_lora_changes_only_the_adapted_matrices_of_the_frontier_layer(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.adapter": "lora", "schedule.lora_rank": 2,
                                "schedule.lora_targets": ["v_proj", "down_proj"]})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens, stop_after_steps=2)
    assert changed(before, result.student) == {"model.layers.0.self_attn.v_proj.weight",
                                               "model.layers.0.mlp.down_proj.weight"}
    assert set(result.student.state_dict()) == set(before)  # merged: plain HF names again


def test_lora_target_typo_is_named(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.adapter": "lora", "schedule.lora_targets": ["v_prj"]})
    with pytest.raises(SemalignError, match=r"v_prj.*linear \(or Conv1D\) layers are.*v_proj"):
        run(cfg, tiny_pair, tokens)


def test_joint_mode_trains_all_paired_layers_at_once(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.mode": "joint", "schedule.stage_steps": 2})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens)
    assert result.final["step"] == 2 and len(result.final["stages"]) == 1
    assert {layer_of(k) for k in changed(before, result.student)} == {"layer0", "layer1", "layer2"}


def test_trainable_all_trains_every_parameter_with_the_same_stages(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.trainable": "all", "objective.terms": {"ce": 1.0},
                                "schedule.stage_steps": 1})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens, stop_after_steps=1)
    assert changed(before, result.student) == set(before)


def test_saved_adapters_load_in_peft_and_give_the_trained_student(tmp_path, tiny_pair, tokens):
    """`schedule.save_adapters`: stage 0's adapters in peft's format; peft's own `PeftModel.from_pretrained` on
    the student as it was gives, merged, exactly the student that stage 0 trained."""
    import torch
    from peft import PeftModel

    from semalign_lens.models.plain import clean_copy

    cfg = make_cfg(tmp_path, **{"schedule.adapter": "lora", "schedule.lora_rank": 2, "schedule.save_adapters": True})
    result = run(cfg, tiny_pair, tokens, stop_after_steps=2)  # stage 0 complete, its adapters merged
    folder = tmp_path / "run" / "adapters" / "stage0"
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    base = clean_copy(tiny_pair.student, share_weights=False).eval()
    loaded = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval()
    ids = tokens.tokens[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, result.student.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base.model.layers[0].self_attn.v_proj.weight,
                                  clean_copy(tiny_pair.student, share_weights=False).model.layers[0].self_attn.v_proj.weight)
