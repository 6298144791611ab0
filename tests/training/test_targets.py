"""Cached teacher targets: equal to the online losses, kl needs cached logits, another teacher refused."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import changed, initial_student, make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer


def test_cached_targets_reproduce_online_losses_without_the_teacher(tmp_path, tiny_pair, tokens):
    terms = {"relation": 1.0, "cosine": 1.0, "fisher": 1.0, "ce": 1.0}
    over = {"objective.terms": terms, "schedule.stage_steps": 1}
    online = run(make_cfg(tmp_path / "on", **over), tiny_pair, tokens)
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "off", **over, **{"targets.mode": "cached", "targets.cache_dir": str(cache),
                                                "targets.shard_sequences": 3})
    trainer = Trainer(cfg, tiny_pair, data=tokens)
    assert trainer.teacher is None  # the teacher is not held during training
    cached = trainer.run()
    assert (cache / "meta.json").exists() and len(list(cache.glob("shard-*.safetensors"))) == 7  # ceil(20 / 3)
    a = online.metrics().query("kind == 'train'")
    b = cached.metrics().query("kind == 'train'")
    for name in terms:  # fp16 storage: ~1e-3 relative error per state, more for differences of states
        assert torch.allclose(torch.tensor(a[name].to_numpy()), torch.tensor(b[name].to_numpy()), rtol=2e-2), name


def test_cached_kl_needs_cached_logits_and_then_works(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"targets.mode": "cached", "targets.cache_logits": True,
                                "targets.cache_dir": str(tmp_path / "cache"), "schedule.stage_steps": 1})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens)
    assert result.finished and changed(before, result.student)  # the cached logits' KL moved the student
    assert all(r["kl"] > 0 for r in result.records if r.get("kind") == "train")


def test_cache_from_another_teacher_layer_or_tokenizer_is_refused(tmp_path, tiny_pair, tokens):
    from semalign_lens.models.pair import ModelPair
    from semalign_lens.models.tiny import tiny_pair as build

    cache = tmp_path / "cache"
    over = {"targets.mode": "cached", "targets.cache_dir": str(cache), "objective.terms": {"relation": 1.0},
            "schedule.stage_steps": 1}
    run(make_cfg(tmp_path / "a", **over), tiny_pair, tokens, stop_after_steps=1)
    other = build(seed=7)
    with pytest.raises(SemalignError, match="another teacher weights"):
        Trainer(make_cfg(tmp_path / "b", **over), ModelPair(other.teacher, tiny_pair.student), data=tokens)
    with pytest.raises(SemalignError, match=r"holds teacher layers \[1, 3, 5\].*needs \[4\]"):
        Trainer(make_cfg(tmp_path / "c", **over), tiny_pair, data=tokens,
                pairing=[[0, 4, 4, 0.0]])
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "0" * 64}))
    with pytest.raises(SemalignError, match="another tokenizer"):
        Trainer(make_cfg(tmp_path / "d", **over), tiny_pair, data=tokens)
    assert not (tmp_path / "b" / "run" / "checkpoints").exists()


def test_damaged_or_unchecked_cache_is_noted_and_built_again(tmp_path, tiny_pair, tokens, capsys):
    """A shard changed in place (same size: only the checksum sees it) or a cache without checksums is not
    trained on: one note naming it, then the cache is built again, byte for byte the same."""
    cache = tmp_path / "cache"
    over = {"targets.mode": "cached", "targets.cache_dir": str(cache), "objective.terms": {"relation": 1.0},
            "targets.shard_sequences": 8}

    def trainer(name):
        return Trainer(make_cfg(tmp_path / name, **over), tiny_pair,
                       data=tokens)

    trainer("a")
    shard = cache / "shard-00001.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-8] + bytes(b ^ 0xFF for b in intact[-8:]))  # the last values changed in place
    capsys.readouterr()
    trainer("b")
    assert f"target cache {cache}: shard shard-00001.safetensors is damaged (its sha256 differs from the one " \
           "recorded when it was written); building it again" in capsys.readouterr().err
    assert shard.read_bytes() == intact
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    trainer("c")
    assert "records no shard checksums (built by an older version); building it again" in capsys.readouterr().err
    assert json.loads((cache / "meta.json").read_text()) == meta
