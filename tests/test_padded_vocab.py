"""Padded vocabularies: one tokenizer, two heads padded beyond it to different sizes (as Qwen2.5-7B's 152,064 and
1.5B's 151,936 rows pad one 151,665-token tokenizer), through every stage.

The reference is the pair's *unpadded twin*: the same models cut to the tokenizer's rows (`resize_token_embeddings`).
Padded rows are no tokens (`models.vocab_rows`), so every stage must give the twin's numbers; the padded rows hold
random weights like the others (`zoo.tiny.tiny_padded_hf_pair`), so a stage that read them would not.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch, tokenize
from semalign_lens.models.load import head_rows, load_model, vocab_rows
from semalign_lens.models.pair import ModelPair, check_pair_sources
from semalign_lens.models.readiness import stage_readiness
from semalign_lens.models.tiny import (
    TINY_PADDING,
    TINY_STUDENT,
    tiny_hf_model,
    tiny_padded_hf_pair,
    tiny_tokenizer,
)
from semalign_lens.training import align, load_align_config

V = len(tiny_tokenizer())  # 384 real tokens; heads of 384 + 64 and 384 + 16 rows
TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.sep)\n", "x = [i * i for i in range(9)]\n"]


def _cut(hf, rows: int):
    twin = copy.deepcopy(hf)
    twin.resize_token_embeddings(rows)  # keeps rows 0..rows-1 of the embedding and of the (untied) head
    return twin


@pytest.fixture(scope="module")
def hf_pair():
    return tiny_padded_hf_pair(0)


@pytest.fixture(scope="module")
def padded(hf_pair):
    t, s, tok = hf_pair
    return ModelPair(load_model(t, tokenizer=tok, name="tiny-teacher-padded"),
                     load_model(s, tokenizer=tok, name="tiny-student-padded"))


@pytest.fixture(scope="module")
def twin(hf_pair):
    t, s, tok = hf_pair
    return ModelPair(load_model(_cut(t, V), tokenizer=tok, name="tiny-teacher-twin"),
                     load_model(_cut(s, V), tokenizer=tok, name="tiny-student-twin"))


def test_pairs_are_compared_by_tokenizer_not_by_head_rows(padded, hf_pair, tmp_path):
    t, s, tok = hf_pair
    assert (head_rows(padded.teacher), head_rows(padded.student)) == (V + TINY_PADDING[0], V + TINY_PADDING[1])
    assert vocab_rows(padded.teacher) == vocab_rows(padded.student) == V
    # info: every stage of the pair can run
    assert all(problem is None for problem in stage_readiness(padded.teacher, padded.student).values())
    # another tokenizer of 400 tokens under a 400-row head (the padded student's row count) is still refused
    other_tok = tiny_tokenizer(vocab_size=400)
    other_hf = tiny_hf_model(TINY_STUDENT, len(other_tok), 5)
    other = load_model(other_hf, tokenizer=other_tok, name="other-tokenizer")
    assert head_rows(other) == head_rows(padded.student)
    with pytest.raises(SemalignError, match="teacher tiny-teacher-padded has 384 tokens, student other-tokenizer has "
                                            "400"):
        ModelPair(padded.teacher, other)
    # before loading, from the saved directories: head sizes differ, tokenizers agree -> accepted
    for name, model, tokenizer in (("teacher", t, tok), ("student", s, tok), ("other", other_hf, other_tok)):
        model.save_pretrained(str(tmp_path / name))
        tokenizer.save_pretrained(str(tmp_path / name))
    assert check_pair_sources(str(tmp_path / "teacher"), str(tmp_path / "student")) == (6, 3)
    with pytest.raises(SemalignError, match="has 384 tokens, student .*other has 400.*intersection"):
        check_pair_sources(str(tmp_path / "teacher"), str(tmp_path / "other"))


def test_analysis_stages_read_the_real_rows_only(padded, twin):
    """Capture, CKA, semantic bases, the transfer map, readouts and (transfer) fidelity equal the twin's."""
    from semalign_lens.lens.capture import accumulated_resid, capture
    from semalign_lens.lens.semantics import (
        SemanticBasis,
        TransferMap,
        fidelity,
        live_head_tokens,
        transfer_fidelity,
    )
    from semalign_lens.lens.similarity import cka_matrix
    from semalign_lens.models.readout import Readout

    batch = tokenize(padded.tokenizer, TEXTS)
    cap, cap_twin = (capture(p.teacher, batch, [5], progress=False).tokens_of("resid_post", 5) for p in (padded, twin))
    torch.testing.assert_close(cap, cap_twin)
    stacks = {name: [accumulated_resid(m, batch) for m in (p.teacher, p.student)]
              for name, p in (("padded", padded), ("twin", twin))}
    real = (stacks["padded"][0][0] != 0).any(-1)  # the doc-start token's embedding is the zero padding_idx row
    stacks = {name: [stack[:, real] for stack in pair] for name, pair in stacks.items()}
    torch.testing.assert_close(cka_matrix(*stacks["padded"]), cka_matrix(*stacks["twin"]))

    keep, left_out = live_head_tokens(padded.teacher, padded.student)
    assert torch.equal(keep, torch.arange(V)) and left_out.numel() == 0
    bases = {name: [SemanticBasis.from_model(m, cache=False) for m in (p.teacher, p.student)]
             for name, p in (("padded", padded), ("twin", twin))}
    for b, b_twin in zip(bases["padded"], bases["twin"], strict=True):
        assert b.n_tokens == V and torch.equal(b.token_ids, torch.arange(V))
        torch.testing.assert_close(b.S, b_twin.S, atol=1e-5, rtol=1e-4)
    maps = {name: TransferMap(*bases[name], kind="logits") for name in bases}  # heads of 448 and 400 rows: one map
    torch.testing.assert_close(maps["padded"].matrix, maps["twin"].matrix, atol=1e-5, rtol=1e-4)

    readouts = {name: [Readout.from_model(m) for m in (p.teacher, p.student)] for name, p in (("padded", padded),
                                                                                             ("twin", twin))}
    assert readouts["padded"][0].W_U.shape == (64, V)
    h_t, h_s = stacks["padded"][0][4], stacks["padded"][1][2]
    for name in ("padded", "twin"):
        readouts[name].append(fidelity({3: h_t}, bases[name][0], readouts[name][0], ["paper", "logits"],
                                       progress=False))
        readouts[name].append(transfer_fidelity({3: h_t}, maps[name], *readouts[name][:2],
                                                student_states={3: h_s}, progress=False))
    for frame, frame_twin in ((readouts["padded"][2], readouts["twin"][2]), (readouts["padded"][3], readouts["twin"][3])):
        assert frame["value"].notna().all()
        assert frame["value"].to_numpy() == pytest.approx(frame_twin["value"].to_numpy(), rel=1e-4, abs=1e-5)
    # the readout of all 448 teacher rows would put mass on padding: the check above can fail
    full = Readout.from_model(padded.teacher).__class__(W_U=padded.teacher.W_U.detach(), norm="rms",
                                                        weight=readouts["padded"][0].weight, eps=readouts["padded"][0].eps)
    mass = torch.softmax(full(h_t), -1)[:, V:].sum(-1).mean()
    assert mass > 0.05


def test_rankers_read_the_real_rows_only(padded, twin):
    """The log-prob metric's softmax (gradient and patching rankers) and LaTen's readout: the twin's scores."""
    from semalign_lens.data.tasks import fact_task, tokenize_pairs
    from semalign_lens.lens.attribution import rank_layers

    prompts = tokenize_pairs(padded.tokenizer, fact_task(tokenizer=padded.tokenizer, n=4, seed=0), align="left_pad")
    scores = [rank_layers(p.teacher, prompts, methods=["grad_x_act", "patch_denoise", "laten"], n_boot=10,
                          progress=False) for p in (padded, twin)]
    assert scores[0]["score"].notna().all()
    assert scores[0]["score"].to_numpy() == pytest.approx(scores[1]["score"].to_numpy(), rel=1e-4, abs=1e-6)


def test_pairing_report_on_a_padded_pair(padded, tmp_path):
    from semalign_lens.reports.pairing import pairing_report

    out = pairing_report(padded.teacher, padded.student, "facts", tmp_path / "p.html", n_prompts=4,
                         methods=["grad_x_act"], cka_prompts=4, cka_tokens=64, fidelity_tokens=32, n_boot=10,
                         progress=False)
    assert out.fidelity is not None and out.fidelity["value"].notna().all()
    assert (tmp_path / "p.html").exists() and "left out of both semantic bases" not in (tmp_path / "p.html").read_text()


def _cfg(tmp_path, name: str, **overrides):
    base = {"run_dir": str(tmp_path / name), "progress": False, "report": False, "figures": False, "seed": 0,
            "data.batch_size": 4, "data.diag_sequences": 4, "schedule.stage_steps": 1, "schedule.lr": 1e-2,
            "pairing.student_layers": [0, 2], "objective.terms": {"relation": 1.0, "kl": 1.0, "ce": 0.5}}
    return load_align_config(None, {**base, **overrides})


def _records(run_dir) -> list[dict]:
    keep = ("relation", "kl", "ce", "loss")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep if k in r} for r in lines if r.get("kind") in ("train", "heldout")]


@pytest.mark.parametrize("targets", [{"targets.mode": "online"},
                                     {"targets.mode": "cached", "targets.cache_logits": "dense"},
                                     {"targets.mode": "cached", "targets.cache_logits": "topk", "targets.top_k": 8}],
                         ids=["online", "cached-dense", "cached-topk"])
def test_align_on_a_padded_pair_equals_its_unpadded_twin(padded, twin, tmp_path, targets):
    """kl (teacher 448 rows, student 400: the common real rows), ce and relation, online and from a cache (whose
    logits are cut to the real rows when it is built): every logged number equals the twin's run."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (12, 16), generator=gen)
    data = TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    cache = {"targets.cache_dir": str(tmp_path / "cache-{}")} if targets["targets.mode"] == "cached" else {}
    runs = {}
    for name, pair in (("padded", padded), ("twin", twin)):
        cfg = _cfg(tmp_path, name, **targets, **{k: v.format(name) for k, v in cache.items()})
        result = align(cfg, pair, data=data)
        assert result.finished
        runs[name] = _records(result.run_dir)
        if name == "padded":
            provenance = json.loads((result.run_dir / "provenance.json").read_text())
            assert provenance["vocab_rows"] == {"teacher": V, "student": V, "head_rows": [V + 64, V + 16]}
            reloaded = load_model(result.student_path)
            assert head_rows(reloaded) == V + 16 and vocab_rows(reloaded) == V
    assert len(runs["padded"]) == len(runs["twin"]) > 0
    for got, want in zip(runs["padded"], runs["twin"], strict=True):
        assert got.keys() == want.keys()
        for key in got:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_cross_entropy_is_over_the_real_rows(padded, twin, hf_pair):
    """Evaluation's CE equals a by-hand CE over the tokenizer's rows (and the twin's), not the all-rows one."""
    _, s_hf, tok = hf_pair
    batch = tokenize(tok, TEXTS)
    got = ev.cross_entropy(padded.student, batch, precision="fp32")
    with torch.no_grad():
        logits = s_hf(input_ids=batch.tokens, use_cache=False).logits[:, :-1]
    scored = batch.mask[:, 1:] & batch.mask[:, :-1]
    targets = batch.tokens[:, 1:][scored]
    by_hand = float(F.cross_entropy(logits[scored][:, :V].float(), targets))
    all_rows = float(F.cross_entropy(logits[scored].float(), targets))
    assert got == pytest.approx(by_hand, rel=1e-5)
    assert got == pytest.approx(ev.cross_entropy(twin.student, batch, precision="fp32"), rel=1e-5)
    assert all_rows - by_hand > 0.01  # the padded rows carry mass: reading them would be another number


def test_intersection_bases_accept_a_padded_head(padded):
    """A cross-tokenizer pair whose teacher head is padded: the alignment is over the tokenizer's rows."""
    from semalign_lens.lens.semantics import intersection_bases
    from semalign_lens.models.tiny import TINY_OTHER_VOCAB

    other_tok = tiny_tokenizer(TINY_OTHER_VOCAB, "other")
    student = load_model(tiny_hf_model(TINY_STUDENT, len(other_tok) + 32, 3), tokenizer=other_tok, name="other-padded")
    pair = ModelPair(padded.teacher, student, vocab="intersection")
    t_basis, s_basis = intersection_bases(pair.teacher, pair.student, pair.alignment)
    assert t_basis.n_tokens == s_basis.n_tokens == pair.alignment.n_shared
    assert int(t_basis.token_ids.max()) < V and int(s_basis.token_ids.max()) < len(other_tok)
