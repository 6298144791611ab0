"""Sparse (top-k + tail) teacher logits: the KL against explicit references, the config, the top-k target cache
and a tiny cached run that trains and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch
from semalign_lens.models.plain import clean_copy
from semalign_lens.models.readout import LogitLens
from semalign_lens.training import Trainer, align, load_align_config
from semalign_lens.training.objectives import kl_loss, readout_kl_loss
from semalign_lens.training.objectives.sparse_logits import SparseLogits, sparse_readout_kl_sum


def _mask(batch=3, pos=6):
    mask = torch.ones(batch, pos, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return mask


def _dense_kl(s, t, mask, direction, tau):
    """KL at temperature τ, times τ², from torch's kl_div (the dense reference)."""
    ls, lt = F.log_softmax(s[mask].double() / tau, -1), F.log_softmax(t[mask].double() / tau, -1)
    a, b = (ls, lt) if direction == "forward" else (lt, ls)
    return F.kl_div(a, b, log_target=True, reduction="sum") / int(mask.sum()) * tau**2


def _bucket_kl(s, sparse, mask, direction, tau):
    """The sparse KL written out with autograd ops (float64): k + 1 buckets, the tempered tail as r / p_k tokens
    of probability p_k."""
    ls = F.log_softmax(s.double() / tau, -1)[mask]
    ids, top, tail = sparse.ids[mask].long(), sparse.logprobs[mask].double(), sparse.tail_logmass[mask].double()
    lq = torch.cat([ls.gather(-1, ids), ls.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)], -1)
    tail_in = tail + (1 / tau - 1) * top.amin(-1)
    lp = F.log_softmax(torch.cat([top / tau, tail_in[:, None]], -1), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1) if direction == "forward" else (lq.exp() * (lq - lp)).sum(-1)
    return kl.mean() * tau**2


# ----------------------------------------------------------------------------------------------- the KL

@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sparse_kl_equals_dense_kl_when_k_is_the_vocabulary(direction, tau):
    s, t, mask = torch.randn(3, 6, 40) * 2, torch.randn(3, 6, 40) * 3, _mask()
    sparse = SparseLogits.from_logits(t, 40)
    assert sparse.tail_logmass.max() <= -1e4  # empty tail: the floor, not -inf
    got = kl_loss(s, sparse, mask, direction, tau, chunk=4)
    assert torch.allclose(got.double(), _dense_kl(s, t, mask, direction, tau), atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sparse_kl_is_close_to_dense_for_a_peaked_teacher(direction):
    """Forward KL weighs the tail by the teacher's mass, so any student will do; reverse KL weighs it by the
    student's, so there the student is peaked too (a noisy copy of the teacher)."""
    gen = torch.Generator().manual_seed(1)
    t, mask = torch.randn(3, 6, 64, generator=gen) * 0.5, _mask()
    t.scatter_add_(-1, torch.randint(0, 64, (3, 6, 3), generator=gen), torch.full((3, 6, 3), 12.0))
    noise = torch.randn(3, 6, 64, generator=gen)
    s = noise if direction == "forward" else t + noise
    sparse = SparseLogits.from_logits(t, 8)
    assert sparse.tail_logmass.exp().max() < 1e-3
    dense = _dense_kl(s, t, mask, direction, 1.0)
    got = kl_loss(s, sparse, mask, direction).double()
    assert abs(got - dense) / dense < 2e-3
    if direction == "forward":  # the coarsened KL never exceeds the full one (data-processing inequality)
        assert got <= dense + 1e-6


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sparse_kl_value_and_gradient_match_an_autograd_reference(direction, tau):
    s, t, mask = torch.randn(3, 6, 30) * 2, torch.randn(3, 6, 30) * 2, _mask()
    sparse = SparseLogits.from_logits(t, 5)
    x = s.clone().requires_grad_(True)
    got = kl_loss(x, sparse, mask, direction, tau, chunk=2)  # several row chunks
    got.backward()
    y = s.double().requires_grad_(True)
    ref = _bucket_kl(y, sparse, mask, direction, tau)
    ref.backward()
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert torch.allclose(x.grad.double(), y.grad, atol=1e-6)
    assert x.grad[~mask].abs().max() == 0  # padding positions get no gradient


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_the_head_fused_readout_kl_matches_the_autograd_reference(direction, tau):
    """`readout_kl_loss` with a `LogitLens` (the head fused into the bucket KL, never forming the logits) against
    `_bucket_kl` of the readout computed with autograd: value, and gradients into the states and into a trainable
    head's weight and bias; in row chunks of 2 (`sparse_readout_kl_sum`) the same."""
    torch.manual_seed(0)
    lens = LogitLens(torch.nn.LayerNorm(7), torch.nn.Linear(7, 30))
    h = torch.randn(10, 7, requires_grad=True)
    sparse = SparseLogits.from_logits(torch.randn(10, 30) * 2, 5)
    got = readout_kl_loss(h, lens, sparse, direction, tau)
    fused = torch.autograd.grad(got, [h, lens.head.weight, lens.head.bias])
    ref = _bucket_kl(lens(h).double()[None], SparseLogits(sparse.ids[None], sparse.logprobs[None],
                                                          sparse.tail_logmass[None]),
                     torch.ones(1, 10, dtype=torch.bool), direction, tau)
    expected = torch.autograd.grad(ref, [h, lens.head.weight, lens.head.bias])
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(fused, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    chunked = sparse_readout_kl_sum(lens.normed(h), lens.weight, lens.bias, sparse, direction == "forward", tau, 2)
    assert chunked.item() / 10 * tau**2 == pytest.approx(got.item(), rel=1e-6)


def test_the_head_fused_readout_kl_equals_the_unfused_one_with_tail_samples_and_under_autocast():
    """Tail samples enter the fused value as the unfused one's; under bf16 autocast both read the head in bf16
    (the fused path casts once, as autocast would), so they agree to rounding."""
    torch.manual_seed(1)
    lens = LogitLens(torch.nn.LayerNorm(8), torch.nn.Linear(8, 64, bias=False))
    h = torch.randn(12, 8, requires_grad=True)
    sparse = SparseLogits.from_logits(torch.randn(12, 64) * 3, 6, tail_samples=4,
                                      generator=torch.Generator().manual_seed(0))
    plain = lambda x: lens(x)  # noqa: E731  (any callable lens: the readout, then kl_loss)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fused, unfused = readout_kl_loss(h, lens, sparse), readout_kl_loss(h, plain, sparse)
        (g_fused,), (g_unfused,) = torch.autograd.grad(fused, [h]), torch.autograd.grad(unfused, [h])
        tol = 2e-2 if autocast else 1e-5
        assert fused.item() == pytest.approx(unfused.item(), rel=tol)
        torch.testing.assert_close(g_fused, g_unfused, rtol=tol, atol=tol * g_unfused.abs().max().item())
    assert fused.item() != pytest.approx(readout_kl_loss(h, lens, SparseLogits(sparse.ids, sparse.logprobs,
                                                                               sparse.tail_logmass)).item(), rel=1e-4)


def test_sparse_logits_hold_the_top_k_and_the_tail_mass():
    t = torch.randn(2, 3, 20)
    sparse = SparseLogits.from_logits(t, 4)
    logp = F.log_softmax(t, -1)
    assert sparse.ids.dtype == torch.int32 and sparse.ids.shape == (2, 3, 4)
    assert torch.equal(sparse.ids.long(), logp.topk(4, -1).indices)
    assert torch.allclose(sparse.logprobs, logp.topk(4, -1).values)
    assert torch.allclose(sparse.tail_logmass.exp(), 1 - sparse.logprobs.exp().sum(-1), atol=1e-6)


def _sampled_kl(s, sparse, mask):
    """The forward KL at τ = 1 with tail samples, written out with autograd ops (float64): the bucket KL plus
    r · mean over the drawn ids of log p̃ − log q̃ (p̃, q̃ the two tails renormalised)."""
    ls = F.log_softmax(s.double(), -1)[mask]
    ids, drawn = sparse.ids[mask].long(), sparse.tail_ids[mask].long()
    tail = sparse.tail_logmass[mask].double()
    lq_tail = ls.scatter(-1, ids, float("-inf")).logsumexp(-1)
    lp = F.log_softmax(torch.cat([sparse.logprobs[mask].double(), tail[:, None]], -1), -1)
    lq = torch.cat([ls.gather(-1, ids), lq_tail[:, None]], -1)
    bucket = (lp.exp() * (lp - lq)).sum(-1)
    inside = (sparse.tail_logprobs[mask].double() - tail[:, None]) - (ls.gather(-1, drawn) - lq_tail[:, None])
    return (bucket + lp[:, -1].exp() * inside.mean(-1)).mean()


def test_tail_samples_give_the_reference_value_and_the_bucket_gradient():
    s, t, mask = torch.randn(3, 6, 30) * 2, torch.randn(3, 6, 30) * 2, _mask()
    sparse = SparseLogits.from_logits(t, 5, tail_samples=7, generator=torch.Generator().manual_seed(0))
    assert sparse.tail_ids.shape == (3, 6, 7) and sparse.tail_ids.dtype == torch.int32
    assert not (sparse.tail_ids[..., :, None] == sparse.ids[..., None, :]).any()  # drawn from the tail only
    assert torch.allclose(sparse.tail_logprobs, F.log_softmax(t, -1).gather(-1, sparse.tail_ids.long()))
    x = s.clone().requires_grad_(True)
    got = kl_loss(x, sparse, mask, "forward", chunk=2)
    got.backward()
    assert torch.allclose(got.double(), _sampled_kl(s, sparse, mask), atol=1e-5)
    y = s.double().requires_grad_(True)
    _bucket_kl(y, sparse, mask, "forward", 1.0).backward()  # the gradient: the bucket KL's, samples or not
    assert torch.allclose(x.grad.double(), y.grad, atol=1e-6)
    assert x.grad[~mask].abs().max() == 0


def test_tail_samples_estimate_the_dense_kl_without_bias():
    """Many draws: the value approaches the dense KL (the buckets alone stay low); the gradient is the
    bucket KL's, close to the dense one."""
    gen = torch.Generator().manual_seed(2)
    s, t, mask = torch.randn(3, 6, 60, generator=gen), torch.randn(3, 6, 60, generator=gen) * 1.5, _mask()
    dense = _dense_kl(s, t, mask, "forward", 1.0)
    x = s.clone().requires_grad_(True)
    F.kl_div(F.log_softmax(x[mask], -1), F.log_softmax(t[mask], -1), log_target=True, reduction="sum").div(
        int(mask.sum())).backward()
    dense_grad, x.grad = x.grad.clone(), None
    sparse = SparseLogits.from_logits(t, 4, tail_samples=20000, generator=gen)
    got = kl_loss(x, sparse, mask, "forward")
    got.backward()
    bucket = kl_loss(s, SparseLogits(sparse.ids, sparse.logprobs, sparse.tail_logmass), mask, "forward")
    assert bucket < 0.8 * dense  # what the samples correct
    assert abs(got.item() - dense.item()) / dense.item() < 0.01
    cosine = F.cosine_similarity(x.grad.flatten(), dense_grad.flatten(), 0)
    assert 0.9 < cosine < 0.9999


@pytest.mark.parametrize("direction,tau", [("reverse", 1.0), ("forward", 2.0)])
def test_tail_samples_leave_reverse_and_tempered_kl_in_the_bucket_form(direction, tau):
    s, t, mask = torch.randn(3, 6, 30), torch.randn(3, 6, 30), _mask()
    sampled = SparseLogits.from_logits(t, 5, tail_samples=4, generator=torch.Generator().manual_seed(0))
    plain = SparseLogits(sampled.ids, sampled.logprobs, sampled.tail_logmass)
    assert torch.equal(kl_loss(s, sampled, mask, direction, tau), kl_loss(s, plain, mask, direction, tau))


# ----------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides,message", [
    ({"targets.cache_logits": "sparse"}, r"targets.cache_logits must be false, true, 'dense' or 'topk', got 'sparse'"),
    ({"targets.cache_logits": 1}, "targets.cache_logits must be bool or str"),
    ({"targets.top_k": 0}, "top_k must be a positive number, got 0"),
    ({"targets.top_k": -3}, "top_k must be a positive number"),
    ({"targets.mode": "cached"}, r"need teacher logits.*cache_logits = 'topk'"),
    ({"targets.tail_samples": -1}, r"targets.tail_samples must be a whole number >= 0 \(0 = none\), got -1"),
    ({"targets.tail_samples": 8, "targets.cache_logits": "dense"}, r"tail_samples = 8 refines a top-k cache"),
])
def test_bad_sparse_cache_config_is_refused_in_one_line(overrides, message):
    with pytest.raises(SemalignError, match=message) as err:
        load_align_config(None, {"objective.terms": {"kl": 1.0}, **overrides})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value,store", [(False, None), (True, "dense"), ("dense", "dense"), ("topk", "topk")])
def test_cache_logits_values(value, store):
    assert load_align_config(None, {"targets.cache_logits": value}).targets.logits_store == store


# ----------------------------------------------------------------------------------------------- the cache

@pytest.fixture(scope="module")
def tokens(tiny_pair):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, tiny_pair.student.cfg.d_vocab, (12, 16), generator=gen)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))


def make_cfg(tmp_path: Path, **overrides):
    base = {"run_dir": str(tmp_path / "run"), "progress": False, "report": False, "figures": False,
            "data.batch_size": 4, "data.diag_sequences": 4, "schedule.stage_steps": 2, "schedule.lr": 1e-2,
            "checkpoint_every": 1, "objective.terms": {"kl": 1.0}, "targets.mode": "cached",
            "targets.cache_logits": "topk", "targets.top_k": 8, "targets.shard_sequences": 3}
    return load_align_config(None, {**base, **overrides})


def run(cfg, tiny_pair, tokens, **kw):
    return align(cfg, tiny_pair, data=tokens, **kw)


def test_top_k_beyond_the_vocabulary_is_refused_before_the_cache_is_built(tmp_path, tiny_pair, tokens):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path, **{"targets.top_k": 1000, "targets.cache_dir": str(cache)})
    with pytest.raises(SemalignError, match="targets.top_k = 1000 exceeds the teacher's vocabulary of 384 tokens"):
        run(cfg, tiny_pair, tokens)
    assert not cache.exists()


def test_top_k_cache_holds_ids_log_probs_and_tail_mass(tmp_path, tiny_pair, tokens):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path, **{"targets.cache_dir": str(cache), "precision": "fp32"})  # fp16 storage error only
    trainer = Trainer(cfg, tiny_pair, data=tokens)
    meta = json.loads((cache / "meta.json").read_text())
    assert (meta["logits"], meta["top_k"]) == ("topk", 8)
    with safe_open(str(cache / "shard-00000.safetensors"), "pt") as f:
        shard = {k: f.get_tensor(k) for k in f.keys()}
    assert "logits" not in shard
    assert (shard["topk_ids"].dtype, shard["topk_logprobs"].dtype, shard["tail_logmass"].dtype) == \
        (torch.int32, torch.float16, torch.float16)
    per_token = sum(shard[k][0, 0].nbytes for k in ("topk_ids", "topk_logprobs", "tail_logmass"))
    assert per_token == 6 * 8 + 2
    batch = trainer.targets(tokens.tokens[:2], torch.arange(2))
    with torch.no_grad():
        teacher_logits = tiny_pair.teacher(tokens.tokens[:2]).float()
    logp, ref = F.log_softmax(teacher_logits, -1), SparseLogits.from_logits(teacher_logits, 8)
    got = batch.logits
    assert isinstance(got, SparseLogits)  # the tiny teacher is near-uniform: ids may swap among near-ties
    assert torch.allclose(logp.gather(-1, got.ids.long()), got.logprobs, atol=3e-3)
    assert (got.logprobs.amin(-1) >= ref.logprobs.amin(-1) - 3e-3).all()
    assert torch.allclose(got.tail_logmass, ref.tail_logmass, atol=3e-3)


def test_top_k_cache_with_another_top_k_mode_or_data_is_refused(tmp_path, tiny_pair, tokens):
    cache = tmp_path / "cache"
    over = {"targets.cache_dir": str(cache)}
    Trainer(make_cfg(tmp_path / "a", **over), tiny_pair, data=tokens)
    cases = [({"targets.top_k": 4}, tokens, r"holds the teacher's top 8 tokens per position, but this run asks for "
                                            r"targets.top_k = 4"),
             ({"targets.cache_logits": "dense"}, tokens, "holds topk teacher logits, but this run asks for dense"),
             ({}, TokenBatch(tokens.tokens.flip(0), tokens.mask), "another training data")]
    for i, (extra, data, message) in enumerate(cases):
        with pytest.raises(SemalignError, match=message) as err:
            Trainer(make_cfg(tmp_path / f"b{i}", **over, **extra), tiny_pair, data=data)
        assert "\n" not in str(err.value)
    # a run that reads no logits may use the cache's states
    Trainer(make_cfg(tmp_path / "c", **over, **{"objective.terms": {"relation": 1.0}, "targets.top_k": 4}),
            tiny_pair, data=tokens)


def test_top_k_cache_with_tail_samples_holds_the_draws_and_refuses_another_count(tmp_path, tiny_pair, tokens):
    cache = tmp_path / "cache"
    over = {"targets.cache_dir": str(cache), "precision": "fp32", "targets.tail_samples": 5}
    trainer = Trainer(make_cfg(tmp_path / "a", **over), tiny_pair,
                      data=tokens)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["tail_samples"] == 5 and meta["keys"][-2:] == ["tail_ids", "tail_logprobs"]
    with safe_open(str(cache / "shard-00000.safetensors"), "pt") as f:
        drawn, logprobs = f.get_tensor("tail_ids"), f.get_tensor("tail_logprobs")
    assert (drawn.dtype, logprobs.dtype, drawn.shape[-1]) == (torch.int32, torch.float16, 5)
    batch = trainer.targets(tokens.tokens[:2], torch.arange(2)).logits
    assert torch.equal(batch.tail_ids, drawn[:2])
    with torch.no_grad():
        logp = F.log_softmax(tiny_pair.teacher(tokens.tokens[:2]).float(), -1)
    assert torch.allclose(logp.gather(-1, batch.tail_ids.long()), batch.tail_logprobs, atol=3e-3)
    assert not (batch.tail_ids[..., :, None] == batch.ids[..., None, :]).any()
    with pytest.raises(SemalignError, match=r"holds 5 tail samples per position, but this run asks for "
                                            r"targets.tail_samples = 0"):
        Trainer(make_cfg(tmp_path / "b", **{**over, "targets.tail_samples": 0}), tiny_pair, data=tokens)
    shutil.rmtree(cache)  # rebuilt: the same draws (a generator seeded per shard)
    Trainer(make_cfg(tmp_path / "c", **over), tiny_pair, data=tokens)
    with safe_open(str(cache / "shard-00000.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("tail_ids"), drawn)


def test_full_top_k_cache_reproduces_online_kl(tmp_path, tiny_pair, tokens):
    over = {"schedule.stage_steps": 1}
    online = run(make_cfg(tmp_path / "on", **over, **{"targets.mode": "online"}), tiny_pair, tokens)
    cached = run(make_cfg(tmp_path / "off", **over, **{"targets.top_k": 384,
                                                      "targets.cache_dir": str(tmp_path / "cache")}),
                 tiny_pair, tokens)
    a = torch.tensor(online.metrics().query("kind == 'train'")["kl"].to_numpy())
    b = torch.tensor(cached.metrics().query("kind == 'train'")["kl"].to_numpy())
    assert torch.allclose(a, b, rtol=1e-2)  # fp16 log-probabilities


def test_cached_top_k_kl_run_trains_and_resumes(tmp_path, tiny_pair, tokens):
    over = {"targets.cache_dir": str(tmp_path / "cache"), "objective.options": {"kl": {"temperature": 2.0}}}
    before = clean_copy(tiny_pair.student, share_weights=False).state_dict()
    whole = run(make_cfg(tmp_path / "a", **over), tiny_pair, tokens)
    assert whole.finished
    assert any(not torch.equal(v, whole.student.state_dict()[k]) for k, v in before.items())
    train = whole.metrics().query("kind == 'train'")
    assert len(train) == 6 and torch.isfinite(torch.tensor(train["kl"].to_numpy())).all()
    first = run(make_cfg(tmp_path / "b", **over), tiny_pair, tokens, stop_after_steps=3)
    assert not first.finished
    resumed = run(make_cfg(tmp_path / "b", **over), tiny_pair, tokens)
    assert resumed.finished
    sa, sb = whole.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cols = ["step", "stage", "loss", "kl", "grad_norm"]
    assert whole.metrics().query("kind == 'train'")[cols].reset_index(drop=True).equals(
        resumed.metrics().query("kind == 'train'")[cols].reset_index(drop=True))
