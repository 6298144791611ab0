"""The alignment trainer on the tiny pair: schedule, resume, NaN stops, bad input, cached targets, scale-out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semalign_lens.data import TokenBatch
from semalign_lens.errors import SemalignError
from semalign_lens.hf import clean_copy
from semalign_lens.objectives import OBJECTIVES, Objective, register_objective
from semalign_lens.trainer import (
    AlignConfig,
    NonFiniteLossError,
    Trainer,
    align,
    align_main,
    load_align_config,
)

REPO = Path(__file__).resolve().parents[1]
N_STUDENT = 3  # tiny student: 3 blocks, paired proportionally with the 6-block teacher (1, 3, 5)


@pytest.fixture(scope="module")
def tokens(tiny_pair):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, tiny_pair.student.cfg.d_vocab, (20, 16), generator=gen)
    return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))


def make_cfg(tmp_path: Path, **overrides) -> AlignConfig:
    base = {"run_dir": str(tmp_path / "run"), "progress": False, "report": False, "figures": False,
            "data.batch_size": 4,
            "data.diag_sequences": 4, "schedule.stage_steps": 2, "schedule.lr": 1e-2, "checkpoint_every": 1,
            "objective.terms": {"relation": 1.0, "kl": 1.0}}
    return load_align_config(None, {**base, **overrides})


def run(cfg, tiny_pair, tokens, stop_after_steps=None, **kw):
    return align(cfg, teacher=tiny_pair.teacher, student=tiny_pair.student, data=tokens,
                 stop_after_steps=stop_after_steps, **kw)


def initial_student(tiny_pair):
    return {k: v.clone() for k, v in clean_copy(tiny_pair.student, share_weights=False).state_dict().items()}


def changed(before: dict, model) -> set[str]:
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def layer_of(name: str) -> str:
    parts = name.split(".")
    return f"layer{parts[2]}" if parts[:2] == ["model", "layers"] else name


# ----------------------------------------------------------------------------------------------- objectives

@pytest.mark.parametrize("terms", [{"cosine": 1.0}, {"relation": 1.0}, {"fisher": 1.0}, {"kl": 1.0},
                                   {"cosine_onehot": 1.0}, {"ce": 1.0},
                                   {"cosine": 0.5, "relation": 1.0, "fisher": 2.0, "kl": 1.0, "cosine_onehot": 0.1}])
def test_each_objective_trains_a_short_run(tmp_path, tiny_pair, tokens, terms):
    cfg = make_cfg(tmp_path, **{"objective.terms": terms, "schedule.stage_steps": 1})
    result = run(cfg, tiny_pair, tokens)
    assert result.finished and result.final["step"] == N_STUDENT
    train = result.metrics().query("kind == 'train'")
    assert len(train) == N_STUDENT
    for name in [*terms, "loss"]:
        assert train[name].notna().all() and torch.isfinite(torch.tensor(train[name].to_numpy())).all()


def test_run_directory_holds_everything(tmp_path, tiny_pair, tokens):
    from semalign_lens.models import load_model

    cfg = make_cfg(tmp_path, report=True, figures=True, diag_every=1, **{"schedule.stage_steps": 2})
    result = run(cfg, tiny_pair, tokens)
    d = result.run_dir
    for name in ("config.json", "metrics.jsonl", "final.json", "pairing.json", "identity.json", "transfer.safetensors",
                 "report.html", "figures/loss_curves.html", "figures/projections.html"):
        assert (d / name).exists(), name
    for stage in range(N_STUDENT):
        for when in ("start", "end"):
            assert (d / "figures" / f"cka_stage{stage}_{when}.html").exists()
    assert json.loads((d / "config.json").read_text())["objective"]["terms"] == {"relation": 1.0, "kl": 1.0}
    metrics = result.metrics()
    diag = metrics.query("kind == 'diag'")
    for column in ("cos_state", "cos_contribution", "relation_cka", "span_share", "top1_teacher", "top1_target"):
        assert diag[column].between(-1, 1).all(), column
    assert set(diag["student_layer"]) == {0, 1, 2}
    # the final student is an HF directory that load_model reads back, with the trained weights
    loaded = load_model(result.student_path)
    x = tokens.tokens[:2]
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.student(input_ids=x).logits, atol=1e-4)
    assert "Loss per term" in (d / "report.html").read_text()


# ----------------------------------------------------------------------------------------------- schedule

def test_frontier_trains_exactly_the_frontier_layer(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path)
    before = initial_student(tiny_pair)
    first = run(cfg, tiny_pair, tokens, stop_after_steps=2)  # stage 0 complete
    block0 = {k for k in before if layer_of(k) == "layer0"}
    assert changed(before, first.student) == block0
    after0 = {k: v.clone() for k, v in first.student.state_dict().items()}
    second = run(cfg, tiny_pair, tokens, stop_after_steps=2)  # resumes, runs stage 1
    assert changed(after0, second.student) == {k for k in before if layer_of(k) == "layer1"}


def test_lora_changes_only_the_adapted_matrices_of_the_frontier_layer(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.adapter": "lora", "schedule.lora_rank": 2,
                                "schedule.lora_targets": ["v_proj", "down_proj"]})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens, stop_after_steps=2)
    assert changed(before, result.student) == {"model.layers.0.self_attn.v_proj.weight",
                                               "model.layers.0.mlp.down_proj.weight"}
    assert set(result.student.state_dict()) == set(before)  # merged: plain HF names again


def test_lora_target_typo_is_named(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.adapter": "lora", "schedule.lora_targets": ["v_prj"]})
    with pytest.raises(SemalignError, match=r"v_prj.*linear \(or Conv1D\) layers are.*v_proj"):
        run(cfg, tiny_pair, tokens)


def test_joint_mode_trains_all_paired_layers_at_once(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.mode": "joint", "schedule.stage_steps": 2})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens)
    assert result.final["step"] == 2 and len(result.final["stages"]) == 1
    assert {layer_of(k) for k in changed(before, result.student)} == {"layer0", "layer1", "layer2"}


def test_trainable_all_trains_every_parameter_with_the_same_stages(tmp_path, tiny_pair, tokens):
    cfg = make_cfg(tmp_path, **{"schedule.trainable": "all", "objective.terms": {"ce": 1.0},
                                "schedule.stage_steps": 1})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens, stop_after_steps=1)
    assert changed(before, result.student) == set(before)


def test_pairing_from_a_saved_layer_pairing_and_by_cka(tmp_path, tiny_pair, tokens):
    from semalign_lens.pairing import pair_proportional

    saved = pair_proportional(6, 3, student_layers=[1, 2]).save(tmp_path / "pairing.json")
    trainer = Trainer(make_cfg(tmp_path / "a", **{"pairing.path": str(saved)}), teacher=tiny_pair.teacher,
                      student=tiny_pair.student, data=tokens)
    assert [(p.student_layer, p.teacher_low) for p in trainer.pairs] == [(1, 3), (2, 5)]
    assert len(trainer.stages) == 2
    trainer = Trainer(make_cfg(tmp_path / "b", **{"pairing.strategy": "cka"}), teacher=tiny_pair.teacher,
                      student=tiny_pair.student, data=tokens)
    lows = [p.teacher_low for p in trainer.pairs]
    assert [p.student_layer for p in trainer.pairs] == [0, 1, 2] and lows == sorted(lows)
    with pytest.raises(SemalignError, match="built for a 8-layer teacher .* the models have 6 and 3 layers"):
        Trainer(make_cfg(tmp_path / "c"), teacher=tiny_pair.teacher, student=tiny_pair.student, data=tokens,
                pairing=pair_proportional(8, 3))


# ----------------------------------------------------------------------------------------------- resume

@pytest.mark.parametrize("adapter,stop", [("full", 3), ("full", 2), ("lora", 3)])
def test_resume_after_stop_equals_uninterrupted_run(tmp_path, tiny_pair, tokens, adapter, stop):
    over = {"schedule.adapter": adapter, "schedule.lora_rank": 2, "checkpoint_every": 1,
            "schedule.lr_decay": "cosine", "schedule.warmup_steps": 1}
    whole = run(make_cfg(tmp_path / "a", **over), tiny_pair, tokens)
    cfg_b = make_cfg(tmp_path / "b", **over)
    partial = run(cfg_b, tiny_pair, tokens, stop_after_steps=stop)
    assert not partial.finished
    resumed = run(cfg_b, tiny_pair, tokens)
    assert resumed.finished
    assert resumed.final["stages"] == whole.final["stages"]
    assert resumed.final["diagnostics"] == whole.final["diagnostics"]
    sa, sb = whole.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cols = ["step", "stage", "loss", "relation", "kl", "lr", "grad_norm"]
    ta = whole.metrics().query("kind == 'train'")[cols].reset_index(drop=True)
    tb = resumed.metrics().query("kind == 'train'")[cols].reset_index(drop=True)
    assert ta.equals(tb)  # no duplicated or missing records after the resume


class ProjectorPlugin:
    """A method with its own trainable parameters (a FitNets-style projector), checkpointed with the student."""

    def __init__(self):
        self.module, self.extras = None, {}

    def open_stage(self, trainer, stage, params):
        gen = torch.Generator().manual_seed(stage.index)
        self.module = torch.nn.Linear(64, 32, bias=False)
        with torch.no_grad():
            self.module.weight.copy_(torch.randn(32, 64, generator=gen) * 0.1)
        self.extras = {"projector": self.module}
        return [*params, *self.module.parameters()]

    def close_stage(self, trainer, stage):
        self.module, self.extras = None, {}


def _projected_mse(x):
    return (x.extras["projector"](x.teacher_state) - x.state).pow(2)[x.mask].mean()


def test_plugins_add_parameters_and_resume_exactly(tmp_path, tiny_pair, tokens):
    register_objective(Objective("projected_mse_test", "layer", _projected_mse, source="test"), replace=True)
    try:
        over = {"objective.terms": {"projected_mse_test": 1.0}, "schedule.stage_steps": 3}
        whole = Trainer(make_cfg(tmp_path / "a", **over), teacher=tiny_pair.teacher, student=tiny_pair.student,
                        data=tokens, plugins=[ProjectorPlugin()])
        a = whole.run()
        layer_params = sum(p.numel() for p in whole.student.model.layers[0].parameters())
        assert whole.stage_params[0] == layer_params + 32 * 64
        b1 = Trainer(make_cfg(tmp_path / "b", **over), teacher=tiny_pair.teacher, student=tiny_pair.student,
                     data=tokens, plugins=[ProjectorPlugin()]).run(stop_after_steps=2)  # mid-stage 0
        assert not b1.finished
        b = Trainer(make_cfg(tmp_path / "b", **over), teacher=tiny_pair.teacher, student=tiny_pair.student,
                    data=tokens, plugins=[ProjectorPlugin()]).run()
        assert b.final["stages"] == a.final["stages"]
    finally:
        OBJECTIVES.pop("projected_mse_test", None)


def test_resume_with_another_config_is_refused(tmp_path, tiny_pair, tokens):
    run(make_cfg(tmp_path), tiny_pair, tokens, stop_after_steps=1)
    with pytest.raises(SemalignError, match="other inputs.*schedule.lr"):
        run(make_cfg(tmp_path, **{"schedule.lr": 5e-3}), tiny_pair, tokens)


# ----------------------------------------------------------------------------------------------- NaN

def test_non_finite_loss_names_step_stage_and_term(tmp_path, tiny_pair, tokens):
    calls = {"n": 0}

    def explode(x):
        calls["n"] += 1
        value = (x.state - x.target).pow(2).mean()
        return value * float("nan") if calls["n"] >= 3 else value

    register_objective(Objective("explode_test", "layer", explode, source="test"), replace=True)
    try:
        cfg = make_cfg(tmp_path, **{"objective.terms": {"relation": 1.0, "explode_test": 1.0}})
        with pytest.raises(NonFiniteLossError, match=r"non-finite explode_test \(nan\) at step 3, stage 1 \(L1\)") as err:
            run(cfg, tiny_pair, tokens)
        assert (err.value.step, err.value.stage, err.value.term) == (3, 1, "explode_test")
        latest = json.loads((tmp_path / "run" / "latest.json").read_text())
        assert latest["step"] == 2  # nothing after the divergence was checkpointed
    finally:
        OBJECTIVES.pop("explode_test", None)


# ----------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("overrides,message", [
    ({"learning_rate": 1e-3}, r"unknown key\(s\) \['learning_rate'\].*valid keys"),
    ({"schedule": {"lrr": 1e-3}}, r"unknown key\(s\) \['lrr'\] in config.schedule; valid keys.*'lr'"),
    ({"schedule.lr": 0.0}, "schedule.lr must be positive"),
    ({"schedule.lr": [1e-3, -1e-3, 1e-3]}, "schedule.lr must be positive"),
    ({"objective.terms": {"kl": 0.0}}, "objective.terms.kl must be a positive weight"),
    ({"objective.terms": {"relation": -1.0}}, "objective.terms.relation must be a positive weight"),
    ({"objective.terms": {"klx": 1.0}}, "unknown objective 'klx'"),
    ({"objective.options": {"kl": {"temp": 2}}}, r"unknown option\(s\) \['temp'\] for objective 'kl'"),
    ({"schedule.mode": "layerwise"}, "mode must be one of"),
    ({"targets.mode": "cached"}, r"\['kl'\] need teacher logits"),
])
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(SemalignError, match=message):
        load_align_config(None, {"objective.terms": {"relation": 1.0, "kl": 1.0}, **overrides})


def test_config_files_in_the_repo_parse():
    files = sorted((REPO / "configs").glob("align_*.toml"))
    assert files
    for path in files:
        load_align_config(path)


@pytest.mark.parametrize("pairing,message", [
    ([[5, 1, 1, 0.0]], "student layer 5, but student .* has 3 blocks"),
    ([[0, 9, 9, 0.0]], "teacher layer 9, but teacher .* has 6 blocks"),
    ([[0, 1, 1, 0.0], [0, 3, 3, 0.0]], "student layer 0 is paired twice"),
    ([[0, 3, 1, 0.5]], "teacher_low <= teacher_high"),
])
def test_pairing_that_does_not_fit_the_models_is_refused_before_training(tmp_path, tiny_pair, tokens, pairing,
                                                                         message):
    with pytest.raises(SemalignError, match=message):
        run(make_cfg(tmp_path), tiny_pair, tokens, pairing=pairing)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_list_of_wrong_length_and_wrong_transfer_shape(tmp_path, tiny_pair, tokens):
    with pytest.raises(SemalignError, match="lists 2 values but there are 3 stages"):
        run(make_cfg(tmp_path, **{"schedule.stage_steps": [1, 2]}), tiny_pair, tokens)

    class Wrong:
        matrix = torch.zeros(5, 5)

        def __call__(self, h):
            return h

    with pytest.raises(SemalignError, match=r"transfer map has shape \(5, 5\).*\[32, 64\]"):
        run(make_cfg(tmp_path), tiny_pair, tokens, transfer=Wrong())


# ----------------------------------------------------------------------------------------------- cached targets

def test_cached_targets_reproduce_online_losses_without_the_teacher(tmp_path, tiny_pair, tokens):
    terms = {"relation": 1.0, "cosine": 1.0, "fisher": 1.0, "ce": 1.0}
    over = {"objective.terms": terms, "schedule.stage_steps": 1}
    online = run(make_cfg(tmp_path / "on", **over), tiny_pair, tokens)
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "off", **over, **{"targets.mode": "cached", "targets.cache_dir": str(cache),
                                                "targets.shard_sequences": 3})
    trainer = Trainer(cfg, teacher=tiny_pair.teacher, student=tiny_pair.student, data=tokens)
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
    assert run(cfg, tiny_pair, tokens).finished


def test_cache_from_another_teacher_layer_or_tokenizer_is_refused(tmp_path, tiny_pair, tokens):
    from semalign_lens.zoo.tiny import tiny_pair as build

    cache = tmp_path / "cache"
    over = {"targets.mode": "cached", "targets.cache_dir": str(cache), "objective.terms": {"relation": 1.0},
            "schedule.stage_steps": 1}
    run(make_cfg(tmp_path / "a", **over), tiny_pair, tokens, stop_after_steps=1)
    other = build(seed=7)
    with pytest.raises(SemalignError, match="another teacher weights"):
        Trainer(make_cfg(tmp_path / "b", **over), teacher=other.teacher, student=tiny_pair.student, data=tokens)
    with pytest.raises(SemalignError, match=r"holds teacher layers \[1, 3, 5\].*needs \[4\]"):
        Trainer(make_cfg(tmp_path / "c", **over), teacher=tiny_pair.teacher, student=tiny_pair.student, data=tokens,
                pairing=[[0, 4, 4, 0.0]])
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "0" * 64}))
    with pytest.raises(SemalignError, match="another tokenizer"):
        Trainer(make_cfg(tmp_path / "d", **over), teacher=tiny_pair.teacher, student=tiny_pair.student, data=tokens)
    assert not (tmp_path / "b" / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------- CLI and scale-out

def _write_tiny_models(tmp_path: Path) -> tuple[Path, Path, Path]:
    from semalign_lens.zoo.tiny import tiny_hf_pair

    teacher, student, tok = tiny_hf_pair(seed=0)
    dirs = []
    for name, model in (("teacher", teacher), ("student", student)):
        out = tmp_path / name
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        dirs.append(out)
    text = tmp_path / "text"
    text.mkdir()
    import json as json_module
    import textwrap

    for module in (json_module, textwrap):
        shutil.copy(module.__file__, text / Path(module.__file__).name)
    return dirs[0], dirs[1], text


def _cli_config(tmp_path: Path) -> Path:
    teacher, student, text = _write_tiny_models(tmp_path)
    cfg = {"teacher": str(teacher), "student": str(student), "progress": False, "report": False,
           "data": {"source": str(text), "seq_len": 32, "n_sequences": 16, "batch_size": 4, "diag_sequences": 4},
           "schedule": {"stage_steps": 2, "lr": 1e-2}, "objective": {"terms": {"relation": 1.0, "kl": 1.0}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def _train_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("kind") == "train"]


@pytest.mark.slow
def test_two_accelerate_processes_match_one(tmp_path):
    """`accelerate launch` with 2 CPU processes gives the single-process losses (same global batch).

    Accelerate's `--cpu` launcher only starts several processes through mpirun; without MPI the launcher
    that starts N local processes is `--multi_gpu` (torchrun). The trainer then selects the CPU/gloo backend
    itself because the machine has no accelerator.
    """
    config = _cli_config(tmp_path)
    single = align_main(config, [f"run_dir={tmp_path / 'one'}"])
    assert single.finished
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "semalign_lens.trainer", "--config", str(config), "--set", f"run_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["processes"] == 2
    one, two = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4, atol=1e-5), (one, two)


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real kill (SIGKILL of the `semalign align` process after its first checkpoints), then a resume in
    this process: the same losses at every step and the same final weights as a run never interrupted."""
    import signal
    import time

    from safetensors.torch import load_file

    config = _cli_config(tmp_path)
    over = ["schedule.stage_steps=20", "checkpoint_every=1"]
    whole = align_main(config, [*over, f"run_dir={tmp_path / 'whole'}"])
    killed = tmp_path / "killed"
    # the same thread count as this process: BLAS splits its reductions by thread, so another count sums in
    # another order and the runs would differ in the last bits (1e-7 here) for reasons unrelated to resuming
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "semalign_lens.trainer", "--config", str(config),
                             *(f"--set={kv}" for kv in [*over, f"run_dir={killed}"])], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "latest.json").exists() and json.loads((killed / "latest.json").read_text())["step"] >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    done_before_kill = len(_train_losses(killed))
    assert 3 <= done_before_kill < len(_train_losses(tmp_path / "whole"))
    resumed = align_main(config, [*over, f"run_dir={killed}"])
    assert resumed.finished and resumed.final["stages"] == whole.final["stages"]
    assert _train_losses(killed) == _train_losses(tmp_path / "whole")
    final = sorted((tmp_path / "whole" / "student").glob("*.safetensors"))
    assert final, "no final student weights written"
    for path in final:
        a, b = load_file(str(path)), load_file(str(killed / "student" / path.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path.name


def test_align_main_reads_a_config_file_with_overrides(tmp_path):
    config = _cli_config(tmp_path)
    result = align_main(config, ["schedule.stage_steps=1", f"run_dir={tmp_path / 'cli'}"])
    assert result.finished and result.final["step"] == 3
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["schedule"]["stage_steps"] == 1


@pytest.mark.slow
def test_short_run_on_the_real_teacher(tmp_path, smollm2):
    """SmolLM2-135M teacher, a random 2 x 64 Llama student with its vocabulary, cached and online targets."""
    from transformers import LlamaForCausalLM

    from semalign_lens.models import load_model
    from semalign_lens.zoo.pretrain import StudentArch

    tok = smollm2.tokenizer
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    arch = StudentArch(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_mlp=128)
    torch.manual_seed(0)
    student = load_model(LlamaForCausalLM(arch.hf_config(len(tok), bos_id=eos, eos_id=eos)), tokenizer=tok,
                         name="random-2x64")
    over = {"data.source": "code-transfer", "data.seq_len": 32, "data.n_sequences": 8, "schedule.stage_steps": 1,
            "objective.terms": {"relation": 1.0, "fisher": 1.0, "kl": 1.0}}
    result = align(make_cfg(tmp_path / "online", **over), teacher=smollm2, student=student)
    assert result.finished and [p["teacher_low"] for p in json.loads((result.run_dir / "pairing.json").read_text())] \
        == [14, 29]
    assert result.final["stages"][-1]["loss"] > 0
    over["objective.terms"] = {"relation": 1.0, "cosine_onehot": 1.0}
    cached = align(make_cfg(tmp_path / "cached", **over, **{"targets.mode": "cached",
                                                           "targets.cache_dir": str(tmp_path / "cache")}),
                   teacher=smollm2, student=student)
    assert cached.finished
    assert load_model(cached.student_path).cfg.n_layers == 2


def test_pair_target_interpolates_two_teacher_layers():
    """The trainer reads targets from its capture dict through `block_states`; degenerate config rows (weight
    0 or 1, low == high) become the exact pair on the one layer they name."""
    from semalign_lens.hf import block_states
    from semalign_lens.training.setup import _pairs_from

    states = block_states({f"post.{i}": torch.full((1, 2, 3), float(i)) for i in range(4)} | {"embed": None})
    interpolated, same, low, high = _pairs_from([[0, 2, 3, 0.25], [1, 1, 1, 0.5], [2, 3, 3, 0.0], [3, 2, 3, 1.0]])
    assert torch.equal(interpolated.target(states), torch.full((1, 2, 3), 2.25))
    assert same.target(states) is states[1] and low.target(states) is states[3] and high.target(states) is states[3]
    with pytest.raises(SemalignError, match="adjacent layers"):
        _pairs_from([[0, 1, 3, 0.5]])
