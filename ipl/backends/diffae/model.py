"""The Diff-AE network: a semantic encoder and a UNet conditioned on its code.

Written from diffae's ``model/unet_autoenc.py``, ``model/unet.py``,
``model/blocks.py`` and ``model/nn.py`` (Preechakul et al., CVPR 2022). The
module tree, and so every state-dict key and shape, is the one of diffae's
``BeatGANsAutoencModel``, so the ``ema_model.*`` tensors of a released
checkpoint (prefix removed) load with ``strict=True``. Only the
autoencoder's inference path is here: no latent DPM, no class labels, no
fp16 conversion, no gradient-checkpoint flags (the DDIM loops checkpoint a
whole network call instead, see :mod:`.diffusion`).

How diffae's training config becomes the network (``TrainConfig.make_model_conf``
for ``ModelName.beatgans_autoenc``), with the names of :class:`Architecture`:

* UNet: base width ``net_ch`` times ``net_ch_mult`` per level,
  ``net_num_res_blocks`` residual blocks per level on the way down
  (``net_num_input_res_blocks`` if set) and one more on the way up, a
  residual down/up-sampling block between levels (``net_resblock_updown``,
  else a strided / nearest-neighbour convolution), self-attention at the
  resolutions in ``net_attn`` and always in the middle block, with
  ``net_beatgans_attn_head`` heads (the legacy head split of guided
  diffusion);
* time: sinusoidal embedding of width ``net_ch`` of the original timestep,
  then ``Linear -> SiLU -> Linear`` to ``net_beatgans_embed_channels``;
* condition (``net_beatgans_resnet_two_cond``, True in every released
  model): each UNet residual block scales and shifts its second
  normalisation with the time embedding, ``h * (1 + s_t) + b_t``, then
  scales it with an affine map of z_sem, ``h * (1 + s_z)``; z_sem reaches
  the blocks unchanged (diffae's ``TimeStyleSeperateEmbed`` has an identity
  "style" branch);
* semantic encoder: the down half of a UNet of width ``net_ch`` with
  ``net_enc_channel_mult`` (default ``net_ch_mult``), ``net_enc_num_res_blocks``
  blocks per level, attention at ``net_enc_attn`` (default ``net_attn``),
  no time input (its residual blocks are ``norm -> SiLU -> conv`` plus the
  skip: diffae builds the second half of a block only when it has a
  condition), then ``GroupNorm -> SiLU -> global average pool -> 1x1 conv``
  to ``style_ch`` channels (``net_enc_pool = "adaptivenonzero"``, the only
  pooling diffae implements);
* normalisation: GroupNorm with ``min(32, C)`` groups, computed in float32;
  dropout ``dropout`` before the last convolution of each UNet residual
  block (0.1 in every released config; it acts only in training mode).

A fresh network here uses PyTorch's default initialisation everywhere.
diffae zero-initialises the last convolution of every residual block, of
every attention block and of the output, so a fresh diffae network predicts
eps = 0; that matters only for training from scratch, and released weights
replace it anyway.
"""

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

IMAGE_CHANNELS = 3


# ----------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class Architecture:
    """Shape-defining settings of a Diff-AE network, under diffae's config names.

    Attributes:
        img_size: Image resolution (square).
        net_ch: Base channel width of the UNet and of the encoder.
        net_ch_mult: Width multiplier of each UNet level (one level per resolution).
        net_enc_channel_mult: Width multipliers of the encoder's levels; None: ``net_ch_mult``.
        net_attn: Resolutions with self-attention in the UNet.
        net_enc_attn: Resolutions with self-attention in the encoder; None: ``net_attn``.
        net_num_res_blocks: Residual blocks per UNet level (the decoder has one more).
        net_num_input_res_blocks: Residual blocks per level on the UNet's way
            down, if different; None: ``net_num_res_blocks``.
        net_enc_num_res_blocks: Residual blocks per encoder level.
        style_ch: Width of the semantic code z_sem.
        net_beatgans_embed_channels: Width of the time embedding.
        net_beatgans_attn_head: Attention heads (the channels are split evenly).
        net_beatgans_resnet_two_cond: Residual blocks take time and z_sem as two
            conditions. diffae implements only True for the autoencoder.
        net_beatgans_resnet_cond_channels: Width of the z_sem input of the
            residual blocks; None: ``net_beatgans_embed_channels`` (it must
            equal ``style_ch``, since z_sem enters unchanged).
        net_resblock_updown: Resample with residual blocks (True) or with
            plain strided / upsampling convolutions.
        net_enc_pool: The encoder's pooling; only ``"adaptivenonzero"`` exists.
        dropout: Dropout probability inside the UNet's residual blocks.
    """

    img_size: int
    net_ch: int = 64
    net_ch_mult: Tuple[int, ...] = (1, 2, 4, 8)
    net_enc_channel_mult: Optional[Tuple[int, ...]] = None
    net_attn: Tuple[int, ...] = (16,)
    net_enc_attn: Optional[Tuple[int, ...]] = None
    net_num_res_blocks: int = 2
    net_num_input_res_blocks: Optional[int] = None
    net_enc_num_res_blocks: int = 2
    style_ch: int = 512
    net_beatgans_embed_channels: int = 512
    net_beatgans_attn_head: int = 1
    net_beatgans_resnet_two_cond: bool = True
    net_beatgans_resnet_cond_channels: Optional[int] = None
    net_resblock_updown: bool = True
    net_enc_pool: str = "adaptivenonzero"
    dropout: float = 0.1

    def __post_init__(self):
        for name in ("net_ch_mult", "net_enc_channel_mult", "net_attn", "net_enc_attn"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))  # lists from YAML / JSON become tuples
        if not self.net_beatgans_resnet_two_cond:
            raise ValueError(
                "net_beatgans_resnet_two_cond=False: diffae's autoencoder does not implement a single "
                "combined condition (its forward raises NotImplementedError); use True"
            )
        if self.net_enc_pool != "adaptivenonzero":
            raise ValueError(f"net_enc_pool={self.net_enc_pool!r}: diffae's encoder implements only 'adaptivenonzero'")
        if self.cond_channels != self.style_ch:
            raise ValueError(
                f"the residual blocks read z_sem through a Linear of width {self.cond_channels} "
                f"(net_beatgans_resnet_cond_channels, default net_beatgans_embed_channels) but z_sem has "
                f"style_ch={self.style_ch} channels; they must agree"
            )
        if self.img_size % 2 ** (max(len(self.net_ch_mult), len(self.enc_channel_mult)) - 1):
            raise ValueError(f"img_size={self.img_size} cannot be halved once per level of {self.net_ch_mult} / {self.enc_channel_mult}")

    @property
    def enc_channel_mult(self):
        return self.net_enc_channel_mult or self.net_ch_mult

    @property
    def enc_attn(self):
        return self.net_enc_attn or self.net_attn

    @property
    def input_res_blocks(self):
        return self.net_num_input_res_blocks or self.net_num_res_blocks

    @property
    def cond_channels(self):
        return self.net_beatgans_resnet_cond_channels or self.net_beatgans_embed_channels

    def as_dict(self):
        """Plain-data dict under diffae's field names (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def field_names(cls):
        return [f.name for f in fields(cls)]


# diffae's templates.py: autoenc_base -> ffhq128_autoenc_base -> ffhq256_autoenc.
# ffhq128_autoenc_72M / _130M, bedroom128_autoenc and horse128_autoenc all
# keep ffhq128_autoenc_base's network; they differ in data and training length.
_FFHQ128 = Architecture(
    img_size=128,
    net_ch=128,
    net_ch_mult=(1, 1, 2, 3, 4),
    net_enc_channel_mult=(1, 1, 2, 3, 4, 4),
    net_attn=(16,),
)
ARCHITECTURES = {
    "ffhq256": replace(_FFHQ128, img_size=256, net_ch_mult=(1, 1, 2, 2, 4, 4), net_enc_channel_mult=(1, 1, 2, 2, 4, 4, 4)),
    "ffhq128": _FFHQ128,
    "bedroom128": _FFHQ128,
    "horse128": _FFHQ128,
    # Every block type at a size that runs in milliseconds: residual blocks
    # with and without a channel change, residual up/down-sampling, attention
    # with two heads at 16 px in the UNet and at 8 px in the encoder, lateral
    # connections, both conditions. Widths are 16 and 32 so that every
    # concatenation of a lateral input still splits into min(32, C) groups.
    "tiny": Architecture(
        img_size=32,
        net_ch=16,
        net_ch_mult=(1, 1),
        net_enc_channel_mult=(1, 2, 2),
        net_attn=(16,),
        net_enc_attn=(8,),
        net_num_res_blocks=1,
        net_enc_num_res_blocks=1,
        style_ch=32,
        net_beatgans_embed_channels=32,
        net_beatgans_attn_head=2,
    ),
}


def get_architecture(name_or_arch):
    """An :class:`Architecture` from a name in :data:`ARCHITECTURES`, a dict of fields, or itself."""
    if isinstance(name_or_arch, Architecture):
        return name_or_arch
    if isinstance(name_or_arch, dict):
        unknown = sorted(set(name_or_arch) - set(Architecture.field_names()))
        if unknown:
            raise ValueError(f"unknown Diff-AE architecture fields {unknown}; known: {Architecture.field_names()}")
        return Architecture(**name_or_arch)
    if name_or_arch not in ARCHITECTURES:
        raise ValueError(f"unknown Diff-AE architecture {name_or_arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name_or_arch]


# ----------------------------------------------------------------------------
# Layers


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (diffae's ``GroupNorm32``)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    return GroupNorm32(min(32, channels), channels)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` of timesteps ``t`` (B,) -> (B, dim).

    Frequencies ``f_i = max_period ** (-i / (dim // 2))``; an odd ``dim`` gets a zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 convolution."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """A strided 3x3 convolution, or 2x2 average pooling."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            if out_channels not in (None, channels):
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ConditionedBlock(nn.Module):
    """A module whose forward takes the time embedding, z_sem and a lateral input."""


class Sequence(nn.Sequential, ConditionedBlock):
    """``nn.Sequential`` that hands the conditions to the children that take them (diffae's TimestepEmbedSequential)."""

    def forward(self, x, emb=None, cond=None, lateral=None):
        for layer in self:
            x = layer(x, emb=emb, cond=cond, lateral=lateral) if isinstance(layer, ConditionedBlock) else layer(x)
        return x


class ResBlock(ConditionedBlock):
    """diffae's residual block.

    Unconditioned (the encoder): ``skip(x) + conv(SiLU(norm(x)))``.
    Conditioned (the UNet): ``skip(x) + conv(dropout(SiLU(norm2(h) * (1 + s_t) + b_t) * (1 + s_z)))``
    with ``h = conv(SiLU(norm(x)))``, ``(s_t, b_t)`` from the time embedding
    and ``s_z`` from z_sem. With ``up`` / ``down`` both branches are resampled
    (nearest x2 / average pool) before the first convolution; with
    ``has_lateral`` the lateral input is concatenated to ``x`` first.
    """

    def __init__(
        self,
        channels,
        emb_channels,
        dropout,
        out_channels=None,
        use_condition=True,
        up=False,
        down=False,
        cond_emb_channels=None,
        has_lateral=False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_condition = use_condition
        self.has_lateral = has_lateral
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        if use_condition:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_emb_channels or emb_channels, out_channels))
            self.out_layers = nn.Sequential(
                normalization(out_channels),
                nn.SiLU(),
                nn.Dropout(p=dropout),
                nn.Conv2d(out_channels, out_channels, 3, padding=1),
            )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb=None, cond=None, lateral=None):
        if self.has_lateral:
            if lateral is None:
                raise ValueError("this decoder block needs the lateral feature map of the matching encoder block")
            x = torch.cat([x, lateral], dim=1)
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        if self.use_condition:
            norm, act, dropout, conv = self.out_layers
            h = norm(h)
            # Time first, with scale and shift; then z_sem, scale only (diffae's apply_conditions).
            if emb is not None:
                scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
                h = h * (1 + scale) + shift
            if cond is not None:
                h = h * (1 + self.cond_emb_layers(cond).type(h.dtype)[..., None, None])
            h = conv(dropout(act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions, with guided diffusion's legacy head split.

    The 1x1 ``qkv`` projection's output channels are grouped per head
    (``[q_h, k_h, v_h]`` for each head h in turn); q and k are each scaled by
    ``ch ** -0.25`` before the product, and the softmax runs in float32.
    """

    def __init__(self, channels, num_heads=1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T)
        qkv = self.qkv(self.norm(x))  # (B, 3C, T)
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, -1).split(ch, dim=1)  # 3 x (B*heads, ch, T)
        scale = ch ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)  # (B*heads, T, T)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)  # (B, C, T)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimeEmbed(nn.Module):
    """``Linear -> SiLU -> Linear`` of the sinusoidal time embedding (diffae's TimeStyleSeperateEmbed)."""

    def __init__(self, time_channels, out_channels):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, out_channels), nn.SiLU(), nn.Linear(out_channels, out_channels))
        self.style = nn.Identity()  # z_sem passes to the blocks unchanged

    def forward(self, t_emb):
        return self.time_embed(t_emb)


# ----------------------------------------------------------------------------
# Networks


class SemanticEncoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> semantic code z_sem (B, style_ch). diffae's BeatGANsEncoderModel."""

    def __init__(self, arch: Architecture):
        super().__init__()
        mc, heads = arch.net_ch, arch.net_beatgans_attn_head
        ch = arch.enc_channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([Sequence(nn.Conv2d(IMAGE_CHANNELS, ch, 3, padding=1))])
        resolution = arch.img_size
        for level, mult in enumerate(arch.enc_channel_mult):
            for _ in range(arch.net_enc_num_res_blocks):
                layers = [ResBlock(ch, None, 0.0, out_channels=mult * mc, use_condition=False)]
                ch = mult * mc
                if resolution in arch.enc_attn:
                    layers.append(AttentionBlock(ch, heads))
                self.input_blocks.append(Sequence(*layers))
            if level != len(arch.enc_channel_mult) - 1:
                resolution //= 2
                if arch.net_resblock_updown:
                    down = ResBlock(ch, None, 0.0, use_condition=False, down=True)
                else:
                    down = Downsample(ch, True)
                self.input_blocks.append(Sequence(down))
        self.middle_block = Sequence(
            ResBlock(ch, None, 0.0, use_condition=False),
            AttentionBlock(ch, heads),
            ResBlock(ch, None, 0.0, use_condition=False),
        )
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, arch.style_ch, 1), nn.Flatten()
        )

    def forward(self, x):
        h = x
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))


class AutoencoderUNet(nn.Module):
    """diffae's ``BeatGANsAutoencModel``: the conditional UNet and its semantic encoder.

    ``forward(x_t, t, z_sem)`` predicts the noise eps of ``x_t``; ``encode(x0)``
    gives z_sem. State-dict keys are diffae's (``time_embed.*``,
    ``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``, ``out.*``,
    ``encoder.*``).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        mc, emb_ch, heads = arch.net_ch, arch.net_beatgans_embed_channels, arch.net_beatgans_attn_head
        levels = len(arch.net_ch_mult)

        def res(channels, out_channels=None, **kwargs):
            return ResBlock(channels, emb_ch, arch.dropout, out_channels, cond_emb_channels=arch.cond_channels, **kwargs)

        self.time_embed = TimeEmbed(mc, emb_ch)

        # Down: remember each block's width per level, for the lateral inputs of the way up.
        ch = input_ch = arch.net_ch_mult[0] * mc
        self.input_blocks = nn.ModuleList([Sequence(nn.Conv2d(IMAGE_CHANNELS, ch, 3, padding=1))])
        skip_channels = [[ch]] + [[] for _ in range(levels - 1)]
        self.input_num_blocks = [1] + [0] * (levels - 1)
        resolution = arch.img_size
        for level, mult in enumerate(arch.net_ch_mult):
            for _ in range(arch.input_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if resolution in arch.net_attn:
                    layers.append(AttentionBlock(ch, heads))
                self.input_blocks.append(Sequence(*layers))
                skip_channels[level].append(ch)
                self.input_num_blocks[level] += 1
            if level != levels - 1:
                resolution //= 2
                self.input_blocks.append(Sequence(res(ch, down=True) if arch.net_resblock_updown else Downsample(ch, True)))
                skip_channels[level + 1].append(ch)
                self.input_num_blocks[level + 1] += 1

        self.middle_block = Sequence(res(ch), AttentionBlock(ch, heads), res(ch))

        # Up: one block more than on the way down per level; blocks without a
        # matching encoder block (when net_num_input_res_blocks is smaller) get no lateral.
        self.output_blocks = nn.ModuleList()
        self.output_num_blocks = []  # per output level, deepest first
        for level, mult in reversed(list(enumerate(arch.net_ch_mult))):
            self.output_num_blocks.append(0)
            for i in range(arch.net_num_res_blocks + 1):
                lateral_ch = skip_channels[level].pop() if skip_channels[level] else 0
                layers = [res(ch + lateral_ch, mc * mult, has_lateral=lateral_ch > 0)]
                ch = mc * mult
                if resolution in arch.net_attn:
                    layers.append(AttentionBlock(ch, heads))
                if level and i == arch.net_num_res_blocks:
                    resolution *= 2
                    layers.append(res(ch, up=True) if arch.net_resblock_updown else Upsample(ch, True))
                self.output_blocks.append(Sequence(*layers))
                self.output_num_blocks[-1] += 1

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, IMAGE_CHANNELS, 3, padding=1))
        self.encoder = SemanticEncoder(arch)

    def encode(self, x0):
        """z_sem (B, style_ch) of images x0 (B, 3, H, W) in [-1, 1]."""
        return self.encoder(x0)

    def forward(self, x_t, t, z_sem):
        """Noise prediction eps (B, 3, H, W) of ``x_t`` (B, 3, H, W) at timesteps ``t`` (B,), given z_sem (B, style_ch).

        ``t`` is what diffae hands its network: the original timestep index
        (0..T-1), or its rescaled value when the model was trained with
        ``beatgans_rescale_timesteps``.
        """
        emb = self.time_embed(timestep_embedding(t, self.arch.net_ch))  # (B, embed_channels)
        skips = [[] for _ in self.input_num_blocks]
        h = x_t
        k = 0
        for level, count in enumerate(self.input_num_blocks):
            for _ in range(count):
                h = self.input_blocks[k](h, emb=emb, cond=z_sem)
                skips[level].append(h)
                k += 1
        h = self.middle_block(h, emb=emb, cond=z_sem)
        k = 0
        for i, count in enumerate(self.output_num_blocks):
            # output level i is encoder level L-1-i; its feature maps are used last-in first-out
            level_skips = skips[-i - 1]
            for _ in range(count):
                lateral = level_skips.pop() if level_skips else None
                h = self.output_blocks[k](h, emb=emb, cond=z_sem, lateral=lateral)
                k += 1
        return self.out(h)
