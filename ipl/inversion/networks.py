"""The image encoders of e4e and ReStyle-e4e, in their authors' parameter names.

Both are an IR-SE50 backbone (the stem and bottleneck stages of ArcFace,
:func:`ipl.metrics.arcface.ir_se_body`) followed by one ``GradualStyleBlock``
per W+ slot: stride-2 3x3 convolutions with leaky ReLUs (slope 0.01) that
bring a feature map down to 1x1, then an ``EqualLinear`` (learning-rate
multiplier 1, no activation). Slot 0 gives a code ``w0`` that every slot
starts from; slot ``i > 0`` adds its own offset, ``w_i = w0 + delta_i``.

* :class:`Encoder4Editing` (e4e, Tov et al. 2021; its ``Encoder4Editing``):
  RGB input; slots ``[0, 3)`` read the last 16x16 map, slots ``[3, 7)`` a
  32x32 map and the rest a 64x64 map, both built top-down feature-pyramid
  style (bilinear upsampling with ``align_corners=True`` plus a 1x1 lateral
  convolution, ``latlayer1`` / ``latlayer2``).
* :class:`ProgressiveBackboneEncoder` (ReStyle over e4e, Alaluf et al. 2021):
  the input is an image and the current reconstruction (6 channels); every
  slot reads the last 16x16 map.

Both were trained progressively (a growing number of slots get offsets);
their released checkpoints are used at the final stage, where every slot
does, and that is the only stage built here.

Widths are read from the checkpoint's tensors: the released files have
IR-SE50 widths and 512-wide styles; tests build the same structure narrow.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ipl.metrics.arcface import IR_SE50_STAGES, ir_se_body, ir_se_input_layer
from stylegan2.model import EqualLinear

# e4e's `coarse_ind` and `middle_ind`: the first W+ slots that read the
# 32x32 and the 64x64 feature maps.
E4E_MIDDLE_START = 3
E4E_FINE_START = 7

# Side of the feature map each e4e group of slots reads (at 256 px input),
# which fixes the number of convolutions of its GradualStyleBlock.
COARSE_SPATIAL, MIDDLE_SPATIAL, FINE_SPATIAL = 16, 32, 64


class GradualStyleBlock(nn.Module):
    """A feature map -> one style vector.

    ``log2(spatial)`` stride-2 3x3 convolutions (each followed by a leaky
    ReLU, slope 0.01) take a ``spatial`` x ``spatial`` map to 1x1, then an
    ``EqualLinear`` maps the channels to the style.

    ``(B, in_channels, spatial, spatial) -> (B, out_channels)``.
    """

    def __init__(self, in_channels, out_channels, spatial):
        super().__init__()
        self.out_channels = out_channels
        self.spatial = spatial
        layers = []
        for i in range(int(math.log2(spatial))):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, stride=2, padding=1))
            layers.append(nn.LeakyReLU())
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)  # (B, C, 1, 1) for the map size the block was built for
        # reshape(B, -1) rather than the authors' view(-1, C): a map of another
        # size fails in the linear layer instead of folding pixels into the batch.
        return self.linear(x.reshape(x.shape[0], -1))


def upsample_add(top, lateral):
    """``top`` resized to ``lateral``'s size (bilinear, ``align_corners=True``) plus ``lateral``."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


def _stack_offsets(w0, deltas):
    """``(B, 1 + len(deltas), D)``: ``w0`` in slot 0, ``w0 + delta_i`` in slot i."""
    return torch.stack([w0] + [w0 + d for d in deltas], dim=1)


class Encoder4Editing(nn.Module):
    """e4e's encoder: ``(B, input_channels, 256, 256)`` in [-1, 1] -> W+ offsets ``(B, n_styles, style_dim)``.

    The output does not include the checkpoint's ``latent_avg`` (the caller
    adds it).

    Args:
        n_styles: W+ slots, ``2 log2(size) - 2`` of the decoder.
        style_dim: Width of W (512).
        stages: ``(in_channels, depth, num_units)`` of the four backbone
            stages (IR-SE50: (3, 4, 14, 3) units, depths 64 ... 512).
        input_channels: 3 (RGB).
    """

    def __init__(self, n_styles, style_dim=512, stages=IR_SE50_STAGES, input_channels=3):
        super().__init__()
        if len(stages) != 4:
            raise ValueError(f"e4e reads the ends of four backbone stages, got {len(stages)} stages")
        self.n_styles = n_styles
        self.stages = tuple(tuple(s) for s in stages)
        self.input_layer = ir_se_input_layer(input_channels, stages[0][0])
        self.body = ir_se_body(stages)
        top = stages[3][1]  # channels of the 16x16 map every pyramid level carries
        self.styles = nn.ModuleList(GradualStyleBlock(top, style_dim, _e4e_spatial(i)) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(stages[2][1], top, kernel_size=1)
        self.latlayer2 = nn.Conv2d(stages[1][1], top, kernel_size=1)
        # Index of the last unit of each stage: the feature maps the pyramid reads.
        self._stage_ends = [sum(s[2] for s in stages[: k + 1]) - 1 for k in range(4)]

    def forward(self, x):
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._stage_ends:
                taps[i] = x
        c1 = taps[self._stage_ends[1]]  # (B, depth_2, 64, 64)
        c2 = taps[self._stage_ends[2]]  # (B, depth_3, 32, 32)
        c3 = taps[self._stage_ends[3]]  # (B, depth_4, 16, 16)

        w0 = self.styles[0](c3)  # (B, D)
        features, deltas = c3, []
        for i in range(1, self.n_styles):
            if i == E4E_MIDDLE_START:
                p2 = upsample_add(c3, self.latlayer1(c2))  # (B, depth_4, 32, 32)
                features = p2
            elif i == E4E_FINE_START:
                features = upsample_add(p2, self.latlayer2(c1))  # (B, depth_4, 64, 64)
            deltas.append(self.styles[i](features))
        return _stack_offsets(w0, deltas)  # (B, n_styles, D)


def _e4e_spatial(slot):
    if slot < E4E_MIDDLE_START:
        return COARSE_SPATIAL
    return MIDDLE_SPATIAL if slot < E4E_FINE_START else FINE_SPATIAL


class ProgressiveBackboneEncoder(nn.Module):
    """ReStyle-e4e's encoder: ``(B, 6, 256, 256)`` (image, reconstruction) -> W+ offsets ``(B, n_styles, style_dim)``.

    Args:
        n_styles: W+ slots of the decoder.
        style_dim: Width of W (512).
        stages: Backbone stages, as :class:`Encoder4Editing`.
        input_channels: 6: the target image and the current reconstruction.
    """

    def __init__(self, n_styles, style_dim=512, stages=IR_SE50_STAGES, input_channels=6):
        super().__init__()
        self.n_styles = n_styles
        self.stages = tuple(tuple(s) for s in stages)
        self.input_layer = ir_se_input_layer(input_channels, stages[0][0])
        self.body = ir_se_body(stages)
        self.styles = nn.ModuleList(GradualStyleBlock(stages[-1][1], style_dim, COARSE_SPATIAL) for _ in range(n_styles))

    def forward(self, x):
        x = self.body(self.input_layer(x))  # (B, depth_4, 16, 16)
        w0 = self.styles[0](x)  # (B, D)
        return _stack_offsets(w0, [style(x) for style in self.styles[1:]])  # (B, n_styles, D)


ENCODER_CLASSES = {
    "Encoder4Editing": Encoder4Editing,
    "ProgressiveBackboneEncoder": ProgressiveBackboneEncoder,
}


def infer_encoder_config(state_dict):
    """Constructor arguments of an e4e / ReStyle-e4e encoder from its tensors.

    Reads ``n_styles`` (number of style blocks), ``style_dim`` (width of the
    style linear layers), ``input_channels`` (the stem's input channels) and
    the backbone ``stages``: IR-SE50's unit counts (3, 4, 14, 3) with the
    widths found in the file.

    Raises:
        ValueError: a tensor the encoders always have is missing.
    """
    def shape(key):
        if key not in state_dict:
            raise ValueError(f"no '{key}' in the encoder weights")
        return tuple(state_dict[key].shape)

    n_styles = len({k.split(".")[1] for k in state_dict if k.startswith("styles.") and k.endswith(".linear.weight")})
    if n_styles == 0:
        raise ValueError("no 'styles.<i>.linear.weight' in the encoder weights")
    style_dim = shape("styles.0.linear.weight")[0]
    input_channels = shape("input_layer.0.weight")[1]
    stages, first = [], 0
    for _, _, num_units in IR_SE50_STAGES:
        # A unit's first BatchNorm sees its input channels, its first conv makes its depth.
        in_channels = shape(f"body.{first}.res_layer.0.weight")[0]
        depth = shape(f"body.{first}.res_layer.1.weight")[0]
        stages.append((in_channels, depth, num_units))
        first += num_units
    return dict(n_styles=n_styles, style_dim=style_dim, stages=tuple(stages), input_channels=input_channels)
