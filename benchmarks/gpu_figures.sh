#!/usr/bin/env bash
# One pass on a machine with CUDA: the tests that skip without a GPU, then the GPU speed figures
# (benchmarks/README.md, issue "Speed where users run it"), written under $OUT (default
# gpu-figures/). Each step has its own time limit and a failed step does not stop the next, so a
# short loan of a GPU yields every figure it can.
#
#   OUT=gpu-figures PYTHON=python bash benchmarks/gpu_figures.sh
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu-figures}"
py="${PYTHON:-python}"
mkdir -p "$out"
log="$out/log.txt"
: > "$log"

step() {  # step NAME SECONDS COMMAND...: run, keep its output, record its status and time
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.out" 2> "$out/$name.err"
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$log"
}

step nvidia-smi 30 nvidia-smi
step versions 60 "$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
step cuda-tests 150 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device_chunk.py \
    tests/test_fused_draws.py tests/test_regularizer.py -k "cuda or gpu or device or fused"
# the operator counts are device-independent (counted on CPU): --no-ops leaves them to CPU runs
step measure-65536 240 "$py" benchmarks/measure_vs_ideal.py --device cuda --samples 65536 --repeats 7 \
    --fused-draws --no-memory --no-ops --json
step measure-4096 120 "$py" benchmarks/measure_vs_ideal.py --device cuda --samples 4096 --repeats 7 \
    --fused-draws --no-ops --json
step finetune-step 60 "$py" benchmarks/finetune_step.py --device cuda --json
cat "$log"
