"""The StyleGAN2 generator, numerically the network of the reference PyTorch port.

Module and parameter names follow that port exactly, so that its ``g_ema``
checkpoints (used by StyleGAN-NADA and the IPL authors) load with
``strict=True``. Two things differ, neither changes the function:

* the modulated convolution can run in either of its two exact formulations
  (``conv_impl``, see :func:`modulated_conv2d`), and picks the faster one;
* ``channel_max`` caps the channel counts so that tiny test generators exist.
"""

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FusedLeakyReLU, fused_leaky_relu, upfirdn2d

CONV_IMPLS = ("auto", "grouped", "shared")


def make_kernel(k):
    """Normalised 2-D FIR kernel from a 1-D (separable) or 2-D list."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    """2x FIR upsampling (used on the RGB skip connections)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


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
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)

    def extra_repr(self):
        out_dim, in_dim = self.weight.shape
        return f"{in_dim}, {out_dim}, lr_mul={self.lr_mul}, activation={self.activation}"


def modulated_conv2d(x, weight, styles, demodulate=True, up=False, down=False, padding=0, impl="shared"):
    """Modulated (and optionally demodulated) convolution, before any blur.

    Two exact formulations of the same function:

    * ``"grouped"`` builds one weight per sample, ``w'[b] = w * s[b]`` scaled
      by the demodulation ``d[b]``, and runs one grouped convolution (what the
      reference port does);
    * ``"shared"`` scales the input channels by ``s``, runs one convolution
      with the shared weight for the whole batch, and scales the output
      channels by ``d`` (NVIDIA's "non-fused" path). It never materialises
      per-sample weights and lets the backend use its fastest dense kernels.

    Args:
        x: Input ``(B, C_in, H, W)``.
        weight: Scaled weight ``(C_out, C_in, k, k)`` (equalised-lr scale applied).
        styles: Per-sample input-channel scales ``(B, C_in)``.
        demodulate: Normalise each output filter of each sample to unit norm.
        up: Transposed convolution with stride 2, no padding (the FIR blur
            that completes the upsampling is the caller's).
        down: Convolution with stride 2, no padding (the caller blurs first).
        padding: Padding of a plain (neither up nor down) convolution.
        impl: ``"grouped"`` or ``"shared"``.

    Returns:
        ``(B, C_out, H', W')``.
    """
    if impl not in ("grouped", "shared"):
        raise ValueError(f"modulated_conv2d: impl must be 'grouped' or 'shared', got {impl!r}")
    batch, in_channel, height, width = x.shape
    out_channel, _, kh, kw = weight.shape
    stride, padding = (2, 0) if down else (1, padding)

    if impl == "shared":
        x = x * styles.reshape(batch, in_channel, 1, 1)
        if up:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            x = F.conv2d(x, weight, padding=padding, stride=stride)
        if demodulate:
            # sum_{i,k} (w[o,i,k] s[b,i])^2 = sum_i s[b,i]^2 sum_k w[o,i,k]^2
            dcoefs = torch.rsqrt(styles.square() @ weight.square().sum([2, 3]).t() + 1e-8)  # (B, O)
            x = x * dcoefs.reshape(batch, out_channel, 1, 1)
        return x

    w = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demodulate:
        w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
    x = x.reshape(1, batch * in_channel, height, width)
    if up:
        w = w.transpose(1, 2).reshape(batch * in_channel, out_channel, kh, kw)
        x = F.conv_transpose2d(x, w, stride=2, groups=batch)
    else:
        w = w.reshape(batch * out_channel, in_channel, kh, kw)
        x = F.conv2d(x, w, padding=padding, stride=stride, groups=batch)
    return x.reshape(batch, out_channel, *x.shape[2:])


def resolve_conv_impl(conv_impl, x):
    """The modulated-convolution formulation to use for input ``x``.

    ``"auto"`` picks ``"shared"`` on the CPU at every batch size (one dense
    convolution runs at close to matmul speed there, while a grouped one with
    per-sample weights does not; see ``benchmarks/bench_generator.py``), and
    on CUDA follows NVIDIA's rule: grouped for inference, shared when
    gradients are needed (the grouped weight gradient is slow).
    """
    if conv_impl != "auto":
        return conv_impl
    if x.is_cuda and not torch.is_grad_enabled():
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
        # Exact alternatives, set through `Generator.set_impl`: "auto",
        # "grouped" or "shared"; resampling "fast" or "ref".
        self.conv_impl = "auto"
        self.resample = "fast"

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

    def forward(self, x, style):
        """Modulated convolution of ``x`` (B, C_in, H, W) by ``style`` (B, style_dim).

        ``self.resample == "ref"`` runs up/downsampling in its slow reference
        form:  upsampling as explicit zero insertion followed by a
        correlation with the flipped kernel; downsampling as a full
        convolution followed by taking every second sample. The fast forms
        (transposed / strided convolution) compute the same values.
        """
        styles = self.modulation(style)  # (B, C_in)
        weight = self.scale * self.weight[0]  # (C_out, C_in, k, k)
        impl = resolve_conv_impl(self.conv_impl, x)
        reference = self.resample == "ref"

        if self.downsample:
            x = self.blur(x)
            if reference:
                return modulated_conv2d(x, weight, styles, self.demodulate, impl=impl)[:, :, ::2, ::2]
            return modulated_conv2d(x, weight, styles, self.demodulate, down=True, impl=impl)
        if self.upsample:
            if reference:
                k = self.kernel_size
                ones = torch.ones(1, 1, dtype=x.dtype, device=x.device)
                x = upfirdn2d(x, ones, up=2, pad=(k - 1, k - 2))
                out = modulated_conv2d(x, weight.flip([2, 3]), styles, self.demodulate, impl=impl)
            else:
                out = modulated_conv2d(x, weight, styles, self.demodulate, up=True, impl=impl)
            return self.blur(out)
        return modulated_conv2d(x, weight, styles, self.demodulate, padding=self.padding, impl=impl)


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

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB, added to the upsampled skip image."""

    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


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

    def set_impl(self, conv_impl=None, resample=None):
        """Choose the exact formulation of every modulated convolution.

        Args:
            conv_impl: ``"auto"`` (default), ``"grouped"`` or ``"shared"``.
            resample: ``"fast"`` (default) or ``"ref"``.
        """
        if conv_impl is not None and conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        if resample is not None and resample not in ("fast", "ref"):
            raise ValueError(f"resample must be 'fast' or 'ref', got {resample!r}")
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.conv_impl = conv_impl or module.conv_impl
                module.resample = resample or module.resample
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

        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return (skip, latent) if return_latents else (skip, None)
