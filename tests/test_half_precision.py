"""bf16 (and fp16) models end to end on the CPU: load, the trainer's copy check, analysis, training, evaluation.

Each half-precision number is compared with the same stage on the same checkpoint loaded in fp32 (what a user
who switches `dtype` sees: weight rounding plus half-precision compute). The tolerances are stated per quantity,
in units of bf16's unit roundoff u = 2⁻⁹ ≈ 2e-3 (fp16's is 2⁻¹¹, so fp16 meets them too); the differences measured
on the tiny pair when these tests were written are in brackets:
- residual states, relative (‖Δ‖/‖h‖) per layer: 15u = 3e-2 [bf16: 2e-3 at the embeddings to 1.2e-2 at the
  teacher's 6th block: rounding compounds with depth];
- CKA: 5e-3 absolute [5e-4]; semantic-basis columns: cosine >= 1 - 1e-4 [min 0.999995: the pinv runs in fp32
  on the bf16-rounded head]; transfer map, relative: 1e-2 [2.6e-3];
- fidelity cosines: 5e-3, KL: 2 % relative [1e-3 and 0.1 %]; top-1 agreements are not compared (a near-tie
  flips with any rounding: 2 of 67 tokens did);
- cross-entropy: 5e-3 nats [1.2e-4]; every logged training term over the steps of a run: 1e-2 absolute
  [<= 1e-3 on losses of 0.05-6];
- layer rankers: 10 % of each method's largest |score| [0.15 % (seeking) to 6.4 % (patch_denoise)].
"""

from __future__ import annotations

import json

import pytest
import torch

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch, tokenize
from semalign_lens.models.inspect import trainer_problem
from semalign_lens.models.load import load_model
from semalign_lens.models.pair import ModelPair
from semalign_lens.models.plain import clean_copy, underlying_hf
from semalign_lens.models.tiny import tiny_hf_pair
from semalign_lens.training import align, load_align_config

U = 2.0 ** -9  # bf16 unit roundoff
TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.sep)\n", "x = [i * i for i in range(9)]\n",
         "class A:\n    pass\n"]
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module")
def pairs():
    """The tiny pair loaded from one checkpoint in fp32, bf16 and fp16."""
    t, s, tok = tiny_hf_pair(0)
    return {name: ModelPair(load_model(t, tokenizer=tok, name="tiny-teacher", dtype=dtype),
                            load_model(s, tokenizer=tok, name="tiny-student", dtype=dtype))
            for name, dtype in {"float32": torch.float32, **HALF}.items()}


def _state(model) -> dict:
    return {k: (v.dtype, v.data_ptr()) for k, v in underlying_hf(model).state_dict().items()}


def test_copy_check_runs_in_fp32_and_still_refuses_a_wrong_rebuild(pairs, monkeypatch):
    """The copy check compares the plain copy with the bridge both upcast to fp32 (it refused every bf16 model at
    a 1e-3 relative error it compared in bf16), leaves every weight as it was, and still refuses a copy that
    computes something else, saying that rounding is not the cause."""
    import semalign_lens.models.plain as hf

    bf16 = pairs["bfloat16"]
    for model in (bf16.teacher, bf16.student):
        before = _state(model)
        assert trainer_problem(model, "m") is None
        assert _state(model) == before  # same dtypes, same storage: nothing upcast was left behind
        copy = clean_copy(model, share_weights=True)
        assert next(copy.parameters()).dtype == torch.bfloat16
        assert {p.data_ptr() for p in copy.parameters()} <= {v[1] for v in before.values()}  # still shared

    build = hf.skeleton

    def wrong(model, *args, **kwargs):  # a rebuild whose MLP uses another activation
        out = build(model, *args, **kwargs)
        for module in out.modules():
            if hasattr(module, "act_fn"):
                module.act_fn = torch.nn.GELU()
        return out

    monkeypatch.setattr(hf, "skeleton", wrong)
    problem = trainer_problem(bf16.student, "the student")
    assert problem is not None and "computes different logits" in problem
    assert "both were run in float32 from their bfloat16 weights, so this is not rounding" in problem


# TransformerLens's OLMo adapters compute their non-parametric norms in fp32 and hand that to bf16 linears
BRIDGE_FAILS_IN_HALF = ("olmo", "olmo2", "olmo3")


def test_every_family_passes_the_copy_check_in_bf16():
    """Each family of the architecture matrix (2 x 32 Llama sizes, its own tokenizer convention), loaded in bf16:
    the trainer's copy check passes (upcast one block at a time, so per-block paths of every family are found or
    the whole model is upcast), or, where TransformerLens's bridge itself cannot run in bf16, loading is refused
    naming the dtype and the fix."""
    from semalign_lens.models.tiny import FAMILIES, TinyArch, family_tokenizer, special_ids, tiny_family_model

    arch = TinyArch(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=64)
    for family in FAMILIES:
        tok = family_tokenizer(family)
        hf_model = tiny_family_model(family, arch, len(tok), seed=1, ids=special_ids(tok))
        if family in BRIDGE_FAILS_IN_HALF:
            with pytest.raises(SemalignError, match=r"fails on a forward pass in bfloat16 .*mixes float32 and "
                                                    r"bfloat16 tensors; load this model with dtype=torch.float32"):
                load_model(hf_model, tokenizer=tok, name=family, dtype=torch.bfloat16)
            continue
        model = load_model(hf_model, tokenizer=tok, name=family, dtype=torch.bfloat16)
        assert trainer_problem(model, family) is None, family


@pytest.mark.parametrize("dtype", list(HALF))
def test_analysis_in_half_precision_matches_fp32(pairs, dtype):
    """Capture, CKA, semantic bases (pinv in fp32 of the half-precision head), the transfer map, readouts,
    (transfer) fidelity and evaluation's cross-entropy, against the fp32 load (tolerances: module docstring)."""
    from semalign_lens.lens.capture import accumulated_resid
    from semalign_lens.lens.semantics import SemanticBasis, TransferMap, fidelity, transfer_fidelity
    from semalign_lens.lens.similarity import cka_matrix
    from semalign_lens.models.readout import Readout

    batch = tokenize(pairs["float32"].tokenizer, TEXTS)
    out = {}
    for name in ("float32", dtype):
        pair = pairs[name]
        stacks = [accumulated_resid(m, batch) for m in (pair.teacher, pair.student)]
        real = (stacks[0][0] != 0).any(-1)  # the doc-start embedding is the zero padding_idx row
        stacks = [s[:, real] for s in stacks]
        bases = [SemanticBasis.from_model(m, cache=False, dtype=getattr(torch, name)) for m in (pair.teacher,
                                                                                               pair.student)]
        transfer = TransferMap(*bases, kind="logits")
        readouts = [Readout.from_model(m) for m in (pair.teacher, pair.student)]
        out[name] = {
            "stacks": stacks, "cka": cka_matrix(*stacks), "S": [b.S for b in bases], "M": transfer.matrix,
            "fid": fidelity({3: stacks[0][4]}, bases[0], readouts[0], ["paper", "logits"], progress=False),
            "tf": transfer_fidelity({3: stacks[0][4]}, transfer, *readouts, student_states={3: stacks[1][2]},
                                    progress=False),
            "ce": ev.cross_entropy(pair.student, batch, precision="fp32"),
            "readout_dtype": readouts[0].W_U.dtype}
    ref, got = out["float32"], out[dtype]
    assert got["readout_dtype"] == torch.float32  # log_softmax of the readouts in fp32
    for want, have in zip(ref["stacks"], got["stacks"], strict=True):
        assert have.dtype == torch.float32
        for layer in range(len(want)):
            assert float((have[layer] - want[layer]).norm() / want[layer].norm()) < 15 * U
    assert float((got["cka"] - ref["cka"]).abs().max()) < 5e-3
    for want, have in zip(ref["S"], got["S"], strict=True):
        assert have.dtype == torch.float32 and float((want * have).sum(0).min()) > 1 - 1e-4
    assert float((got["M"] - ref["M"]).norm() / ref["M"].norm()) < 1e-2
    for frame in ("fid", "tf"):
        a, b = ref[frame], got[frame]
        assert list(a["metric"]) == list(b["metric"])
        for metric, va, vb in zip(a["metric"], a["value"], b["value"], strict=True):
            if metric.startswith("cos"):
                assert vb == pytest.approx(va, abs=5e-3), metric
            elif metric == "kl":
                assert vb == pytest.approx(va, rel=2e-2, abs=1e-6), metric
    assert got["ce"] == pytest.approx(ref["ce"], abs=5e-3)


def test_info_rankers_and_pairing_report_in_bf16(pairs, tmp_path):
    """`semalign info`'s stage table says every stage runs; the layer rankers' scores are within 10 % of each
    method's largest |score| of the fp32 load's [measured: laten 0.6 %, grad_x_act 0.7 %, ablate_zero 1 %, seeking
    0.15 %, patch_denoise 6.4 %: a patched log-prob difference at logits of ~10 moves by bf16's logit spacing];
    the pairing report runs."""
    from semalign_lens.data.tasks import fact_task, tokenize_pairs
    from semalign_lens.lens.attribution import rank_layers
    from semalign_lens.models.readiness import stage_readiness
    from semalign_lens.reports.pairing import pairing_report

    bf16 = pairs["bfloat16"]
    assert all(problem is None for problem in stage_readiness(bf16.teacher, bf16.student).values())
    prompts = tokenize_pairs(bf16.tokenizer, fact_task(tokenizer=bf16.tokenizer, n=8, seed=0), align="left_pad")
    methods = ["grad_x_act", "patch_denoise", "ablate_zero", "laten", "seeking"]
    want, got = (rank_layers(pairs[name].teacher, prompts, methods=methods, n_boot=10, progress=False)
                 for name in ("float32", "bfloat16"))
    for method in methods:
        a, b = (frame[frame["method"] == method]["score"].to_numpy() for frame in (want, got))
        assert abs(a - b).max() <= 0.1 * abs(a).max(), method
    out = pairing_report(bf16.teacher, bf16.student, "facts", tmp_path / "p.html", n_prompts=4,
                         methods=["grad_x_act"], cka_prompts=4, cka_tokens=64, fidelity_tokens=32, n_boot=10,
                         progress=False)
    assert out.fidelity["value"].notna().all() and (tmp_path / "p.html").exists()


def _data(n: int = 12) -> TokenBatch:
    ids = torch.randint(1, 384, (n, 16), generator=torch.Generator().manual_seed(0))
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))


def _cfg(run_dir, **overrides):
    base = {"run_dir": str(run_dir), "progress": False, "report": False, "figures": False, "data.batch_size": 4,
            "data.diag_sequences": 4, "schedule.stage_steps": 2, "schedule.lr": 1e-3, "pairing.student_layers": [0, 2],
            "objective.terms": {"relation": 1.0, "kl": 1.0, "ce": 0.5}}
    return load_align_config(None, {**base, **overrides})


def _terms(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("relation", "kl", "ce", "loss") if k in r} for r in lines
            if r["kind"] in ("train", "heldout")]


@pytest.mark.parametrize("adapter,targets", [("full", {"targets.mode": "online"}),
                                             ("lora", {"targets.mode": "cached", "targets.cache_logits": "topk",
                                                       "targets.top_k": 16})], ids=["full-online", "lora-cached"])
def test_a_bf16_pair_trains_like_the_fp32_pair(pairs, tmp_path, adapter, targets):
    """Two stages of relation + kl + ce: every logged term of the bf16 run within 1e-2 of the fp32 run's; the
    trained bf16 student is saved in bf16 and reloads."""
    data = _data()
    runs = {}
    for name in ("float32", "bfloat16"):
        cfg = _cfg(tmp_path / name, **{"schedule.adapter": adapter, **targets,
                                       "targets.cache_dir": str(tmp_path / f"cache-{name}")})
        result = align(cfg, pairs[name], data=data)
        assert result.finished
        runs[name] = _terms(result.run_dir)
    assert len(runs["float32"]) == len(runs["bfloat16"]) > 0
    for want, got in zip(runs["float32"], runs["bfloat16"], strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-2), key
    saved = json.loads((result.student_path / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["precision"]["model_dtype"] == {"teacher": "bfloat16", "student": "bfloat16"}
    assert provenance["precision"]["autocast"] == "bfloat16"
    assert next(load_model(result.student_path, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_a_half_precision_stage_trains_fp32_master_weights(pairs, tmp_path):
    """While a stage trains, its parameters are fp32 (AdamW's ~1e-5 relative updates at lr 1e-5 would round away
    in bf16, whose spacing is 2⁻⁸ relative); the stage's update is there; closed stages are bf16 again."""
    from semalign_lens.models.plain import parts

    pair = pairs["bfloat16"]
    before = clean_copy(pair.student, share_weights=False)
    cfg = _cfg(tmp_path / "run", **{"schedule.lr": 1e-5, "objective.terms": {"relation": 1.0}})
    partial = align(cfg, pair, data=_data(), stop_after_steps=1)
    layer = parts(partial.student).layers[0]  # stage 0 (student layer 0) is open after one of its two steps
    old = parts(before).layers[0]
    assert {p.dtype for p in layer.parameters()} == {torch.float32}
    changed = [n for n, p in layer.named_parameters() if not torch.equal(p, old.get_parameter(n).float())]
    assert changed  # the update is held in fp32 ...
    rounded = [n for n in changed if torch.equal(layer.get_parameter(n).to(torch.bfloat16), old.get_parameter(n))]
    assert rounded  # ... where bf16 would have lost it: this lr's update rounds back to the bf16 weights
    assert {p.dtype for p in parts(partial.student).layers[2].parameters()} == {torch.bfloat16}
    done = align(cfg, pair, data=_data())  # resumes, finishes both stages
    assert done.finished and {p.dtype for p in done.student.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", list(HALF))
def test_align_config_dtype_loads_both_sources_in_it(tmp_path, dtype):
    """`dtype` in an align config: the trainer loads teacher and student from their directories in it."""
    from tests.training.trainer_helpers import _cli_config

    path = _cli_config(tmp_path)
    result = align(load_align_config(path, {"dtype": dtype, "run_dir": str(tmp_path / "run"),
                                            "schedule.stage_steps": 1, "figures": False}))
    assert result.finished
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["precision"]["model_dtype"] == {"teacher": dtype, "student": dtype}
    with pytest.raises(SemalignError, match=r"AlignConfig.dtype must be one of \('float32', 'bfloat16', 'float16'\)"):
        load_align_config(path, {"dtype": "int8"}).validate()


@pytest.mark.slow
def test_the_embedded_pair_in_bf16_loads_passes_the_copy_check_and_trains(tmp_path):
    """stdlib-student and smollm2-135m (30 blocks, whose bf16 forward differs from fp32 by 1.3 relative on the
    probe) in bf16: both pass the copy check and two training steps run."""
    student = load_model("stdlib-student", dtype=torch.bfloat16)
    teacher = load_model("smollm2-135m", dtype=torch.bfloat16)
    for role, model in (("teacher", teacher), ("student", student)):
        assert next(model.parameters()).dtype == torch.bfloat16
        assert trainer_problem(model, role, trained=role == "student") is None
    ids = torch.randint(1, 49152, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = _cfg(tmp_path / "run", **{"data.batch_size": 2, "data.diag_sequences": 2, "schedule.stage_steps": 2,
                                    "pairing.student_layers": [5], "schedule.adapter": "lora"})
    result = align(cfg, ModelPair(teacher, student), data=TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool)))
    assert result.finished
    terms = _terms(result.run_dir)
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in terms)
