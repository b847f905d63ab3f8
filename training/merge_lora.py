"""Folds a LoRA training checkpoint into the UNet and writes a model directory the server serves
(MODEL=DIR), for screening adapters on layers the server's per-row LoRA inputs do not cover
(lora.py --targets all): W' = W + up @ down, the UNet exported again as export.py does; every other
part of the model is copied from the shipped one.

    python3 training/merge_lora.py --work DIR --name NAME --out MODEL_DIR [--model models/tiny-sd-shapes]
    MODEL=MODEL_DIR deno task evaluate --metrics istd,accuracy --prompts 20
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402

from export import export_unet  # noqa: E402
from lora import TRAINED_DEFAULTS, add_lora, base_models, load_lora_state, merge_lora  # noqa: E402
from nets import UNET_CONFIG  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models" / "tiny-sd-shapes"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    ckpt = torch.load(args.work / f"{args.name}.pt")
    unet, _ = base_models(torch.load(args.work / "lora-base.pt"))
    load_lora_state(add_lora(unet, ckpt.get("rank", 8), ckpt.get("targets", TRAINED_DEFAULTS["targets"])), ckpt["lora"])
    sample, timestep = torch.randn(2, 4, 8, 8), torch.tensor([981, 1])
    hidden = torch.randn(2, 77, UNET_CONFIG["cross_attention_dim"])
    with torch.no_grad():
        with_lora = unet(sample, timestep, hidden)
        merge_lora(unet)
        error = (unet(sample, timestep, hidden) - with_lora).abs().max().item()
    if error > 1e-4 * with_lora.abs().max().item():
        raise SystemExit(f"the merged UNet differs from the UNet with its LoRA layers by {error}")
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.model, args.out, ignore=lambda folder, _: ["model.onnx"] if Path(folder).name == "unet" else [])
    export_unet(unet, (sample, timestep, hidden), args.out / "unet/model.onnx")
    print(f"wrote {args.out}: {args.name} ({ckpt['step']} steps, targets {ckpt.get('targets', 'attention')}) merged; "
          f"its output differs from the unmerged UNet's by {error:.1e} at most")


if __name__ == "__main__":
    main()
