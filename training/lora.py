"""LoRA on the tiny UNet (its attention, or every layer), with or without Step-wise Variation Regularization (Smooth Diffusion).

    python3 training/lora.py train  --work DIR --name smooth-lora   --lam 1 [--steps N] [--device cuda]
    python3 training/lora.py train  --work DIR --name baseline-lora --lam 0
    python3 training/lora.py export --work DIR --name smooth-lora --out FILE.safetensors
    python3 training/lora.py train  --work DIR --name smooth-lora --lam 1 --lr 5e-4 --steps 12000 --init FILE.safetensors

Base weights (the shipped model's EMA UNet and text encoder) and the VAE stay frozen; rank-8 (--rank) LoRA on
to_q, to_k, to_v and to_out.0 of every attention (attn1 and attn2); --targets all also wraps every other
Linear and Conv2d of the UNet's blocks (not exportable: the server's LoRA inputs cover the attention
projections; training/merge_lora.py folds such a run into a model to screen). Both runs draw identical batches,
timesteps, noises and regularizer directions from generators seeded by the step, so lambda = 0 is the
same training with the regularizer switched off. A run resumes from DIR/<name>.pt. --max-seconds
stops it after the step that passes that wall time (counted from the start, the --init target
replay included) and saves it.

--init continues a published adapter (used only while DIR/<name>.pt does not exist yet): its weights,
from the step its metadata records, so later batches are those an uninterrupted run would draw. The
file holds no optimizer state, so AdamW starts afresh; and no regularizer target, so (lambda > 0)
the EMA target is replayed over the batches of the --warm-target steps before it with the adapter's
weights, instead of starting from 0. The checkpoint's "init" entry records both.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import time
from pathlib import Path

# torch runs its own threads (set_num_threads below); OpenBLAS's pool on top oversubscribed this
# machine's 2 cores: 1.14 s/step against 0.33 with one OpenBLAS thread (lambda 5, batch 32, CPU).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402  (after the thread setting, which OpenBLAS reads when it loads)
import torch.nn.functional as F
from torch import nn

from clip_tokenizer import ClipTokenizer
from nets import Attention, TextEncoder, UNet2DConditionModel
from schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod
from train import EMPTY_CAPTION_RATE, TOKENIZER_DIR, encode_latents, log, save_checkpoint

RANK = 8
ATTENTION_PROJECTIONS = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
EMA_RATE = 0.01


class LoRABranch(nn.Module):
    """y = base(x) + up(down(x)), base frozen. Initialised as diffusers' LoRA layers: down ~ N(0, 1/rank), up = 0."""

    def __init__(self, base: nn.Module, down: nn.Module, up: nn.Module, rank: int):
        super().__init__()
        self.base, self.down, self.up = base.requires_grad_(False), down, up
        nn.init.normal_(self.down.weight, std=1 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


class LoRALinear(LoRABranch):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__(base, nn.Linear(base.in_features, rank, bias=False),
                         nn.Linear(rank, base.out_features, bias=False), rank)

    def delta(self) -> torch.Tensor:
        """The update to the base weight: W' = W + delta."""
        return self.up.weight @ self.down.weight


class LoRAConv(LoRABranch):
    """down: a convolution like the base's, to `rank` channels; up: a 1x1."""

    def __init__(self, base: nn.Conv2d, rank: int):
        # delta() folds the pair into one kernel: exact for ungrouped, undilated, zero-padded convolutions.
        assert base.groups == 1 and base.dilation == (1, 1) and base.padding_mode == "zeros", base
        super().__init__(base, nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False),
                         nn.Conv2d(rank, base.out_channels, 1, bias=False), rank)

    def delta(self) -> torch.Tensor:
        return torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)


LoRALayer = LoRALinear | LoRAConv
TARGET_SETS = ("attention", "all")
BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")
# What checkpoints saved before a setting was recorded were trained with.
CHECKPOINT_DEFAULTS = {"rank": RANK, "schedule": "constant", "targets": "attention", "empty_caption_rate": EMPTY_CAPTION_RATE}


def checkpoint_setting(ckpt: dict, name: str):
    return ckpt.get(name, CHECKPOINT_DEFAULTS[name])


def add_lora(unet: nn.Module, rank: int = RANK, targets: str = "attention") -> dict[str, LoRALayer]:
    """Wraps every attention projection, keyed by its legacy processor prefix (the published Smooth-LoRA's
    key set); with targets "all", also every other Linear and Conv2d of the down, mid and up blocks
    (feed-forwards, projections, resnets, samplers), keyed "<module path>.lora"."""
    unet.requires_grad_(False)
    projections = {f"{path}.{target}" for path, module in unet.named_modules() if isinstance(module, Attention)
                   for target in ATTENTION_PROJECTIONS}
    others = [(path, module) for path, module in unet.named_modules()
              if targets == "all" and path.startswith(BLOCKS) and isinstance(module, (nn.Linear, nn.Conv2d))
              and path not in projections]
    layers: dict[str, LoRALayer] = {}
    for path, module in list(unet.named_modules()):
        if not isinstance(module, Attention):
            continue
        for target, processor_name in ATTENTION_PROJECTIONS.items():
            if target == "to_out.0":
                module.to_out[0] = layer = LoRALinear(module.to_out[0], rank)
            else:
                layer = LoRALinear(getattr(module, target), rank)
                setattr(module, target, layer)
            layers[f"{path}.processor.{processor_name}"] = layer
    for path, module in others:
        parent, _, leaf = path.rpartition(".")
        layer = LoRALinear(module, rank) if isinstance(module, nn.Linear) else LoRAConv(module, rank)
        setattr(unet.get_submodule(parent), leaf, layer)
        layers[f"{path}.lora"] = layer
    return layers


def load_checkpoint_lora(unet: nn.Module, ckpt: dict) -> dict[str, LoRALayer]:
    """Wraps the UNet's layers as the training checkpoint's run did and loads its LoRA weights."""
    layers = add_lora(unet, checkpoint_setting(ckpt, "rank"), checkpoint_setting(ckpt, "targets"))
    load_lora_state(layers, ckpt["lora"])
    return layers


def merge_lora(unet: nn.Module) -> None:
    """Folds every LoRA layer into its base weight and puts the base layer back in its place."""
    with torch.no_grad():
        for path, layer in [(p, m) for p, m in unet.named_modules() if isinstance(m, LoRABranch)]:
            layer.base.weight += layer.delta()
            parent, _, leaf = path.rpartition(".")
            setattr(unet.get_submodule(parent), leaf, layer.base)


def lora_state(layers: dict[str, LoRALayer]) -> dict[str, torch.Tensor]:
    """Down and up weights under add_lora's keys (for the attention, the published Smooth-LoRA's)."""
    state = {}
    for prefix, layer in layers.items():
        state[f"{prefix}.down.weight"] = layer.down.weight.detach().float().cpu().contiguous()
        state[f"{prefix}.up.weight"] = layer.up.weight.detach().float().cpu().contiguous()
    return state


def load_lora_state(layers: dict[str, LoRALayer], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for prefix, layer in layers.items():
            layer.down.weight.copy_(state[f"{prefix}.down.weight"])
            layer.up.weight.copy_(state[f"{prefix}.up.weight"])


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {entry['dtype']}, expected F32")
        start, end = (8 + size + o for o in entry["data_offsets"])
        tensors[name] = torch.frombuffer(bytearray(raw[start:end]), dtype=torch.float32).reshape(entry["shape"])
    return tensors, metadata


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keeps the tensor data 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


# ---------------------------------------------------------------- the regularizer
def denoise_with_variation(unet, x0, eps, t, context, alphas, direction, need_variation: bool):
    """One UNet call on x_t = sqrt(a) x0 + sqrt(1-a) eps. Returns (eps_theta, v or None) where
    v = |d/d(eps) sum(x0_hat * delta)|_2 per sample, delta = direction * sqrt(1-a) / sqrt(numel),
    x0_hat = (x_t - sqrt(1-a) eps_theta) / sqrt(a); the gradient keeps its graph so v can be trained."""
    a = alphas[t].view(-1, 1, 1, 1)
    eps = eps.detach().requires_grad_(need_variation)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = unet(xt, t, context)
    if not need_variation:
        return pred, None
    x0_hat = (xt - (1 - a).sqrt() * pred) / a.sqrt()
    per_sample = x0_hat[0].numel()
    delta = direction / math.sqrt(per_sample) * (1 - a).sqrt()
    (grad,) = torch.autograd.grad((x0_hat * delta).sum(), eps, create_graph=True)
    return pred, grad.flatten(1).norm(dim=1)


def regularizer(v: torch.Tensor, target: float) -> torch.Tensor:
    return ((v - target) ** 2).mean()


def ema_target(target: float, v: torch.Tensor) -> float:
    return target + EMA_RATE * (v.detach().mean().item() - target)


# ---------------------------------------------------------------- training
def base_file(work: Path, count: int) -> Path:
    """Everything LoRA training needs from the base build in one portable file (fp16 latents)."""
    path = work / "lora-base.pt"
    if not path.exists():
        ckpt = torch.load(work / "unet.pt")
        latents, captions, scaling_factor = encode_latents(work, count)
        save_checkpoint(path, {
            "unet": ckpt["ema_unet"], "text_encoder": ckpt["ema_text_encoder"], "known_ids": ckpt["known_ids"],
            "scaling_factor": scaling_factor, "latents": latents.half(), "captions": captions,
        })
    return path


def base_models(base: dict) -> tuple[UNet2DConditionModel, TextEncoder]:
    """The frozen base UNet and text encoder from lora-base.pt's contents."""
    unet, text_encoder = UNet2DConditionModel(), TextEncoder(base["known_ids"])
    unet.load_state_dict(base["unet"]); text_encoder.load_state_dict(base["text_encoder"])
    text_encoder.requires_grad_(False).eval()
    return unet, text_encoder


def training_data(base: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scaled latents, caption token ids, the empty caption's ids): what draw_batch draws from."""
    tokenizer = ClipTokenizer(TOKENIZER_DIR)
    ids = torch.tensor([tokenizer(c) for c in base["captions"]], dtype=torch.long)
    return base["latents"].float() * base["scaling_factor"], ids, torch.tensor(tokenizer(""), dtype=torch.long)


def draw_batch(step: int, batch: int, latents, ids, empty_ids, empty_rate: float = EMPTY_CAPTION_RATE):
    """The step's batch, timesteps, noises and regularizer directions, from a generator seeded by the step;
    captions dropped to "" at `empty_rate` (the draws stay the same at any rate)."""
    g = torch.Generator().manual_seed(1_000_003 * 3 + step)
    idx = torch.randint(0, len(latents), (batch,), generator=g)
    tokens = ids[idx].clone()
    tokens[torch.rand(batch, generator=g) < empty_rate] = empty_ids
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
    eps = torch.randn(latents[idx].shape, generator=g)
    direction = torch.randn(eps.shape, generator=g)
    return latents[idx], tokens, t, eps, direction


def start_from(init: Path, layers: dict[str, LoRALayer], rank: int, lam: float, batch: int,
               lr: float) -> tuple[int, dict]:
    """Loads a published adapter; returns (its step count, the record kept in the checkpoints)."""
    state, meta = read_safetensors(init)
    if int(meta["rank"]) != rank or set(state) != set(lora_state(layers)):
        raise ValueError(f"{init}: not a rank-{rank} adapter of exactly this run's layers "
                         "(an exported adapter covers the attention: --init needs --targets attention)")
    for field, ours in (("lambda", lam), ("batch", batch), ("lr", lr)):
        if float(meta[field]) != ours:
            print(f"warning: {init} was trained with {field} {meta[field]}, this run uses {ours}")
    load_lora_state(layers, state)
    record = {"file": str(init), "sha256": hashlib.sha256(init.read_bytes()).hexdigest(), "metadata": meta,
              "step": int(meta["steps"]), "optimizer": "fresh AdamW state at the init step (the file holds none)"}
    return int(meta["steps"]), record


def learning_rate(schedule: str, peak: float, step: int, start: int, end: int) -> float:
    """The rate for the step after `step`: constant, or a cosine from `peak` at `start` down to 0 at `end`."""
    if schedule == "constant":
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / max(1, end - start))))


def train(work: Path, name: str, lam: float, steps: int, batch: int, lr: float, count: int, device: str,
          init: Path | None = None, warm_target: int = 200, max_seconds: float | None = None,
          rank: int = RANK, schedule: str = "constant", targets: str = "attention",
          empty_rate: float = EMPTY_CAPTION_RATE) -> None:
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    base = torch.load(base_file(work, count))
    unet, text_encoder = base_models(base)
    torch.manual_seed(0)  # the LoRA's initial down weights
    layers = add_lora(unet, rank, targets)
    unet.to(device); text_encoder.to(device)
    latents, ids, empty_ids = training_data(base)
    alphas = alphas_cumprod().float().to(device)
    params = [p for layer in layers.values() for p in (layer.down.weight, layer.up.weight)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ckpt_path = work / f"{name}.pt"
    step, elapsed, target, init_record = 0, 0.0, 0.0, None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path)
        for field, ours in (("rank", rank), ("schedule", schedule), ("targets", targets),
                            ("empty_caption_rate", empty_rate)):
            if checkpoint_setting(ckpt, field) != ours:
                raise ValueError(f"{ckpt_path} was trained with {field} {checkpoint_setting(ckpt, field)}, not {ours}")
        load_lora_state(layers, ckpt["lora"]); opt.load_state_dict(ckpt["opt"])
        step, elapsed, target, init_record = ckpt["step"], ckpt["elapsed"], ckpt["target"], ckpt.get("init")
        print(f"[{name}] resumed at step {step}")
    elif init is not None:
        step, init_record = start_from(init, layers, rank, lam, batch, lr)
        print(f"[{name}] starting from {init} at step {step}", flush=True)
        if lam > 0 and warm_target > 0:
            first = max(0, step - warm_target)
            for s in range(first, step):
                x0, tokens, t, eps, direction = (x.to(device) for x in draw_batch(s, batch, latents, ids, empty_ids, empty_rate))
                with torch.no_grad():
                    context = text_encoder(tokens)
                _, v = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, True)
                target = v.detach().mean().item() if s == first else ema_target(target, v)
            print(f"[{name}] target {target:.5f}: EMA replayed over steps {first}..{step - 1}'s batches; "
                  f"on step {step - 1}'s, v mean {v.mean().item():.5f} std {v.std().item():.5f}", flush=True)
            init_record["target"] = (f"{target!r}: EMA (rate {EMA_RATE}) replayed over the batches of steps "
                                     f"{first}..{step - 1} with the init weights, from the first one's mean v")
        else:
            init_record["target"] = "0 (lambda 0: unused)" if lam == 0 else "0"
    started = time.time() - elapsed
    first_step = step + 1
    # The schedule runs from the step this run's weights started at (0, or the --init adapter's) to --steps.
    schedule_start = init_record["step"] if init_record else 0

    def save() -> None:
        save_checkpoint(ckpt_path, {"lora": lora_state(layers), "opt": opt.state_dict(), "step": step,
                                    "elapsed": time.time() - started, "target": target, "lam": lam,
                                    "batch": batch, "lr": lr, "device": device, "init": init_record,
                                    "rank": rank, "schedule": schedule, "targets": targets,
                                    "empty_caption_rate": empty_rate})

    saved = step
    while step < steps and (deadline is None or time.monotonic() < deadline):
        x0, tokens, t, eps, direction = (x.to(device) for x in draw_batch(step, batch, latents, ids, empty_ids, empty_rate))
        with torch.no_grad():
            context = text_encoder(tokens)
        regularized = lam > 0
        pred, v = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, regularized)
        diffusion = F.mse_loss(pred, eps)
        loss = diffusion
        if regularized:
            target = ema_target(target, v)
            loss = diffusion + lam * regularizer(v, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = learning_rate(schedule, lr, step, schedule_start, steps)
        opt.step()
        step += 1
        if step % 50 == 0 or step == steps or step == first_step:
            if v is None:  # the baseline measures v too, for the log, without training on it
                _, v = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, True)
            log(name, step, steps, started, loss=diffusion.item(), v_mean=v.mean().item(),
                v_std=v.std().item(), target=target)
        if step % 100 == 0 or step == steps:
            save()
            saved = step
    if step > saved or not ckpt_path.exists():  # stopped by --max-seconds between saves, or before a step
        save()
    if step < steps:
        print(f"[{name}] stopped at step {step}: --max-seconds {max_seconds} passed", flush=True)


def export(work: Path, name: str, out: Path) -> None:
    ckpt = torch.load(work / f"{name}.pt")
    if checkpoint_setting(ckpt, "targets") != "attention":
        raise SystemExit(f"{name}: trained on targets {ckpt['targets']}; the export writes the published Smooth-LoRA's "
                         "attention key set, which the server serves. Screen it with merge_lora.py instead.")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(out, ckpt["lora"], {
        "format": "pt", "rank": str(checkpoint_setting(ckpt, "rank")), "lambda": str(ckpt["lam"]), "steps": str(ckpt["step"]),
        "batch": str(ckpt["batch"]), "lr": str(ckpt["lr"]), "schedule": checkpoint_setting(ckpt, "schedule"), "seconds": f"{ckpt['elapsed']:.0f}",
        "empty_caption_rate": str(checkpoint_setting(ckpt, "empty_caption_rate")),
        "device": ckpt["device"], "base": "tiny-sd-shapes",
        **({"init": json.dumps(ckpt["init"])} if ckpt.get("init") else {}),
    })
    print(f"wrote {out}: {len(ckpt['lora'])} tensors, {ckpt['step']} steps, lambda {ckpt['lam']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["train", "export", "pack"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", default="smooth-lora")
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--init", type=Path, help="a published adapter (.safetensors) to continue from")
    parser.add_argument("--warm-target", type=int, default=200, help="steps of batches the EMA target is replayed over (--init)")
    parser.add_argument("--max-seconds", type=float, help="stop (and save) after the step that passes this wall time")
    parser.add_argument("--rank", type=int, default=RANK)
    parser.add_argument("--empty-caption-rate", type=float, default=EMPTY_CAPTION_RATE,
                        help="the share of captions dropped to \"\" (the base model's training used 0.1)")
    parser.add_argument("--targets", choices=TARGET_SETS, default="attention",
                        help="all: also every other Linear and Conv2d of the UNet's blocks (screened by merge_lora.py)")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                        help="cosine: from --lr down to 0 at --steps, counted from the start (or the --init step)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.command == "pack":
        print(base_file(args.work, args.count))
    elif args.command == "train":
        train(args.work, args.name, args.lam, args.steps, args.batch, args.lr, args.count, args.device,
              args.init, args.warm_target, args.max_seconds, args.rank, args.schedule, args.targets,
              args.empty_caption_rate)
    else:
        export(args.work, args.name, args.out)


if __name__ == "__main__":
    main()
