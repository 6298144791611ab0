"""Cost of one SemAlign training step against its baselines. A benchmark, not a test.

Targets (8 x 256 tokens, teacher SmolLM2-135M, the default student or a random 6 x 256 Llama with SmolLM2's
vocabulary while the shipped one is missing):
- online:  SemAlign step <= 1.25 x (plain supervised step of the same student + teacher forward to the deepest
           paired layer);
- cached:  SemAlign step <= 1.15 x the plain supervised step.

Every case runs in its own subprocess (clean peak-memory numbers). Within a case the three steps are
interleaved round by round and the medians reported, because this 2-core machine is shared and noisy.

- plain step: the student's stock HF forward with labels (next-token CE, all parameters trainable, AdamW);
- teacher forward: no_grad, hidden states only, stopped after the deepest paired block (what the online
  targets run when no teacher logits are needed);
- SemAlign step: `Trainer._step` — batch, teacher targets, student forward with captures, TransferMap, loss
  terms, backward, clipping, AdamW — in the named stage (frontier stage of the first or last paired layer,
  or the joint stage).

    python benchmarks/bench_align_step.py                   # all cases, prints a table
    python benchmarks/bench_align_step.py --write-results   # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Alignment step"

# name: (objective terms, schedule mode, which stage, targets mode)
CASES = {
    "online relation+kl, frontier last layer": ({"relation": 1.0, "kl": 1.0}, "frontier", "last", "online"),
    "online relation+kl, frontier first layer": ({"relation": 1.0, "kl": 1.0}, "frontier", "first", "online"),
    "online relation+kl, joint (6 layers)": ({"relation": 1.0, "kl": 1.0}, "joint", "first", "online"),
    "online fisher+kl, frontier last layer": ({"fisher": 1.0, "kl": 1.0}, "frontier", "last", "online"),
    "cached relation, frontier last layer": ({"relation": 1.0}, "frontier", "last", "cached"),
    "cached relation+cosine_onehot, frontier last": ({"relation": 1.0, "cosine_onehot": 1.0}, "frontier", "last",
                                                     "cached"),
    "cached relation, joint (6 layers)": ({"relation": 1.0}, "joint", "first", "cached"),
    "cached relation+kl (fp16 logits cached), frontier last": ({"relation": 1.0, "kl": 1.0}, "frontier", "last",
                                                               "cached"),
}


class PeakRSS:
    """Samples this process's resident set size every 2 ms while active (torch's CPU allocations included)."""

    def __init__(self):
        self.peak = 0
        self._on = False
        self._page = os.sysconf("SC_PAGE_SIZE")
        threading.Thread(target=self._loop, daemon=True).start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _loop(self):
        while True:
            if self._on:
                self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def measure(self, fn):
        self.peak = self.rss()
        self._on = True
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        self._on = False
        return elapsed, max(self.peak, self.rss())


def load_student(tokenizer):
    from semalign_lens.models.load import load_model
    from semalign_lens.models.zoo import STUDENT_DIR

    if (STUDENT_DIR / "model.safetensors").exists():
        return load_model("stdlib-student"), "stdlib-student"
    import torch
    from transformers import LlamaForCausalLM

    from semalign_lens.training.pretrain import StudentArch

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(StudentArch().hf_config(len(tokenizer), bos_id=eos, eos_id=eos))  # eos row zero, as pretrained
    return load_model(hf, tokenizer=tokenizer, name="random-llama-6x256"), "random Llama 6 x 256 (SmolLM2 vocab)"


def worker(case: str, rounds: int) -> dict:
    import torch

    from semalign_lens.models.load import load_model
    from semalign_lens.models.pair import ModelPair
    from semalign_lens.models.plain import clean_copy
    from semalign_lens.models.residuals import residual_states
    from semalign_lens.training import Trainer, load_align_config

    terms, mode, which, targets = CASES[case]
    torch.set_flush_denormal(True)  # as `Trainer.run` does (flush_denormal = true); for all three phases alike
    teacher = load_model("smollm2-135m")
    student, student_name = load_student(teacher.tokenizer)
    run_dir = tempfile.mkdtemp(prefix="bench-align-")
    cfg = load_align_config(None, {
        "run_dir": run_dir, "progress": False, "report": False,
        "data.source": "code-transfer", "data.seq_len": 256, "data.n_sequences": 16, "data.batch_size": 8,
        "data.diag_sequences": 2, "objective.terms": terms, "schedule.mode": mode, "schedule.lr": 1e-4,
        "targets.mode": targets, "targets.cache_dir": str(Path(run_dir) / "cache"),
        "targets.cache_logits": targets == "cached" and "kl" in terms})
    trainer = Trainer(cfg, ModelPair(teacher, student))
    stage = trainer.stages[-1] if which == "last" else trainer.stages[0]
    trainer._open_stage(stage)
    plain = clean_copy(student, share_weights=False).train()
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.95))
    teacher_hf = clean_copy(teacher, share_weights=True).eval().requires_grad_(False)
    deepest = max(trainer.teacher_layers)
    tokens = trainer.data.tokens[:8]

    def plain_step():
        loss = plain(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.no_grad():
            residual_states(teacher_hf, tokens, [deepest])

    step = {"i": stage.start}

    def align_step():
        trainer._step(step["i"], stage)
        step["i"] = min(step["i"] + 1, stage.end - 1)

    rss = PeakRSS()
    fns = {"plain": plain_step, "teacher": teacher_forward, "align": align_step}
    if targets == "cached":  # the cached target compares with the plain step alone
        del fns["teacher"]
    for fn in fns.values():  # warm-up (allocator, one-off initialisation)
        fn()
    times = {k: [] for k in fns}
    peaks = {k: 0 for k in fns}
    before = {k: 0 for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            base = rss.rss()
            seconds, peak = rss.measure(fn)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            before[name] = max(before[name], peak - base)
    shutil.rmtree(run_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    med.setdefault("teacher", float("nan"))
    best.setdefault("teacher", float("nan"))
    peaks.setdefault("teacher", float("nan"))
    before.setdefault("teacher", float("nan"))
    return {"case": case, "student": student_name, "teacher_layers": trainer.teacher_layers,
            "stage": stage.label, "targets": targets, "terms": terms, "mode": mode,
            "threads": torch.get_num_threads(), "rounds": rounds,
            "seconds": med, "all_seconds": times,
            "peak_rss_gb": {k: v / 2**30 for k, v in peaks.items()},
            "step_rss_increase_gb": {k: v / 2**30 for k, v in before.items()},
            "ratio_online": med["align"] / (med["plain"] + med["teacher"]),
            "ratio_plain": med["align"] / med["plain"],
            "ratio_online_min": best["align"] / (best["plain"] + best["teacher"]),
            "ratio_plain_min": best["align"] / best["plain"]}


def table(results: list[dict]) -> str:
    lines = ["| case | SemAlign step s | plain step s | teacher fwd s | ratio vs plain+teacher (median; min) "
             "| ratio vs plain (median; min) | target (median) | peak RSS GB (SemAlign / plain) "
             "| step RSS increase GB (SemAlign / plain) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, online = r["seconds"], r["targets"] == "online"
        if online:
            target = f"≤ 1.25 vs plain+teacher: **{'met' if r['ratio_online'] <= 1.25 else 'missed'}**"
            teacher, vs_both = f"{s['teacher']:.2f}", f"{r['ratio_online']:.2f}; {r['ratio_online_min']:.2f}"
        else:
            target = f"≤ 1.15 vs plain: **{'met' if r['ratio_plain'] <= 1.15 else 'missed'}**"
            teacher = vs_both = "–"
        peak, inc = r["peak_rss_gb"], r["step_rss_increase_gb"]
        lines.append(f"| {r['case']} | {s['align']:.2f} | {s['plain']:.2f} | {teacher} | {vs_both} | "
                     f"{r['ratio_plain']:.2f}; {r['ratio_plain_min']:.2f} | {target} | "
                     f"{peak['align']:.2f} / {peak['plain']:.2f} | "
                     f"{inc['align']:.2f} / {inc['plain']:.2f} |")
    return "\n".join(lines)


def write_results(results: list[dict], command: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    r0 = results[0]
    body = (f"{SECTION}\n\nCommand: `{command}` ({r0['rounds']} interleaved rounds per case; step times are "
            "medians, ratios are given for the medians and for the per-phase minima (the least disturbed runs); "
            "denormals flushed to zero in all phases, as `Trainer.run` does; "
            f"{r0['threads']} torch thread(s); fp32; 8 x 256 tokens per step; teacher SmolLM2-135M, student "
            f"{r0['student']}; proportional pairing of all 6 student layers, teacher blocks "
            f"{r0['teacher_layers']}; TransferMap kind dual). Each case ran in its own process; peak RSS "
            "is that process's resident memory during the step (models included), the increase is over the "
            "RSS just before the step. Plain step = the student's stock HF forward with labels (next-token CE), "
            "all parameters trainable, AdamW; teacher fwd = no_grad forward stopped after the deepest paired "
            "block (hidden states only); SemAlign step = `Trainer._step` (batch, teacher targets, student forward "
            "with captures, TransferMap, loss terms, backward, clipping, AdamW) in the named stage.\n\n"
            + table(results) + "\n")
    if SECTION in text:  # replace the header and the table; keep the hand-written reading below the table
        start = text.index(SECTION)
        table_start = text.index("\n| case", start)
        table_end = text.find("\n\n", table_start)
        text = text[:start] + body + (text[table_end + 1:] if table_end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="all", help="case names separated by ';', or 'all'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1: steadier)")
    parser.add_argument("--json", default=None, help="also write all results to this JSON file")
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if not args.worker:
        from semalign_lens.core.precision import machine_line

        print(machine_line())
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.rounds)), flush=True)
        return
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(";")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    results = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--rounds", str(args.rounds)], env=env,
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"case {name!r} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
        r = results[-1]
        print(f"{name}: align {r['seconds']['align']:.2f}s plain {r['seconds']['plain']:.2f}s teacher "
              f"{r['seconds']['teacher']:.2f}s -> {r['ratio_online']:.2f}x plain+teacher, {r['ratio_plain']:.2f}x "
              "plain", flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write_results:
        write_results(results, "python benchmarks/bench_align_step.py --write-results"
                      + (f" --rounds {args.rounds}" if args.rounds != 3 else ""))


if __name__ == "__main__":
    main()
