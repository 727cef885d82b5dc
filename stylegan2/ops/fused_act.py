"""Bias + leaky ReLU + gain in one op, with a pure-PyTorch reference.

The reference path is used on the CPU, when ``IPL_OPS=ref``, and whenever the
CUDA extension could not be built or failed its self-check.
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import _extension

_SQRT2 = 2**0.5


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=_SQRT2, impl=None):
    """Add a per-channel bias, apply leaky ReLU, multiply by a gain.

    Args:
        x: Input tensor of shape ``(N, C, ...)`` (any number of trailing dims).
        bias: Optional bias of shape ``(C,)``, broadcast over dim 1.
        negative_slope: Slope of the negative half of the leaky ReLU.
        scale: Gain applied after the activation (``sqrt(2)`` keeps the
            variance of a unit Gaussian for slope 0.2 near 1, as in StyleGAN2).
        impl: ``"ref"``, ``"cuda"`` or ``None`` (choose automatically).

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    if bias is not None and (bias.ndim != 1 or x.ndim < 2 or bias.shape[0] != x.shape[1]):
        raise ValueError(
            f"fused_leaky_relu: bias of shape {tuple(bias.shape)} does not match "
            f"the channel dimension of an input of shape {tuple(x.shape)}"
        )
    if _extension.wants_cuda(x, impl):
        op = _extension.get_op("fused_bias_act", fused_leaky_relu_ref)
        if op is not None:
            return op(x, bias, negative_slope, scale)
    return fused_leaky_relu_ref(x, bias, negative_slope, scale)


def fused_leaky_relu_ref(x, bias=None, negative_slope=0.2, scale=_SQRT2):
    """Pure-PyTorch reference of :func:`fused_leaky_relu`."""
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by a scaled leaky ReLU.

    The parameter is called ``bias`` so that checkpoints of the reference
    StyleGAN2 port load unchanged.
    """

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=_SQRT2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}, scale={self.scale:.4f}"
