"""PyTorch reference for `deno task bench:gpu`: SD 1.5's UNet (training/sd15_nets.py, the very modules
that make_sd15.py exports) timed on the GPU, one forward per batch of rows, as the ONNX graph is run.

    python3 training/torch_unet_bench.py [--size full|mini] [--resolution 512] [--rows 2,8,16,32]
        [--modes eager,compile] [--attention math,sdpa] [--runs 5] [--warmup 2] [--budget-s 150]
        [--device auto|cuda|cpu]

Prints one JSON object per line (what bench/gpu_bench.ts reads): "env" first, then a "result", "skipped"
or "error" per measurement. Attention "math" is the modules as exported (softmax(QK^T)V, as the ONNX
graph computes it); "sdpa" swaps in F.scaled_dot_product_attention (flash / memory-efficient kernels),
which is what diffusers runs on PyTorch 2. Times: CUDA events around each forward, warm-up excluded,
median of `runs`. Without CUDA the script says so and exits 0 (`--device cpu` runs it on the CPU in
float32, to test the script itself).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import nets
import sd15_nets
from sd15_nets import SIZES, UNet


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def timesteps_forward(self, t: torch.Tensor) -> torch.Tensor:
    """sd15_nets.Timesteps with its frequencies made on the timestep's device (same arithmetic)."""
    half = self.dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


MATH_ATTENTION = nets.Attention.forward


def sdpa_attention(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    context = x if context is None else context
    b, n, _ = x.shape
    q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
    k = self.to_k(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
    v = self.to_v(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
    return self.to_out[1](self.to_out[0](out))


def use_attention(kind: str) -> None:
    nets.Attention.forward = sdpa_attention if kind == "sdpa" else MATH_ATTENTION


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn) -> float:
        """Milliseconds of one call, the device's work included."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000


def inputs(rows: int, latent: int, hidden: int, device, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(rows, 4, latent, latent, generator=g).to(device, dtype)
    timestep = torch.full((rows,), 500, dtype=torch.int64, device=device)
    context = torch.randn(rows, 77, hidden, generator=g).to(device, dtype)
    return sample, timestep, context


def is_oom(error: BaseException) -> bool:
    return "out of memory" in str(error).lower()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rows", default="2,8,16,32")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--attention", default="math,sdpa")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=150)
    parser.add_argument("--compile-min-s", type=float, default=75,
                        help="start torch.compile only with at least this much of the budget left")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    args = parser.parse_args()
    deadline = time.time() + args.budget_s
    rows_list = [int(r) for r in args.rows.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    attentions = [a for a in args.attention.split(",") if a]

    cuda = torch.cuda.is_available()
    env = {"torch": torch.__version__, "cuda_available": cuda, "cuda": getattr(torch.version, "cuda", None),
           "python": sys.version.split()[0]}
    if args.device == "cpu" or (args.device == "auto" and not cuda):
        if args.device == "auto":
            emit(type="env", **env)
            emit(type="skipped", what="pytorch", reason=f"CUDA is not available to torch {torch.__version__}: "
                 "the PyTorch reference needs an NVIDIA GPU (run with --device cpu to test the script)")
            return
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(max(1, torch.get_num_threads()))
    else:
        device, dtype = torch.device("cuda"), torch.float16
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, multiprocessors=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    env.update(device=device.type, dtype=str(dtype).replace("torch.", ""), sdpa=has_sdpa,
               compile=hasattr(torch, "compile"))
    emit(type="env", **env)
    if not has_sdpa and "sdpa" in attentions:
        attentions.remove("sdpa")
        emit(type="skipped", what="sdpa", reason=f"torch {torch.__version__} has no scaled_dot_product_attention")

    config = SIZES[args.size]["unet"]
    sd15_nets.Timesteps.forward = timesteps_forward
    started = time.time()
    torch.manual_seed(0)
    # Built on the GPU where torch can (a device as a context, torch 2): 860M parameters initialise in
    # a moment there, and the CPU stays free for the ONNX exports running beside this.
    building = device if device.type == "cuda" and hasattr(device, "__enter__") else contextlib.nullcontext()
    with building:
        unet = UNet(config)
    unet = unet.eval().requires_grad_(False).to(device, dtype)
    emit(type="setup", seconds=round(time.time() - started, 1),
         parameters=sum(p.numel() for p in unet.parameters()))
    latent, hidden = args.resolution // 8, config["cross_attention_dim"]
    timer = Timer(device)

    # The two attentions compute the same function: say by how much they differ, once.
    if len(attentions) == 2:
        with torch.inference_mode():
            feeds = inputs(rows_list[0], latent, hidden, device, dtype)
            outs = {}
            for kind in attentions:
                use_attention(kind)
                outs[kind] = unet(*feeds).float()
            a, b = outs["math"], outs["sdpa"]
            emit(type="check", what="sdpa vs math", rows=rows_list[0],
                 relative=float((a - b).norm() / b.norm()), finite=bool(torch.isfinite(a).all() and torch.isfinite(b).all()))
            del outs, a, b, feeds

    def measure(mode: str, kind: str, fn, rows: int) -> bool:
        """One point; False when the budget is spent."""
        remaining = deadline - time.time()
        if remaining <= 0:
            emit(type="skipped", mode=mode, attention=kind, rows=rows, reason="time budget spent")
            return False
        try:
            with torch.inference_mode():
                feeds = inputs(rows, latent, hidden, device, dtype)
                if mode == "compile" and rows > 1:  # one graph for every row count: a dynamic batch
                    for tensor in feeds:
                        torch._dynamo.mark_dynamic(tensor, 0)
                first_started = time.time()
                out = fn(*feeds)
                timer.sync()
                first_s = time.time() - first_started
                finite = bool(torch.isfinite(out).all())
                del out
                for _ in range(args.warmup - 1):
                    fn(*feeds)
                timer.sync()
                times = [timer.measure(lambda: fn(*feeds)) for _ in range(args.runs)]
            record = dict(type="result", mode=mode, attention=kind, rows=rows, ms_median=statistics.median(times),
                          ms_min=min(times), ms=[round(t, 3) for t in times], first_call_s=round(first_s, 2),
                          finite=finite)
            if device.type == "cuda":
                record["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()
            emit(**record)
        except Exception as error:  # noqa: BLE001: an out-of-memory or kernel failure ends this point only
            emit(type="error", mode=mode, attention=kind, rows=rows, oom=is_oom(error), error=str(error)[:500])
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return True

    for mode in modes:
        if mode == "eager":
            for kind in attentions:
                use_attention(kind)
                for rows in rows_list:
                    if not measure("eager", kind, unet, rows):
                        break
        elif mode == "compile":
            if not hasattr(torch, "compile"):
                emit(type="skipped", mode="compile", reason=f"torch {torch.__version__} has no torch.compile")
                continue
            remaining = deadline - time.time()
            if remaining < args.compile_min_s:
                emit(type="skipped", mode="compile", reason=f"time budget: {remaining:.0f} s left, "
                     f"torch.compile needs about {args.compile_min_s:.0f} s")
                continue
            kind = "sdpa" if "sdpa" in attentions else attentions[0]
            use_attention(kind)
            compiled = torch.compile(unet)
            for rows in rows_list:
                if not measure("compile", kind, compiled, rows):
                    break
        else:
            emit(type="error", mode=mode, error=f"unknown mode {mode}")


if __name__ == "__main__":
    main()
