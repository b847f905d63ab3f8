#!/usr/bin/env bash
# Packs what `bash bench/gpu/run.sh` needs on the GPU machine, which reaches no network, into two
# git-ignored folders that the device call carries:
#   .device/  deno.xz                          the Deno binary (xz, x86 filter)
#             onnxruntime-linux-x64.tar.xz     onnxruntime-node's linux-x64 binaries only
#             node_modules.tar.xz              node_modules for linux-x64, without those binaries
#             sharp-libvips-linux-x64.tar.xz   sharp's libvips, only when it fits (see below)
#             MANIFEST                         versions, sizes, what was left out
#   .gl/      the Vulkan loader and GL .debs, downloaded as the device README shows
# The device copies the working tree (tracked and untracked, not ignored, files) plus the carried
# folders, 64 MiB in all. Deno (about 28 MB) and ONNX Runtime (11 MB) must travel; sharp's libvips
# (6 MB) travels when the total stays under the limit less PACK_MARGIN_MIB (default 1.5). Otherwise
# node_modules carries bench/gpu/sharp_standin.mjs in sharp's place (raw RGB to a stored PNG; the
# benchmark names the encoder it served with). Deno resolves `nodeModulesDir: auto` from the
# unpacked node_modules with no registry (checked with the registry unreachable).
#
#   bash bench/gpu/pack.sh      (here, with the registry reachable; about 2 minutes the first time)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
LIMIT=$((64 * 1024 * 1024))
MARGIN=$(python3 -c "print(int(float('${PACK_MARGIN_MIB:-1.5}') * 1048576))")
DEV=.device
say() { echo "[pack] $*"; }

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for path in /.device/ /.gl/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"
done
mkdir -p "$DEV"

# node_modules as the lockfile says (downloads here, never there).
deno install >/dev/null
ORT_PKG=$(ls -d node_modules/.deno/onnxruntime-node@*/node_modules/onnxruntime-node)
VIPS_PKG=$(ls -d node_modules/.deno/@img+sharp-libvips-linux-x64@*/node_modules/@img/sharp-libvips-linux-x64)
SHARP_PKG=$(ls -d node_modules/.deno/sharp@*/node_modules/sharp)
for p in "$ORT_PKG" "$VIPS_PKG" "$SHARP_PKG"; do
  [ "$(echo "$p" | wc -l)" = 1 ] || { say "more than one version of $p"; exit 1; }
done

sha() { sha256sum "$@" | cut -c1-64; }
KEEP=.cache/gpu-pack # (git-ignored) what is kept between packs but does not travel
mkdir -p "$KEEP"
# A compressed copy, remade only when its source changed.
compress() { # path, source sha, command that writes the archive to stdout
  local path=$1 src_sha=$2 mark
  mark="$KEEP/$(basename "$1").src"
  shift 2
  if [ -f "$path" ] && [ "$(cat "$mark" 2>/dev/null)" = "$src_sha" ]; then
    say "$path up to date"
    return
  fi
  say "compressing $path"
  "$@" >"$path.tmp"
  mv "$path.tmp" "$path"
  echo "$src_sha" >"$mark"
}
XZ_BIN=(xz --x86 --lzma2=preset=9e -T1)

DENO_BIN=$(readlink -f "$(command -v deno)")
DENO_VERSION=$("$DENO_BIN" --version | head -1)
compress "$DEV/deno.xz" "$(sha "$DENO_BIN")" "${XZ_BIN[@]}" -c "$DENO_BIN"
ORT_FILES=$(cd "$ORT_PKG" && ls bin/napi-v6/linux/x64/)
compress "$DEV/onnxruntime-linux-x64.tar.xz" "$(cd "$ORT_PKG" && sha bin/napi-v6/linux/x64/* | sha256sum | cut -c1-64)" \
  bash -c "tar -C '$ORT_PKG' -c bin/napi-v6/linux/x64 | ${XZ_BIN[*]}"
VIPS_XZ=$KEEP/sharp-libvips-linux-x64.tar.xz
compress "$VIPS_XZ" "$(cd "$VIPS_PKG" && find lib -type f | sort | xargs sha256sum | sha256sum | cut -c1-64)" \
  bash -c "tar -C '$VIPS_PKG' -c lib | ${XZ_BIN[*]}"

# The Vulkan loader for the device (its README's recipe).
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  say "downloading the Vulkan loader .debs into .gl"
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
fi

# node_modules without any platform's ONNX Runtime binaries, other libcs' sharp, test-only packages,
# or libvips: those packages keep their package.json and Deno's .initialized marker, so Deno finds
# them installed and never asks the registry for them.
pack_node_modules() { # standin|sharp
  local stage
  stage=$(mktemp -d)
  cp -a node_modules "$stage/"
  local nm=$stage/node_modules
  rm -rf "$stage/$ORT_PKG/bin"
  rm -rf "$stage/$VIPS_PKG/lib"
  # other libcs' sharp, and packages only the tests import (openai: tests/openai_test.ts;
  # puppeteer-core and its dependencies: tests/playground_test.ts)
  for p in "$nm"/.deno/@img+sharp-*linuxmusl* "$nm"/.deno/openai@* "$nm"/.deno/puppeteer-core@* \
    "$nm"/.deno/@puppeteer+browsers@* "$nm"/.deno/chromium-bidi@* "$nm"/.deno/devtools-protocol@* \
    "$nm"/.deno/webdriver-bidi-protocol@* "$nm"/.deno/typed-query-selector@* "$nm"/.deno/modern-tar@*; do
    find "$p" -mindepth 1 \( -name package.json -o -name .initialized \) -prune -o -type f -print | xargs -r rm -f
  done
  find "$nm" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' \) -delete
  if [ "$1" = standin ]; then
    local sharp_dir=$stage/$SHARP_PKG
    find "$sharp_dir" -mindepth 1 -not -name package.json -not -name LICENSE -delete
    cp bench/gpu/sharp_standin.mjs "$sharp_dir/standin.mjs"
    python3 - "$sharp_dir/package.json" <<'EOF'
import json, sys
path = sys.argv[1]
pkg = json.load(open(path))
pkg["exports"] = {".": {"import": "./standin.mjs", "default": "./standin.mjs"}}
pkg["main"] = "./standin.mjs"
pkg["smoothDiffusionStandIn"] = "raw RGB to stored PNG, bench/gpu/sharp_standin.mjs"
json.dump(pkg, open(path, "w"), indent=2)
EOF
    # sharp's own native binding is useless without libvips
    local native
    native=$(ls -d "$nm"/.deno/@img+sharp-linux-x64@*/node_modules/@img/sharp-linux-x64)
    find "$native" -mindepth 1 \( -name package.json -o -name .initialized \) -prune -o -type f -print | xargs -r rm -f
  fi
  echo "$1" >"$nm/.gpu-bundle"
  tar -C "$stage" -c node_modules | xz -9e -T1 >"$DEV/node_modules.tar.xz"
  rm -rf "$stage"
}

bytes() { if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }
tree_bytes() {
  { git ls-files -z; git ls-files -z --others --exclude-standard; } |
    python3 -c "import os,sys; print(sum(os.path.getsize(p) for p in sys.stdin.read().split('\0') if p and os.path.isfile(p) and not os.path.islink(p)))"
}
mib() { python3 -c "print(f'{$1 / 1048576:.2f} MiB')"; }

say "node_modules with the sharp stand-in"
rm -f "$DEV/sharp-libvips-linux-x64.tar.xz"
pack_node_modules standin
# sharp's own node_modules (its native binding, about 0.2 MB compressed more) and libvips
needed=$(($(tree_bytes) + $(bytes .gl) + $(bytes "$DEV") + $(bytes "$VIPS_XZ") + 250000 + MARGIN))
if [ "$needed" -le "$LIMIT" ]; then
  say "sharp's libvips fits: node_modules with sharp itself"
  pack_node_modules sharp
  cp "$VIPS_XZ" "$DEV/sharp-libvips-linux-x64.tar.xz"
  IMAGE_ENCODER="sharp with libvips"
else
  IMAGE_ENCODER="stand-in for sharp: libvips ($(mib "$(bytes "$VIPS_XZ")")) would bring the total to $(mib $((needed - MARGIN))) with a $(mib "$MARGIN") margin"
fi

{
  echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) at commit $(git rev-parse --short HEAD)"
  echo "deno: $DENO_VERSION"
  echo "onnxruntime-node linux-x64: $(echo "$ORT_FILES" | tr '\n' ' ')"
  echo "image encoder: $IMAGE_ENCODER"
  echo "vulkan: $(cd .gl && ls -- *.deb | tr '\n' ' ')"
  echo "ORT_PKG=$ORT_PKG"
  echo "VIPS_PKG=$VIPS_PKG"
} >"$DEV/MANIFEST"

TREE=$(tree_bytes)
total=$((TREE + $(bytes .gl) + $(bytes "$DEV")))
say "working tree (tracked + untracked, not ignored): $(mib "$TREE")"
for f in "$DEV"/* .gl; do say "  $(mib "$(bytes "$f")")  $f"; done
say "total that travels: $(mib "$total") of 64 MiB"
say "image encoder: $IMAGE_ENCODER"
if [ "$total" -gt "$LIMIT" ]; then
  say "OVER the 64 MiB limit: the device call would be refused"
  exit 1
fi
