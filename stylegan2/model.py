"""The StyleGAN2 generator, numerically the network of the reference PyTorch port.

Module and parameter names follow that port exactly, so that its ``g_ema``
checkpoints (used by StyleGAN-NADA and the IPL authors) load with
``strict=True``. What differs never changes the function, only how it is
computed (:meth:`Generator.set_impl`):

* ``conv_impl``: the modulated convolution runs in either of its two exact
  formulations (see :func:`modulated_conv2d`), picked per device, batch and
  autograd need by :func:`resolve_conv_impl`;
* ``resample``: upsampling by transposed convolution and FIR filtering by
  one depthwise convolution (``"fast"``), or by explicit zero insertion and
  :func:`~stylegan2.ops.upfirdn2d` (``"ref"``);
* ``epilogue``: the reference chain of modules (convolution, noise, bias +
  leaky ReLU, each writing a new tensor) or a fused chain that folds the
  activation gain and the biases into the convolutions and adds the noise and
  applies the activation in place, with channels-last activations on the CPU;
* ``channel_max`` caps the channel counts so that tiny test generators exist.

``benchmarks/bench_generator.py`` measures every choice made here; the
numbers are in ``benchmarks/RESULTS.md``.
"""

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FusedLeakyReLU, upfirdn2d
from .ops.layers import EqualLinear, PixelNorm

CONV_IMPLS = ("auto", "grouped", "shared")
RESAMPLE_IMPLS = ("fast", "ref")
EPILOGUES = ("fused", "ref")


def make_kernel(k):
    """Normalised 2-D FIR kernel from a 1-D (separable) or 2-D list."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def _needs_autograd(*tensors):
    """Whether autograd records an op on these tensors (then no in-place writes)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _scale_shift(y, scale, shift=None):
    """``y * scale + shift``, overwriting ``y`` when autograd does not need it.

    A new activation-sized tensor costs more than the arithmetic on the CPU:
    its pages are faulted in and zeroed by the kernel on first touch (about 5x
    the time of an in-place pass at 1024x1024x32).
    """
    if _needs_autograd(y, scale, shift):
        return y * scale if shift is None else torch.addcmul(shift, y, scale)
    return y.mul_(scale) if shift is None else torch.addcmul(shift, y, scale, out=y)


def fir_filter(x, f, pad, bias=None):
    """Depthwise 2-D FIR filter with equal zero padding on every side, plus a bias.

    The same values as ``upfirdn2d(x, f, pad=(pad, pad)) + bias``, computed as
    one depthwise convolution that pads on the fly: no padded copy of ``x``,
    and the bias costs nothing extra.

    Args:
        x: Input ``(B, C, H, W)``, any memory format.
        f: FIR kernel ``(kh, kw)``, applied as a true convolution; no gradient
            flows to it.
        pad: Zero padding on each side, at most ``min(kh, kw) - 1``.
        bias: Optional per-channel bias ``(C,)``.

    Returns:
        ``(B, C, H + 2 pad - kh + 1, W + 2 pad - kw + 1)``.
    """
    if pad > min(f.shape) - 1:
        raise ValueError(f"fir_filter: pad {pad} exceeds kernel size - 1 for a kernel of shape {tuple(f.shape)}")
    channels = x.shape[1]
    weight = f.detach().to(x.dtype).flip([0, 1]).expand(channels, 1, *f.shape).contiguous()
    return _DepthwiseCorrelation.apply(x, weight, bias, (pad, pad))


class _DepthwiseCorrelation(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=(pad_y, pad_x), groups=C)`` for a fixed
    depthwise ``weight``, with a backward that is again such a convolution.

    When the bias needs a gradient, PyTorch's CPU backward of a depthwise
    convolution takes a slow path: forward + backward of the 4x4 blur at
    1024x1024x32 take 1018 ms, against 144 ms with this backward. The input
    gradient of a correlation with ``w`` is the correlation of the output
    gradient with the flipped ``w``, padded by ``k - 1 - pad``: the forward op
    again, and itself differentiable the same way.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        ctx.save_for_backward(weight)
        ctx.pad = pad
        return F.conv2d(x, weight, bias, padding=pad, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            (kh, kw), (pad_y, pad_x) = weight.shape[2:], ctx.pad
            grad_x = _DepthwiseCorrelation.apply(grad, weight.flip([2, 3]), None, (kh - 1 - pad_y, kw - 1 - pad_x))
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, grad_bias, None


def upsample2x_transposed(x, f, pad0):
    """``upfirdn2d(x, f, up=2, pad=(pad0, pad0 - 1))`` as one depthwise transposed convolution.

    Zero insertion followed by a true convolution with ``f`` is exactly a
    stride-2 transposed convolution with ``f`` (unflipped), cropped by
    ``k - 1 - pad0`` on each side; the crop is symmetric when the pads differ
    by one, as for the even-length kernels of StyleGAN2. Measured from 512 to
    1024 pixels on three channels: 3 ms channels-last (43 ms contiguous)
    against 82 ms for ``upfirdn2d``, which filters a zero-stuffed, padded copy.

    Args:
        x: Input ``(B, C, H, W)``.
        f: FIR kernel ``(k, k)`` (gain included).
        pad0: Padding before the first sample (after zero insertion).

    Returns:
        ``(B, C, 2 H, 2 W)``.
    """
    channels, k = x.shape[1], f.shape[0]
    weight = f.to(x.dtype).expand(channels, 1, *f.shape).contiguous()
    return F.conv_transpose2d(x, weight, stride=2, padding=k - 1 - pad0, groups=channels)


class Upsample(nn.Module):
    """2x FIR upsampling (used on the RGB skip connections)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x, impl="ref"):
        """``impl="fast"``: one transposed convolution (same values, see
        :func:`upsample2x_transposed`) where the pads allow it."""
        kh, kw = self.kernel.shape
        if impl == "fast" and self.factor == 2 and kh == kw and self.pad[0] == self.pad[1] + 1:
            return upsample2x_transposed(x, self.kernel, self.pad[0])
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, x, bias=None, impl="ref"):
        """FIR-filter ``x`` and add an optional per-channel ``bias``.

        ``impl="fast"`` runs :func:`fir_filter` (one depthwise convolution with
        the bias fused) when the padding is symmetric and smaller than the
        kernel; otherwise, and for ``"ref"``, ``upfirdn2d`` then the bias.
        """
        if impl == "fast" and self.pad[0] == self.pad[1] and 0 <= self.pad[0] < min(self.kernel.shape):
            return fir_filter(x, self.kernel, self.pad[0], bias)
        out = upfirdn2d(x, self.kernel, pad=self.pad)
        return out if bias is None else out + bias.view(1, -1, 1, 1)


def modulated_conv2d(x, weight, styles, demodulate=True, up=False, down=False, padding=0, gain=1.0, bias=None, impl="shared"):
    """Modulated (and optionally demodulated) convolution, before any blur.

    Computes ``gain * modconv(x) + bias`` in either of two exact formulations:

    * ``"grouped"`` builds one weight per sample, ``w'[b] = w * s[b]`` scaled
      by the demodulation ``d[b]``, and runs one grouped convolution (what the
      reference port does); with one sample it is a plain convolution;
    * ``"shared"`` scales the input channels by ``s``, runs one convolution
      with the shared weight for the whole batch, and scales the output
      channels by ``d`` (NVIDIA's "non-fused" path). It never materialises
      per-sample weights, and its weight gradient is one batched convolution.

    The gain and bias fold into the per-sample weight and the convolution's
    bias (grouped) or into the demodulation step (shared), so they cost no
    extra pass over the output.

    Args:
        x: Input ``(B, C_in, H, W)``.
        weight: Weight ``(C_out, C_in, k, k)``.
        styles: Per-sample input-channel scales ``(B, C_in)`` (any
            equalised-learning-rate scale of the weight included).
        demodulate: Normalise each output filter of each sample to unit norm.
        up: Transposed convolution with stride 2, no padding (the FIR blur
            that completes the upsampling is the caller's).
        down: Convolution with stride 2, no padding (the caller blurs first).
        padding: Padding of a plain (neither up nor down) convolution.
        gain: Scalar multiplying the result (after demodulation).
        bias: Optional per-output-channel bias ``(C_out,)`` added last.
        impl: ``"grouped"`` or ``"shared"``.

    Returns:
        ``(B, C_out, H', W')``.
    """
    if impl not in ("grouped", "shared"):
        raise ValueError(f"modulated_conv2d: impl must be 'grouped' or 'shared', got {impl!r}")
    batch, in_channel, height, width = x.shape
    out_channel = weight.shape[0]
    if demodulate:
        # sum_{i,k} (w[o,i,k] s[b,i])^2 = sum_i s[b,i]^2 sum_k w[o,i,k]^2
        wnorm2 = torch.linalg.vector_norm(weight, dim=(2, 3)).square()  # (O, I)
        dcoefs = torch.rsqrt(styles.square() @ wnorm2.t() + 1e-8)  # (B, O)

    def conv(x, w, b, groups=1):
        if up:
            return F.conv_transpose2d(x, w, b, stride=2, groups=groups)
        stride, pad = (2, 0) if down else (1, padding)
        return F.conv2d(x, w, b, padding=pad, stride=stride, groups=groups)

    if impl == "shared":
        x = x * styles.reshape(batch, in_channel, 1, 1)
        w = weight if demodulate else weight * gain
        w = w.transpose(0, 1) if up else w  # conv_transpose2d wants (C_in, C_out, k, k)
        if not demodulate:
            return conv(x, w, bias)
        x = conv(x, w, None)
        shift = None if bias is None else bias.reshape(1, out_channel, 1, 1)
        return _scale_shift(x, (gain * dcoefs).reshape(batch, out_channel, 1, 1), shift)

    coef = gain * styles[:, None, :]  # (B, 1, I)
    if demodulate:
        coef = coef * dcoefs[:, :, None]  # (B, O, I)
    if batch > 1 and weight.shape[2:] == (1, 1) and not (up or down):
        return _pointwise_per_sample(x, coef * weight[:, :, 0, 0], bias)
    b = None if bias is None else bias.repeat(batch)
    if batch == 1:  # a plain convolution, which keeps the memory format of x
        return conv(x, _conv_weights(weight, coef, up), b)
    # One group per sample over the batch seen as (1, B * C_in, H, W) (a
    # copy when x is channels-last).
    x = conv(x.reshape(1, batch * in_channel, height, width), _conv_weights(weight, coef, up), b, groups=batch)
    return x.reshape(batch, out_channel, *x.shape[2:])


def _pointwise_per_sample(x, weights, bias=None):
    """1x1 convolution of each sample with its own weight, as one batched matmul.

    Args:
        x: ``(B, C_in, H, W)``, contiguous or channels-last.
        weights: ``(B, C_out, C_in)``.
        bias: Optional ``(C_out,)``.

    Returns:
        ``(B, C_out, H, W)`` in the memory format of ``x``.
    """
    batch, in_channel, height, width = x.shape
    out_channel = weights.shape[1]
    if _is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, in_channel)  # (B, HW, I), a view
        shift = x.new_zeros(1, 1, out_channel) if bias is None else bias.view(1, 1, out_channel)
        out = torch.baddbmm(shift, pixels, weights.transpose(1, 2))  # (B, HW, O)
        return out.view(batch, height, width, out_channel).permute(0, 3, 1, 2)
    shift = x.new_zeros(1, out_channel, 1) if bias is None else bias.view(1, out_channel, 1)
    out = torch.baddbmm(shift, weights, x.reshape(batch, in_channel, height * width))  # (B, O, HW)
    return out.view(batch, out_channel, height, width)


def _is_channels_last(x):
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _conv_weights(weight, coef, transposed):
    """``weight * coef`` laid out as the weight of the convolution call.

    Args:
        weight: ``(C_out, C_in, k, k)``.
        coef: Per-sample coefficients ``(B, C_out or 1, C_in or 1)``.
        transposed: For ``conv_transpose2d`` instead of ``conv2d``.

    Returns:
        ``(B * C_out, C_in, k, k)`` (conv2d) or ``(B * C_in, C_out, k, k)``
        (conv_transpose2d), grouped by sample.
    """
    w = weight * coef[..., None, None]  # (B, O, I, k, k)
    if transposed:
        w = w.transpose(1, 2)
    return w.reshape(-1, *w.shape[2:])


def resolve_conv_impl(conv_impl, x, weight, styles=None):
    """The modulated-convolution formulation for input ``x``, ``weight`` and ``styles``.

    ``"auto"`` on the CPU (measurements: ``benchmarks/RESULTS.md``):

    * gradients for W+ (or the input) but not for the weight, as in layer
      selection: ``"shared"``, whose backward needs no weight gradient at all;
      the per-sample weights of ``"grouped"`` need theirs (forward +
      backward, 256 px at batch 8: 12.8 s against 27.1 s; 64 px at batch 1:
      0.51 s against 0.88 s). Except one sample at ``WPLUS_GROUPED_INPUT``
      px or more, where ``"shared"``'s extra passes over the large
      activations cost more than the weight gradient (the 1024 generator's
      split blocks, see :func:`per_sample_block`);
    * 1x1 kernels (ToRGB): ``"grouped"``, as one batched matmul; ``"shared"``
      would scale a full-resolution input for three outputs (1024x1024x32 at
      batch 2: 38 ms against 150 ms);
    * one sample: ``"grouped"``, a plain convolution with the modulated
      weight, which spares ``"shared"``'s two passes over the activations
      (input scaling, output demodulation): 1024 forward 1.33 s against 1.79 s;
    * otherwise ``"shared"``: a grouped convolution over the batch needs a
      contiguous copy and runs oneDNN's slower grouped kernels (256 px at
      batch 8: forward 5.65 s against 7.61 s, forward + backward 18.4 s
      against 24.0 s). Large images are split into single samples first,
      see :func:`per_sample_block`.

    On CUDA it follows NVIDIA's rule, unmeasured here: grouped for inference,
    shared when gradients are needed (the grouped weight gradient is slow).
    """
    if conv_impl != "auto":
        return conv_impl
    if x.is_cuda:
        return "shared" if torch.is_grad_enabled() else "grouped"
    if _needs_autograd(x, styles) and not weight.requires_grad and weight.shape[2:] != (1, 1):
        return "grouped" if x.shape[0] == 1 and x.shape[-1] >= WPLUS_GROUPED_INPUT else "shared"
    if x.shape[0] == 1 or weight.shape[2:] == (1, 1):
        return "grouped"
    return "shared"


class ModulatedConv2d(nn.Module):
    def __init__(
        self,
        in_channel,
        out_channel,
        kernel_size,
        style_dim,
        demodulate=True,
        upsample=False,
        downsample=False,
        blur_kernel=(1, 3, 3, 1),
    ):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample
        # Exact alternatives, set through `Generator.set_impl`.
        self.conv_impl = "auto"
        self.resample = "fast"
        self.epilogue = "fused"

        # Registration order matters: it fixes the state_dict key order.
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))

        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def extra_repr(self):
        return (
            f"{self.in_channel}, {self.out_channel}, kernel_size={self.kernel_size}, "
            f"upsample={self.upsample}, downsample={self.downsample}"
        )

    def fir_impl(self, x):
        """How this layer FIR-filters ``x``: ``"fast"`` (one depthwise conv) or ``"ref"``.

        The reference epilogue keeps the reference port's ``upfirdn2d`` calls,
        and so does CUDA, where the compiled ``upfirdn2d`` kernel has not been
        measured against a depthwise convolution.
        """
        fast = self.resample == "fast" and self.epilogue == "fused" and not x.is_cuda
        return "fast" if fast else "ref"

    def forward(self, x, style, bias=None, gain=1.0):
        """``gain * modconv(x, style) + bias`` for ``x`` (B, C_in, H, W), ``style`` (B, style_dim).

        ``bias`` (C_out,) and ``gain`` are optional; the reference port calls
        this without them. ``self.resample == "ref"`` runs up/downsampling in
        its slow reference form: upsampling as explicit zero insertion
        followed by a correlation with the flipped kernel; downsampling as a
        full convolution followed by taking every second sample. The fast
        forms (transposed / strided convolution) compute the same values.
        """
        # (scale * W) * s == W * (scale * s): the equalised-lr scale rides on
        # the small style tensor instead of a copy of the weight.
        styles = self.modulation(style) * self.scale  # (B, C_in)
        weight = self.weight[0]  # (C_out, C_in, k, k)
        impl = resolve_conv_impl(self.conv_impl, x, weight, styles)
        reference = self.resample == "ref"

        if self.downsample:
            x = self.blur(x, impl=self.fir_impl(x))
            if reference:
                out = modulated_conv2d(x, weight, styles, self.demodulate, gain=gain, bias=bias, impl=impl)
                return out[:, :, ::2, ::2]
            return modulated_conv2d(x, weight, styles, self.demodulate, down=True, gain=gain, bias=bias, impl=impl)
        if self.upsample:
            if reference:
                k = self.kernel_size
                ones = torch.ones(1, 1, dtype=x.dtype, device=x.device)
                x = upfirdn2d(x, ones, up=2, pad=(k - 1, k - 2))
                out = modulated_conv2d(x, weight.flip([2, 3]), styles, self.demodulate, gain=gain, impl=impl)
            else:
                out = modulated_conv2d(x, weight, styles, self.demodulate, up=True, gain=gain, impl=impl)
            # The bias goes after the blur: near the border a blurred constant is not constant.
            return self.blur(out, bias, impl=self.fir_impl(out))
        return modulated_conv2d(x, weight, styles, self.demodulate, padding=self.padding, gain=gain, bias=bias, impl=impl)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent):
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, per-pixel noise, bias and scaled leaky ReLU."""

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel, demodulate=demodulate
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.epilogue = "fused"

    def forward(self, x, style, noise=None):
        if self.epilogue == "ref":
            return self.activate(self.noise(self.conv(x, style), noise=noise))
        # lrelu(v) * g == lrelu(g * v) for g > 0, so the gain moves into the
        # convolution and the biases, and one in-place pass adds the noise,
        # another applies the activation.
        gain = self.activate.scale
        out = self.conv(x, style, bias=self.activate.bias * gain, gain=gain)
        if noise is None:
            batch, _, height, width = out.shape
            noise = out.new_empty(batch, 1, height, width).normal_()
        out = out.add_(noise * (self.noise.weight * gain))
        return F.leaky_relu_(out, self.activate.negative_slope)


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB, added to the upsampled skip image."""

    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.epilogue = "fused"

    def forward(self, x, style, skip=None):
        if self.epilogue == "ref":
            out = self.conv(x, style) + self.bias
            if skip is not None:
                out = out + self.upsample(skip)
            return out
        out = self.conv(x, style, bias=self.bias.reshape(3))
        if skip is not None:
            out = out.add_(self.upsample(skip, impl=self.conv.fir_impl(skip)))
        return out


def per_sample_block(g, latent):
    """From which upsampling block on ``g`` renders one sample at a time, or ``None``.

    Splitting the batch at high resolution gives each sample the one-sample
    path (a plain convolution per layer, see :func:`resolve_conv_impl`) and
    bounds the activation memory by one image; the batched ``"shared"`` path
    keeps the low resolutions efficient. Only ``conv_impl="auto"`` with the
    fused epilogue on the CPU splits. When autograd needs W+ but no weight
    (layer selection), only generators of ``WPLUS_SPLIT_SIZE`` px or more
    split: below, the batched ``"shared"`` backward, which skips the weight
    gradients, is faster.
    """
    batch = latent.shape[0]
    if batch == 1 or latent.is_cuda or g.conv_impl != "auto" or g.epilogue != "fused":
        return None
    wplus_only = torch.is_grad_enabled() and not any(p.requires_grad for p in g.convs.parameters())
    if wplus_only and g.size < WPLUS_SPLIT_SIZE:
        return None
    for j in range(len(g.to_rgbs)):
        if 2 ** (j + 3) >= PER_SAMPLE_RESOLUTION:
            return j
    return None


# At 128 px and above a config-f layer has at most 256 channels, so a
# per-sample weight is small next to the activations it spares a pass over;
# below, 512-channel weights rebuilt for every sample cost more than batching
# saves. Measured (benchmarks/RESULTS.md), split against all batched: 256 px
# at batch 8: forward 5.10 s against 5.65 s, forward + backward 15.7 s
# against 18.4 s, peak memory above the model 259 MB against 874 MB;
# 1024 px at batch 2: forward 3.0 s against 3.3 s, forward + backward 9.2 s
# against 12.2 s; 64 px at batch 8, split from 16 px: 2.17 s against 1.79 s.
PER_SAMPLE_RESOLUTION = 128

# Layer selection (gradients for W+ only), forward + backward to W+, split
# (one-sample "grouped" from 128 px) against batched "shared": 1024 px at
# batch 2: 6.0-6.4 s against 7.7 s, peak memory 2.2 GiB against 4.3 GiB;
# 512 px at batch 2: 4.7 s against 4.3 s; 256 px at batch 8: 12.6 s against
# 11.7 s. The 1024x1024x32 activations decide it.
WPLUS_SPLIT_SIZE = 1024
WPLUS_GROUPED_INPUT = 64


def reference_channels(channel_multiplier=2, channel_max=512):
    """Channels per resolution of the reference generator (capped at ``channel_max``)."""
    base = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return {res: min(c, channel_max) for res, c in base.items()}


class Generator(nn.Module):
    """StyleGAN2 generator (config-f), the reference port's network and names.

    Args:
        size: Output resolution, a power of two from 8 to 1024.
        style_dim: Width of Z and W.
        n_mlp: Depth of the mapping network.
        channel_multiplier: 2 for config-f (FFHQ, AFHQ), 1 for the narrow variant.
        blur_kernel: 1-D taps of the separable FIR filter used for upsampling.
        lr_mlp: Learning-rate multiplier of the mapping network.
        channel_max: Cap on the channels per layer (512 in every public
            checkpoint; smaller values build tiny generators for tests).

    ``forward`` keeps the reference signature and returns ``(image, latent or
    None)`` with images in roughly [-1, 1].
    """

    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), lr_mlp=0.01, *, channel_max=512):
        super().__init__()
        log_size = int(math.log2(size))
        if size < 8 or 2**log_size != size or size > 1024:
            raise ValueError(f"Generator size must be a power of two between 8 and 1024, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.blur_kernel = tuple(blur_kernel)
        self.lr_mlp = lr_mlp
        self.channel_max = channel_max
        # Generator-wide copies of the `set_impl` choices (the batch split reads them).
        self.conv_impl = "auto"
        self.epilogue = "fused"

        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)]
        )
        self.channels = reference_channels(channel_multiplier, channel_max)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept for the reference module tree
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2**res, 2**res))

        in_channel = self.channels[4]
        for i in range(3, log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        self.n_latent = log_size * 2 - 2

    @property
    def config(self):
        """Constructor arguments; ``Generator(**g.config)`` rebuilds the architecture."""
        return dict(
            size=self.size,
            style_dim=self.style_dim,
            n_mlp=self.n_mlp,
            channel_multiplier=self.channel_multiplier,
            blur_kernel=list(self.blur_kernel),
            lr_mlp=self.lr_mlp,
            channel_max=self.channel_max,
        )

    def set_impl(self, conv_impl=None, resample=None, epilogue=None):
        """Choose how every layer computes its (unchanged) function.

        Args:
            conv_impl: ``"auto"`` (default), ``"grouped"`` or ``"shared"``
                (see :func:`modulated_conv2d` and :func:`resolve_conv_impl`).
            resample: ``"fast"`` (default) or ``"ref"``.
            epilogue: ``"fused"`` (default) or ``"ref"`` (the reference port's
                module-by-module chain and ``upfirdn2d`` calls, contiguous
                memory).

        ``None`` leaves a setting unchanged. Returns ``self``.
        """
        for value, allowed, name in ((conv_impl, CONV_IMPLS, "conv_impl"), (resample, RESAMPLE_IMPLS, "resample"), (epilogue, EPILOGUES, "epilogue")):
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        settings = {"conv_impl": conv_impl, "resample": resample, "epilogue": epilogue}
        for module in self.modules():
            for name, value in settings.items():
                if value is not None and hasattr(module, name):
                    setattr(module, name, value)
        return self

    def adaptable_layers(self):
        """Style layers in the order of the official layer-selection slots.

        ``[("conv1", ...), ("to_rgb1", ...), ("convs.0", ...), ...]``: the
        candidates that Stage 2 may train, in the order StyleGAN-NADA and the
        IPL code index them (slot ``j`` of W+ selects entry ``j``).
        """
        layers = [("conv1", self.conv1), ("to_rgb1", self.to_rgb1)]
        layers += [(f"convs.{i}", conv) for i, conv in enumerate(self.convs)]
        return layers

    def make_noise(self):
        device = self.input.input.device
        return [torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device) for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n_latent, generator=None):
        """Mean of ``n_latent`` mapped latents, shape ``(1, style_dim)``."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device, generator=generator)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z):
        return self.style(z)

    def _blocks(self, out, skip, latent, noise, start, split=None):
        """Run the upsampling blocks from ``start`` on (block ``j`` renders
        ``2^(j+3)`` pixels); from block ``split`` on, one sample at a time."""
        for j in range(start, len(self.to_rgbs)):
            if j == split and out.shape[0] > 1:
                return torch.cat(
                    [
                        self._blocks(out[i : i + 1], skip[i : i + 1], latent[i : i + 1], [n if n.shape[0] == 1 else n[i : i + 1] for n in noise], j)
                        for i in range(out.shape[0])
                    ]
                )
            slot = 2 * j + 1  # W+ slot and noise index of the block's first layer
            out = self.convs[2 * j](out, latent[:, slot], noise=noise[slot])
            out = self.convs[2 * j + 1](out, latent[:, slot + 1], noise=noise[slot + 1])
            skip = self.to_rgbs[j](out, latent[:, slot + 2], skip)
        return skip

    def _draw_noise(self, noise, latent):
        """Fill the ``None`` entries with fresh noise for the whole batch, drawn in
        layer order with the shapes the layers would draw: the same values as
        drawing each map when its layer runs."""
        batch = latent.shape[0]
        return [
            latent.new_empty(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)).normal_() if n is None else n for i, n in enumerate(noise)
        ]

    def forward(
        self,
        styles,
        return_latents=False,
        inject_index=None,
        truncation=1,
        truncation_latent=None,
        input_is_latent=False,
        noise=None,
        randomize_noise=True,
    ):
        """Render images.

        Args:
            styles: List of one or two tensors: Z codes ``(B, style_dim)``, or
                with ``input_is_latent`` W codes ``(B, style_dim)`` or W+
                codes ``(B, n_latent, style_dim)``. Two codes mix at
                ``inject_index`` (random in ``[1, n_latent)`` when ``None``).
            truncation: Truncation psi; needs ``truncation_latent`` when < 1.
            noise: List of ``num_layers`` noise maps (entries may be ``None``).
            randomize_noise: Without ``noise``, draw fresh noise (``True``) or
                use the fixed buffers (``False``).

        Returns:
            ``(image (B, 3, size, size), W+ latent or None)``.
        """
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. G.mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat(
                [
                    styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                    styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1),
                ],
                1,
            )
        if latent.shape[1] != self.n_latent:
            raise ValueError(f"expected a W+ code with {self.n_latent} slots, got shape {tuple(latent.shape)}")

        split = per_sample_block(self, latent)
        if split is not None:
            noise = self._draw_noise(noise, latent)
        out = self.input(latent)
        if self.epilogue == "fused" and not out.is_cuda:
            out = out.contiguous(memory_format=torch.channels_last)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        image = self._blocks(out, skip, latent, noise, 0, split).contiguous()
        return (image, latent) if return_latents else (image, None)
