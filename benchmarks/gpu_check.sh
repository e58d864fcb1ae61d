#!/usr/bin/env bash
# GPU readiness check of tiltedsam: at most ~10 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh                       # on a CUDA machine, from the repository root
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh  # dry run of every part on the CPU, tiny sizes
#
# Parts (each under its own time limit; a failing part does not stop the others):
#   1. device      the card, driver/CUDA/cuDNN versions, memory
#   2. cuda_tests  pytest -m cuda (device placement, generator state on CUDA, fp16+GradScaler and bf16
#                  through the manual API against float32, host syncs per step, batched step on CUDA, and
#                  one mixed-precision TSAM step through Lightning (16-mixed, bf16-mixed) and through the
#                  Hugging Face Trainer (fp16, bf16); those skip when the lightning/hf extras are missing)
#   3. step_cost   benchmarks/step_cost.py on the CIFAR ResNet18 at batch 64: SGD, SAM, TSAM s=1/3/5,
#                  the batched TSAM step (s=3, 5) and every other registered optimizer; synchronised
#                  timing, cudnn.benchmark, max_memory_allocated
#   4. smoke       a ~2-minute TSAM training run of the harness (ResNet18 on the bundled MNIST-5k)
#   5. paper_presets  paper:cifar100-resnet18 and paper:glue-distilbert at --scale smoke (synthetic data)
#   6. fsdp        benchmarks/fsdp_check.py: every registered optimizer on FSDP2-sharded parameters
#                  against one unsharded process, float32 and bf16 MixedPrecisionPolicy (manual API):
#                  two ranks (nccl) when two GPUs are visible, else a 1-GPU FSDP2 smoke step
# then benchmarks/gpu_check_report.py writes everything to $OUT/gpu_check.json and prints the tables.
#
# Settings (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_OUT (gpu_check_out), PYTHON
# (.venv/bin/python if present), GPU_CHECK_SMOKE_STEPS (1000 on CUDA). Exit status 1 if a part failed.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DEVICE" = cpu ]; then
    # dry run: every part end to end, tiny and single-threaded (the CPU test of this script)
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    MODEL=small_cnn BATCH=8 WARMUP=1 REPEATS=1 THREADS=(--threads 1)
    SMOKE=(--set data.name=digits --set model.name=small_cnn --set budget.kind=steps
           --set "budget.amount=${GPU_CHECK_SMOKE_STEPS:-3}" --set run.num_threads=1)
    LIMIT_TESTS=300 LIMIT_COST=300 LIMIT_SMOKE=300 LIMIT_PRESETS=600 LIMIT_FSDP=300
else
    MODEL=resnet18 BATCH=64 WARMUP=3 REPEATS=15 THREADS=()
    SMOKE=(--set data.name=mnist5k --set model.name=resnet18 --set budget.kind=steps
           --set "budget.amount=${GPU_CHECK_SMOKE_STEPS:-1000}")
    # cuda_tests: + ~20 s for importing Lightning and transformers; + ~30 s for the device part
    LIMIT_TESTS=120 LIMIT_COST=170 LIMIT_SMOKE=150 LIMIT_FSDP=90
    LIMIT_PRESETS=120  # the paper's presets at smoke scale
fi

mkdir -p "$OUT"
rm -rf "$OUT/smoke" "$OUT/parts.tsv" "$OUT/cuda_tests.xml" "$OUT/step_cost.json" "$OUT/device.json" "$OUT/fsdp.json"
: > "$OUT/parts.tsv"

# run_part NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record status and time
run_part() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    local start status elapsed_ms
    start=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    status=${PIPESTATUS[0]}
    elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%s\t%d.%03d\n' "$name" "$status" $((elapsed_ms / 1000)) $((elapsed_ms % 1000)) >> "$OUT/parts.tsv"
}

run_part device 30 "$PYTHON" - "$DEVICE" "$OUT/device.json" <<'EOF'
import json, os, sys, torch
device, path = sys.argv[1], sys.argv[2]
info = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("GPU_CHECK_DEVICE=cuda but torch sees no CUDA device (set GPU_CHECK_DEVICE=cpu for a dry run)")
    props = torch.cuda.get_device_properties(0)
    info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
else:
    info["name"] = "cpu"
print(json.dumps(info, indent=2))
open(path, "w").write(json.dumps(info, indent=2) + "\n")
EOF

run_part cuda_tests "$LIMIT_TESTS" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml" tests

run_part step_cost "$LIMIT_COST" "$PYTHON" benchmarks/step_cost.py --device "$DEVICE" --model "$MODEL" \
    --batch-size "$BATCH" --warmup "$WARMUP" --repeats "$REPEATS" "${THREADS[@]}" --json "$OUT/step_cost.json" \
    --optimizers sgd sam tsam:num_samples=1 tsam:num_samples=3 tsam:num_samples=5 \
    tsam:num_samples=3,parallel_samples=true tsam:num_samples=5,parallel_samples=true registered

run_part smoke "$LIMIT_SMOKE" "$PYTHON" -m tiltedsam train --out "$OUT/smoke" --set optimizer.name=tsam \
    --set run.device="$DEVICE" --set run.progress=false "${SMOKE[@]}"

# 5. paper_presets: one image and one GLUE preset of the paper at smoke scale (synthetic on-disk data)
run_part paper_presets "$LIMIT_PRESETS" "$PYTHON" benchmarks/paper_presets_smoke.py "$DEVICE" "$OUT"

# 6. fsdp: every registered optimizer on FSDP2-sharded parameters against one unsharded process
run_part fsdp "$LIMIT_FSDP" "$PYTHON" benchmarks/fsdp_check.py --device "$DEVICE" --json "$OUT/fsdp.json"

"$PYTHON" benchmarks/gpu_check_report.py "$OUT"
