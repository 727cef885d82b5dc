"""Autograd wrapper, build and self-check inputs of the compiled fused bias + leaky ReLU.

The extension (``csrc/fused_bias_act*``) has two kernels: the forward pass,
and the gradient w.r.t. ``x + b``, which reads a saved tensor to tell on which
side of the kink each element was. The gradient op is itself differentiable
w.r.t. the incoming gradient (it is linear in it); its derivative w.r.t. the
saved tensor is zero almost everywhere, exactly as for PyTorch's leaky ReLU,
so second-order gradients (e.g. R1 or path-length penalties) are exact.
"""

import torch

from . import _build

EXTENSION = "ipl_fused_bias_act"
SOURCES = ("fused_bias_act.cpp", "fused_bias_act_kernel.cu")

# Values of the kernel's ``ref_kind``: what the saved tensor is (csrc/fused_bias_act.h).
REF_INPUT = 0
REF_OUTPUT_POS_SCALE = 1
REF_OUTPUT_NEG_SCALE = 2


def build(build_directory=None):
    """Compile (or load from cache) the extension; return its op.

    Args:
        build_directory: See :func:`_build.load_extension`.

    Returns:
        The op of :func:`make_op` on the compiled kernels.
    """
    module = _build.load_extension(EXTENSION, SOURCES, build_directory)
    return make_op(module.fused_bias_act, module.fused_bias_act_grad)


def ref_kind(negative_slope, scale):
    """Which tensor the backward pass keeps: the output when its sign tells the
    side of the kink (slope >= 0), which costs no memory since the next layer
    keeps it anyway, else the input."""
    if negative_slope < 0:
        return REF_INPUT
    return REF_OUTPUT_POS_SCALE if scale >= 0 else REF_OUTPUT_NEG_SCALE


def make_op(forward_kernel, grad_kernel):
    """An op with the signature of ``fused_leaky_relu_ref`` running on the kernels.

    Args:
        forward_kernel: ``(x, b, slope, scale) -> y`` with ``b`` empty for no bias.
        grad_kernel: ``(dy, ref, b, ref_kind, slope, scale) -> d(x + b)``.
            Tests pass pure-PyTorch stand-ins for both.

    Returns:
        ``op(x, bias, negative_slope, scale)``, differentiable w.r.t. ``x`` and
        ``bias``.
    """
    functions = {}  # one autograd.Function per (slope, scale)

    def function(negative_slope, scale):
        key = (float(negative_slope), float(scale))
        if key in functions:
            return functions[key]
        slope, gain = key
        kind = ref_kind(slope, gain)

        class FusedBiasActGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, dy, ref, b):
                ctx.save_for_backward(ref, b)
                return grad_kernel(dy, ref, b, kind, slope, gain)

            @staticmethod
            def backward(ctx, d_dx):
                ref, b = ctx.saved_tensors
                d_dy = None
                if ctx.needs_input_grad[0]:
                    d_dy = FusedBiasActGrad.apply(d_dx, ref, b)
                return d_dy, None, None

        class FusedBiasAct(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, b):
                b_arg = b if b is not None else x.new_empty([0])
                y = forward_kernel(x, b_arg, slope, gain)
                ctx.save_for_backward(x if kind == REF_INPUT else y, b_arg)
                return y

            @staticmethod
            def backward(ctx, dy):
                ref, b = ctx.saved_tensors
                dx = db = None
                if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                    dx = FusedBiasActGrad.apply(dy, ref, b)
                if ctx.needs_input_grad[1]:
                    db = dx.sum([0, *range(2, dx.ndim)])
                return dx, db

        functions[key] = FusedBiasAct
        return FusedBiasAct

    def op(x, bias=None, negative_slope=0.2, scale=2**0.5):
        if bias is not None:
            bias = bias.to(dtype=x.dtype)
        return function(negative_slope, scale).apply(x, bias)

    return op


def check_inputs(device, dtype, generator):
    """Small random argument tuples for the self-check of the compiled op.

    They cover each kind of saved tensor (slope >= 0 with a positive and a
    negative scale, a negative slope), with and without a bias, 2-D and 4-D.

    Args:
        device: Device of the tensors.
        dtype: Dtype of ``x`` and ``bias``.
        generator: CPU ``torch.Generator`` the values are drawn from.

    Returns:
        List of ``(x, bias, negative_slope, scale)``, tensors requiring grad.
    """

    def randn(*shape):
        x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        return x.requires_grad_()

    return [
        (randn(2, 5, 3, 4), randn(5), 0.2, 2**0.5),  # StyleGAN2's setting
        (randn(3, 6), randn(6), 0.0, 1.0),  # ReLU on a linear layer's output
        (randn(2, 4, 5), None, 0.1, -0.7),
        (randn(2, 3, 2, 2), randn(3), -0.3, 0.5),
    ]
