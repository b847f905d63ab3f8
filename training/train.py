"""Training stages of the embedded model, each checkpointed and resumable.

    python3 training/train.py vae   --work DIR [--steps N]
    python3 training/train.py unet  --work DIR [--steps N]

A stage that finds DIR/<stage>.pt resumes from it; every batch is drawn from a generator seeded by
(stage seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clip_tokenizer import ClipTokenizer
from data import caption_words, training_set
from nets import AutoencoderKL, TextEncoder, UNet2DConditionModel
from schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod

HERE = Path(__file__).resolve().parent
TOKENIZER_DIR = HERE.parent / "models" / "tiny-sd-shapes" / "tokenizer"
EMPTY_CAPTION_RATE = 0.1


def setup_torch() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def known_token_ids(tokenizer: ClipTokenizer) -> list[int]:
    ids = {49406, 49407}
    for word in caption_words():
        ids.update(tokenizer.encode(word))
    return sorted(ids)


def dataset(work: Path, count: int) -> tuple[np.ndarray, list[str]]:
    cache = work / f"data-{count}.npz"
    if cache.exists():
        blob = np.load(cache)
        return blob["images"], json.loads(str(blob["captions"]))
    images, captions = training_set(count)
    np.savez(cache, images=images, captions=json.dumps(captions))
    return images, captions


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint behind


def log(stage: str, step: int, steps: int, started: float, **values: float) -> None:
    parts = " ".join(f"{k}={v:.5f}" for k, v in values.items())
    print(f"[{stage}] step {step}/{steps} {parts} elapsed={time.time() - started:.0f}s", flush=True)


# ---------------------------------------------------------------- VAE
def train_vae(work: Path, steps: int, batch: int, count: int, lr: float) -> None:
    images, _ = dataset(work, count)
    data = images_to_tensor(images)
    vae = AutoencoderKL()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ckpt_path = work / "vae.pt"
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path)
        vae.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        print(f"[vae] resumed at step {step}")
    started = time.time() - elapsed
    while step < steps:
        g = torch.Generator().manual_seed(1_000_003 * 1 + step)
        x = data[torch.randint(0, len(data), (batch,), generator=g)]
        for group in opt.param_groups:  # cosine decay to a tenth
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        params = vae.encode(x)
        mean, logvar = params[:, :4], params[:, 4:].clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        recon = vae.decode(z)
        rec_loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = rec_loss + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == steps:
            psnr = 10 * torch.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), x)).item()
            log("vae", step, steps, started, loss=loss.item(), psnr=psnr, kl=kl.item())
        if step % 200 == 0 or step == steps:
            save_checkpoint(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": time.time() - started})


def load_vae(work: Path) -> AutoencoderKL:
    vae = AutoencoderKL()
    vae.load_state_dict(torch.load(work / "vae.pt")["model"])
    return vae.eval()


@torch.no_grad()
def encode_latents(work: Path, count: int, vae: AutoencoderKL | None = None) -> tuple[torch.Tensor, list[str], float]:
    """Latent means of the training set and the scaling factor that gives them unit std
    (with DIR/vae.pt's VAE unless one is given)."""
    cache = work / f"latents-{count}.pt"
    if cache.exists():
        blob = torch.load(cache)
        return blob["latents"], blob["captions"], blob["scaling_factor"]
    images, captions = dataset(work, count)
    vae = (vae if vae is not None else load_vae(work)).eval()
    data = images_to_tensor(images)
    latents = torch.cat([vae.encode(data[i:i + 256])[:, :4] for i in range(0, len(data), 256)])
    scaling_factor = float(1.0 / latents.std())
    torch.save({"latents": latents, "captions": captions, "scaling_factor": scaling_factor}, cache)
    return latents, captions, scaling_factor


# ---------------------------------------------------------------- UNet + text encoder
def unet_lr(step: int, steps: int, lr: float) -> float:
    """Warm-up over 200 steps, constant until 60% of the run, then cosine decay to a tenth."""
    decay_start = int(0.6 * steps)
    if step < decay_start:
        return lr * min(1.0, (step + 1) / 200)
    progress = (step - decay_start) / max(1, steps - decay_start)
    return lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def train_unet(work: Path, steps: int, batch: int, count: int, lr: float, ema_decay: float) -> None:
    latents, captions, scaling_factor = encode_latents(work, count)
    latents = latents * scaling_factor
    tokenizer = ClipTokenizer(TOKENIZER_DIR)
    ids = torch.tensor([tokenizer(c) for c in captions], dtype=torch.long)
    empty_ids = torch.tensor(tokenizer(""), dtype=torch.long)
    torch.manual_seed(1)
    unet, text_encoder = UNet2DConditionModel(), TextEncoder(known_token_ids(tokenizer))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = {"unet": copy.deepcopy(unet).requires_grad_(False), "text_encoder": copy.deepcopy(text_encoder).requires_grad_(False)}
    alphas = alphas_cumprod().float()
    ckpt_path = work / "unet.pt"
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path)
        unet.load_state_dict(ckpt["unet"]); text_encoder.load_state_dict(ckpt["text_encoder"])
        ema["unet"].load_state_dict(ckpt["ema_unet"]); ema["text_encoder"].load_state_dict(ckpt["ema_text_encoder"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        print(f"[unet] resumed at step {step}")
    started = time.time() - elapsed
    while step < steps:
        g = torch.Generator().manual_seed(1_000_003 * 2 + step)
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        tokens = ids[idx].clone()
        tokens[torch.rand(batch, generator=g) < EMPTY_CAPTION_RATE] = empty_ids
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = unet_lr(step, steps, lr)
        pred = unet(xt, t, text_encoder(tokens))
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, live in (("unet", unet), ("text_encoder", text_encoder)):
                for p_ema, p in zip(ema[name].parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if step % 50 == 0 or step == steps:
            log("unet", step, steps, started, loss=loss.item())
        if step % 200 == 0 or step == steps:
            save_checkpoint(ckpt_path, {
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema["unet"].state_dict(), "ema_text_encoder": ema["text_encoder"].state_dict(),
                "opt": opt.state_dict(), "step": step, "elapsed": time.time() - started,
                "known_ids": known_token_ids(tokenizer), "scaling_factor": scaling_factor,
            })


def load_unet(work: Path) -> tuple[UNet2DConditionModel, TextEncoder, float, dict]:
    ckpt = torch.load(work / "unet.pt")
    unet, text_encoder = UNet2DConditionModel(), TextEncoder(ckpt["known_ids"])
    unet.load_state_dict(ckpt["ema_unet"]); text_encoder.load_state_dict(ckpt["ema_text_encoder"])
    return unet.eval(), text_encoder.eval(), ckpt["scaling_factor"], {"steps": ckpt["step"], "seconds": ckpt["elapsed"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["vae", "unet"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--count", type=int, default=30000, help="training images")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    setup_torch()
    if args.stage == "vae":
        train_vae(args.work, args.steps or 1200, args.batch or 16, args.count, lr=5e-4)
    else:
        train_unet(args.work, args.steps or 7000, args.batch or 64, args.count, lr=3e-4, ema_decay=0.999)


if __name__ == "__main__":
    main()
