"""The Step-wise Variation Regularizer against finite differences, on a small UNet in float64.

    python3 training/test_regularizer.py

1. v (autograd through the UNet) equals |d/d(eps) sum(x0_hat * delta)|_2 estimated by central
   differences over every coordinate of eps, delta held fixed.
2. The gradient of L_reg = mean((v - a)^2) with respect to LoRA weights (which needs the graph of the
   first gradient: create_graph) equals central differences of L_reg in those weights.
"""
from __future__ import annotations

import torch

from lora import add_lora, denoise_with_variation, ema_target, regularizer
from nets import UNet2DConditionModel, UNET_CONFIG
from schedule import alphas_cumprod

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
CONFIG = {**UNET_CONFIG, "block_out_channels": [16, 16], "attention_head_dim": 2, "cross_attention_dim": 8,
          "sample_size": 4}
unet = UNet2DConditionModel(CONFIG)
layers = add_lora(unet, rank=2)
with torch.no_grad():  # a LoRA that is not zero, so its weights matter
    for layer in layers.values():
        layer.up.weight.normal_(std=0.3)
alphas = alphas_cumprod().double()
x0 = torch.randn(2, 4, 4, 4)
eps = torch.randn(2, 4, 4, 4)
direction = torch.randn(2, 4, 4, 4)
t = torch.tensor([120, 710])
context = torch.randn(2, 3, 8)


def probe(e: torch.Tensor) -> torch.Tensor:
    """sum(x0_hat * delta) per sample, the quantity whose eps-gradient norm is v."""
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * e
    x0_hat = (xt - (1 - a).sqrt() * unet(xt, t, context)) / a.sqrt()
    delta = direction / (x0_hat[0].numel() ** 0.5) * (1 - a).sqrt()
    return (x0_hat * delta).flatten(1).sum(1)


# 1. v against finite differences in eps
_, v = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, need_variation=True)
h = 1e-5
grad = torch.zeros_like(eps)
with torch.no_grad():
    for i in range(eps[0].numel()):
        step = torch.zeros_like(eps).flatten(1)
        step[:, i] = h
        step = step.view_as(eps)
        grad.flatten(1)[:, i] = (probe(eps + step) - probe(eps - step)) / (2 * h)
v_fd = grad.flatten(1).norm(dim=1)
error = ((v - v_fd).abs() / v_fd).max().item()
print(f"v autograd {v.tolist()} finite differences {v_fd.tolist()} max relative error {error:.2e}")
assert error < 1e-6, error
assert (v > 0).all()

# 2. dL_reg/d(LoRA weights) against finite differences of L_reg
target = ema_target(0.0, v) * 0.5  # any fixed target; half the EMA's first value keeps L_reg away from 0
loss = regularizer(v, target)
layer = next(iter(layers.values()))
weights = [layer.up.weight, layer.down.weight]
analytic = torch.autograd.grad(loss, weights)
h = 1e-6
worst = 0.0
for weight, grad_w in zip(weights, analytic):
    for index in [(0, 0), (1, 1), (weight.shape[0] - 1, weight.shape[1] - 1)]:
        with torch.no_grad():
            original = weight[index].item()
            weight[index] = original + h
        _, v_plus = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, True)
        with torch.no_grad():
            weight[index] = original - h
        _, v_minus = denoise_with_variation(unet, x0, eps, t, context, alphas, direction, True)
        with torch.no_grad():
            weight[index] = original
        numeric = (regularizer(v_plus, target) - regularizer(v_minus, target)).item() / (2 * h)
        rel = abs(numeric - grad_w[index].item()) / max(abs(numeric), 1e-12)
        worst = max(worst, rel)
        print(f"dL_reg/dW{list(index)}: autograd {grad_w[index].item():.8e} finite differences {numeric:.8e}")
        assert abs(numeric) > 1e-9, "a LoRA weight that does not move L_reg tests nothing"
print(f"max relative error of dL_reg/dW {worst:.2e}")
assert worst < 1e-5, worst

# 3. the EMA target: a <- a + 0.01 (mean(v) - a)
assert abs(ema_target(2.0, torch.tensor([3.0, 5.0])) - (2.0 + 0.01 * 2.0)) < 1e-12
print("regularizer ok")
