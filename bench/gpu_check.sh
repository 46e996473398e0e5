#!/usr/bin/env bash
# One go on a lent GPU machine (no network there): install what is missing from wheels carried
# in, then GPU parity and benchmarks of Mamba-2, Mamba-1 and RWKV-6 (bench/gpu_check.py). Exits
# non-zero on a parity failure (1) or when its time limit cut it short (3; what ran is written).
#
#   bench/gpu_check.sh                       # wheels: ./wheels; figures: $OUT or ./gpu_check_out
#   WHEELS=/path/to/wheels bench/gpu_check.sh
#   bench/gpu_check.sh --device cpu --tiny   # the same path at tiny sizes, on a CPU machine
#
# Extra arguments go to bench/gpu_check.py. Environment: OUT (results folder), WHEELS (wheel
# folder), PYTHON (interpreter, default python3), BUDGET_S (seconds for the whole script,
# default 480: the benchmarks get what parity and installing leave, less a margin).
#
# Preparing the wheels, on a machine with network and the GPU machine's Python and platform
# (python3 -c 'import sys, platform; print(sys.version, platform.machine())'):
#   pip download -d wheels '.[rwkv]'         # this project's dependencies (torch, transformers,
#                                            # the rwkv package: RWKV-6's peer)
#   pip download -d wheels 'triton>=3.0'
#   # mamba-ssm is a source package on PyPI; build its wheel once where CUDA and torch match
#   # the GPU machine (or take the prebuilt one from its GitHub release for that torch/CUDA):
#   pip wheel --no-deps --no-build-isolation -w wheels 'mamba-ssm>=2.2'
# then copy wheels/ into the repository tree (it is not committed) or pass WHEELS=...
# Without mamba-ssm wheels the Triton backend is reported as skipped, without rwkv the RWKV-6
# peer; the rest runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}
OUT=${OUT:-$ROOT/gpu_check_out}
WHEELS=${WHEELS:-$ROOT/wheels}
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

offline_install() {  # pip from the wheel folder only; a missing wheel is reported, not fatal
    if [ -d "$WHEELS" ]; then
        "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "$@" ||
            echo "gpu_check: could not install $* from $WHEELS" >&2
    else
        echo "gpu_check: no wheel folder $WHEELS; $* not installed" >&2
    fi
}

if ! "$PYTHON" -c 'import harness, torch, transformers, safetensors' 2>/dev/null; then
    offline_install -e "$ROOT"
fi
if ! "$PYTHON" -c 'import mamba_ssm, triton' 2>/dev/null; then
    offline_install 'triton>=3.0' 'mamba-ssm>=2.2'
fi
if ! "$PYTHON" -c 'import rwkv' 2>/dev/null; then
    offline_install 'rwkv>=0.8.30'
fi
"$PYTHON" -c 'import harness, torch, transformers' # fail here, clearly, if still missing

SPENT=$(( $(date +%s) - START ))
LEFT=$(( BUDGET_S - SPENT ))
# parity and model loading take about a quarter; keep 30 s to write the files
BENCH_S=$(( LEFT * 3 / 4 - 30 ))
if [ "$BENCH_S" -lt 30 ]; then BENCH_S=30; fi
echo "gpu_check: ${SPENT}s installing, ${BENCH_S}s for benchmarks, figures in $OUT"
timeout --preserve-status --signal=INT "$LEFT" "$PYTHON" bench/gpu_check.py --out "$OUT" --budget "$BENCH_S" "$@" \
    2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
