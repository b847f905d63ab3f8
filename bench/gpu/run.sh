#!/usr/bin/env bash
# The GPU benchmark's device command, run from the repository root of the device's copy (made by
# bench/gpu/pack.sh here; carry .device and .gl):
#
#   bash bench/gpu/run.sh [deno task bench:gpu options]
#
# Unpacks the bundle (Deno, node_modules, ONNX Runtime's linux-x64 binaries, libvips if it travelled),
# installs the Vulkan loader from .gl when the machine has none, points the loader at NVIDIA's driver
# where it is not found, checks nvidia-smi, then runs `deno task bench:gpu --out $OUT` with no network
# under a time budget: the whole command keeps to GPU_BENCH_TOTAL_S (default 465 s), well inside the
# call's 600 s. Logs and results in $OUT: run.log, gpu_bench.json, gpu_bench.md, gpu_bench.log.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-/tmp/gpu_bench_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
T0=$(date +%s)
TOTAL_S=${GPU_BENCH_TOTAL_S:-465}
note() { echo "[run.sh $(($(date +%s) - T0)) s] $*"; }

if [ ! -f .device/MANIFEST ]; then
  note ".device/MANIFEST missing: run 'bash bench/gpu/pack.sh' on the development machine and carry .device and .gl"
  exit 2
fi
cat .device/MANIFEST
manifest() { sed -n "s/^$1=//p" .device/MANIFEST; }

# Never replace a development checkout's own node_modules: only one this script unpacked.
if [ -e node_modules ] && [ ! -f node_modules/.gpu-bundle ]; then
  note "node_modules exists and is not the bundle's: run this on the device, or in a copy without node_modules"
  exit 2
fi

# The Vulkan loader (Dawn, inside ONNX Runtime, opens libvulkan.so.1).
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    note "Vulkan loader installed from .gl"
  else
    note "no libvulkan.so.1 and no .gl/*.deb: WebGPU will not load"
  fi
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] &&
  ! ls /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json /usr/local/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES=$nvidia_icd
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  note "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu,clocks.sm,clocks.max.sm --format=csv
else
  note "no nvidia-smi: not an NVIDIA machine; the benchmark runs on whatever the provider finds"
fi

# Unpacking: xz where the machine has it, Python's lzma where not.
unxz_to() {
  if command -v xz >/dev/null 2>&1; then xz -dc "$1" >"$2"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
untar_xz() {
  if command -v xz >/dev/null 2>&1; then tar -C "$2" -xJf "$1"; else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$1" "$2"
  fi
}
HOME_DIR=${GPU_BENCH_HOME:-/tmp/gpu-bench}
mkdir -p "$HOME_DIR/bin"
if [ ! -x "$HOME_DIR/bin/deno" ] || [ .device/deno.xz -nt "$HOME_DIR/bin/deno" ]; then
  unxz_to .device/deno.xz "$HOME_DIR/bin/deno.tmp" && chmod +x "$HOME_DIR/bin/deno.tmp" &&
    mv "$HOME_DIR/bin/deno.tmp" "$HOME_DIR/bin/deno"
fi
export PATH=$HOME_DIR/bin:$PATH
rm -rf node_modules
untar_xz .device/node_modules.tar.xz . || { note "node_modules did not unpack"; exit 2; }
untar_xz .device/onnxruntime-linux-x64.tar.xz "$(manifest ORT_PKG)" || { note "ONNX Runtime did not unpack"; exit 2; }
if [ -f .device/sharp-libvips-linux-x64.tar.xz ]; then
  untar_xz .device/sharp-libvips-linux-x64.tar.xz "$(manifest VIPS_PKG)" || { note "libvips did not unpack"; exit 2; }
fi
note "unpacked: $(deno --version | head -1); node_modules: $(cat node_modules/.gpu-bundle)"

# No network there: a registry that answers at once with a refusal, and Deno's cache of our own.
export DENO_DIR=$HOME_DIR/deno_dir DENO_NO_UPDATE_CHECK=1 NPM_CONFIG_REGISTRY=http://127.0.0.1:9/
# The training tools' Python: the first python3 that has torch and onnx (the device's is a venv).
if [ -z "${TRAINING_PYTHON:-}" ]; then
  for candidate in "$(command -v python3)" /usr/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c 'import torch, onnx, numpy, PIL' 2>/dev/null; then
      export TRAINING_PYTHON=$candidate
      break
    fi
  done
fi
note "TRAINING_PYTHON=${TRAINING_PYTHON:-none}"

budget=$((TOTAL_S - ($(date +%s) - T0) - 20))
args=("$@")
if [[ " $* " != *" --budget-s"* ]]; then args+=(--budget-s "$budget"); fi
note "deno task bench:gpu --out $OUT ${args[*]}"
timeout -k 10 $((TOTAL_S - ($(date +%s) - T0))) deno task bench:gpu --out "$OUT" "${args[@]}"
rc=$?
note "bench exit code $rc"
exit $rc
