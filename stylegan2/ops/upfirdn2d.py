"""Upsample, FIR-filter, downsample (``upfirdn2d``), with a pure-PyTorch reference.

The operation, per channel, is:

1. upsample by inserting ``up - 1`` zeros after every sample,
2. pad with zeros (a negative pad crops),
3. convolve with the 2-D FIR kernel ``f`` (true convolution, i.e. correlation
   with the flipped kernel),
4. keep every ``down``-th sample, starting with the first.

The reference path runs the filter as a single depthwise convolution (one
``groups=C`` call), never as a one-channel convolution over ``N * C`` images,
which is both slower and, with oneDNN, far more memory hungry.
"""

import torch.nn.functional as F

from . import _extension


def _pair(value, name):
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"upfirdn2d: {name} must be an int or a pair of ints, got {value!r}")
    return value


def parse_pad(pad):
    """Return ``(padx0, padx1, pady0, pady1)`` from a 2- or 4-tuple.

    A pair ``(p0, p1)`` pads both axes the same way, as in the reference
    StyleGAN2 port.
    """
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad
    raise ValueError(f"upfirdn2d: pad must have 2 or 4 entries, got {pad!r}")


def upfirdn2d(x, f, up=1, down=1, pad=(0, 0), impl=None):
    """Upsample, pad, FIR-filter and downsample a batch of images.

    Args:
        x: Input of shape ``(N, C, H, W)``.
        f: FIR kernel of shape ``(kh, kw)``; it is applied as given (no
            normalisation, no gain).
        up: Integer upsampling factor, or ``(up_x, up_y)``.
        down: Integer downsampling factor, or ``(down_x, down_y)``.
        pad: ``(p0, p1)`` for both axes or ``(px0, px1, py0, py1)``, applied
            after upsampling; negative values crop.
        impl: ``"ref"``, ``"cuda"`` or ``None`` (choose automatically).

    Returns:
        Tensor of shape ``(N, C, H_out, W_out)`` with
        ``H_out = (H * up_y + py0 + py1 - kh) // down_y + 1`` (likewise W).
    """
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    padx0, padx1, pady0, pady1 = parse_pad(pad)
    if x.ndim != 4 or f.ndim != 2:
        raise ValueError(
            f"upfirdn2d: expected x of shape (N, C, H, W) and f of shape (kh, kw), "
            f"got {tuple(x.shape)} and {tuple(f.shape)}"
        )
    if min(upx, upy, downx, downy) < 1:
        raise ValueError(f"upfirdn2d: up and down must be >= 1, got up={up!r}, down={down!r}")
    args = (upx, upy, downx, downy, padx0, padx1, pady0, pady1)
    if _extension.wants_cuda(x, impl):
        op = _extension.get_op("upfirdn2d", upfirdn2d_ref)
        if op is not None:
            return op(x, f, *args)
    return upfirdn2d_ref(x, f, *args)


def upfirdn2d_ref(x, f, upx=1, upy=1, downx=1, downy=1, padx0=0, padx1=0, pady0=0, pady1=0):
    """Pure-PyTorch reference of :func:`upfirdn2d` with every argument explicit."""
    n, c, h, w = x.shape
    kh, kw = f.shape

    # 1. Zero insertion: (N, C, H, 1, W, 1) padded to (N, C, H, up_y, W, up_x).
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # 2. Pad with zeros, then crop where the pad is negative.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[
        :,
        :,
        max(-pady0, 0) : x.shape[2] - max(-pady1, 0),
        max(-padx0, 0) : x.shape[3] - max(-padx1, 0),
    ]
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(
            f"upfirdn2d: padded input {tuple(x.shape[2:])} is smaller than the kernel {(kh, kw)}"
        )

    # 3 + 4. Convolution = correlation with the flipped kernel, one depthwise
    # call; a strided convolution keeps exactly the samples [::down].
    weight = f.to(x.dtype).flip([0, 1]).reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, stride=(downy, downx), groups=c)
