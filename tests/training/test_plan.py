"""`semalign plan` (training/plan.py): parameter counts of real configs built on the meta device, every figure
against the module docstring's formulas worked by hand, refusals that name a change which fits, no weights
read, and an upper bound on what a real step of the tiny pair keeps for backward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_helpers import make_cfg

from semalign_lens.cli import main
from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer
from semalign_lens.training.config import load_align_config
from semalign_lens.training.plan import GiB, make_plan, model_shape


def _llama(layers, d, heads, d_mlp):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
            "hidden_size": d, "num_attention_heads": heads, "num_key_value_heads": heads, "intermediate_size": d_mlp,
            "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": False, "torch_dtype": "float16"}


def _qwen2(layers, d, heads, kv_heads, d_mlp, vocab, tied):
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": layers,
            "hidden_size": d, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": d_mlp,
            "vocab_size": vocab, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "rope_theta": 1000000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16"}


CONFIGS = {"llama2-13b": _llama(40, 5120, 40, 13824), "llama2-7b": _llama(32, 4096, 32, 11008),
           "qwen2.5-7b": _qwen2(28, 3584, 28, 4, 18944, 152064, False),
           "qwen2.5-1.5b": _qwen2(28, 1536, 12, 2, 8960, 151936, True)}
PUBLISHED = {"llama2-13b": 13_015_864_320, "llama2-7b": 6_738_415_616, "qwen2.5-7b": 7_615_616_512,
             "qwen2.5-1.5b": 1_543_714_304}
PAPER = {"data.batch_size": 64, "data.seq_len": 256, "data.n_sequences": 1000, "schedule.adapter": "lora",
         "schedule.stage_steps": 2, "precision": "bf16"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A directory per model holding only its config.json: a plan that read weights would fail here."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, spec in CONFIGS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(spec))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def shapes(dirs):
    return {name: model_shape(str(path)) for name, path in dirs.items()}


def test_parameter_counts_are_the_published_ones(shapes):
    assert {name: s.params for name, s in shapes.items()} == PUBLISHED
    # by hand: embedding + head (once when tied) + blocks (q, k, v with biases in Qwen2, o, gate/up/down, 2 norms)
    # + final norm
    assert PUBLISHED["llama2-7b"] == 2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    kv = 2 * 128
    assert PUBLISHED["qwen2.5-1.5b"] == 151936 * 1536 + 28 * (
        (1536 * 1536 + 1536) + 2 * (1536 * kv + kv) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536) + 1536
    s = shapes["qwen2.5-1.5b"]
    assert (s.q, s.kv, s.d_mlp, s.gated, s.vocab, s.eager) == (1536, 256, 8960, True, 151936, False)


def test_llama2_13b_to_7b_at_the_paper_settings(shapes):
    """Online targets, LoRA r16 frontier over all 32 student layers, relation + kl, bf16 autocast."""
    cfg = load_align_config(None, PAPER)
    plan = make_plan(cfg, shapes["llama2-13b"], shapes["llama2-7b"])
    P_T, P_S = PUBLISHED["llama2-13b"], PUBLISHED["llama2-7b"]
    n, N_d, S, b = 64 * 256, 8 * 256, 256, 2
    K = 40 + 1  # 40 -> 32 interpolated: every teacher layer, and the embedding
    # stage 0 reads the embedding and teacher layers 0 and 1 (student 0 <- 1.25 - 1 = 0.25 between them); with a
    # depth ratio under 2 each later stage's pair overlaps its predecessor's: at most 3 states a stage
    K_s = 3
    lora = 16 * (2 * (4096 + 4096) + 2 * (4096 + 11008))  # r·(in + out) of v, o, up, down in one block
    frozen = 4 * 2 * (4096 + 1) + b * (2 * 4096 + 2 * 4096 + 3 * 11008) + 4 * 32
    adapted = frozen + b * (4096 + 4096 + 4096 + 11008 + 4 * 16)
    acts = adapted + 31 * frozen + 4 * (4096 + 1) + b * 4096  # stage 0 (L0): every block, then the head
    diag = 4 * 41 * N_d * 5120
    assert (plan.stages, plan.steps, plan.trainable, plan.worst, plan.teacher_states, plan.stage_states) == \
        (32, 64, lora, "stage 0, L0", K, K_s)
    assert plan.gpu_setup == {"teacher weights (float32)": 4 * P_T, "student weights (float32)": 4 * P_S,
                              "teacher diagnostic states": diag, "teacher forward": N_d * b * 4 * 13824}
    assert plan.gpu_training == {
        "teacher weights (float32)": 4 * P_T, "student weights (float32)": 4 * P_S, "trainable state": 16 * lora,
        "teacher diagnostic states": diag, "teacher targets": n * (4 * K_s * 5120 + 4 * 32000),
        "teacher forward": n * b * (4 * 13824 + 32000), "student activations": n * acts,
        "autocast weight copies": 2 * (32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096),
        "vocabulary buffers": n * 32000 * (b + 4 + b), "layer terms": n * 4 * (3 * 4096 + 5120 + 3 * S),
        "backward": n * (8 * 4096 + b * 3 * 11008)}
    data = 1008 * S * 9
    assert plan.host_setup == {"teacher bridge (float32)": 4 * P_T, "student bridge and its copy (float32)": 8 * P_S,
                               "data": data, "teacher CKA stack": diag}
    assert plan.host_training == {"data": data, "teacher CKA stack": diag,
                                  "CKA grid": 12 * N_d * 33 * 4096 + 20 * 5120 * 33 * 4096}
    assert plan.disk == {"checkpoints (2 + 1 while writing)": 3 * (4 * P_S + 4 * lora + 8 * lora),
                         "trained student": 4 * P_S}
    assert plan.gpu == sum(plan.gpu_training.values())
    assert round(plan.gpu / GiB, 1) == 165.0  # the README's figure

    half = make_plan(load_align_config(None, {**PAPER, "dtype": "bfloat16"}), shapes["llama2-13b"],
                     shapes["llama2-7b"])
    rows = half.gpu_training  # 2 bytes a weight; the stage's LoRA factors train in fp32; no frozen weight is cast
    assert rows["teacher weights (bfloat16)"] == 2 * P_T and rows["student weights (bfloat16)"] == 2 * P_S
    assert rows["trainable state"] == 16 * lora and rows["autocast weight copies"] == 2 * lora
    assert rows["student activations"] == n * acts  # b = 2 either way
    assert half.host_setup["student bridge and its copy (bfloat16)"] == 4 * P_S
    assert half.disk == {"checkpoints (2 + 1 while writing)": 3 * (2 * P_S + 4 * lora + 8 * lora),
                         "trained student": 2 * P_S}


def test_qwen25_7b_to_15b_cached_topk_full_fp32(shapes):
    """Cached top-k targets (the teacher leaves the GPU), full-parameter frontier on three layers, fp32."""
    cfg = load_align_config(None, {"data.batch_size": 16, "data.seq_len": 512, "data.n_sequences": 2000,
                                   "data.diag_sequences": 4, "pairing.student_layers": [3, 13, 27],
                                   "targets.mode": "cached", "targets.cache_logits": "topk", "precision": "fp32",
                                   "figures": False, "schedule.stage_steps": 50})
    plan = make_plan(cfg, shapes["qwen2.5-7b"], shapes["qwen2.5-1.5b"])
    P_T, P_S = PUBLISHED["qwen2.5-7b"], PUBLISHED["qwen2.5-1.5b"]
    n, N_d, S, b, K = 16 * 512, 4 * 512, 512, 4, 3 + 1  # 28 -> 28: teacher layers 3, 13, 27, and the embedding
    K_s = 2  # a stage reads its layer and its predecessor's (the embedding for the first)
    block = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536
    frozen = 4 * 2 * (1536 + 1) + b * (2 * 1536 + 2 * 256 + 3 * 8960) + 4 * 12
    full = frozen + 4 * 2 * 1536 + b * (1536 * 6 + 8960)  # norm outputs; inputs of q, k, v, o, gate, up, down
    acts = full + 24 * frozen + 4 * (1536 + 1) + b * 1536  # stage 0 (L3): blocks 3..27, then the head
    stored = 2 * K * 3584 + 6 * 64 + 2  # cache bytes a token
    diag = 4 * 29 * N_d * 3584
    assert (plan.stages, plan.steps, plan.trainable, plan.worst) == (3, 150, block, "stage 0, L3")
    assert plan.gpu_setup == {"teacher weights (float32)": 4 * P_T, "student weights (float32)": 4 * P_S,
                              "teacher diagnostic states": diag,
                              "teacher targets": n * (4 * K * 3584 + (b + 8) * 152064),
                              "teacher forward": n * b * 4 * 18944}
    assert plan.gpu_training == {
        "student weights (float32)": 4 * P_S, "trainable state": 12 * block, "teacher diagnostic states": diag,
        "teacher targets": n * (4 * K_s * 3584 + 8 * 64 + 4), "student activations": n * acts,
        "vocabulary buffers": n * 151936 * (b + 4 + b), "layer terms": n * 4 * (3 * 1536 + 3584 + 3 * S),
        "backward": n * (8 * 1536 + b * 3 * 8960)}
    data = 2004 * S * 9
    assert plan.host_setup == {"teacher bridge (float32)": 4 * P_T, "student bridge and its copy (float32)": 8 * P_S,
                               "data": data, "target cache build": 6 * 64 * S * stored}
    assert plan.host_training == {"data": data, "cached reads": 2 * n * (2 * K_s * 3584 + 6 * 64 + 2)}
    assert plan.disk == {"target cache": 2000 * S * stored,
                         "checkpoints (2 + 1 while writing)": 3 * (4 * P_S + 8 * block), "trained student": 4 * P_S}


def test_joint_all_parameters_sft_and_a_layer_term_alone(shapes):
    """The SFT control trains every parameter in one stage and reads no teacher; a layer term alone stops the
    student's forward at the paired block (no head, no vocabulary buffers)."""
    t, s = shapes["llama2-13b"], shapes["llama2-7b"]
    P_S, n, b = PUBLISHED["llama2-7b"], 8 * 256, 4
    sft = make_plan(load_align_config(None, {"schedule.mode": "joint", "schedule.trainable": "all", "precision": "fp32",
                                             "objective.terms": {"ce": 1.0}, "data.batch_size": 8}), t, s)
    full = 4 * 2 * (4096 + 1) + b * (2 * 4096 + 2 * 4096 + 3 * 11008) + 4 * 32 + 4 * 2 * 4096 \
        + b * (5 * 4096 + 4096 + 11008)
    assert (sft.stages, sft.steps, sft.trainable, sft.teacher_states) == (1, 50, P_S, 0)
    rows = sft.gpu_training
    assert "teacher targets" not in rows and "teacher forward" not in rows and "layer terms" not in rows
    assert rows["trainable state"] == 12 * P_S
    assert rows["student activations"] == n * (32 * full + 4 * (4096 + 1) + b * 4096)
    assert rows["vocabulary buffers"] == n * 32000 * (b + 12 + b)
    assert sft.disk["checkpoints (2 + 1 while writing)"] == 3 * (4 * P_S + 8 * P_S)

    layer = make_plan(load_align_config(None, {"objective.terms": {"relation": 1.0}, "schedule.adapter": "lora",
                                               "precision": "bf16", "data.batch_size": 8}), t, s)
    b = 2
    adapted = 4 * 2 * (4096 + 1) + b * (2 * 4096 + 2 * 4096 + 3 * 11008) + 4 * 32 \
        + b * (3 * 4096 + 11008 + 4 * 16)
    rows = layer.gpu_training
    assert layer.worst == "stage 0, L0" and "vocabulary buffers" not in rows
    assert rows["student activations"] == n * adapted
    assert rows["autocast weight copies"] == 2 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert rows["teacher targets"] == n * 4 * 3 * 5120 and rows["teacher forward"] == n * b * 4 * 13824


def test_a_run_over_budget_is_refused_naming_a_change_that_fits(dirs, capsys):
    """Each proposed fix keeps the paper's global batch of 64 and names the largest micro-batch that fits with
    it: the fix fits, one more sequence a micro-batch does not."""
    args = ["plan", str(dirs["llama2-13b"]), str(dirs["llama2-7b"]), *(f"--set={k}={v}" for k, v in PAPER.items()),
            "--host-memory", "1000", "--disk", "1000"]
    assert main([*args, "--gpu-memory", "80"]) == 2
    out, err = capsys.readouterr()
    assert "needs: GPU 165.0 GiB" in out and "GPU 80.0 GiB" in out
    head = "semalign: error: this run will not fit: GPU memory 165.0 GiB over the 80.0 GiB budget: it fits with "
    assert err.count("\n") == 1 and err.startswith(head)
    fixes = err.removeprefix(head).strip().split(", or with ")
    assert fixes[0].startswith("dtype = 'bfloat16' and train.micro_batch_size = ")
    assert fixes[1].startswith("train.activation_checkpointing = true and train.micro_batch_size = ")
    assert fixes[2].startswith("targets.mode = 'cached' and targets.cache_logits = 'topk' and "
                               "train.micro_batch_size = ")
    for fix in fixes:  # each fits, and one more sequence a micro-batch does not; the global batch is never cut
        changes = dict(part.split(" = ") for part in fix.split(" and "))
        assert "data.batch_size" not in changes
        sets = [f"--set={k}={v.strip(chr(39))}" for k, v in changes.items()]
        assert main([*args, "--gpu-memory", "80", *sets]) == 0
        bigger = int(changes["train.micro_batch_size"]) + 1
        assert main([*args, "--gpu-memory", "80", *sets, f"--set=train.micro_batch_size={bigger}"]) == 2
    capsys.readouterr()
    assert main([*args, "--gpu-memory", "500", "--disk", "80"]) == 2  # 3 checkpoints of 25 GiB and the student
    assert "disk 100.4 GiB over the 80.0 GiB budget: it fits with dtype = 'bfloat16', or with keep_checkpoints = 1" \
        in capsys.readouterr().err


def test_micro_batches_and_checkpointing_by_hand(shapes):
    """Llama-2-13B -> 7B at the paper's settings in micro-batches of 8 with activation checkpointing: every row of
    a forward and backward is that of 8 x 256 tokens, each block on the gradient path keeps its fp32 input, and
    backward holds one block's activations and one block's bf16 weight copies at a time."""
    cfg = load_align_config(None, {**PAPER, "train.micro_batch_size": 8, "train.activation_checkpointing": True})
    plan = make_plan(cfg, shapes["llama2-13b"], shapes["llama2-7b"])
    whole = make_plan(load_align_config(None, PAPER), shapes["llama2-13b"], shapes["llama2-7b"]).gpu_training
    n, b, d = 8 * 256, 2, 4096
    frozen = 4 * 2 * (d + 1) + b * (2 * d + 2 * d + 3 * 11008) + 4 * 32
    adapted = frozen + b * (d + d + d + 11008 + 4 * 16)
    rows = plan.gpu_training
    assert plan.worst == "stage 0, L0" and plan.steps == 64  # the global batch and its steps are unchanged
    assert rows["student activations"] == n * (32 * 4 * d + adapted + 4 * (d + 1) + b * d)
    assert rows["autocast weight copies"] == 2 * (4 * d**2 + 3 * d * 11008 + 32000 * d)
    for row in ("teacher targets", "teacher forward", "vocabulary buffers", "layer terms", "backward"):
        assert rows[row] * 8 == whole[row], row
    for row in ("teacher weights (float32)", "student weights (float32)", "trainable state"):
        assert rows[row] == whole[row], row
    assert round(plan.gpu / GiB, 1) == 78.7


def test_no_weights_are_read(tmp_path, dirs, monkeypatch):
    """Damaged weights beside config.json change nothing, and opening a safetensors file fails the test."""
    import safetensors
    import safetensors.torch

    def opened(*args, **kwargs):
        raise AssertionError("the plan opened a weights file")

    for module in (safetensors, safetensors.torch):
        monkeypatch.setattr(module, "safe_open", opened)
    monkeypatch.setattr(safetensors.torch, "load_file", opened)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((dirs["qwen2.5-1.5b"] / "config.json").read_text())
    (model / "model.safetensors").write_bytes(b"not weights")
    assert model_shape(str(model)).params == PUBLISHED["qwen2.5-1.5b"]
    assert model_shape(str(model / "config.json")).params == PUBLISHED["qwen2.5-1.5b"]
    assert model_shape("stdlib-student").params > 0  # the shipped student's directory, config.json only


def test_an_unreachable_source_is_one_line():
    with pytest.raises(SemalignError, match="not a zoo name, a local directory or a config.json, and its "
                                            "config.json could not be had from the Hugging Face Hub"):
        model_shape("nobody-here/no-such-model")  # HF_HUB_OFFLINE=1 in the suite


def _kept_for_backward(trainer, stage, batch, teacher) -> tuple[int, dict[int, int], int]:
    """What one forward of the step's terms leaves autograd for backward, parameters aside: (the bytes of every
    tensor saved outside a checkpoint, those saved while each student block ran, the bytes of the blocks' inputs:
    what a checkpointed block keeps)."""
    from semalign_lens.models.plain import parts

    params = {p.untyped_storage().data_ptr() for p in trainer.student.parameters()}
    kept: dict[int, int] = {}
    inputs: dict[int, int] = {}
    per_block: dict[int, int] = {}
    running: list[int | None] = [None]
    hooks = []
    for i, block in enumerate(parts(trainer.student).layers):
        def enter(module, args, kwargs, i=i):
            running[0] = i
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[hidden.untyped_storage().data_ptr()] = hidden.untyped_storage().nbytes()
        hooks.append(block.register_forward_pre_hook(enter, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda *_: running.__setitem__(0, None)))

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in kept:
            kept[ptr] = t.untyped_storage().nbytes()
            if running[0] is not None:
                per_block[running[0]] = per_block.get(running[0], 0) + kept[ptr]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer._terms(stage, batch, teacher)
    for hook in hooks:
        hook.remove()
    return sum(kept.values()), per_block, sum(v for k, v in inputs.items() if k not in kept)


@pytest.mark.parametrize(("precision", "adapter", "dtype", "micro", "recompute"),
                         [("fp32", "full", "float32", None, False), ("bf16", "lora", "float32", None, False),
                          ("fp32", "full", "bfloat16", None, False), ("bf16", "full", "float32", 2, True),
                          ("bf16", "lora", "float32", 2, True), ("fp32", "lora", "bfloat16", 3, True)])
def test_a_real_step_keeps_no_more_than_the_plan_counts(tmp_path, tiny_pair, tiny_hf, tokens, precision, adapter,
                                                        dtype, micro, recompute):
    """The tiny pair's first stage, through the trainer's own step on its first micro-batch: every tensor
    autograd keeps for backward (weight casts included, parameters not) fits in the plan's activation,
    weight-copy, vocabulary and layer-term rows, and the bound is not loose by more than 2x; the trainable
    parameters are the plan's. With activation checkpointing what is kept is what the forward saves outside the
    checkpointed blocks, the blocks' inputs, and in backward the most one recomputed block saves (measured on
    the same micro-batch without checkpointing)."""
    from semalign_lens.data.tokens import TokenBatch
    from semalign_lens.models.load import load_model
    from semalign_lens.models.pair import ModelPair

    cfg = make_cfg(tmp_path, precision=precision, dtype=dtype, **{
        "schedule.adapter": adapter, "data.seq_len": 16, "data.n_sequences": 20, "train.micro_batch_size": micro,
        "train.activation_checkpointing": recompute})
    models = (tiny_pair.teacher, tiny_pair.student) if dtype == "float32" else (
        load_model(m, tokenizer=tiny_hf[2], name=f"tiny-{role}", dtype=cfg.torch_dtype)
        for role, m in zip(("teacher", "student"), tiny_hf[:2], strict=True))
    trainer = Trainer(cfg, ModelPair(*models), data=tokens)
    stage = trainer.stages[0]
    trainer._open_stage(stage)
    index, batch = trainer._local_batch(0)
    m = trainer.micro_batch
    index, batch = index[:m], TokenBatch(batch.tokens[:m], batch.mask[:m])
    teacher = trainer._teacher_batch(stage, batch.tokens, index)
    kept, per_block, inputs = _kept_for_backward(trainer, stage, batch, teacher)
    if recompute:  # the most one block saves, from the same forward without checkpointing
        cfg.train.activation_checkpointing = False
        kept += inputs + max(_kept_for_backward(trainer, stage, batch, teacher)[1].values())
        cfg.train.activation_checkpointing = True
    shapes = []
    for name, model in zip(("teacher", "student"), tiny_hf[:2], strict=True):
        model.config.save_pretrained(str(tmp_path / name))
        shapes.append(model_shape(str(tmp_path / name)))
    plan = make_plan(cfg, *shapes)
    assert plan.trainable == sum(p.numel() for p in trainer._params)  # every block of the tiny student alike
    rows = plan.gpu_training
    bound = sum(rows.get(k, 0) for k in ("student activations", "autocast weight copies", "vocabulary buffers",
                                         "layer terms"))
    assert kept <= bound < 2 * kept


def test_the_end_to_end_stage_and_the_readout_terms_are_planned(shapes):
    """`schedule.global_steps` adds a stage training every block (LoRA on all 32); `lens_kl` counts its two lens
    readouts per pair; `interchange` keeps the teacher's weights although the targets are cached."""
    t, s = shapes["llama2-13b"], shapes["llama2-7b"]
    base = {"schedule.adapter": "lora", "precision": "bf16", "data.batch_size": 8, "targets.mode": "cached",
            "targets.cache_logits": "topk"}
    kd = make_plan(load_align_config(None, {**base, "objective.terms": {"kl": 1.0}}), t, s)
    both = make_plan(load_align_config(None, {**base, "objective.terms": {"kl": 1.0}, "schedule.global_steps": 10}),
                     t, s)
    assert (both.stages, both.steps) == (kd.stages + 1, kd.steps + 10)
    assert both.trainable == 32 * kd.trainable and both.worst == f"stage {kd.stages}, global"
    lens_cfg = load_align_config(None, {**base, "objective.terms": {"lens_kl": 1.0, "kl": 1.0}})
    lens = make_plan(lens_cfg, t, s)  # the top-k cache holds the teacher's lens top-k; the student's head is fused
    assert "layer readouts" not in lens.gpu_training  # into the KL: no vocabulary-sized tensor per token
    top_k = 6 * 64 + 2  # bytes per token of a top-64 readout, once more per pair (kd.stages: one pair a stage)
    assert lens.disk["target cache"] - kd.disk["target cache"] == (
        lens_cfg.data.n_sequences * lens_cfg.data.seq_len * kd.stages * top_k)
    dense = make_plan(load_align_config(None, {**base, "targets.cache_logits": "dense",
                                               "objective.terms": {"lens_kl": 1.0, "kl": 1.0}}), t, s)
    assert dense.gpu_training["layer readouts"] == 8 * 256 * (2 * 2 + 12) * 32000  # both lenses read each step
    assert "teacher weights (float32)" not in kd.gpu_training
    swap = make_plan(load_align_config(None, {**base, "objective.terms": {"interchange": 1.0, "kl": 1.0}}), t, s)
    assert swap.gpu_training["teacher weights (float32)"] == 4 * PUBLISHED["llama2-13b"]
    assert swap.gpu_training["layer readouts"] > 8 * 256 * 2 * 32000 * 2
