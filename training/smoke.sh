#!/usr/bin/env bash
# Smoke test of the training recipe (CI runs it through `deno task test`): the whole build.sh on a
# handful of images and a few steps per stage, into a temporary directory, ending with the
# ONNX-vs-torch parity check. It never touches the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
WORK=$tmp/work OUT=$tmp/model FIXTURES=$tmp/fixtures VAE_STEPS=4 UNET_STEPS=4 COUNT=64 PAIRS=4 \
  training/build.sh > "$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log"; exit 1; }
# A training tool run in training/ on the smoke test's work dir.
tool() { (cd training && OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "$@"); }
# refused WHAT MESSAGE COMMAND...: the command must fail, saying MESSAGE.
refused() {
  local what=$1 message=$2; shift 2
  if "$@" > "$tmp/refused.log" 2>&1; then echo "$what was not refused"; exit 1; fi
  grep -q "$message" "$tmp/refused.log" || { cat "$tmp/refused.log"; exit 1; }
}
# Resume: a second run of a finished stage starts from its checkpoint and adds nothing.
resumed=$(tool train.py unet --work "$tmp/work" --steps 6 --count 64)
grep -q "resumed at step 4" <<<"$resumed" || { echo "the UNet stage did not resume: $resumed"; exit 1; }
lora() { tool lora.py "$1" --work "$tmp/work" "${@:2}"; }
small=(--batch 4 --count 64)
# Both LoRAs, a few steps each on the same batches, resumed, exported in the legacy processor format.
for run in "smooth-lora 1" "baseline-lora 0"; do
  set -- $run
  lora train --name "$1" --lam "$2" --steps 3 "${small[@]}" && lora export --name "$1" --out "$tmp/$1.safetensors"
done
resumed=$(lora train --name smooth-lora --lam 1 --steps 4 "${small[@]}")
grep -q "resumed at step 3" <<<"$resumed" || { echo "the LoRA run did not resume: $resumed"; exit 1; }
# Another rank, the cosine schedule and another caption-dropout rate: recorded in the export; resuming
# under another schedule is refused.
cosine=(--name cosine-r4 --lam 1 --rank 4 --empty-caption-rate 0.25 "${small[@]}")
lora train "${cosine[@]}" --steps 3 --schedule cosine && lora export --name cosine-r4 --out "$tmp/cosine-r4.safetensors"
refused "a cosine run resumed under the constant schedule" "schedule cosine, not constant" \
  lora train "${cosine[@]}" --steps 4
# LoRA on every Linear and Conv2d of the UNet's blocks: the export refuses it (the server serves the
# attention key set); merge_lora.py folds it into a model directory instead, checking the fold.
lora train --name wide --lam 1 --steps 2 --rank 2 --targets all "${small[@]}"
refused "an adapter beyond the attention key set's export" "attention key set" \
  lora export --name wide --out "$tmp/wide.safetensors"
refused "a wide run resumed as an attention-only one" "targets all, not attention" \
  lora train --name wide --lam 1 --steps 3 --rank 2 "${small[@]}"
refused "a merge into its source model" "overlaps the source model" \
  tool merge_lora.py --work "$tmp/work" --name wide --out "$tmp/model/unet" --model "$tmp/model"
tool merge_lora.py --work "$tmp/work" --name wide --out "$tmp/merged" --model "$tmp/model" > "$tmp/merged.log" 2>&1 ||
  { cat "$tmp/merged.log"; exit 1; }
# Where the regularizer acts: a row for the base and one per adapter, every band filled.
bands=$(tool variation_by_t.py --work "$tmp/work" "$tmp/cosine-r4.safetensors" "$tmp/work/wide.pt")
[ "$(grep -c '^| ' <<<"$bands")" = 4 ] && ! grep -q nan <<<"$bands" || { echo "variation_by_t.py: $bands"; exit 1; }
/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
from pathlib import Path
tmp = Path(sys.argv[1])
quality = json.loads((tmp / "work" / "quality.json").read_text())
assert quality["ground_truth"]["all"] == 1.0, quality  # the evaluator reads true drawings right
for part in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
    assert (tmp / "model" / part / "model.onnx").stat().st_size > 0, part
assert (tmp / "model" / "README.md").read_text().startswith("# tiny-sd-shapes")
import struct
def header_of(name: str) -> dict:
    raw = (tmp / f"{name}.safetensors").read_bytes()
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
for name, lam in (("smooth-lora", "1.0"), ("baseline-lora", "0.0")):
    header = header_of(name)
    assert header.pop("__metadata__")["lambda"] == lam, name
    assert len(header) == 112, (name, len(header))  # 14 attentions x 4 projections x (down, up)
    assert all(".processor.to_" in key and key.endswith(("_lora.down.weight", "_lora.up.weight")) for key in header), name
header = header_of("cosine-r4")
meta = header.pop("__metadata__")
assert (meta["rank"], meta["schedule"], meta["steps"], meta["empty_caption_rate"]) == ("4", "cosine", "3", "0.25"), meta
assert all(entry["shape"][0] == 4 for key, entry in header.items() if key.endswith("down.weight")), header
for part in ("text_encoder", "vae_encoder", "vae_decoder"):
    assert (tmp / "merged" / part / "model.onnx").read_bytes() == (tmp / "model" / part / "model.onnx").read_bytes(), part
assert (tmp / "merged" / "unet" / "model.onnx").read_bytes() != (tmp / "model" / "unet" / "model.onnx").read_bytes()
merged = json.loads((tmp / "merged" / "merged_from.json").read_text())
assert (merged["targets"], merged["steps"]) == ("all", 2) and not (tmp / "merged" / "README.md").exists(), merged
print("ok loras")
PY
grep -E "^(ok|FAIL)" "$tmp/build.log"
echo "training smoke test passed"
