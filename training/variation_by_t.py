"""Where the Step-wise Variation Regularizer acts: v (lora.py's per-sample variation) by timestep band.

    python3 training/variation_by_t.py --work DIR [ADAPTER.safetensors | CHECKPOINT.pt ...]

For the base model (no adapter) and each adapter, v over the same 192 samples (six batches of 32
drawn as lora.py draws them, at steps no training run reaches), as mean ± std per band of t. DIR
holds lora-base.pt (`training/base_from_onnx.py --work DIR`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402

from lora import (add_lora, base_models, denoise_with_variation, draw_batch, load_checkpoint_lora,  # noqa: E402
                  load_lora_state, read_safetensors, training_data)
from schedule import alphas_cumprod  # noqa: E402

BANDS = [0, 50, 200, 400, 600, 800, 1000]
FIRST_STEP, BATCHES, BATCH = 900_000, 6, 32


def variation(base: dict, data: tuple, adapter: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, t) over the fixed samples of `data` (training_data), for the base model with the adapter
    applied (if any)."""
    unet, text_encoder = base_models(base)
    if adapter is not None and adapter.suffix == ".pt":  # a training checkpoint, of any --targets
        load_checkpoint_lora(unet, torch.load(adapter))
    elif adapter is not None:
        state, meta = read_safetensors(adapter)
        load_lora_state(add_lora(unet, int(meta["rank"])), state)
    latents, ids, empty_ids = data
    alphas = alphas_cumprod().float()
    vs, ts = [], []
    for step in range(FIRST_STEP, FIRST_STEP + BATCHES):
        x0, tokens, t, eps, direction = draw_batch(step, BATCH, latents, ids, empty_ids)
        with torch.no_grad():
            context = text_encoder(tokens)
        _, v = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, True)
        vs.append(v.detach()); ts.append(t)
    return torch.cat(vs), torch.cat(ts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("adapters", type=Path, nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    base = torch.load(args.work / "lora-base.pt")
    data = training_data(base)
    bands = list(zip(BANDS, BANDS[1:]))
    print("| model | all: mean v (std / mean) | " + " | ".join(f"t {lo}-{hi - 1}" for lo, hi in bands) + " |")
    print("|---|---|" + "---|" * len(bands))
    for adapter in [None, *args.adapters]:
        v, t = variation(base, data, adapter)
        cells = [f"{v[(t >= lo) & (t < hi)].mean():.3f} ± {v[(t >= lo) & (t < hi)].std():.3f}" for lo, hi in bands]
        print(f"| {adapter or 'base'} | {v.mean():.4f} ({v.std() / v.mean():.3f}) | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
