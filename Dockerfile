# syntax=docker/dockerfile:1
# GPU serving image: CUDA 12 runtime, Deno, onnxruntime-node with its CUDA execution provider (and
# its bundled WebGPU provider, which reaches the GPU through Vulkan), the embedded model, a non-root
# user. Build needs internet (npm registry and the CUDA provider download of onnxruntime-node's
# install script); the running container needs none.
#
#   docker build -t smooth-diffusion .
#   docker run --gpus all -p 8000:8000 -v sd-cache:/data smooth-diffusion

FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN npm install -g deno@2.9.6 \
 && cp "$(npm root -g)/deno/node_modules/@deno/linux-x64-glibc/deno" /usr/local/bin/deno-bin
# Dependencies first, in their own layer: it is rebuilt only when deno.json or deno.lock change.
# onnxruntime-node's install script is allowed: it downloads the CUDA 12 execution provider.
ENV ONNXRUNTIME_NODE_INSTALL=cuda12
COPY deno.json deno.lock ./
RUN deno install --allow-scripts=npm:onnxruntime-node@1.30.0 \
 && test -e node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so
COPY . .
# the engine worker is loaded by URL, not imported: cached by name
RUN deno cache main.ts engine/worker.ts

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
# libvulkan1: the Vulkan loader, through which ONNX Runtime's WebGPU provider (Dawn) reaches the
# NVIDIA driver when the CUDA provider cannot load; `graphics` below has the NVIDIA runtime mount
# the driver's Vulkan parts (the base image asks for compute,utility only).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libvulkan1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin server \
 && mkdir -p /data && chown server /data
COPY --from=build /usr/local/bin/deno-bin /usr/local/bin/deno
COPY --from=build --chown=server /app /app
COPY --from=build --chown=server /root/.cache/deno /home/server/.cache/deno
WORKDIR /app
USER server
ENV PORT=8000 HOST=0.0.0.0 EXECUTION_PROVIDER=auto HF_HOME=/data/huggingface CACHE_DIR=/data/smooth-diffusion \
    DENO_DIR=/home/server/.cache/deno NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD curl -fsS "http://127.0.0.1:${PORT}/health/live" || exit 1
CMD ["deno", "run", "--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-sys", "--unstable-no-legacy-abort", "main.ts"]
