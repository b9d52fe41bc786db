#!/usr/bin/env bash
# GPU check of compat, from a plain checkout, on a machine with an NVIDIA GPU and torch installed (faiss
# is not needed). Runs, each under its own time limit (about 8 minutes in all):
#   1. the GPU tests (tests/test_gpu.py);
#   2. the 1M x 512 leave-one-out cell with the torch-CUDA backend: raw torch matmul + topk in fp32,
#      TF32 and FP16, the evaluator's CMC over all queries in fp32, tf32 and fp16 search precision
#      (the neighbours must agree), mAP over a 10^4-query sample; seconds and peak GPU memory;
#   3. one epoch of cifar100-cores (AMP) on generated images: images per second;
#   4. one DDP step on two GPUs, when there are two.
# and prints one table (benchmarks/bench_gpu.py --table). A step that fails or runs out of time is
# reported as such; the others still run. Exit status: 0 when every step that ran passed.
#
#   bash benchmarks/device_check.sh            # from the repository root or anywhere
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check: torch with CUDA is needed (torch missing, or no GPU visible)" >&2
    exit 2
fi

# The package without its declared dependencies (torch is there already; mlflow, scipy and faiss are
# not needed here), then the small pure-Python packages these steps import, only when missing.
timeout 90 "$PY" -m pip install --quiet --no-deps -e . >"$OUT/install.log" 2>&1 \
    || echo "device_check: editable install failed (see below); using PYTHONPATH=$ROOT" >&2
for module in numpy:numpy yaml:pyyaml pydantic:pydantic tqdm:tqdm click:click pytest:pytest; do
    if ! "$PY" -c "import ${module%%:*}" 2>/dev/null; then
        timeout 60 "$PY" -m pip install --quiet "${module##*:}" >>"$OUT/install.log" 2>&1 \
            || echo "device_check: could not install ${module##*:}" >&2
    fi
done

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, never stop the script
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "{\"part\": \"step\", \"phase\": \"$name\", \"seconds\": $((SECONDS - start)), \"status\": \"ok\"}" >>"$OUT/steps.log"
    else
        status=1
        why="exit $rc"
        [ "$rc" -eq 124 ] && why="timed out after ${limit}s"
        echo "{\"part\": \"step\", \"phase\": \"$name\", \"seconds\": $((SECONDS - start)), \"status\": \"$why\"}" >>"$OUT/steps.log"
        echo "device_check: step $name failed ($why); last lines:" >&2
        tail -n 15 "$OUT/$name.log" >&2 || true
    fi
}

step gpu-tests 75 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
step cell 240 "$PY" benchmarks/bench_gpu.py --part cell --tmp "$OUT"
step train 75 "$PY" benchmarks/bench_gpu.py --part train --workers 2 --tmp "$OUT"
gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$gpus" -ge 2 ]; then
    step ddp 45 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/bench_gpu.py --part ddp
else
    echo "{\"part\": \"step\", \"phase\": \"ddp\", \"status\": \"skipped: $gpus GPU\"}" >>"$OUT/steps.log"
fi

grep -h "passed\|failed\|skipped" "$OUT/gpu-tests.log" | tail -n 1 | sed 's/^/gpu tests: /' || true
"$PY" benchmarks/bench_gpu.py --table "$OUT/cell.log" "$OUT/train.log" "$OUT"/ddp.log "$OUT/steps.log" 2>/dev/null \
    || cat "$OUT/steps.log"
exit "$status"
