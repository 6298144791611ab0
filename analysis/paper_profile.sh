#!/usr/bin/env bash
# The paper-size transfer table (issue 12, item 6) on a GPU machine, as one prepared command:
#
#   bash analysis/paper_profile.sh            # writes $OUT/transfer-paper/ (or analysis/out/transfer-paper/)
#
# The `paper` profile of analysis/transfer_table.py: 1,000 transfer sequences of 256 tokens, 5 epochs at batch 64
# (78 steps), LoRA r16 on v/o/up/down, budgets 6/15/30/78 steps, 3 seeds, both schedules, 65k held-out tokens.
# It needs this package and a CUDA build of torch already installed (the device machine reaches no index), and
# it resumes: run it again after an interruption. Commit its TRANSFER-paper.md separately, naming the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: the paper profile is sized for a GPU (2 CPU cores would take days)')"
out="${OUT:-analysis/out}/transfer-paper"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" || true
python3 analysis/transfer_table.py --profile paper --threads 8 --resume --out "$out" --summary "$out/TRANSFER-paper.md" "$@"
