"""The architecture matrix: every decoder family trains and is scored, on tiny random models.

Per family (teacher 4 x 64, student 2 x 32, one shared tokenizer; nothing downloaded): the trainer's plain copy
computes the HF model's logits (for a TransformerLens-native layout, which has no HF model, the bridge's);
evaluation's cross-entropy equals one computed from those logits by hand; `align` trains the frontier schedule with LoRA (the family's own targets, Conv1D and fused projections
included) and the joint schedule with full parameters; the trained student reloads with the logits it had.
Cross-architecture pairs run the same way.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import TokenBatch, document_start, with_document_start
from semalign_lens.models.load import load_model
from semalign_lens.models.pair import ModelPair
from semalign_lens.models.plain import clean_copy
from semalign_lens.models.readiness import stage_readiness
from semalign_lens.models.tiny import (
    FAMILIES,
    MATRIX_STUDENT,
    MATRIX_TEACHER,
    NATIVE_LAYOUTS,
    TinyArch,
    family_tokenizer,
    special_ids,
    tiny_family_model,
    tiny_native_bridge,
    tiny_tokenizer,
)
from semalign_lens.training import load_align_config
from semalign_lens.training.loop import Trainer

TEACHER, STUDENT = MATRIX_TEACHER, MATRIX_STUDENT
LORA_STAGE = "LoRA on the family's default targets (else set schedule.lora_targets, or train full)"
PAIRS = ([(f, f) for f in (*FAMILIES, *NATIVE_LAYOUTS)]
         + [("gpt2", "llama"), ("gpt_neox", "qwen2"), ("gemma2", "llama"), ("llama", "gpt2"),
            ("native", "llama"), ("qwen2", "native_gated"), ("mamba", "llama"), ("gptj", "qwen3_moe"),
            ("zamba2", "llama")])  # Zamba-2 shares block weights: a teacher (frozen), never a student


def _model(family: str, arch: TinyArch, seed: int, tok=None):
    """(bridge, reference forward: tokens -> logits) of one tiny model with `tok` (default: its family's own
    tokenizer convention, `family_tokenizer`). An HF family's reference is the HF model itself; a native
    layout's (no HF model behind it) is the bridge TransformerLens built."""
    tok = tok if tok is not None else family_tokenizer(family)
    if family in NATIVE_LAYOUTS:
        bridge = load_model(tiny_native_bridge(family, arch, tok, seed))
        return bridge, lambda x: bridge(x)
    hf = tiny_family_model(family, arch, len(tok), seed=seed, ids=special_ids(tok))
    return load_model(hf, tokenizer=tok, name=f"tiny-{family}"), lambda x: hf(input_ids=x, use_cache=False).logits


def _pair(teacher_family: str, student_family: str):
    """One tokenizer for both (a shared vocabulary): the teacher family's."""
    tok = family_tokenizer(teacher_family)
    (teacher, t_ref), (student, s_ref) = _model(teacher_family, TEACHER, 0, tok), _model(student_family, STUDENT, 1, tok)
    return ModelPair(teacher, student), t_ref, s_ref


TEXT = "def mean(values):\n    total = 0\n    for value in values:\n        total += value\n    return total / len(values)\n"


def _tokens(tok) -> TokenBatch:
    """12 blocks of the family tokenizer's own tokens of real text, each opened by its document start."""
    body = tok(TEXT * 8, add_special_tokens=False)["input_ids"]
    rows = [with_document_start(body[i * 11: (i + 1) * 11], document_start(tok)) for i in range(12)]
    ids = torch.tensor(rows)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))


@pytest.mark.parametrize("teacher_family,student_family", PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
def test_every_stage_on_every_family(tmp_path, teacher_family, student_family):
    pair, t_ref, s_ref = _pair(teacher_family, student_family)
    data = _tokens(pair.student.tokenizer)
    for bridge, reference in ((pair.teacher, t_ref), (pair.student, s_ref)):
        with torch.no_grad():
            want = reference(data.tokens[:2])
            got = clean_copy(bridge, share_weights=True).eval()(input_ids=data.tokens[:2]).logits
            assert torch.allclose(got, want, atol=1e-5), bridge.provenance.source
            by_hand = F.cross_entropy(reference(data.tokens)[:, :-1].flatten(0, 1), data.tokens[:, 1:].flatten()).item()
        assert ev.cross_entropy(bridge, data, precision="fp32") == pytest.approx(by_hand, rel=1e-5)
    lora_refused = stage_readiness(pair.teacher, pair.student)[LORA_STAGE]
    for schedule in ({"schedule.adapter": "lora", "schedule.lora_rank": 2},
                     {"schedule.mode": "joint", "schedule.trainable": "all", "schedule.adapter": "full"}):
        cfg = load_align_config(None, {"run_dir": str(tmp_path / schedule["schedule.adapter"]), "progress": False,
                                       "report": False, "figures": False, "data.batch_size": 4,
                                       "data.diag_sequences": 2, "schedule.stage_steps": 2, "schedule.lr": 1e-2,
                                       "objective.terms": {"relation": 1.0, "kl": 1.0}, **schedule})
        if lora_refused and schedule["schedule.adapter"] == "lora":  # said up front, refused before anything runs
            assert "none of the family's LoRA targets" in lora_refused
            with pytest.raises(SemalignError, match="none of the family's LoRA targets"):
                Trainer(cfg, pair, data=data)
            assert not (tmp_path / "lora").exists()
            continue
        trainer = Trainer(cfg, pair, data=data)
        before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        result = trainer.run()
        after = result.student.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), "training changed nothing"
        reloaded = load_model(result.student_path)
        assert type(reloaded.original_model).__name__ == type(pair.student.original_model).__name__
        with torch.no_grad():
            assert torch.allclose(ev.forward_logits(reloaded, data.tokens[:2]),
                                  result.student.eval()(input_ids=data.tokens[:2]).logits, atol=1e-4)


def test_pairing_report_leaves_zero_head_rows_out_and_says_so(tmp_path):
    """A tied head inherits HF's zero padding embedding: the report builds its bases without that id."""
    from semalign_lens.reports.pairing import pairing_report

    tok = tiny_tokenizer()
    models = []
    for arch, seed in ((TEACHER, 0), (STUDENT, 1)):
        hf = tiny_family_model("qwen2", arch, len(tok), seed)
        with torch.no_grad():
            hf.get_output_embeddings().weight[0] = 0  # what nn.Embedding(padding_idx=0) keeps, tied into the head
        models.append(load_model(hf, tokenizer=tok))
    out = pairing_report(*models, "facts", tmp_path / "p.html", n_prompts=4, methods=["grad_x_act"],
                         cka_prompts=4, cka_tokens=64, fidelity_tokens=32, n_boot=10, progress=False)
    assert out.fidelity is not None and out.fidelity["value"].notna().all()
    assert "1 token id(s) left out of both semantic bases (first: 0)" in (tmp_path / "p.html").read_text()


def test_a_bridge_the_user_built_is_accepted_and_its_mode_read_from_itself():
    from transformer_lens.model_bridge import TransformerBridge

    from semalign_lens.models.load import model_mode

    tok = tiny_tokenizer()
    bridges = [TransformerBridge.boot_transformers(f"user-{i}", hf_model=tiny_family_model("llama", arch, len(tok), i),
                                                   tokenizer=tok) for i, arch in enumerate((TEACHER, STUDENT))]
    teacher = load_model(bridges[0], name="my-teacher")
    assert teacher is bridges[0] and teacher.provenance.kind == "bridge" and model_mode(teacher) == "raw"
    ModelPair(teacher, load_model(bridges[1]))
    bridges[1].enable_compatibility_mode(disable_warnings=True)
    with pytest.raises(SemalignError, match="teacher is in raw mode and student in compat mode"):
        ModelPair(teacher, load_model(bridges[1]))


def _saved(tmp_path, family: str, arch: TinyArch, seed: int) -> str:
    tok = tiny_tokenizer()
    out = tmp_path / f"{family}-{arch.n_layers}"
    tiny_family_model(family, arch, len(tok), seed).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_info_says_per_stage_what_a_cross_family_pair_can_run(tmp_path, capsys):
    """`semalign info` on GPT-2 → Llama: analysis, training, Seeking (by role) and LaTen (an up/down MLP in
    both) yes, before anything runs."""
    from semalign_lens.cli import main

    teacher, student = _saved(tmp_path, "gpt2", TEACHER, 0), _saved(tmp_path, "llama", STUDENT, 1)
    assert main(["info", teacher, student]) == 0
    lines = {line.strip().split("  ")[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert lines["capture, bases, CKA, rankers, pairing report, evaluation"].endswith("yes")
    assert lines["align (frontier/joint, full/LoRA), reload the student"].endswith("yes")
    assert lines["seeking baseline (copies teacher weight blocks, by role across families)"].endswith("yes")
    assert lines["laten baseline (FFN neurons: one up and one down projection)"].endswith("yes")
    assert main(["info", teacher]) == 0  # one model: what it can take part in
    out = capsys.readouterr().out
    assert "as a teacher or student, per stage:" in out and "seeking" not in out


def test_roles_name_the_papers_four_targets_in_every_family():
    from semalign_lens.models.architectures import role_of

    tok = tiny_tokenizer()
    want = {"llama": {"self_attn.v_proj": "v", "self_attn.o_proj": "o", "mlp.up_proj": "up", "mlp.down_proj": "down"},
            "gpt2": {"attn.c_attn": "v", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"},
            "gpt_neox": {"attention.query_key_value": "v", "attention.dense": "o", "mlp.dense_h_to_4h": "up",
                         "mlp.dense_4h_to_h": "down"},
            "opt": {"self_attn.v_proj": "v", "self_attn.out_proj": "o", "fc1": "up", "fc2": "down"}}
    for family, roles in want.items():
        model = tiny_family_model(family, STUDENT, len(tok), 0)
        for path, role in roles.items():
            assert role_of(model, path) == role, (family, path)
        assert role_of(model, "mlp.act") is None


def test_seeking_across_families_initialises_each_layer_from_the_teachers_layer_of_its_role(tmp_path):
    """GPT-NeoX teacher → Llama student: each student LoRA layer starts at the rank-r SVD of the best block of
    the teacher layer with the same role (v ← the fused query_key_value, o ← dense, ...), W − BA leaves the
    student's function unchanged."""
    from semalign_lens.models.architectures import role_of
    from semalign_lens.models.lora import dense_weight, lora_factors, lora_layers
    from semalign_lens.training import Trainer
    from semalign_lens.training.methods.seeking import SeekingPlugin, best_block, svd_factors

    pair, _, _ = _pair("gpt_neox", "llama")
    plugin = SeekingPlugin(seed_sequences=4)
    tr = Trainer(_laten_cfg(tmp_path), pair,
                 data=_tokens(pair.student.tokenizer), plugins=[plugin])
    stage = tr.stages[0]
    x = _tokens(pair.student.tokenizer).tokens[:2]
    with torch.no_grad():
        before = tr.student(input_ids=x).logits
    tr._open_stage(stage)
    with torch.no_grad():
        torch.testing.assert_close(tr.student(input_ids=x).logits, before, rtol=1e-4, atol=1e-4)
    pair0 = stage.pairs[0]
    t_index = plugin.layer_map[pair0.student_layer]
    t_modules = dict(plugin.teacher_layers[t_index].named_modules())
    seen = set()
    for name, layer in lora_layers(tr.student.model.layers[pair0.student_layer]):
        role = role_of(tr.student, name)
        t_name = next(n for n in t_modules if role_of(plugin.teacher, n) == role and (t_index, n) in plugin.blocks)
        rows, cols = dense_weight(layer).shape
        r0, c0 = best_block(plugin.blocks[(t_index, t_name)], rows, cols)
        b, a = svd_factors(dense_weight(t_modules[t_name]).detach().float()[r0: r0 + rows, c0: c0 + cols],
                           lora_factors(layer)[0].shape[0])
        lora_a, lora_b, scale = lora_factors(layer)
        torch.testing.assert_close(scale * lora_b @ lora_a, (b @ a).float(), rtol=1e-4, atol=1e-5)
        seen.add(role)
    assert seen == {"v", "o", "up", "down"} and not plugin.skipped


def test_info_reads_the_mlp_width_from_the_hf_config():
    """OPT's config calls it `ffn_dim`; the bridge's cfg.d_mlp says 4 x d_model (256) where the config says 128."""
    from semalign_lens.models.inspect import describe

    tok = tiny_tokenizer()
    for family in ("opt", "gpt2", "phi3"):
        model = load_model(tiny_family_model(family, TEACHER, len(tok), 0), tokenizer=tok, name=f"tiny-{family}")
        assert describe(model)["d_mlp"] == TEACHER.d_mlp, family


def _laten_cfg(tmp_path):
    return load_align_config(None, {"run_dir": str(tmp_path / "r"), "progress": False, "report": False,
                                    "figures": False, "data.batch_size": 4, "schedule.adapter": "lora",
                                    "schedule.lora_rank": 2, "schedule.stage_steps": 1})


def test_laten_refuses_a_family_without_one_up_and_down_projection_in_one_line(tmp_path):
    from semalign_lens.training.methods import run_method

    pair, _, _ = _pair("phi3", "phi3")  # fused gate_up_proj
    with pytest.raises(SemalignError, match=r"one up and one down projection; the teacher \(phi3\) has no such pair"):
        run_method("laten", _laten_cfg(tmp_path), pair,
                   data=_tokens(pair.student.tokenizer), run_dir=tmp_path / "r")


@pytest.mark.parametrize("family,up,down", [("gpt2", "mlp.c_fc", "mlp.c_proj"),
                                            ("gpt_neox", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
                                            ("opt", "fc1", "fc2")])
def test_laten_changes_only_located_neurons_in_other_families(tmp_path, family, up, down):
    """GPT-2's Conv1D stores [in, out]: the located neurons are columns of c_fc and rows of c_proj; an
    nn.Linear family's are rows of the up layer and columns of the down layer. Nothing else changes."""
    from transformers.pytorch_utils import Conv1D

    from semalign_lens.training.methods import run_method

    pair, _, _ = _pair(family, family)
    before = {k: v.clone() for k, v in clean_copy(pair.student, share_weights=True).state_dict().items()}
    result = run_method("laten", _laten_cfg(tmp_path), pair,
                        data=_tokens(pair.student.tokenizer), run_dir=tmp_path / "r")
    after = result.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith((f"{up}.weight", f"{down}.weight")) for k in changed), changed
    conv = isinstance(dict(result.student.named_modules())[next(iter(changed)).removesuffix(".weight")], Conv1D)
    k = int(STUDENT.d_mlp * 0.1)
    for name in changed:
        diff = before[name] != after[name]
        is_up = name.endswith(f"{up}.weight")
        axis = (1 if conv else 0) if is_up else (0 if conv else 1)  # the axis that indexes neurons
        touched = diff.any(1 - axis)
        assert 0 < int(touched.sum()) <= k, name
        assert conv == (family == "gpt2")


def test_pairing_report_cli_runs_the_rankers_asked_for_on_fused_qkv(tmp_path, capsys):
    """A cross-family pair (GPT-2 → Llama) through the CLI: `--methods` picks the rankers; `seeking` runs on
    GPT-2's fused c_attn; `--patching-maps` adds the position- and head-resolved maps (GPT-2's fused qkv bridge
    exposes hook_z like any other)."""
    from semalign_lens.cli import main

    out = tmp_path / "p.html"
    args = ["report", "pairing", _saved(tmp_path, "gpt2", TEACHER, 0), _saved(tmp_path, "llama", STUDENT, 1),
            "--methods", "seeking", "patch_denoise", "--prompts", "4", "--out", str(out), "--no-progress",
            "--patching-maps", "position", "head"]
    assert main(args) == 0
    html = out.read_text()
    assert "seeking" in html and "patch_denoise" in html and "grad_x_act_abs" not in html
    assert "Where in the prompt" in html and "Which heads" in html


@pytest.mark.parametrize("family", (*FAMILIES, *NATIVE_LAYOUTS))
def test_every_analysis_stage_on_every_family(family):
    """Capture, the residual stack and CKA, semantic bases and all nine layer rankers, per family (teacher
    4 x 64): each runs and gives finite numbers; the stack's last entry equals the captured resid_post."""
    from semalign_lens.data.tasks import fact_task, tokenize_pairs
    from semalign_lens.data.tokens import tokenize
    from semalign_lens.lens.attribution import METHODS, rank_layers
    from semalign_lens.lens.capture import accumulated_resid, capture
    from semalign_lens.lens.semantics import SemanticBasis, live_head_tokens
    from semalign_lens.lens.similarity import cka_matrix

    pair, _, _ = _pair(family, family)
    model, tok = pair.teacher, pair.teacher.tokenizer
    batch = tokenize(tok, ["def add(a, b):\n    return a + b\n", "import os\nprint(os.sep)\n"])
    cap = capture(model, batch, range(TEACHER.n_layers), progress=False)
    stack = accumulated_resid(model, batch)
    torch.testing.assert_close(stack[-1], cap.tokens_of("resid_post", TEACHER.n_layers - 1))
    cka = cka_matrix(stack, accumulated_resid(pair.student, batch))
    assert cka.shape == (TEACHER.n_layers + 1, STUDENT.n_layers + 1) and torch.isfinite(cka).all()
    keep, _ = live_head_tokens(pair.teacher, pair.student)
    assert torch.isfinite(SemanticBasis.from_model(model, tokens=keep).S).all()
    prompts = tokenize_pairs(tok, fact_task(tokenizer=tok, n=4, seed=0), align="left_pad")
    scores = rank_layers(model, prompts, methods=METHODS, n_boot=20, progress=False)
    assert set(scores["method"]) == set(METHODS) and scores["score"].notna().all()


def test_a_native_bridge_is_saved_inspected_trained_from_the_cli_and_read_back(tmp_path, capsys):
    """A `TransformerBridge.boot_native` model (TransformerLens's own, no HF model behind it): load_model keeps
    it with a provenance record; `save_model` writes a directory that loads back with the same logits;
    `semalign info` says every stage can run; `semalign align` trains from the saved directories."""

    from semalign_lens.cli import main
    from semalign_lens.models.load import save_model

    tok = tiny_tokenizer()
    bridges = [tiny_native_bridge("native_gated", arch, tok, seed) for seed, arch in enumerate((TEACHER, STUDENT))]
    teacher = load_model(bridges[0])
    assert teacher is bridges[0] and teacher.provenance.kind == "bridge"
    assert teacher.provenance.source == f"tiny-native_gated-{TEACHER.n_layers}"
    dirs = [str(save_model(b, tmp_path / f"m{i}")) for i, b in enumerate(bridges)]
    x = _tokens(tok).tokens[:2]
    with torch.no_grad():
        torch.testing.assert_close(load_model(dirs[0])(x), teacher(x))
    assert main(["info", *dirs]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    stages = [line for line in lines if "align (frontier" in line or "seeking baseline" in line
              or "laten baseline" in line or "capture, bases" in line]
    assert len(stages) == 4 and all(line.endswith("yes") for line in stages), stages
    (tmp_path / "data.txt").write_text("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(200)))
    run = tmp_path / "run"
    settings = {"teacher": dirs[0], "student": dirs[1], "run_dir": run, "data.source": tmp_path / "data.txt",
                "data.seq_len": 16, "data.n_sequences": 8, "data.batch_size": 4, "data.diag_sequences": 2,
                "schedule.stage_steps": 1, "progress": "false", "report": "false", "figures": "false"}
    assert main(["align", *(arg for k, v in settings.items() for arg in ("--set", f"{k}={v}"))]) == 0
    trained = load_model(run / "student")
    assert trained.cfg.n_layers == STUDENT.n_layers and type(trained.original_model).__name__ == "NativeModel"


@pytest.mark.parametrize("method", ["seeking", "laten"])
def test_seeking_and_laten_run_on_a_native_pair(tmp_path, method):
    """The two baselines that read weights by role (Seeking) and FFN neurons (LaTen) on native layouts: a
    plain MLP teacher (fc_in/fc_out) into a gated one (in/out). The student changes from its start."""
    from semalign_lens.training.methods import run_method

    pair, _, _ = _pair("native", "native_gated")
    before = {k: v.clone() for k, v in clean_copy(pair.student, share_weights=True).state_dict().items()}
    result = run_method(method, _laten_cfg(tmp_path), pair,
                        data=_tokens(pair.student.tokenizer), run_dir=tmp_path / "r")
    after = result.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_families_that_cannot_run_are_refused_in_one_line_when_loaded(tmp_path):
    """Refused by `load_model` before any stage runs: a bridge whose forward raises (here a block made to fail, as
    TransformerLens's CodeGen adapter does with this transformers), a class TransformerLens has no adapter for
    (CTRL), and DeepSeek-V4, whose blocks carry several
    residual streams ([batch, pos, 4, d] for 8 tokens). A bridge handed to the Trainer without `load_model` is
    probed there."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from semalign_lens.models.tiny import broad_spec

    tok = tiny_tokenizer()
    bridge = tiny_native_bridge("native", STUDENT, tok, 0)

    def fail(module, args):
        raise AttributeError("'Attention' object has no attribute 'embed_positions'")

    handle = bridge.blocks[1].register_forward_pre_hook(fail)
    with pytest.raises(SemalignError, match=r"bridge for .* fails on a forward pass \(AttributeError: 'Attention'"):
        load_model(bridge)
    assert getattr(bridge, "provenance", None) is None  # refused: not marked as loaded
    student = load_model(tiny_native_bridge("native", STUDENT, tok, 1))
    cfg = load_align_config(None, {"run_dir": str(tmp_path / "r"), "progress": False, "report": False,
                                   "figures": False, "data.batch_size": 4})
    with pytest.raises(SemalignError, match=r"bridge for the teacher .* fails on a forward pass"):  # no load_model
        Trainer(cfg, ModelPair(bridge, student), data=_tokens(tok))
    assert not (tmp_path / "r").exists()
    handle.remove()
    ctrl = AutoConfig.for_model("ctrl", n_layer=2, n_embd=32, n_head=2, dff=64, vocab_size=len(tok))
    with pytest.raises(SemalignError, match=r"tiny-ctrl: TransformerLens .* has no adapter for CTRLLMHeadModel "
                                            r"\(model_type 'ctrl'\), so it cannot be bridged"):
        load_model(AutoModelForCausalLM.from_config(ctrl), tokenizer=tok, name="tiny-ctrl")
    config = AutoConfig.for_model("deepseek_v4", **broad_spec("deepseek_v4", STUDENT), vocab_size=len(tok))
    with pytest.raises(SemalignError, match=r"its blocks output \(1, 8, \d+, 32\) for 8 tokens, not one residual"):
        load_model(AutoModelForCausalLM.from_config(config).eval(), tokenizer=tok, name="tiny-deepseek_v4")


def test_a_student_whose_blocks_share_weights_is_refused_up_front(tmp_path):
    """Zamba-2's hybrid blocks reuse one shared transformer: training the frontier block would change another
    one, so `info` and the Trainer refuse it as a student, naming the shared weight (as a teacher it trains a
    student: the matrix's zamba2 -> llama)."""
    teacher, student = _model("zamba2", TEACHER, 0)[0], _model("zamba2", TEACHER, 1)[0]  # 4 blocks: 1 and 3 share
    readiness = stage_readiness(teacher, student)
    assert readiness["capture, bases, CKA, rankers, pairing report, evaluation"] is None
    shared = r"blocks 1 and 3 of Zamba2ForCausalLM \(zamba2\) share the weight shared_transformer\..*analysed but not"
    assert re.search(shared, readiness["align (frontier/joint, full/LoRA), reload the student"])
    cfg = load_align_config(None, {"run_dir": str(tmp_path / "r"), "progress": False, "report": False,
                                   "figures": False, "data.batch_size": 4, "schedule.adapter": "full"})
    with pytest.raises(SemalignError, match="the student tiny-zamba2: " + shared):
        Trainer(cfg, ModelPair(teacher, student), data=_tokens(student.tokenizer))
    assert not (tmp_path / "r").exists()


def test_lora_targets_a_block_lacks_are_refused_before_training_naming_its_layers(tmp_path):
    pair, _, _ = _pair("gpt2", "llama")
    cfg = load_align_config(None, {"run_dir": str(tmp_path / "r"), "progress": False, "report": False,
                                   "figures": False, "data.batch_size": 4, "schedule.adapter": "lora",
                                   "schedule.lora_targets": ["c_attn"]})
    with pytest.raises(SemalignError, match=r"the student tiny-llama, block 0: LoRA target\(s\) \['c_attn'\] are not linear "
                                            r"layers of this block; its linear .* are \['down_proj'"):
        Trainer(cfg, pair, data=_tokens(pair.student.tokenizer))
    assert not (tmp_path / "r").exists()
