"""Step cost of the layer terms (lens-KL, interchange, relation-KL) against logit KD, with cached targets. A
benchmark, not a test.

Per method, `Trainer._step` at the start of a frontier stage (the lens term is then active: it anneals to zero
by mid-stage and costs nothing after), on the transfer table's shape: batch 8 x 64 tokens, LoRA r16 on
v/o/up/down of the paired layer, teacher targets from a top-k (k = 64) cache (one per method: `lens-kl`'s also
holds the teacher's logit-lens top-k per pair). Methods are interleaved round by round and the medians reported
(the 2-core machine is shared). `gradcos` is the `lens-kl` step with the gradient diagnostics on
(`gradcos_every = 1`). `--clock cpu` times the process's CPU seconds (`time.process_time`) instead of the wall
clock: on a machine loaded by other jobs the wall time of a step grows with the time slices it waits for, its CPU
time much less; with `--threads 1` (no intra-op workers spinning) it is the least disturbed measure.

    python benchmarks/bench_layer_terms.py --pair tiny
    python benchmarks/bench_layer_terms.py --pair embedded --rounds 5      # SmolLM2-135M -> stdlib-student
    python benchmarks/bench_layer_terms.py --pair embedded --methods kd lens-kl --stage first
    python benchmarks/bench_layer_terms.py --pair embedded --methods kd lens-kl --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from semalign_lens.core.precision import machine_line
from semalign_lens.data.transfer import code_transfer_batch
from semalign_lens.evaluation.protocol import RunProfile, load_pair, shared_config
from semalign_lens.training.methods import method_trainer

METHODS = ["kd", "lens-kl", "interchange", "relation-kl", "semalign", "semalign-balanced", "gradcos"]
PAIRS = {"tiny": ("tiny", "tiny", (0, 2)), "embedded": ("smollm2-135m", "stdlib-student", (0, 1, 2, 3, 4, 5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stage", choices=["first", "last"], default="last")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, help="kd is always measured")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    methods = ["kd"] + [m for m in args.methods if m != "kd"]
    torch.set_num_threads(args.threads)
    teacher_name, student_name, layers = PAIRS[args.pair]
    profile = RunProfile(teacher=teacher_name, student=student_name, seq_len=64, batch_size=8, student_layers=layers,
                         lora_rank=16 if args.pair == "embedded" else 4)
    print(machine_line(profile.precision))
    pair = load_pair(teacher_name, student_name)
    data = code_transfer_batch(pair.student.tokenizer, 40, 64)
    work = Path(tempfile.mkdtemp(prefix="bench-layer-terms-"))
    trainers = {}
    for name in methods:
        base = shared_config(profile, len(data), cache_dir=work / "cache" / name)
        base.targets.cache_logits, base.targets.top_k = "topk", 64
        base.figures, base.progress = False, False
        if name == "gradcos":
            base.gradcos_every = 1
        trainer = method_trainer("lens-kl" if name == "gradcos" else name, base, pair, data=data, run_dir=work / name, lean=True)
        stage = trainer.stages[0 if args.stage == "first" else -1]
        trainer._prepare_run_dir()
        trainer._open_stage(stage)
        trainer._step(stage.start, stage)  # warm-up
        trainers[name] = (trainer, stage)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, (trainer, stage) in trainers.items():
            t0 = clock()
            trainer._step(stage.start, stage)
            times[name].append(clock() - t0)
    kd, kd_min = statistics.median(times["kd"]), min(times["kd"])
    print(f"pair {args.pair} ({teacher_name} -> {student_name}), {args.stage} frontier stage (student layer "
          f"{stage.pairs[0].student_layer}), {args.rounds} rounds, {args.threads} threads, {args.clock} clock")
    print(f"| method | step {args.clock} s (median) | min | x kd (median) | x kd (min) |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {min(values):.3f} | {med / kd:.2f} | {min(values) / kd_min:.2f} |")


if __name__ == "__main__":
    main()
