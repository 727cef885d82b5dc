"""The two layers built on the ops that the generator and the latent mapper share.

They live beside the ops, below every network, so that a model outside the
generator (the IPL mapper) uses them without importing the generator.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fused_act import fused_leaky_relu


class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square over dimension 1."""

    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights stored as w / lr_mul)."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        # x @ (scale W)^T == scale (x @ W^T): scaling the small output spares
        # a scaled copy of the weight on every call.
        bias = self.bias * self.lr_mul if self.bias is not None else None
        out = F.linear(x, self.weight) * self.scale
        if self.activation:
            return fused_leaky_relu(out, bias)
        return out if bias is None else out + bias

    def extra_repr(self):
        out_dim, in_dim = self.weight.shape
        return f"{in_dim}, {out_dim}, lr_mul={self.lr_mul}, activation={self.activation}"
