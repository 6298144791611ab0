"""The training loop on the tiny pair: each objective, run directory, resume, plugins, NaN, CLI, scale-out."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from trainer_helpers import (
    N_STUDENT,
    _cli_config,
    _train_losses,
    changed,
    initial_student,
    layer_of,
    make_cfg,
    run,
)

from semalign_lens.cli import align_main
from semalign_lens.core.errors import SemalignError
from semalign_lens.models.plain import clean_copy
from semalign_lens.training import NonFiniteLossError, Trainer, align
from semalign_lens.training.objectives import OBJECTIVES, Objective, get_objective, register_objective


@pytest.mark.parametrize("terms", [{"cosine": 1.0}, {"relation": 1.0}, {"fisher": 1.0}, {"kl": 1.0},
                                   {"cosine_onehot": 1.0}, {"ce": 1.0},
                                   {"cosine": 0.5, "relation": 1.0, "fisher": 2.0, "kl": 1.0, "cosine_onehot": 0.1}])
def test_each_objective_trains_a_short_run(tmp_path, tiny_pair, tokens, terms):
    cfg = make_cfg(tmp_path, **{"objective.terms": terms, "schedule.stage_steps": 1})
    before = initial_student(tiny_pair)
    result = run(cfg, tiny_pair, tokens)
    assert result.finished and result.final["step"] == N_STUDENT
    train = result.metrics().query("kind == 'train'")
    assert len(train) == N_STUDENT
    for name in [*terms, "loss"]:
        assert train[name].notna().all() and torch.isfinite(torch.tensor(train[name].to_numpy())).all()
    moved = {layer_of(k) for k in changed(before, result.student)}
    assert {f"layer{s}" for s in range(N_STUDENT)} <= moved, moved  # every frontier stage moved its layer


def test_run_directory_holds_everything(tmp_path, tiny_pair, tokens):
    from semalign_lens.models.load import load_model
    from semalign_lens.reports.run import draw_run
    from semalign_lens.training import AlignResult

    cfg = make_cfg(tmp_path, report=True, figures=True, diag_every=1, **{"schedule.stage_steps": 2})
    result = run(cfg, tiny_pair, tokens)
    d = result.run_dir
    for name in ("config.json", "metrics.jsonl", "final.json", "pairing.json", "identity.json", "transfer.safetensors"):
        assert (d / name).exists(), name
    assert not (d / "report.html").exists() and not (d / "figures").exists()  # the trainer writes records only
    maps = [f"cka_stage{stage}_{when}" for stage in range(N_STUDENT) for when in ("start", "end")]
    assert list(result.cka) == maps and all((d / "diagnostics" / f"{m}.json").exists() for m in maps)
    again = AlignResult.from_run_dir(d)  # what the result carries is what the directory holds
    assert again.records == result.records and again.cka == result.cka and again.final == result.final
    assert (again.config, again.pairing, again.provenance, again.student_path) == \
        (result.config, result.pairing, result.provenance, result.student_path)
    assert draw_run(result) == d / "report.html" == result.report_path
    for name in ("figures/loss_curves.html", "figures/projections.html", *(f"figures/{m}.html" for m in maps)):
        assert (d / name).exists(), name
    assert json.loads((d / "config.json").read_text())["objective"]["terms"] == {"relation": 1.0, "kl": 1.0}
    metrics = result.metrics()
    diag = metrics.query("kind == 'diag'")
    for column in ("cos_state", "cos_contribution", "relation_cka", "span_share", "top1_teacher", "top1_target"):
        assert diag[column].between(-1, 1).all(), column
    assert set(diag["student_layer"]) == {0, 1, 2}
    # the held-out CE per diagnosis: at step 0 it is the untrained student's HF loss on the diagnostic batch
    # (the first diag_sequences of the data), at the end the trained student's
    heldout = metrics.query("kind == 'heldout'").sort_values("step")
    diag_tokens = tokens.tokens[: cfg.data.diag_sequences]
    hf_student = clean_copy(tiny_pair.student, share_weights=False).eval()
    with torch.no_grad():
        assert heldout.ce.iloc[0] == pytest.approx(hf_student(input_ids=diag_tokens, labels=diag_tokens).loss.item(),
                                                   rel=1e-4)
        trained = result.student.eval()(input_ids=diag_tokens, labels=diag_tokens).loss.item()
    assert heldout.step.iloc[0] == 0 and heldout.ce.iloc[-1] == pytest.approx(trained, rel=1e-4)
    # the final student is an HF directory that load_model reads back, with the trained weights
    loaded = load_model(result.student_path)
    x = tokens.tokens[:2]
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.student(input_ids=x).logits, atol=1e-4)
    assert "Loss per term" in (d / "report.html").read_text()


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
        whole = Trainer(make_cfg(tmp_path / "a", **over), tiny_pair,
                        data=tokens, plugins=[ProjectorPlugin()])
        a = whole.run()
        layer_params = sum(p.numel() for p in whole.student.model.layers[0].parameters())
        assert whole.stage_params[0] == layer_params + 32 * 64
        b1 = Trainer(make_cfg(tmp_path / "b", **over), tiny_pair,
                     data=tokens, plugins=[ProjectorPlugin()]).run(stop_after_steps=2)  # mid-stage 0
        assert not b1.finished
        b = Trainer(make_cfg(tmp_path / "b", **over), tiny_pair,
                    data=tokens, plugins=[ProjectorPlugin()]).run()
        assert b.final["stages"] == a.final["stages"]
    finally:
        OBJECTIVES.pop("projected_mse_test", None)


def test_resume_with_another_config_is_refused(tmp_path, tiny_pair, tokens):
    run(make_cfg(tmp_path), tiny_pair, tokens, stop_after_steps=1)
    with pytest.raises(SemalignError, match="other inputs.*schedule.lr"):
        run(make_cfg(tmp_path, **{"schedule.lr": 5e-3}), tiny_pair, tokens)


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


def _scale_out_jobs(tmp_path, outs) -> dict[str, list[dict]]:
    """The runs of the two-process tests, per output directory: the CLI's (online targets, full fine-tuning),
    cached top-k targets with LoRA, and every registered method at 2 steps (LoRA, cached targets where the method
    reads the teacher's, a student with another tokenizer for the cross-vocabulary rows). Each run builds its
    target cache in its output directory."""
    from semalign_lens.models.tiny import TINY_OTHER_VOCAB, TINY_STUDENT, tiny_hf_model, tiny_tokenizer

    config = json.loads(_cli_config(tmp_path).read_text())
    other = tmp_path / "student-other-tokenizer"
    tok = tiny_tokenizer(TINY_OTHER_VOCAB, "other")
    tiny_hf_model(TINY_STUDENT, len(tok), 1).save_pretrained(str(other))
    tok.save_pretrained(str(other))
    return {n: _jobs(config, other, out) for n, out in outs.items()}


def _jobs(config: dict, other, out) -> list[dict]:
    from semalign_lens.training.methods import METHODS

    cached = {"mode": "cached", "cache_logits": "topk", "top_k": 16}
    lora = {"stage_steps": 2, "lr": 1e-2, "adapter": "lora", "lora_rank": 2}
    tracked = {"trackers": ["tensorboard"]} if importlib.util.find_spec("tensorboard") else {}
    jobs = [{"name": "cli", "config": {**config, **tracked}, "cli": True},
            {"name": "cached-lora", "config": {**config, "schedule": lora,
                                               "targets": {**cached, "cache_dir": str(out / "cache-cached-lora")}}}]
    lean = {**config, "schedule": {**lora, "stage_steps": 1}, "pairing": {"student_layers": [0, 2]}}
    for name, method in METHODS.items():
        if method.cross_vocab:  # online: a cross-tokenizer pair reads the teacher on its own tokenization
            jobs.append({"name": name, "method": name, "config": {**lean, "student": str(other),
                                                                  "vocab": "intersection"}})
        else:
            jobs.append({"name": name, "method": name,
                         "config": {**lean, "targets": {**cached, "cache_dir": str(out / f"cache-{name}")}}})
    return jobs


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory):
    """Every `_scale_out_jobs` run under `accelerate launch` with 2 CPU processes (one launch: starting two
    processes costs more than their runs), then in this process: (jobs, {"one"|"two": output directory}).

    Accelerate's `--cpu` launcher only starts several processes through mpirun; without MPI the launcher
    that starts N local processes is `--multi_gpu` (torchrun). The trainer then selects the CPU/gloo backend
    itself because the machine has no accelerator.
    """
    from scale_out_runs import run_jobs

    tmp_path = tmp_path_factory.mktemp("scale_out")
    outs = {n: tmp_path / n for n in ("one", "two")}
    jobs = _scale_out_jobs(tmp_path, outs)
    for n, out in outs.items():
        out.mkdir()
        (tmp_path / f"jobs-{n}.json").write_text(json.dumps(jobs[n]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = os.path.join(os.path.dirname(__file__), "scale_out_runs.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           script, str(tmp_path / "jobs-two.json"), str(outs["two"])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_jobs(tmp_path / "jobs-one.json", outs["one"])
    return jobs["two"], outs


def _terms(job: dict) -> list[str]:
    from semalign_lens.training.methods import get_method

    return list(get_method(job["method"]).terms if job.get("method") else job["config"]["objective"]["terms"])


def _cross_vocab(job: dict) -> bool:
    return job["config"].get("vocab") == "intersection"


def _balanced(job: dict) -> bool:
    """A term balanced each step (`balance`: α = L_KL / L_term from each process's own values)."""
    from semalign_lens.training.methods import get_method

    options = get_method(job["method"]).options if job.get("method") else job["config"]["objective"].get("options", {})
    return any(o.get("balance") for o in options.values())


@pytest.mark.slow
def test_two_accelerate_processes_match_one(scale_out):
    """`accelerate launch` with 2 CPU processes gives the single-process losses (same global batch), for the
    CLI's run (online targets), cached targets with LoRA and every registered method of one vocabulary; the
    teacher is loaded in the second process only where a step or a plugin reads it there; the process group
    waits 2 h (`training/processes.py`)."""
    jobs, outs = scale_out
    assert json.loads((outs["two"] / "cli" / "provenance.json").read_text())["processes"] == 2
    if "trackers" in jobs[0]["config"]:  # one process logs: one TensorBoard file, with every train record
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        folder = outs["two"] / "cli" / "trackers" / "semalign"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        board = EventAccumulator(str(folder))
        board.Reload()
        logged = [(e.step, e.value) for e in board.Scalars("train/loss")]
        assert [s for s, _ in logged] == list(range(1, 7))
        assert torch.allclose(torch.tensor([v for _, v in logged]), torch.tensor(_train_losses(outs["two"] / "cli")))
    second = json.loads((outs["two"] / "process1.json").read_text())
    assert second["timeout_s"] == 7200.0  # PROCESS_GROUP_TIMEOUT, not gloo's 30 min or NCCL's 10
    for job in jobs:
        name, teacher, config = job["name"], job["config"]["teacher"], job["config"]
        one, two = _train_losses(outs["one"] / name), _train_losses(outs["two"] / name)
        assert len(one) == len(two) == (6 if name in ("cli", "cached-lora") else 2), name
        assert all(map(math.isfinite, two)), (name, two)
        # a term with a batch statistic (FitNets' normaliser, interchange's in-batch sources) takes it over each
        # process's share of the batch, and a balanced term its α from each process's own values
        if not _cross_vocab(job) and not _balanced(job) and not any(get_objective(t).batch_statistic
                                                                    for t in _terms(job)):
            assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4, atol=1e-5), (name, one, two)
        # the main process loads the teacher for every run; the other one only where its steps run the teacher
        # (online targets, or a term that runs it each step: an interchange, a teacher logit lens not read from a
        # top-k cache) or a plugin reads it (Seeking, LaTen)
        lens_cached = config.get("targets", {}).get("cache_logits") == "topk"
        runs_teacher = any("teacher_model" in get_objective(t).needs
                           or ("teacher_lens" in get_objective(t).needs and not lens_cached) for t in _terms(job))
        reads_teacher_here = "targets" not in config or runs_teacher or name in ("seeking", "laten")
        assert json.loads((outs["two"] / "process0.json").read_text())["loads"][name].count(teacher) == 1, name
        assert second["loads"][name].count(teacher) == int(reads_teacher_here), name


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known: each process's (and micro-batch's) loss is weighted by its share of "
                   "the batch's real tokens, but a cross-tokenizer term averages over its aligned positions, so two "
                   "processes weight the halves of the batch differently from one (measured on kd-shared: the "
                   "2-process step-1 loss is the token-weighted mean of the halves' losses, 0.176211 vs 0.1762107)")
def test_two_accelerate_processes_match_one_across_tokenizers(scale_out):
    jobs, outs = scale_out
    for job in filter(_cross_vocab, jobs):
        one, two = _train_losses(outs["one"] / job["name"]), _train_losses(outs["two"] / job["name"])
        assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4, atol=1e-5), (job["name"], one, two)


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
    proc = subprocess.Popen([sys.executable, "-m", "semalign_lens", "align", "--config", str(config),
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

    from semalign_lens.models.load import load_model
    from semalign_lens.models.pair import ModelPair
    from semalign_lens.training.pretrain import StudentArch

    tok = smollm2.tokenizer
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    arch = StudentArch(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, d_mlp=128)
    torch.manual_seed(0)
    student = load_model(LlamaForCausalLM(arch.hf_config(len(tok), bos_id=eos, eos_id=eos)), tokenizer=tok,
                         name="random-2x64")
    over = {"data.source": "code-transfer", "data.seq_len": 32, "data.n_sequences": 8, "schedule.stage_steps": 1,
            "objective.terms": {"relation": 1.0, "fisher": 1.0, "kl": 1.0}}
    result = align(make_cfg(tmp_path / "online", **over), ModelPair(smollm2, student))
    assert result.finished and [p["teacher_low"] for p in json.loads((result.run_dir / "pairing.json").read_text())] \
        == [14, 29]
    assert result.final["stages"][-1]["loss"] > 0
    over["objective.terms"] = {"relation": 1.0, "cosine_onehot": 1.0}
    cached = align(make_cfg(tmp_path / "cached", **over, **{"targets.mode": "cached",
                                                           "targets.cache_dir": str(tmp_path / "cache")}),
                   ModelPair(smollm2, student))
    assert cached.finished
    assert load_model(cached.student_path).cfg.n_layers == 2


def test_on_step_plugins_see_every_step(tmp_path, tiny_pair, tokens):
    """The `on_step` hook (how the demo's stage bar shows the training step) runs after every optimiser step."""
    seen = []

    class Note:
        def on_step(self, trainer, step, total):
            seen.append((step, total))

    cfg = make_cfg(tmp_path, **{"schedule.stage_steps": 2})
    trainer = Trainer(cfg, tiny_pair, data=tokens, plugins=[Note()])
    trainer.run()
    total = trainer.stages[-1].end
    assert seen == [(k, total) for k in range(1, total + 1)]
