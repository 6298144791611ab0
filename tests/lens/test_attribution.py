"""Layer rankers: a planted-layer model, independent references for each method, statistics, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tasks import PromptPair, Task, answer_logprob, fact_task, tokenize_pairs
from semalign_lens.lens import attribution as A
from semalign_lens.models.load import load_model
from semalign_lens.models.readout import logit_lens
from semalign_lens.models.tiny import TinyArch, tiny_hf_model, tiny_tokenizer

SUBJECTS = {" self": " def", " other": " the", " count": " and", " for": " return"}  # single tiny-BPE tokens
TEMPLATES = ("x ={subject}:", "y ={subject}:")


def _one_token(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def planted_hf(layer: int, n_layers: int = 4, others: float = 0.0, seed: int = 0, gain: float = 60.0):
    """A tiny Llama in which block `layer` alone maps subject -> answer.

    Block `layer`: queries zeroed (uniform causal attention over the prefix) and an OV circuit of rank 4 in
    head 0 writing c * unembed(answer(s)) for each subject token s; its MLP writes nothing. Every other block's
    writes (o_proj, down_proj) are scaled by `others` (0: they write exactly nothing).
    """
    tok = tiny_tokenizer()
    hf = tiny_hf_model(TinyArch(n_layers, 64, 4, 2, 128), len(tok), seed)
    with torch.no_grad():
        for i, block in enumerate(hf.model.layers):
            if i != layer:
                block.self_attn.o_proj.weight.mul_(others)
                block.mlp.down_proj.weight.mul_(others)
        block = hf.model.layers[layer]
        emb, unemb = hf.model.embed_tokens.weight, hf.lm_head.weight
        keys = torch.stack([emb[_one_token(tok, s)] for s in SUBJECTS])
        keys = keys / keys.pow(2).mean(-1, keepdim=True).sqrt() * block.input_layernorm.weight  # what attn reads
        outs = torch.stack([unemb[_one_token(tok, a)] for a in SUBJECTS.values()])
        outs = gain * outs / outs.norm(dim=-1, keepdim=True)
        block.self_attn.q_proj.weight.zero_()
        block.self_attn.v_proj.weight.zero_()
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
        block.self_attn.v_proj.weight[: len(SUBJECTS)] = keys / keys.pow(2).sum(-1, keepdim=True)
        block.self_attn.o_proj.weight[:, : len(SUBJECTS)] = outs.T
    return hf, tok


def planted_task() -> Task:
    pairs = [PromptPair(t.format(subject=s), t.format(subject=c), SUBJECTS[s], SUBJECTS[c], id=f"{s}->{c}|{t}")
             for t in TEMPLATES for s, c in itertools.permutations(SUBJECTS, 2)]
    return Task("planted", pairs)


@pytest.fixture(scope="module")
def planted():
    """(model, batch) with the answer carried by block 2 of 4 only."""
    hf, tok = planted_hf(2)
    return load_model(hf, tokenizer=tok, name="planted-2"), tokenize_pairs(tok, planted_task())


@pytest.fixture(scope="module")
def teacher_batch(tiny_pair):
    tok = tiny_pair.teacher.tokenizer
    return tokenize_pairs(tok, fact_task(tokenizer=tok, types=["country_capital", "element_symbol"], n=10), align="drop")


def pivot(df: pd.DataFrame) -> pd.DataFrame:
    return df.pivot(index="layer", columns="method", values="score")


# ------------------------------------------------------------------------------------------ planted model


def test_planted_layer_closed_form(planted):
    model, batch = planted
    with torch.no_grad():
        clean = answer_logprob(model(batch.clean.tokens), batch)
        corrupted = answer_logprob(model(batch.corrupted.tokens), batch)
    assert float((clean - corrupted).mean()) > 2.0  # the planted circuit really carries the answer
    scores = pivot(A.rank_layers(model, batch, progress=False, n_boot=200))
    dead = scores.drop(index=2)
    assert np.allclose(dead.to_numpy(), 0.0, atol=1e-6)  # blocks that write nothing score exactly 0
    assert scores.loc[2, "patch_denoise"] == pytest.approx(1.0, abs=1e-5)  # restores the whole gap
    assert scores.loc[2, "patch_noise"] == pytest.approx(1.0, abs=1e-5)  # and destroys it
    for method in A.METHODS:
        assert scores[method].idxmax() == 2 and scores.loc[2, method] > 0, method
    # first-order methods see little: the final RMSNorm is scale-invariant and the planted write dominates the
    # residual, so scaling it barely moves the output (why causal methods are offered beside the paper's)
    for method in (*A.PATCH_METHODS, *A.ABLATION_METHODS, "laten", "seeking"):
        assert scores.loc[2, method] > 0.5, method


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_planted_layer_ranked_first_among_live_layers(layer):
    hf, tok = planted_hf(layer, others=0.05, seed=1)
    model = load_model(hf, tokenizer=tok, name=f"planted-{layer}")
    batch = tokenize_pairs(tok, planted_task())
    df = A.rank_layers(model, batch, methods=A.PATCH_METHODS + A.ABLATION_METHODS, progress=False, n_boot=200)
    scores = pivot(df)
    assert (scores.drop(index=layer).abs() > 0).any().all()  # the other blocks do write something
    for method in A.PATCH_METHODS + A.ABLATION_METHODS:
        assert scores[method].idxmax() == layer, (method, scores[method].round(3).tolist())
        top = df[(df.method == method) & (df.layer == layer)].iloc[0]
        assert top["rank"] == 1 and top["ci_low"] > 0


# ------------------------------------------------------------------------------------------ references


def test_the_final_state_read_at_its_own_scale_is_the_models_output(tiny_pair, teacher_batch):
    model = tiny_pair.teacher
    run = A._run(model, teacher_batch.clean.tokens)
    final = run.stream()[-1]
    read = logit_lens(model, final, final=final)  # the final residual at its own scale: the model's output
    torch.testing.assert_close(read.log_softmax(-1), run.logits.log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_engines_agree_with_transformer_lens_patching(tiny_pair, teacher_batch):
    model = tiny_pair.teacher
    kwargs = dict(progress=False, n_boot=50, batch_size=4)
    fast = A.intervention_scan(model, teacher_batch, engine="fast", **kwargs)
    ref = A.intervention_scan(model, teacher_batch, engine="transformer_lens", **kwargs)
    np.testing.assert_allclose(fast["score"] * fast["gap"].where(fast.unit.str.startswith("fraction"), 1.0),
                               ref["score"] * ref["gap"].where(ref.unit.str.startswith("fraction"), 1.0),
                               atol=2e-4)


def test_fast_engine_falls_back_to_full_logits_when_the_head_differs(tiny_pair, teacher_batch, monkeypatch):
    """A head the logit-lens readout does not reproduce (e.g. soft-capped logits) must not change the scores."""
    from semalign_lens.models import readout

    model = tiny_pair.teacher
    kwargs = dict(methods=["patch_denoise", "ablate_zero"], progress=False, n_boot=20, batch_size=4)
    ref = A.intervention_scan(model, teacher_batch, **kwargs)
    real = readout.Readout.from_model

    def doubled(cls, m):
        head = real(m)
        return lambda h: head(h) * 2.0  # not what the model computes

    monkeypatch.setattr(readout.Readout, "from_model", classmethod(doubled))
    np.testing.assert_allclose(A.intervention_scan(model, teacher_batch, **kwargs)["score"], ref["score"], atol=1e-5)


def test_grad_x_act_is_the_derivative_along_the_write(tiny_pair, teacher_batch):
    """Σ w·∇M = d/dα M(resid_pre + α·write) at α = 1, by autograd on α (an independent mechanism)."""
    model = tiny_pair.teacher
    df = A.grad_x_activation(model, teacher_batch, progress=False, n_boot=10)
    signed = df[df.method == "grad_x_act"].set_index("layer")["score"]
    tokens = teacher_batch.clean.tokens
    for layer in range(model.cfg.n_layers):
        alpha = torch.ones(len(teacher_batch), 1, 1, requires_grad=True)
        pre: dict[str, torch.Tensor] = {}
        hooks = [(f"blocks.{layer}.hook_in", lambda x, hook, pre=pre: pre.setdefault("x", x)),
                 (f"blocks.{layer}.hook_out", lambda x, hook, pre=pre, a=alpha: pre["x"] + a * (x - pre["x"]))]
        metric = answer_logprob(model.run_with_hooks(tokens, fwd_hooks=hooks), teacher_batch)
        (grad,) = torch.autograd.grad(metric.sum(), alpha)
        assert signed[layer] == pytest.approx(float(grad.mean()), rel=1e-3, abs=1e-4)


def test_seeking_matches_hf_reference(tiny_pair, tiny_hf, teacher_batch):
    model, hf = tiny_pair.teacher, tiny_hf[0]
    got = A.parameter_sensitivity(model, teacher_batch, progress=False, n_boot=10).set_index("layer")["score"]
    per_prompt = []
    for i in range(len(teacher_batch)):
        one = teacher_batch.select([i])
        loss = -answer_logprob(hf(one.clean.tokens).logits, one).sum()
        params = [list(layer.parameters()) for layer in hf.model.layers]
        grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
        it = iter(grads)
        per_prompt.append([sum(float((p.detach() * next(it)).abs().sum()) for p in ps) for ps in params])
    np.testing.assert_allclose(got.to_numpy(), np.mean(per_prompt, 0), rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi3"])
def test_seeking_counts_each_fused_weight_once(family):
    """Bridges over fused qkv weights list the fused parameter beside its split aliases; the sensitivity must
    equal the plain HF model's, where each weight is one parameter."""
    from semalign_lens.models.plain import parts
    from semalign_lens.models.tiny import tiny_family_model

    tok = tiny_tokenizer()
    hf = tiny_family_model(family, TinyArch(n_layers=3, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64), len(tok), 0)
    batch = tokenize_pairs(tok, fact_task(tokenizer=tok, n=3, seed=0), align="left_pad")
    got = A.parameter_sensitivity(load_model(hf, tokenizer=tok, name=f"tiny-{family}"), batch, progress=False,
                                  n_boot=10).set_index("layer")["score"]
    per_prompt = []
    for i in range(len(batch)):
        one = batch.select([i])
        loss = -answer_logprob(hf(one.clean.tokens).logits, one).sum()
        params = [list(layer.parameters()) for layer in parts(hf).layers]
        grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
        it = iter(grads)
        per_prompt.append([sum(float((p.detach() * next(it)).abs().sum()) for p in ps) for ps in params])
    np.testing.assert_allclose(got.to_numpy(), np.mean(per_prompt, 0), rtol=1e-4)


def test_laten_telescopes_to_final_minus_embedding(tiny_pair, teacher_batch):
    """Σ_l [log p(y|post_l) − log p(y|pre_l)] = log p(y|final) − log p(y|embedding), the embedding read by the
    cached logit lens (the final residual's norm scale), as the frame's unit says."""
    model = tiny_pair.teacher
    df = A.logprob_increase(model, teacher_batch, progress=False, n_boot=10)
    got = df["score"].sum()
    assert set(df.unit) == {"log-prob increase (cached logit lens)"}
    run = A._run(model, teacher_batch.clean.tokens)
    stream = run.stream()
    final = answer_logprob(run.logits, teacher_batch)
    embed = answer_logprob(logit_lens(model, stream[0], final=stream[-1]), teacher_batch)
    assert got == pytest.approx(float((final - embed).mean()), rel=1e-4)


# ------------------------------------------------------------------------------------------ statistics


def test_summarise_closed_forms():
    values = np.array([[1.0, 2.0, 3.0]] * 5)
    df = A.summarise("m", "x", values, n_boot=100, seed=0)
    assert df["score"].tolist() == [1.0, 2.0, 3.0]
    assert np.allclose(df["ci_low"], df["score"]) and np.allclose(df["ci_high"], df["score"])
    assert df["rank"].tolist() == [3, 2, 1] and df["p_top"].tolist() == [0.0, 0.0, 1.0]
    ratio = A.summarise("m", "x", np.array([[1.0], [3.0]]), denom=np.array([2.0, 6.0]), n_boot=100)
    assert ratio["score"].iloc[0] == pytest.approx(0.5)  # ratio of means, not mean of ratios
    assert list(df.columns) == A.COLUMNS
    noisy = A.summarise("m", "x", np.random.default_rng(0).normal(size=(40, 3)), n_boot=500, seed=1)
    again = A.summarise("m", "x", np.random.default_rng(0).normal(size=(40, 3)), n_boot=500, seed=1)
    pd.testing.assert_frame_equal(noisy, again)  # seeded
    assert (noisy["ci_low"] < noisy["score"]).all() and (noisy["score"] < noisy["ci_high"]).all()
    assert noisy["p_top"].sum() == pytest.approx(1.0)


def test_rank_agreement_kendall():
    rows = [{"method": m, "layer": i, "score": s} for m, scores in
            {"a": [1, 2, 3, 4], "b": [2, 4, 6, 8], "c": [4, 3, 2, 1], "d": [1, 1, 1, 1]}.items()
            for i, s in enumerate(scores)]
    table = A.rank_agreement(pd.DataFrame(rows))
    assert table.loc["a", "b"] == pytest.approx(1.0) and table.loc["a", "c"] == pytest.approx(-1.0)
    assert np.isnan(table.loc["a", "d"])
    long = A.rank_agreement(pd.DataFrame(rows), with_pvalues=True)
    assert set(long.columns) == {"method_a", "method_b", "tau", "pvalue"}
    assert A.top_layers(pd.DataFrame(rows).assign(rank=lambda d: d.groupby("method")["score"].rank(
        ascending=False, method="first").astype(int)), "a", 2) == [3, 2]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("call", [
    lambda m, b: A.grad_x_activation(m, b, progress=False),
    lambda m, b: A.activation_patching(m, b, progress=False),
    lambda m, b: A.activation_patching(m, b, engine="transformer_lens", progress=False),
    lambda m, b: A.ablation(m, b, progress=False),
    lambda m, b: A.parameter_sensitivity(m, b, progress=False),
    lambda m, b: A.logprob_increase(m, b, progress=False),
    lambda m, b: A.rank_layers(m, b, progress=False),
])
def test_training_mode_is_refused(planted, call):
    hf, tok = planted_hf(1, n_layers=2)
    model = load_model(hf, tokenizer=tok, name="train-mode")
    model.train()
    with pytest.raises(SemalignError, match=r"needs the model in eval mode.*call model.eval\(\)"):
        call(model, planted[1])


def test_corruption_without_effect_and_small_batches_are_refused(planted):
    hf, tok = planted_hf(0, n_layers=2, others=0.0)
    with torch.no_grad():
        hf.model.layers[0].self_attn.o_proj.weight.zero_()  # no block writes anything: output ignores the subject
    model = load_model(hf, tokenizer=tok, name="dead")
    batch = planted[1]
    with pytest.raises(SemalignError, match="corruption does not change the metric"):
        A.activation_patching(model, batch, progress=False)
    zero = A.ablation(model, batch, kinds=["zero"], progress=False, n_boot=10)
    assert np.allclose(zero["score"], 0.0)
    with pytest.raises(SemalignError, match="at least 2 prompt pairs"):
        A.grad_x_activation(model, batch.select([0]), progress=False)
    with pytest.raises(SemalignError, match="unknown method"):
        A.rank_layers(model, batch, methods=["grad_x_act", "magic"], progress=False)
    with pytest.raises(SemalignError, match="kinds must be"):
        A.ablation(model, batch, kinds=["noise"], progress=False)
    with pytest.raises(SemalignError, match="PairBatch"):
        A.grad_x_activation(model, batch.clean, progress=False)


def test_patching_maps_equal_a_hand_written_patch(tiny_pair, capfd):
    """Each cell of the [layer, pos] and [layer, head] maps (TransformerLens's patching functions) equals the
    recovery of one hand-written hook that copies the clean activation into the corrupted run."""
    from semalign_lens.lens.patching import patching_maps
    from semalign_lens.reports.plots import signed_heatmap

    model = tiny_pair.teacher
    batch = tokenize_pairs(tiny_pair.tokenizer, fact_task(tokenizer=tiny_pair.tokenizer, n=8, seed=0), align="left_pad")
    maps = patching_maps(model, batch, max_pairs=4, progress=False)
    assert "it/s" not in capfd.readouterr().err  # TransformerLens's own bars are off too
    same = [i for i in range(len(batch)) if torch.equal(batch.clean.mask[i], batch.corrupted.mask[i])][:4]
    sub = batch.select(same)
    with torch.no_grad():
        _, cache = model.run_with_cache(sub.clean.tokens)
        clean = answer_logprob(model(sub.clean.tokens), sub).mean()
        corrupted = answer_logprob(model(sub.corrupted.tokens), sub).mean()

        def recovered(hook_name, index):
            def patch(x, hook):
                x = x.clone()
                x[index] = cache[hook_name][index]
                return x
            logits = model.run_with_hooks(sub.corrupted.tokens, fwd_hooks=[(hook_name, patch)])
            return float((answer_logprob(logits, sub).mean() - corrupted) / (clean - corrupted))

        assert maps["position"].loc[2, 3] == pytest.approx(recovered("blocks.2.hook_resid_pre", (slice(None), 3)),
                                                           abs=1e-4)
        assert maps["head"].loc[1, 2] == pytest.approx(recovered("blocks.1.attn.hook_z", (slice(None), slice(None), 2)),
                                                       abs=1e-4)
    assert maps["position"].shape == (model.cfg.n_layers, sub.clean.tokens.shape[1])
    assert maps["head"].shape == (model.cfg.n_layers, model.cfg.n_heads) and maps["head"].attrs["pairs"] == len(sub)
    fig = signed_heatmap(maps["position"].to_numpy(), list(maps["position"].columns), list(maps["position"].index))
    assert fig.layout.coloraxis.cmid is None and fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax
