"""Autograd wrapper, build and self-check inputs of the compiled ``upfirdn2d``.

The compiled kernel (``csrc/upfirdn2d*``) computes the forward pass only; the
gradient w.r.t. ``x`` is another ``upfirdn2d`` (the adjoint of a linear op),
so gradients of any order come from the same kernel.
"""

import torch

from . import _build

EXTENSION = "ipl_upfirdn2d"
SOURCES = ("upfirdn2d.cpp", "upfirdn2d_kernel.cu")


def build(build_directory=None):
    """Compile (or load from cache) the extension; return its op.

    Args:
        build_directory: See :func:`_build.load_extension`.

    Returns:
        The op of :func:`make_op` on the compiled kernel.
    """
    module = _build.load_extension(EXTENSION, SOURCES, build_directory)
    return make_op(module.upfirdn2d)


def make_op(kernel):
    """An op with the signature of ``upfirdn2d_ref`` running on ``kernel``.

    Args:
        kernel: ``kernel(x, f, upx, upy, downx, downy, padx0, padx1, pady0,
            pady1) -> y``, forward only, ``f`` already of the dtype and device
            of ``x``. Tests pass a pure-PyTorch stand-in.

    Returns:
        ``op(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1)``,
        differentiable w.r.t. ``x`` to any order. A kernel ``f`` that
        requires grad is left to the reference, which differentiates it.
    """
    functions = {}  # one autograd.Function per set of fixed arguments

    def function(upx, upy, downx, downy, padx0, padx1, pady0, pady1):
        key = (upx, upy, downx, downy, padx0, padx1, pady0, pady1)
        if key in functions:
            return functions[key]

        class Upfirdn2d(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, f):
                ctx.save_for_backward(f)
                ctx.in_shape = x.shape
                return kernel(x, f, *key)

            @staticmethod
            def backward(ctx, dy):
                (f,) = ctx.saved_tensors
                dx = None
                if ctx.needs_input_grad[0]:
                    # The adjoint: up and down swap roles, the kernel is flipped,
                    # and the pads make each dx sample see exactly the outputs it
                    # fed: a leading pad of kh - 1 - pady0, and a trailing pad that
                    # brings the result back to the input size.
                    _, _, in_h, in_w = ctx.in_shape
                    _, _, out_h, out_w = dy.shape
                    kh, kw = f.shape
                    pads = (
                        kw - 1 - padx0,
                        in_w * upx - out_w * downx + padx0 - upx + 1,
                        kh - 1 - pady0,
                        in_h * upy - out_h * downy + pady0 - upy + 1,
                    )
                    adjoint = function(downx, downy, upx, upy, *pads)
                    dx = adjoint.apply(dy, f.flip([0, 1]))
                return dx, None

        functions[key] = Upfirdn2d
        return Upfirdn2d

    def op(x, f, upx=1, upy=1, downx=1, downy=1, padx0=0, padx1=0, pady0=0, pady1=0):
        args = (upx, upy, downx, downy, padx0, padx1, pady0, pady1)
        if f.requires_grad:
            from .upfirdn2d import upfirdn2d_ref

            return upfirdn2d_ref(x, f, *args)
        f = f.to(device=x.device, dtype=x.dtype)
        return function(*args).apply(x, f)

    return op


def check_inputs(device, dtype, generator):
    """Small random argument tuples for the self-check of the compiled op.

    They cover StyleGAN2's up- and downsampling settings and a general case
    (different x/y factors, a negative pad, a non-square kernel), so every
    branch of the index arithmetic is compared with the reference.

    Args:
        device: Device of the tensors.
        dtype: Dtype of ``x`` and ``f``.
        generator: CPU ``torch.Generator`` the values are drawn from.

    Returns:
        List of ``(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1)``
        with ``x`` requiring grad.
    """
    settings = [
        ((2, 3, 6, 5), (4, 4), (2, 2, 1, 1, 2, 1, 2, 1)),  # StyleGAN2 upsample
        ((2, 3, 8, 7), (4, 4), (1, 1, 2, 2, 1, 1, 1, 1)),  # StyleGAN2 downsample
        ((1, 2, 7, 6), (3, 2), (2, 1, 1, 3, 1, -1, 2, 0)),  # general
    ]
    cases = []
    for x_shape, f_shape, args in settings:
        x = torch.randn(x_shape, generator=generator).to(device=device, dtype=dtype)
        f = torch.randn(f_shape, generator=generator).to(device=device, dtype=dtype)
        cases.append((x.requires_grad_(), f, *args))
    return cases
