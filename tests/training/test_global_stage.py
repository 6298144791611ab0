"""Local then global (`schedule.global_steps`): the frontier stages, then one end-to-end stage in which every
student layer trains on the output terms only."""

from __future__ import annotations

import pytest
from trainer_helpers import changed, initial_student, layer_of, make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training.config import config_diff

LOCAL = {"pairing.student_layers": [0, 2], "schedule.adapter": "lora", "schedule.lora_rank": 2,
         "schedule.lora_targets": ["v_proj", "down_proj"]}


def test_the_global_stage_follows_the_frontier_and_trains_every_layer_on_the_output_terms(tmp_path, tiny_pair,
                                                                                        tokens):
    before = initial_student(tiny_pair)
    local = run(make_cfg(tmp_path / "local", **LOCAL), tiny_pair, tokens)
    assert {layer_of(k) for k in changed(before, local.student)} == {"layer0", "layer2"}  # layer 1 is unpaired
    cfg = make_cfg(tmp_path / "global", **LOCAL, **{"schedule.global_steps": 3, "schedule.global_lr": 5e-3})
    result = run(cfg, tiny_pair, tokens)
    assert result.final["step"] == 2 * 2 + 3
    stages = result.metrics().query("kind == 'stage' and when == 'start'")
    assert stages["label"].tolist() == ["L0", "L2", "global"] and stages["lr"].tolist()[-1] == 5e-3
    train = result.metrics().query("kind == 'train'")
    in_global = train[train["stage_label"] == "global"]
    assert len(in_global) == 3 and in_global["relation"].isna().all() and in_global["kl"].notna().all()
    assert (in_global["loss"] == in_global["kl"]).all()  # the layer term rests: the loss is the output KL
    assert train[train["stage_label"] != "global"]["relation"].notna().all()
    # the global stage adapts the same matrices of every block, the unpaired one included
    assert {layer_of(k) for k in changed(before, result.student)} == {"layer0", "layer1", "layer2"}
    assert {k.split(".", 3)[3] for k in changed(before, result.student)} == {"self_attn.v_proj.weight",
                                                                             "mlp.down_proj.weight"}


def test_global_stage_settings_are_checked_and_old_runs_still_resume(tmp_path):
    with pytest.raises(SemalignError, match="global_steps must be a whole number >= 0"):
        make_cfg(tmp_path, **{"schedule.global_steps": -1})
    with pytest.raises(SemalignError, match="global_lr must be positive"):
        make_cfg(tmp_path, **{"schedule.global_lr": 0.0})
    with pytest.raises(SemalignError, match="trains the output terms only.*add kl"):
        make_cfg(tmp_path, **{"schedule.global_steps": 2, "objective.terms": {"relation": 1.0}})
    now = make_cfg(tmp_path).to_dict()
    saved = {**now, "schedule": {k: v for k, v in now["schedule"].items() if not k.startswith("global")}}
    assert config_diff(saved, now) == []  # a run saved before the setting existed had no global stage
    assert config_diff(saved, make_cfg(tmp_path, **{"schedule.global_steps": 2}).to_dict()) == [
        "schedule.global_steps"]
