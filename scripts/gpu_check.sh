#!/usr/bin/env bash
# The GPU check (issue 33, item 6; ours) as one prepared command: every stage in bf16 on CUDA against fp32 on
# the CPU, on the shipped teacher stdlib-student (analysis/gpu_check.py says what runs and why that pair).
#
#   bash scripts/gpu_check.sh                          # on a GPU machine: size gpu, bf16 on cuda
#   bash scripts/gpu_check.sh --device cpu --size smoke   # the dry run on a CPU: every stage wired, in minutes
#
# On a machine without network whose Python lacks transformer-lens (the device tool's: CUDA torch and no
# more of ours), it first installs the carried wheelhouse (`bash scripts/gpu_wheels.sh download` made it
# here; SEMALIGN_WHEELHOUSE names another folder than .wheelhouse). The device tool's call, ~1 to 4 min of
# device time:
#   run(command="bash scripts/gpu_check.sh", carry=[".wheelhouse"], timeout_s=540)
# Writes gpu_check.md (commit it), gpu_check.json, gpu_check.log and the two legs' logs into $OUT (else
# analysis/out/gpu-check); exit code 0 only when every check is within its tolerance.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-analysis/out/gpu-check}"
mkdir -p "$out"
site="$(bash scripts/gpu_wheels.sh ensure "${SEMALIGN_WHEELHOUSE:-.wheelhouse}")"
[ -z "$site" ] || export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# the package from this checkout (no install needed); nothing reaches for the Hub; no progress bars in logs
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
set -o pipefail
python3 analysis/gpu_check.py run --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
