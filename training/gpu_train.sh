#!/usr/bin/env bash
# LoRA training on a lent GPU as one device call (no bundle to carry: the machine's own PyTorch):
#
#   bash training/gpu_train.sh      (env: LAM=1 LR=5e-4 BATCH=32 DEVICE=cuda GPU_TRAIN_TOTAL_S=540
#                                    SMOOTH_INIT=training/checkpoints/smooth-lora.safetensors
#                                    BASELINE_INIT=training/checkpoints/baseline-lora.safetensors)
#
# 1. rebuilds lora-base.pt from the shipped ONNX graphs (base_from_onnx.py);
# 2. continues the Smooth-LoRA (lambda LAM) from SMOOTH_INIT for about 70% of what time is left,
#    saving every 100 steps and when its time is up (lora.py --max-seconds);
# 3. continues the baseline LoRA (lambda 0) from BASELINE_INIT to the same step, with the same
#    batches, learning rate and batch size (the regularizer-free step is cheaper), or as far as time
#    allows;
# 4. exports both to $OUT as smooth-lora.safetensors and baseline-lora.safetensors (weights and
#    training metadata: steps, lambda, lr, batch, seconds, device), with the logs.
# Commit what comes back under training/checkpoints/ to go on from it later; the whole command keeps
# to GPU_TRAIN_TOTAL_S, inside the device call's 600 s.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/gpu_train_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/train.log") 2>&1
T0=$(date +%s)
TOTAL_S=${GPU_TRAIN_TOTAL_S:-540}
LAM=${LAM:-1} LR=${LR:-5e-4} BATCH=${BATCH:-32} DEVICE=${DEVICE:-cuda}
SMOOTH_INIT=${SMOOTH_INIT:-training/checkpoints/smooth-lora.safetensors}
BASELINE_INIT=${BASELINE_INIT:-training/checkpoints/baseline-lora.safetensors}
PYTHON=${PYTHON:-python3}
WORK=${GPU_TRAIN_WORK:-/tmp/gpu-train-work}
note() { echo "[gpu_train.sh $(($(date +%s) - T0)) s] $*"; }
left() { echo $((TOTAL_S - ($(date +%s) - T0))); }

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total --format=csv
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
mkdir -p "$WORK"
if [ ! -f "$WORK/lora-base.pt" ]; then
  note "lora-base.pt from the ONNX graphs"
  "$PYTHON" training/base_from_onnx.py --work "$WORK" || { note "base_from_onnx.py failed"; exit 2; }
fi

train() { # name, lambda, init, steps, seconds
  if [ "$5" -le 0 ]; then
    note "$1: no time left"
    return
  fi
  note "$1: lambda $2 from $3 to step $4, for at most $5 s"
  "$PYTHON" training/lora.py train --work "$WORK" --name "$1" --lam "$2" --lr "$LR" --batch "$BATCH" \
    --device "$DEVICE" --init "$3" --steps "$4" --max-seconds "$5" >"$OUT/$1.log" 2>&1
  tail -n 2 "$OUT/$1.log"
  "$PYTHON" training/lora.py export --work "$WORK" --name "$1" --out "$OUT/$1.safetensors"
}
step_of() { "$PYTHON" -c 'import sys, torch; print(torch.load(sys.argv[1])["step"])' "$WORK/$1.pt" 2>/dev/null || echo none; }

# time left for training, less a minute for the exports; the Smooth-LoRA's step costs about twice
# the baseline's (the regularizer's double backward), so it takes 70% of it
budget=$(($(left) - 60))
train smooth-lora "$LAM" "$SMOOTH_INIT" 1000000 $((budget * 7 / 10))
reached=$(step_of smooth-lora)
train baseline-lora 0 "$BASELINE_INIT" "$reached" $(($(left) - 30))
note "smooth-lora at step $reached, baseline-lora at step $(step_of baseline-lora); files in $OUT"
