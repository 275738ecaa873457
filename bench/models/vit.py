"""A CIFAR Vision Transformer in torchvision's encoder layout, with an attention module that prunes whole heads.

torchvision's ``nn.MultiheadAttention`` packs q, k and v into one weight, so a head cannot be removed without
rewriting it; ``HeadAttention`` computes the same function with separate q, k, v and output linears, and
``keep_heads`` removes a head's rows of q, k, v and its columns of the output projection (``bench.groups`` finds
it by that method).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.models._registry import register_model


class HeadAttention(nn.Module):
    """Multi-head self-attention with separate projections (the maths of ``nn.MultiheadAttention``, batch first)."""

    head_projections = ("q", "k", "v")  # the linears whose output rows come in per-head blocks

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not a multiple of {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens = x.shape[0], x.shape[1]

        def heads(t: Tensor) -> Tensor:  # (B, N, H*d) -> (B, H, N, d)
            return t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        attention = self.dropout(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1))
        out = (attention @ v).transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.out_proj(out)

    @torch.no_grad()
    def keep_heads(self, index: Tensor) -> None:
        """Keep only heads ``index`` (sorted): their rows of q, k, v and their columns of the output projection."""
        rows = (index[:, None] * self.head_dim + torch.arange(self.head_dim)).flatten()
        for name in self.head_projections:
            old = getattr(self, name)
            new = nn.Linear(old.in_features, rows.numel(), device=old.weight.device, dtype=old.weight.dtype)
            new.weight.copy_(old.weight[rows.to(old.weight.device)])
            new.bias.copy_(old.bias[rows.to(old.bias.device)])
            setattr(self, name, new.train(old.training))
        old = self.out_proj
        new = nn.Linear(rows.numel(), old.out_features, device=old.weight.device, dtype=old.weight.dtype)
        new.weight.copy_(old.weight[:, rows.to(old.weight.device)])
        new.bias.copy_(old.bias)
        self.out_proj = new.train(old.training)
        self.num_heads = index.numel()


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(ln_1(x)), then x + mlp(ln_2(x)) (torchvision's names)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = HeadAttention(dim, num_heads)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Learned position embedding, the blocks and a final LayerNorm."""

    def __init__(self, tokens: int, layers: int, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(*(EncoderBlock(dim, num_heads, mlp_dim, dropout) for _ in range(layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class ViT(nn.Module):
    """Patch embedding (a strided conv), a class token, the encoder and a linear head on the class token."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int = 32, patch: int = 4, layers: int = 6,
                 num_heads: int = 8, dim: int = 256, mlp_dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder((image_size // patch) ** 2 + 1, layers, dim, num_heads, mlp_dim, dropout)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


@register_model(
    "vit_cifar",
    "CIFAR ViT (32x32, patch 4, 6 layers, 8 heads, width 256, MLP 512; prunes whole heads and MLP hidden units)",
    image_size=32,
    default_layers=("encoder.layers.*.self_attention.[qkv]", "encoder.layers.*.mlp.0"),
)
def vit_cifar(num_classes: int, in_channels: int) -> nn.Module:
    """Build the CIFAR ViT."""
    return ViT(num_classes, in_channels)
