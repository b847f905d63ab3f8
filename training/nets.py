"""The tiny model's three networks. Module names follow diffusers (UNet2DConditionModel and
AutoencoderKL) so that an exported graph's node names carry the same module paths as SD 1.5's."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8


# ---------------------------------------------------------------- shared blocks
class ResnetBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int | None = None, groups: int = GROUPS):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch) if temb_ch else None
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-5)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """diffusers' Attention: to_q/to_k/to_v without bias, to_out = [Linear, Dropout]."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out[1](self.to_out[0](out))


# ---------------------------------------------------------------- UNet
class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int, ff_mult: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    def __init__(self, ch: int, heads: int, context_dim: int, groups: int = GROUPS, ff_mult: int = 2):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, heads, context_dim, ff_mult)])
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Downsample2D(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """`size`: the skip's spatial size, so odd latent sizes (width a multiple of 8, not 16) work."""
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class CrossAttnDownBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, heads: int, context_dim: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch, out_ch, temb_ch)])
        self.attentions = nn.ModuleList([Transformer2DModel(out_ch, heads, context_dim)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if downsample else None

    def forward(self, x, temb, context):
        skips = []
        for resnet, attn in zip(self.resnets, self.attentions):
            x = attn(resnet(x, temb), context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class CrossAttnUpBlock2D(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, skip_chs: list[int], temb_ch: int, heads: int, context_dim: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D((in_ch if i == 0 else out_ch) + s, out_ch, temb_ch) for i, s in enumerate(skip_chs)])
        self.attentions = nn.ModuleList([Transformer2DModel(out_ch, heads, context_dim) for _ in skip_chs])
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if upsample else None

    def forward(self, x, skips, temb, context):
        for resnet, attn in zip(self.resnets, self.attentions):
            x = attn(resnet(torch.cat([x, skips.pop()], dim=1), temb), context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, skips[-1].shape[-2:])
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    def __init__(self, ch: int, temb_ch: int, heads: int, context_dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch), ResnetBlock2D(ch, ch, temb_ch)])
        self.attentions = nn.ModuleList([Transformer2DModel(ch, heads, context_dim)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_ch, out_ch)
        self.linear_2 = nn.Linear(out_ch, out_ch)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features as diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 96],
    "layers_per_block": 1,
    "attention_head_dim": 4,  # heads, as diffusers' (misnamed) config field means it
    "cross_attention_dim": 128,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}


class UNet2DConditionModel(nn.Module):
    """Two resolution levels (8x8 and 4x4 for a 64x64 image), cross-attention at every level."""

    def __init__(self, config: dict = UNET_CONFIG):
        super().__init__()
        chs = config["block_out_channels"]
        heads = config["attention_head_dim"]
        ctx = config["cross_attention_dim"]
        temb = chs[0] * 4
        self.time_channels = chs[0]
        self.conv_in = nn.Conv2d(config["in_channels"], chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], temb)
        self.down_blocks = nn.ModuleList([
            CrossAttnDownBlock2D(chs[0], chs[0], temb, heads, ctx, downsample=True),
            CrossAttnDownBlock2D(chs[0], chs[1], temb, heads, ctx, downsample=False),
        ])
        self.mid_block = UNetMidBlock2DCrossAttn(chs[1], temb, heads, ctx)
        # skip channels, popped last-in first-out: conv_in(c0), down0 res(c0), down0 ds(c0), down1 res(c1)
        self.up_blocks = nn.ModuleList([
            CrossAttnUpBlock2D(chs[1], chs[1], [chs[1], chs[0]], temb, heads, ctx, upsample=True),
            CrossAttnUpBlock2D(chs[1], chs[0], [chs[0], chs[0]], temb, heads, ctx, upsample=False),
        ])
        self.conv_norm_out = nn.GroupNorm(GROUPS, chs[0], eps=1e-5)
        self.conv_out = nn.Conv2d(chs[0], config["out_channels"], 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        features = timestep_features(timestep, self.time_channels).to(self.conv_in.weight.dtype)
        temb = self.time_embedding(features)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            x = block(x, skips, temb, encoder_hidden_states)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# ---------------------------------------------------------------- text encoder
class CLIPAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, -1))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = CLIPAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, dim * 2)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TextEncoder(nn.Module):
    """Takes real CLIP BPE ids [B, 77]. Only the few ids the captions use get their own embedding
    row; every other id shares one 'unknown' row. The lookup table from CLIP id to row is a buffer,
    so the exported graph accepts any CLIP id and stays small. Bidirectional attention (CLIP's is
    causal; with EOS padding either works)."""

    def __init__(self, known_ids: list[int], dim: int = 128, layers: int = 2, heads: int = 4, vocab_size: int = 49408, length: int = 77):
        super().__init__()
        row_of_id = torch.zeros(vocab_size, dtype=torch.long)  # row 0: unknown
        for row, token_id in enumerate(sorted(set(known_ids)), start=1):
            row_of_id[token_id] = row
        self.register_buffer("row_of_id", row_of_id)
        self.token_embedding = nn.Embedding(len(set(known_ids)) + 1, dim)
        self.position_embedding = nn.Parameter(torch.zeros(length, dim))
        self.layers = nn.ModuleList([CLIPEncoderLayer(dim, heads) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(self.row_of_id[input_ids.long()]) + self.position_embedding
        for layer in self.layers:
            x = layer(x)
        return self.final_layer_norm(x)


# ---------------------------------------------------------------- VAE
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [32, 48, 64, 96],
    "sample_size": 64,
}


class Encoder(nn.Module):
    def __init__(self, chs: list[int], latent: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        blocks = []
        for i, ch in enumerate(chs):
            prev = chs[max(i - 1, 0)]
            block = nn.Module()
            block.resnets = nn.ModuleList([ResnetBlock2D(prev, ch)])
            block.downsamplers = nn.ModuleList([Downsample2D(ch)]) if i < len(chs) - 1 else None
            blocks.append(block)
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(chs[-1], chs[-1])])
        self.conv_norm_out = nn.GroupNorm(GROUPS, chs[-1])
        self.conv_out = nn.Conv2d(chs[-1], 2 * latent, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block.resnets[0](x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
        x = self.mid_block.resnets[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, chs: list[int], latent: int):
        super().__init__()
        rev = list(reversed(chs))
        self.conv_in = nn.Conv2d(latent, rev[0], 3, padding=1)
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(rev[0], rev[0])])
        blocks = []
        for i, ch in enumerate(rev):
            prev = rev[max(i - 1, 0)]
            block = nn.Module()
            block.resnets = nn.ModuleList([ResnetBlock2D(prev, ch), ResnetBlock2D(ch, ch)])
            block.upsamplers = nn.ModuleList([Upsample2D(ch)]) if i < len(rev) - 1 else None
            blocks.append(block)
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(GROUPS, rev[-1])
        self.conv_out = nn.Conv2d(rev[-1], 3, 3, padding=1)

    def forward(self, z):
        x = self.mid_block.resnets[0](self.conv_in(z))
        for block in self.up_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """64x64x3 <-> 8x8x4. The encoder outputs mean and log-variance (`latent_parameters`)."""

    def __init__(self, config: dict = VAE_CONFIG):
        super().__init__()
        chs, latent = config["block_out_channels"], config["latent_channels"]
        self.encoder = Encoder(chs, latent)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.decoder = Decoder(chs, latent)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    import time

    torch.set_num_threads(2)
    unet, vae = UNet2DConditionModel(), AutoencoderKL()
    te = TextEncoder(list(range(40)))
    print("unet", count_parameters(unet), "vae enc", count_parameters(vae.encoder) + count_parameters(vae.quant_conv),
          "vae dec", count_parameters(vae.decoder), "text", count_parameters(te))
    ctx = te(torch.randint(0, 49408, (64, 77)))
    x = torch.randn(64, 4, 8, 8)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), 1e-4)
    for _ in range(3):
        t0 = time.time()
        loss = unet(x, torch.randint(0, 1000, (64,)), te(torch.randint(0, 49408, (64, 77)))).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        print("unet step", time.time() - t0)
    img = torch.randn(32, 3, 64, 64)
    opt = torch.optim.AdamW(vae.parameters(), 1e-4)
    for _ in range(3):
        t0 = time.time()
        p = vae.encode(img)
        loss = (vae.decode(p[:, :4]) - img).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        print("vae step", time.time() - t0)
