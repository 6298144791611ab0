"""Wall time of the main job, `semalign demo` (and `--quick`), each in a fresh process, with the machine named.

The budget is 10 min for the demo and 2 min for `--quick` on an idle 2-core machine of either CPU kind.
`--avx2` runs the child with torch's and oneDNN's kernels capped at AVX2 (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`): on a CPU with native bf16 this reproduces the AVX2-only machine's code path
(no native bf16, so `precision = "auto"` resolves to fp32) — same kernels, not the same hardware.
The teacher's one-time conversion is not timed (it runs first, outside the measurement).

    python benchmarks/bench_demo.py [--profiles demo,quick] [--avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def machine(env: dict) -> str:
    code = "from semalign_lens.core.precision import machine_line; print(machine_line())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def run(profile: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "semalign_lens", "demo", "--profile", profile, "--out", out,
                               "--no-progress"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(f"demo --profile {profile} failed:\n{proc.stderr[-3000:]}")
        stages = json.loads((Path(out) / "timings.json").read_text())["timings_s"]
    return {"profile": profile, "wall_s": wall, "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime
            - before.ru_stime, "peak_rss_gb": after.ru_maxrss / 2**20, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="demo,quick")
    parser.add_argument("--avx2", action="store_true", help="cap the kernels at AVX2 (see the docstring)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(AVX2_ENV if args.avx2 else {})}
    subprocess.run([sys.executable, "-c", "from semalign_lens.models.zoo import resolve; resolve('smollm2-135m')"],
                   env=env, check=True)  # the one-time conversion, untimed
    print(machine(env) + (" (kernels capped at AVX2)" if args.avx2 else ""))
    print("| profile | wall | CPU time | peak RSS | stages (s) |\n|---|---|---|---|---|")
    for profile in args.profiles.split(","):
        r = run(profile, env)
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items() if k != "total")
        print(f"| `{profile}` | {r['wall_s'] / 60:.1f} min | {r['cpu_s'] / 60:.1f} min | {r['peak_rss_gb']:.1f} GB "
              f"| {stages} |", flush=True)


if __name__ == "__main__":
    main()
