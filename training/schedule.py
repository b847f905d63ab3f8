"""SD 1.5's noise schedule and the DDIM sampler (eta = 0), as in docs/smooth-diffusion.md."""
from __future__ import annotations

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012

SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int) -> list[int]:
    """'leading' spacing with steps_offset 1: 981, 961, ..., 1 for 50 steps."""
    ratio = NUM_TRAIN_TIMESTEPS // steps
    return [int(t) for t in (np.arange(steps) * ratio)[::-1] + 1]


@torch.no_grad()
def ddim_sample(eps_fn, x: torch.Tensor, steps: int) -> torch.Tensor:
    """eps_fn(x, t) -> eps (guidance already applied). Returns x_0 in latent space."""
    a = alphas_cumprod()
    ratio = NUM_TRAIN_TIMESTEPS // steps
    for t in ddim_timesteps(steps):
        prev = t - ratio
        a_t = a[t].item()
        a_p = a[prev].item() if prev >= 0 else a[0].item()
        eps = eps_fn(x, t)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        x = a_p ** 0.5 * x0 + (1 - a_p) ** 0.5 * eps
    return x
