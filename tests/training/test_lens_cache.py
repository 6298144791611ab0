"""`lens_kl` from a top-k target cache: the cache holds the teacher's logit-lens top-k at exactly the pair targets
the term reads, each stage reads only its own, the trained term matches the online one, and a cache built without
them is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_helpers import make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer, targets
from semalign_lens.training.targets import cache_identity, default_cache_path, lens_readout_keys

LENS = {"objective.terms": {"lens_kl": 1.0, "kl": 1.0}, "objective.options": {"lens_kl": {"anneal": "none"}}}


def _cached(tmp_path, k: int, **overrides):
    return make_cfg(tmp_path, **{**LENS, "targets.mode": "cached", "targets.cache_logits": "topk", "targets.top_k": k,
                                 "targets.cache_dir": str(tmp_path / "cache"), **overrides})


def test_at_k_equal_to_the_vocabulary_the_cached_term_trains_as_the_online_one(tmp_path, tiny_pair, tokens):
    """Tiny pair (V = 384), top_k = 384, two interpolated pairs and an exact one: the cache's lens readouts lose
    nothing but fp16 rounding, so every step's lens_kl and kl match the online run's (teacher head run each step)
    to 1e-3, and the trainer keeps no teacher lens."""
    pairing = {"pairing.pairs": [[0, 0, 1, 0.5], [1, 2, 3, 0.25], [2, 5, 5, 0.0]]}
    online = run(make_cfg(tmp_path / "online", **LENS, **pairing), tiny_pair, tokens).metrics().query("kind == 'train'")
    cfg = _cached(tmp_path, 384, **pairing)
    assert Trainer(cfg, tiny_pair, data=tokens).teacher_lens is None
    cached = run(cfg, tiny_pair, tokens).metrics().query("kind == 'train'")
    assert len(cached) == len(online) == 6
    for term in ("lens_kl", "kl"):
        assert cached[term].to_numpy() == pytest.approx(online[term].to_numpy(), rel=1e-3)


class _Counted:
    """A shard handle noting every key it is asked for."""

    def __init__(self, handle, log: list):
        self.handle, self.log = handle, log

    def get_slice(self, key):
        self.log.append(key)
        return self.handle.get_slice(key)


def test_the_cache_holds_the_lens_readouts_the_terms_read_and_each_stage_reads_its_own(tmp_path, tiny_pair, tokens,
                                                                                       monkeypatch):
    """Interpolated pairs: one readout per pair target, (1 − w)·h[low] + w·h[high], and none for kd's cache; each
    frontier stage reads the readout of its own pair only."""
    log: list[str] = []
    opened = targets.CachedTargets._file
    monkeypatch.setattr(targets.CachedTargets, "_file", lambda self, shard: _Counted(opened(self, shard), log))
    read = []

    class Steps:
        def on_step(self, trainer, step, total):
            read.append(sorted({k.split(":")[0] for k in log if k.startswith("lens.")}))
            log.clear()

    pairing = [[0, 0, 1, 0.5], [1, 2, 3, 0.25], [2, 5, 5, 0.0]]
    assert run(_cached(tmp_path, 16, **{"pairing.pairs": pairing, "schedule.stage_steps": 1}), tiny_pair, tokens,
               plugins=[Steps()]).finished
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["lens"] == [p[1:] for p in pairing]  # [low, high, weight] per pair, nothing else
    lens_keys = [k for k in meta["keys"] if k.startswith("lens.")]
    assert lens_keys == [k for p in pairing for k in lens_readout_keys(p[1:])]
    assert [k.split(":")[0] for k in lens_keys[::3]] == ["lens.0-1@0.5", "lens.2-3@0.25", "lens.5"]
    assert read == [["lens.0-1@0.5"], ["lens.2-3@0.25"], ["lens.5"]]

    kd = make_cfg(tmp_path / "kd", **{"objective.terms": {"kl": 1.0}, "targets.mode": "cached",
                                      "targets.cache_logits": "topk", "targets.top_k": 16,
                                      "targets.cache_dir": str(tmp_path / "kd-cache")})
    Trainer(kd, tiny_pair, data=tokens)
    kd_meta = json.loads((tmp_path / "kd-cache" / "meta.json").read_text())
    assert "lens" not in kd_meta and not any(k.startswith("lens.") for k in kd_meta["keys"])


def test_a_cache_without_the_lens_readouts_is_refused_in_one_line(tmp_path, tiny_pair, tokens):
    """A kd run's cache (or one from before caches held lens readouts) serves kd, not lens_kl: one line naming the
    fix. With the cache directory unset the automatic path is keyed by the readouts too, so such a run builds a
    new cache beside the old one (and a cache without readouts keeps its old key)."""
    kd = make_cfg(tmp_path, **{"objective.terms": {"kl": 1.0}, "targets.mode": "cached", "targets.cache_logits": "topk",
                               "targets.top_k": 16, "targets.cache_dir": str(tmp_path / "cache")})
    Trainer(kd, tiny_pair, data=tokens)
    with pytest.raises(SemalignError, match=r"holds no top-k logit-lens readout .* \[\[1, 1, 0\.0\], \[3, 3, 0\.0\], "
                                            r"\[5, 5, 0\.0\]\].*delete it to build it again") as err:
        Trainer(_cached(tmp_path, 16), tiny_pair, data=tokens)
    assert "\n" not in str(err.value)
    plain = cache_identity("t", "k", [1, 3, 5], "d", 20, 16, 64, "topk", "tiny", top_k=16)
    with_lens = cache_identity("t", "k", [1, 3, 5], "d", 20, 16, 64, "topk", "tiny", top_k=16,
                               lens=[(5, 5, 0.0), (1, 1, 0.0), (3, 3, 0.0)])
    assert "lens" not in plain and with_lens["lens"] == [[1, 1, 0.0], [3, 3, 0.0], [5, 5, 0.0]]
    assert default_cache_path(plain) != default_cache_path(with_lens)


def test_a_cached_lens_kl_run_resumes_to_the_uninterrupted_run(tmp_path, tiny_pair, tokens):
    """Stopped after 3 of 6 steps and resumed on the same cache: the same weights and the same lens_kl record."""
    whole = run(_cached(tmp_path / "a", 16), tiny_pair, tokens)
    first = run(_cached(tmp_path / "b", 16), tiny_pair, tokens, stop_after_steps=3)
    assert whole.finished and not first.finished
    resumed = run(_cached(tmp_path / "b", 16), tiny_pair, tokens)
    assert resumed.finished
    sa, sb = whole.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cols = ["step", "stage", "lens_kl", "kl"]
    assert whole.metrics().query("kind == 'train'")[cols].reset_index(drop=True).equals(
        resumed.metrics().query("kind == 'train'")[cols].reset_index(drop=True))
