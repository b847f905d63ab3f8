"""Stable Diffusion 1.5's three networks with diffusers' and transformers' module names, for exports
of SD-1.5 scale with seeded random weights (the real weights are on the Hub, out of reach here).

UNet2DConditionModel: 320/640/1280/1280, 2 layers per block, 8 heads, cross-attention 768, GEGLU x4;
CLIP ViT-L/14 text encoder: 12 layers, width 768, 12 heads, causal, quick-GELU; AutoencoderKL:
128/256/512/512, 2 layers per block, a single-head attention in each mid block. `MINI` keeps every
block, layer and attention (so the same 128 LoRA targets) at a fraction of the width, for tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nets import Attention, ResnetBlock2D, TimestepEmbedding, Transformer2DModel, Upsample2D

SD15 = {
    "unet": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": 8,
             "cross_attention_dim": 768, "norm_num_groups": 32},
    "text": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32},
}
MINI = {
    "unet": {"block_out_channels": [32, 64, 128, 128], "layers_per_block": 2, "attention_head_dim": 8,
             "cross_attention_dim": 64, "norm_num_groups": 32},
    "text": {"hidden_size": 64, "num_hidden_layers": 12, "num_attention_heads": 4, "intermediate_size": 256},
    "vae": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 2, "norm_num_groups": 32},
}
SIZES = {"full": SD15, "mini": MINI}


# ---------------------------------------------------------------- UNet
class Timesteps(nn.Module):
    """Sinusoidal features (flip_sin_to_cos=True, shift 0), always float32: an fp16 export keeps this
    module in float32 (angles up to 999 rad lose whole radians in half precision), as diffusers does."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with attentions) or DownBlock2D (without)."""

    def __init__(self, in_ch: int, out_ch: int, temb: int, layers: int, heads: int, ctx: int, groups: int,
                 attention: bool, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb, groups) for i in range(layers)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(out_ch, heads, ctx, groups, ff_mult=4) for _ in range(layers)]) if attention else None
        self.downsamplers = nn.ModuleList([nn.Module()]) if downsample else None
        if downsample:
            self.downsamplers[0].conv = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0].conv(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D or UpBlock2D: one more resnet than the down block, each eating one skip."""

    def __init__(self, prev_ch: int, out_ch: int, skip_chs: list[int], temb: int, heads: int, ctx: int, groups: int,
                 attention: bool, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D((prev_ch if i == 0 else out_ch) + s, out_ch, temb, groups)
                                      for i, s in enumerate(skip_chs)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(out_ch, heads, ctx, groups, ff_mult=4) for _ in skip_chs]) if attention else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if upsample else None

    def forward(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, skips[-1].shape[-2:])
        return x


class MidBlock(nn.Module):
    def __init__(self, ch: int, temb: int, heads: int, ctx: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb, groups), ResnetBlock2D(ch, ch, temb, groups)])
        self.attentions = nn.ModuleList([Transformer2DModel(ch, heads, ctx, groups, ff_mult=4)])

    def forward(self, x, temb, context):
        return self.resnets[1](self.attentions[0](self.resnets[0](x, temb), context), temb)


class UNet(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        chs, layers = config["block_out_channels"], config["layers_per_block"]
        heads, ctx, groups = config["attention_head_dim"], config["cross_attention_dim"], config["norm_num_groups"]
        temb = chs[0] * 4
        last = len(chs) - 1
        self.conv_in = nn.Conv2d(4, chs[0], 3, padding=1)
        self.time_proj = Timesteps(chs[0])
        self.time_embedding = TimestepEmbedding(chs[0], temb)
        self.down_blocks = nn.ModuleList([
            DownBlock(chs[max(i - 1, 0)], ch, temb, layers, heads, ctx, groups, attention=i < last, downsample=i < last)
            for i, ch in enumerate(chs)])
        self.mid_block = MidBlock(chs[-1], temb, heads, ctx, groups)
        skip_chs = [chs[0]]
        for i, ch in enumerate(chs):
            skip_chs += [ch] * layers + ([ch] if i < last else [])
        rev = list(reversed(chs))
        ups = []
        for i, ch in enumerate(rev):
            block_skips = [skip_chs.pop() for _ in range(layers + 1)]
            ups.append(UpBlock(rev[max(i - 1, 0)], ch, block_skips, temb, heads, ctx, groups,
                               attention=i > 0, upsample=i < last))
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNorm(groups, chs[0], eps=1e-5)
        self.conv_out = nn.Conv2d(chs[0], 4, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if timestep.dim() == 0:  # one timestep for the whole batch
            timestep = timestep.reshape(1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# ---------------------------------------------------------------- CLIP text encoder
class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, -1))


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class CLIPEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int):
        super().__init__()
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, inner)
        self.mlp.activation_fn = QuickGELU()
        self.mlp.fc2 = nn.Linear(inner, dim)
        self.layer_norm2 = nn.LayerNorm(dim)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextModel(nn.Module):
    """input_ids [B, 77] -> last_hidden_state [B, 77, width], causal as CLIP's."""

    def __init__(self, config: dict, vocab_size: int = 49408, length: int = 77):
        super().__init__()
        dim = config["hidden_size"]
        self.text_model = nn.Module()
        self.text_model.embeddings = nn.Module()
        self.text_model.embeddings.token_embedding = nn.Embedding(vocab_size, dim)
        self.text_model.embeddings.position_embedding = nn.Embedding(length, dim)
        self.text_model.encoder = nn.Module()
        self.text_model.encoder.layers = nn.ModuleList([
            CLIPEncoderLayer(dim, config["num_attention_heads"], config["intermediate_size"])
            for _ in range(config["num_hidden_layers"])])
        self.text_model.final_layer_norm = nn.LayerNorm(dim)
        for embedding in (self.text_model.embeddings.token_embedding, self.text_model.embeddings.position_embedding):
            nn.init.normal_(embedding.weight, std=0.02)
        # -1e4 rather than -inf: the same in float16, and no inf - inf anywhere
        self.register_buffer("causal_mask", torch.full((length, length), -1e4).triu(1), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.text_model
        n = input_ids.shape[1]
        x = m.embeddings.token_embedding(input_ids.long()) + m.embeddings.position_embedding.weight[:n]
        for layer in m.encoder.layers:
            x = layer(x, self.causal_mask[:n, :n])
        return m.final_layer_norm(x)


# ---------------------------------------------------------------- VAE
class VaeAttention(nn.Module):
    """diffusers' mid-block Attention of AutoencoderKL: one head over all pixels, with its GroupNorm."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(ch, ch) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(ch, ch), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        weights = torch.softmax(q @ k.transpose(-1, -2) * c ** -0.5, dim=-1)
        out = self.to_out[0](weights @ v)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class VaeMidBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.attentions = nn.ModuleList([VaeAttention(ch, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, None, groups), ResnetBlock2D(ch, ch, None, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class VaeDownsample(nn.Module):
    """diffusers' VAE downsampler: pad right and bottom by one, then a stride-2 convolution without padding."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, chs: list[int], layers: int, groups: int, latent: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        blocks = []
        for i, ch in enumerate(chs):
            block = nn.Module()
            block.resnets = nn.ModuleList([ResnetBlock2D(chs[max(i - 1, 0)] if j == 0 else ch, ch, None, groups)
                                           for j in range(layers)])
            block.downsamplers = nn.ModuleList([VaeDownsample(ch)]) if i < len(chs) - 1 else None
            blocks.append(block)
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = VaeMidBlock(chs[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, chs[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chs[-1], 2 * latent, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, chs: list[int], layers: int, groups: int, latent: int = 4):
        super().__init__()
        rev = list(reversed(chs))
        self.conv_in = nn.Conv2d(latent, rev[0], 3, padding=1)
        self.mid_block = VaeMidBlock(rev[0], groups)
        blocks = []
        for i, ch in enumerate(rev):
            block = nn.Module()
            block.resnets = nn.ModuleList([ResnetBlock2D(rev[max(i - 1, 0)] if j == 0 else ch, ch, None, groups)
                                           for j in range(layers + 1)])
            block.upsamplers = nn.ModuleList([Upsample2D(ch)]) if i < len(rev) - 1 else None
            blocks.append(block)
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(rev[-1], 3, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        chs, layers, groups = config["block_out_channels"], config["layers_per_block"], config["norm_num_groups"]
        self.encoder = Encoder(chs, layers, groups)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.decoder = Decoder(chs, layers, groups)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Mean and log-variance, [B, 8, H/8, W/8] (optimum's `latent_parameters`)."""
        return self.quant_conv(self.encoder(image))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent))


def attention_modules(unet: nn.Module) -> list[str]:
    return [name for name, m in unet.named_modules() if isinstance(m, Attention)]
