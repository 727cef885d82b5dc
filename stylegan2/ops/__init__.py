"""Custom ops of StyleGAN2: ``upfirdn2d`` and the fused bias + leaky ReLU.

Each op has a pure-PyTorch reference (``*_ref``) and an optional CUDA
implementation compiled on the first call with a CUDA tensor. Set
``IPL_OPS=ref`` to force the reference everywhere.
"""

from .fused_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_ref
from .upfirdn2d import upfirdn2d, upfirdn2d_ref

__all__ = [
    "FusedLeakyReLU",
    "fused_leaky_relu",
    "fused_leaky_relu_ref",
    "upfirdn2d",
    "upfirdn2d_ref",
]
