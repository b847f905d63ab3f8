#!/usr/bin/env bash
# LoRA training on a lent GPU as one device call (no bundle to carry: the machine's own PyTorch):
#
#   bash training/gpu_train.sh      (env: LAM=1 LR=5e-4 BATCH=32 DEVICE=cuda GPU_TRAIN_TOTAL_S=540
#                                    SMOOTH_INIT=training/checkpoints/smooth-lora.safetensors
#                                    BASELINE_INIT=training/checkpoints/baseline-lora.safetensors
#                                    GPU_TRAIN_WORK=/tmp/gpu-train-work)
#
# 1. rebuilds lora-base.pt from the shipped ONNX graphs (base_from_onnx.py, about 3 minutes on two
#    cores) unless GPU_TRAIN_WORK already holds one: to save that time, make it here, put it in a
#    git-ignored folder (say .gpu-train/lora-base.pt, 27 MiB), carry that folder and point
#    GPU_TRAIN_WORK at it;
# 2. continues the Smooth-LoRA (lambda LAM) from SMOOTH_INIT for 60% of the time left, saving every
#    100 steps and when its time is up (lora.py --max-seconds);
# 3. continues the baseline LoRA (lambda 0) from BASELINE_INIT to the same step, with the same
#    batches, learning rate and batch size, in the rest. Its step costs about half the Smooth-LoRA's
#    (no double backward); if it still falls short, it ends where it got to and the note says so:
#    the batches do not depend on the device, so `lora.py train --name baseline-lora --lam 0 --init
#    <its file> --steps <the Smooth-LoRA's>` finishes it identically on a CPU (0.14 s/step here);
# 4. exports both to $OUT as smooth-lora.safetensors and baseline-lora.safetensors (weights and
#    training metadata: steps, lambda, lr, batch, seconds, device), with the logs.
# Exits non-zero when a run or an export failed. Commit what comes back under training/checkpoints/
# to go on from it later; the whole command keeps to GPU_TRAIN_TOTAL_S, inside the call's 600 s.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/gpu_train_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/train.log") 2>&1
TEE=$!
T0=$(date +%s)
TOTAL_S=${GPU_TRAIN_TOTAL_S:-540}
LAM=${LAM:-1} LR=${LR:-5e-4} BATCH=${BATCH:-32} DEVICE=${DEVICE:-cuda}
SMOOTH_INIT=${SMOOTH_INIT:-training/checkpoints/smooth-lora.safetensors}
BASELINE_INIT=${BASELINE_INIT:-training/checkpoints/baseline-lora.safetensors}
WORK=${GPU_TRAIN_WORK:-/tmp/gpu-train-work}
note() { echo "[gpu_train.sh $(($(date +%s) - T0)) s] $*"; }
left() { echo $((TOTAL_S - ($(date +%s) - T0))); }
finish() { # status: closes the log (tee flushed) and exits
  exec >&- 2>&-
  wait "$TEE"
  exit "$1"
}

# The training tools' Python: the first python3 that has torch and onnx (a device's may be a venv).
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in "$(command -v python3)" /usr/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c 'import torch, onnx, numpy, PIL' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
[ -n "$PYTHON" ] || { note "no python3 with torch, onnx, numpy and PIL"; finish 2; }
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total --format=csv
"$PYTHON" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())
sys.exit(0 if sys.argv[1] != "cuda" or torch.cuda.is_available() else 1)' "$DEVICE" ||
  { note "DEVICE=$DEVICE but torch sees no CUDA device"; finish 2; }

mkdir -p "$WORK"
if [ ! -f "$WORK/lora-base.pt" ]; then
  note "lora-base.pt from the ONNX graphs"
  "$PYTHON" training/base_from_onnx.py --work "$WORK" || { note "base_from_onnx.py failed"; finish 2; }
fi

# The step an exported adapter records (its safetensors header; no torch needed).
step_of() {
  "$PYTHON" -c 'import json, struct, sys
f = open(sys.argv[1], "rb"); size = struct.unpack("<Q", f.read(8))[0]
print(json.loads(f.read(size))["__metadata__"]["steps"])' "$OUT/$1.safetensors"
}

failed=0
train() { # name, lambda, init, steps, seconds
  if [ "$5" -le 0 ]; then
    note "$1: no time left"
    failed=1
    return 1
  fi
  note "$1: lambda $2 from $3 to step $4, for at most $5 s"
  "$PYTHON" training/lora.py train --work "$WORK" --name "$1" --lam "$2" --lr "$LR" --batch "$BATCH" \
    --device "$DEVICE" --init "$3" --steps "$4" --max-seconds "$5" >"$OUT/$1.log" 2>&1 ||
    { note "$1: lora.py train failed (exit $?): $(tail -n 1 "$OUT/$1.log")"; failed=1; return 1; }
  tail -n 2 "$OUT/$1.log"
  "$PYTHON" training/lora.py export --work "$WORK" --name "$1" --out "$OUT/$1.safetensors" ||
    { note "$1: export failed"; failed=1; return 1; }
}

# time left for training, less a minute for the exports and Python's start-ups
budget=$(($(left) - 60))
if train smooth-lora "$LAM" "$SMOOTH_INIT" 1000000 $((budget * 6 / 10)); then
  reached=$(step_of smooth-lora)
  if train baseline-lora 0 "$BASELINE_INIT" "$reached" $(($(left) - 30)); then
    baseline=$(step_of baseline-lora)
    if [ "$baseline" = "$reached" ]; then
      note "both at step $reached; files in $OUT"
    else
      note "smooth-lora at step $reached, baseline-lora at $baseline: finish the baseline to $reached (see the header)"
    fi
  fi
fi
finish "$failed"
