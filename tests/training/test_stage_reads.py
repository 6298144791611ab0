"""Cached targets that fit: each stage reads only the teacher states its terms use, and the teacher's weights are
released once the cache is built."""

from __future__ import annotations

import gc
import json

import pytest
from torch.multiprocessing.reductions import StorageWeakRef
from trainer_helpers import _write_tiny_models, make_cfg, run

from semalign_lens.lens.pairing import LayerPair
from semalign_lens.training import targets
from semalign_lens.training.targets import StateSet, stage_states


class Counted:
    """A shard handle that notes every state it is asked for: (key, rows read)."""

    def __init__(self, handle, log: list):
        self.handle, self.log = handle, log

    def get_slice(self, key):
        inner = self.handle.get_slice(key)
        log = self.log

        class Rows:
            def __getitem__(self, rows):
                out = inner[rows]
                log.append((key, out.shape[0]))
                return out

        return Rows()


def test_stage_states_are_the_pair_and_where_its_change_starts():
    pairs = [LayerPair(0, 0, 1, 0.5), LayerPair(1, 2, 3, 0.5), LayerPair(2, 5, 5)]
    assert stage_states(pairs[:1], pairs) == StateSet(True, (0, 1))
    assert stage_states(pairs[1:2], pairs) == StateSet(False, (0, 1, 2, 3))
    assert stage_states(pairs[2:], pairs) == StateSet(False, (2, 3, 5))
    assert stage_states(pairs, pairs) == StateSet(True, (0, 1, 2, 3, 5))  # joint
    assert len(stage_states(pairs[:1], pairs)) == 3 and len(stage_states((), pairs)) == 0


def test_each_stage_reads_only_its_own_states(tmp_path, tiny_pair, tokens, monkeypatch):
    """Interpolated pairs over the tiny pair's 6 teacher blocks: the cache stores 7 states a token (the
    embedding and 6 layers); each frontier stage reads its 2 to 4, every row of its batch once, nothing else."""
    log: list[tuple[str, int]] = []
    opened = targets.CachedTargets._file
    monkeypatch.setattr(targets.CachedTargets, "_file", lambda self, shard: Counted(opened(self, shard), log))
    per_step = []

    class Steps:
        def on_step(self, trainer, step, total):
            per_step.append({key: sum(n for k, n in log if k == key) for key, _ in log})
            log.clear()

    pairing = [[0, 0, 1, 0.5], [1, 2, 3, 0.5], [2, 4, 5, 0.5]]
    cfg = make_cfg(tmp_path, **{"objective.terms": {"relation": 1.0}, "targets.mode": "cached",
                                "targets.cache_dir": str(tmp_path / "cache"), "schedule.stage_steps": 1,
                                "pairing.pairs": pairing, "train.micro_batch_size": 3})
    result = run(cfg, tiny_pair, tokens, plugins=[Steps()])
    assert result.finished
    assert len(json.loads((tmp_path / "cache" / "meta.json").read_text())["keys"]) == 7
    batch = cfg.data.batch_size
    assert per_step == [{"embed": batch, "post.0": batch, "post.1": batch},
                        {k: batch for k in ("post.0", "post.1", "post.2", "post.3")},
                        {k: batch for k in ("post.2", "post.3", "post.4", "post.5")}]


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_the_teacher_is_released_once_targets_are_cached(tmp_path, mode, monkeypatch):
    """The teacher read by the trainer itself from its directory: with cached targets, once the trainer is
    built no storage of its weights is alive (neither the loaded bridge nor the plain copy that built the
    cache); online, the trainer holds them all."""
    import semalign_lens.training.loop as loop

    teacher, student, text = _write_tiny_models(tmp_path)
    storages: list[StorageWeakRef] = []
    load = loop.load_model

    def load_noting_the_teacher(source, *args, **kwargs):
        model = load(source, *args, **kwargs)
        if str(source) == str(teacher):
            storages.extend(StorageWeakRef(p.untyped_storage()) for p in model.parameters())
        return model

    monkeypatch.setattr(loop, "load_model", load_noting_the_teacher)  # the loader the trainer calls
    cfg = make_cfg(tmp_path, teacher=str(teacher), student=str(student),
                   **{"data.source": str(text), "data.seq_len": 32, "data.n_sequences": 8, "targets.mode": mode,
                      "targets.cache_dir": str(tmp_path / "cache"), "objective.terms": {"relation": 1.0}})
    from semalign_lens.training import Trainer

    trainer = Trainer(cfg)
    gc.collect()
    alive = sum(not s.expired() for s in storages)
    assert storages and alive == (0 if mode == "cached" else len(storages))
    assert (trainer.teacher is None) == (mode == "cached")
