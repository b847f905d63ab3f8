"""Quality of the trained model on the held-out (caption, seed) pairs.

    python3 training/quality.py --work DIR [--out models/NAME] [--fixture DIR] [--pairs N]

Generates each pair with 50 DDIM steps at guidance 7.5 from the project's seeded noise (the same
x_T the server draws for that seed), scores it with the evaluator, and scores the VAE's own
reconstructions of the ground-truth drawings the same way (the ceiling). With --out it writes the
sample grid; with --fixture a DDIM reference (latent and image) for the server's tests.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clip_tokenizer import ClipTokenizer
from data import Attributes, held_out_pairs, render
from evaluator import accuracy, read_image
from export import write_fixture, write_json
from noise import gaussian_noise
from schedule import ddim_sample
from train import TOKENIZER_DIR, images_to_tensor, load_unet, load_vae, setup_torch

STEPS, GUIDANCE = 50, 7.5


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """VAE output [B,3,H,W] in [-1,1] -> uint8 [B,H,W,3], rounding as diffusers does."""
    return torch.round((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def generate(work: Path, captions: list[str], seeds: list[int], steps: int = STEPS, guidance: float = GUIDANCE, batch: int = 100):
    unet, text_encoder, scaling_factor, _ = load_unet(work)
    vae = load_vae(work)
    tokenizer = ClipTokenizer(TOKENIZER_DIR)
    uncond = text_encoder(torch.tensor([tokenizer("")]))
    images, latents = [], []
    for start in range(0, len(captions), batch):
        caps, sds = captions[start:start + batch], seeds[start:start + batch]
        cond = text_encoder(torch.tensor([tokenizer(c) for c in caps]))
        context = torch.cat([uncond.expand(len(caps), -1, -1), cond])
        x = torch.from_numpy(np.stack([gaussian_noise(s, 4 * 8 * 8).reshape(4, 8, 8) for s in sds]))

        def eps_fn(x, t):
            both = unet(torch.cat([x, x]), torch.full((2 * len(x),), t, dtype=torch.long), context)
            eps_u, eps_c = both.chunk(2)
            return eps_u + guidance * (eps_c - eps_u)

        x0 = ddim_sample(eps_fn, x, steps)
        latents.append(x0)
        images.append(to_uint8(vae.decode(x0 / scaling_factor)))
    return np.concatenate(images), torch.cat(latents)


@torch.no_grad()
def vae_reconstructions(work: Path, drawings: np.ndarray) -> np.ndarray:
    vae = load_vae(work)
    x = images_to_tensor(drawings)
    return np.concatenate([to_uint8(vae.decode(vae.encode(x[i:i + 100])[:, :4])) for i in range(0, len(x), 100)])


def grid(images: np.ndarray, columns: int, scale: int) -> Image.Image:
    columns = min(columns, len(images))
    rows = [np.concatenate(list(images[r * columns:(r + 1) * columns]), axis=1) for r in range(len(images) // columns)]
    picture = Image.fromarray(np.concatenate(rows, axis=0))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--fixture", type=Path)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    setup_torch()
    pairs = held_out_pairs(args.pairs)
    captions, seeds = [c for c, _ in pairs], [s for _, s in pairs]
    expected = [Attributes.parse(c) for c in captions]
    generated, _ = generate(args.work, captions, seeds)
    drawings = np.stack([render(e, s) for e, s in zip(expected, seeds)])
    report = {
        "pairs": len(pairs), "steps": STEPS, "guidance": GUIDANCE,
        "generated": accuracy([read_image(im) for im in generated], expected),
        "vae_reconstruction": accuracy([read_image(im) for im in vae_reconstructions(args.work, drawings)], expected),
        "ground_truth": accuracy([read_image(im) for im in drawings], expected),
    }
    write_json(args.work / "quality.json", report)
    print(json.dumps(report, indent=2))
    if args.out is not None:
        write_json(args.out / "quality.json", report)
        grid(generated[:32], 8, 2).save(args.out / "samples.png", optimize=True)
    if args.fixture is not None:
        write_json(args.fixture.parent / "held_out.json", pairs)
        caption, seed = captions[0], seeds[0]
        image, latent = generate(args.work, [caption], [seed])
        noise = gaussian_noise(seed, 4 * 8 * 8).reshape(1, 4, 8, 8)
        write_fixture(args.fixture, {"ddim": {"inputs": {"noise": noise}, "outputs": {"latent": latent.numpy(), "image": image}}},
                      extra={"prompt": caption, "seed": seed, "steps": STEPS, "guidance": GUIDANCE})


if __name__ == "__main__":
    main()
