"""Folds a LoRA training checkpoint into the UNet and writes a model directory the server serves
(MODEL=DIR), for screening adapters on layers the server's per-row LoRA inputs do not cover
(lora.py --targets all): W' = W + up @ down, the UNet exported again as export.py does; the other
networks, tokenizer and configs are copied from the shipped model (not its card, samples or quality
report, which describe the base), and merged_from.json records what was folded in.

    python3 training/merge_lora.py --work DIR --name NAME --out MODEL_DIR [--model models/tiny-sd-shapes]
    MODEL=MODEL_DIR deno task evaluate --metrics istd,accuracy --prompts 20

An existing MODEL_DIR is replaced only if an earlier merge wrote it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402

from export import export_unet  # noqa: E402
from lora import base_models, checkpoint_setting, load_checkpoint_lora, merge_lora  # noqa: E402
from nets import UNET_CONFIG  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models" / "tiny-sd-shapes"
MARKER = "merged_from.json"
NOT_COPIED = {"README.md", "samples.png", "quality.json"}


def writable_out(out: Path, model: Path) -> None:
    """Refuses an --out that is (or holds, or lies in) the source model, or a folder a merge did not write."""
    out, model = out.resolve(), model.resolve()
    if out == model or model in out.parents or out in model.parents:
        raise SystemExit(f"--out {out}: overlaps the source model {model}")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SystemExit(f"--out {out}: exists and was not written by merge_lora.py; choose another folder")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args()
    writable_out(args.out, args.model)
    ckpt = torch.load(args.work / f"{args.name}.pt")
    unet, _ = base_models(torch.load(args.work / "lora-base.pt"))
    load_checkpoint_lora(unet, ckpt)
    sample, timestep = torch.randn(2, 4, 8, 8), torch.tensor([981, 1])
    hidden = torch.randn(2, 77, UNET_CONFIG["cross_attention_dim"])
    with torch.no_grad():
        with_lora = unet(sample, timestep, hidden)
        merge_lora(unet)
        error = (unet(sample, timestep, hidden) - with_lora).abs().max().item()
    if error > 1e-4 * with_lora.abs().max().item():
        raise SystemExit(f"the merged UNet differs from the UNet with its LoRA layers by {error}")
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.model, args.out, ignore=lambda folder, names: [
        n for n in names if (Path(folder).name == "unet" and n == "model.onnx") or n in NOT_COPIED])
    export_unet(unet, (sample, timestep, hidden), args.out / "unet/model.onnx")
    record = {"model": str(args.model), "checkpoint": str(args.work / f"{args.name}.pt"), "steps": ckpt["step"],
              "lambda": ckpt["lam"], "targets": checkpoint_setting(ckpt, "targets"),
              "rank": checkpoint_setting(ckpt, "rank"), "max_fold_error": error}
    (args.out / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}: {args.name} ({ckpt['step']} steps, targets {record['targets']}) merged; "
          f"its output differs from the unmerged UNet's by {error:.1e} at most")


if __name__ == "__main__":
    main()
