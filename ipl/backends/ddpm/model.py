"""A plain DDPM: Ho et al.'s noise-predicting UNet (diffusers' ``UNet2DModel``) with its linear schedule.

This is the network DiffusionCLIP fine-tunes on CelebA-HQ and LSUN (its
``models/ddpm/diffusion.py`` ``DDPM``, SDEdit's checkpoints) and the one
diffusers publishes as ``google/ddpm-*``. :class:`DDPM` adds DiffusionCLIP's
walks to it: ``invert`` (x0 -> x_{t_0}) and ``generate`` (x_{t_0} -> x0),
DDIM with eta 0 over ``int(linspace(0, 1, n) * t_0)``, from
:mod:`ipl.diffusion`.

``UNet2DModel`` settings that make it Ho et al.'s network (those of the
``google/ddpm-*`` configs): sinusoidal timestep embedding with ``[sin,
cos]`` order (``flip_sin_to_cos`` false) and frequencies ``10000^(-i /
(half - 1))`` (``freq_shift`` 1), time embedding width 4 ch, GroupNorm(32,
eps 1e-6), SiLU, two-convolution residual blocks with a 1x1 shortcut where
the width changes, single-head attention at the named resolutions (and in
the middle block), strided downsampling convolutions on the input padded by
one pixel right and bottom (``downsample_padding`` 0), nearest upsampling
followed by a convolution.
"""

from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from ... import diffusion

DEFAULT_T = 1000


@dataclass(frozen=True)
class Architecture:
    """Ho et al.'s UNet as DiffusionCLIP's ``configs/*.yml`` describe it.

    Attributes:
        img_size: Side of the square images (``data.image_size``).
        ch: Width of the first level (``model.ch``).
        ch_mult: Width multiplier of each level (``model.ch_mult``).
        num_res_blocks: Residual blocks per level on the way down (one more on the way up).
        attn_resolutions: Resolutions whose levels hold attention blocks.
        dropout: Dropout of the residual blocks (0 in every released model).
    """

    img_size: int = 256
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3

    def attention_levels(self):
        return [self.img_size >> level in self.attn_resolutions for level in range(len(self.ch_mult))]

    def unet_config(self):
        """The ``UNet2DModel`` keyword arguments of this network (plain data)."""
        attention = self.attention_levels()
        return {
            "sample_size": self.img_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": [self.ch * m for m in self.ch_mult],
            "layers_per_block": self.num_res_blocks,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
            "flip_sin_to_cos": False,
            "freq_shift": 1,
            "downsample_padding": 0,
            "norm_num_groups": 32,
            "norm_eps": 1e-6,
            "act_fn": "silu",
            "attention_head_dim": None,  # one head as wide as the block
            "dropout": self.dropout,
            "center_input_sample": False,
            "time_embedding_type": "positional",
            "mid_block_scale_factor": 1,
            "resnet_time_scale_shift": "default",
            "add_attention": True,
        }

    def as_dict(self):
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d


# DiffusionCLIP's configs/celeba.yml, bedroom.yml and church.yml (the same network
# at 256 px), and a tiny one for tests and the demo.
ARCHITECTURES = {
    "celeba_hq": Architecture(),
    "bedroom": Architecture(),
    "church_outdoor": Architecture(),
    "tiny": Architecture(img_size=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)),
}


class DDPM(nn.Module):
    """A noise-predicting ``UNet2DModel`` with Ho et al.'s linear schedule and DiffusionCLIP's walks.

    Args:
        unet_config: ``UNet2DModel`` keyword arguments (plain data).
        T: Length of the diffusion process (1000 in every released model).

    Attributes:
        net: The ``diffusers.UNet2DModel``.
        img_size, T, alphas_cumprod (float64 numpy (T,)), hyper_parameters.
    """

    def __init__(self, unet_config, T=DEFAULT_T):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_config = dict(unet_config)
        self.net = UNet2DModel(**self.unet_config)
        self.T = int(T)
        # Ho et al.'s betas 1e-4..0.02; DiffusionCLIP multiplies them in float32, here in float64.
        self.alphas_cumprod = diffusion.alphas_cumprod(diffusion.linear_betas(self.T))
        self.memory_format = torch.contiguous_format

    @property
    def img_size(self):
        size = self.unet_config["sample_size"]
        return size if isinstance(size, int) else size[0]

    @property
    def hyper_parameters(self):
        """What rebuilds the model: the UNet's config and the schedule (plain data)."""
        return {"unet": dict(self.unet_config), "T": self.T, "beta_schedule": "linear"}

    def use_channels_last(self, enabled=True):
        """Keep weights and activations channels-last (faster CPU convolutions); returns ``self``."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        return self

    def trainable_parameters(self):
        """Every weight of the UNet (DiffusionCLIP fine-tunes the whole model)."""
        return list(self.net.parameters())

    # ------------------------------------------------------------------
    # The network

    def condition(self, x0):
        """None: the DDPM is unconditional."""
        return None

    def eps(self, x_t, t, cond: Optional[torch.Tensor] = None):
        """The UNet's noise prediction ``(B, 3, S, S)`` for ``x_t`` at original timesteps ``t`` (int or (B,))."""
        if cond is not None:
            raise ValueError("the DDPM is unconditional: it takes no condition")
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        return self.net(x_t.contiguous(memory_format=self.memory_format), t).sample

    def forward(self, x_t, t):
        return self.eps(x_t, t)

    # ------------------------------------------------------------------
    # DiffusionCLIP's walks (gradient mode is the caller's)

    def invert(self, x0, t_0, n_steps):
        """DiffusionCLIP's deterministic inversion: x0 (B, 3, S, S) in [-1, 1] -> x_{t_0}.

        ``n_steps`` is its ``n_inv_step``: the timesteps are ``int(linspace(0,
        1, n_steps) * t_0)`` and x0 is the state at t = 0, so it takes
        ``n_steps - 1`` DDIM steps (eta 0, x0 predictions unclamped).
        """
        return diffusion.partial_invert(self.eps, x0, self.alphas_cumprod, t_0, n_steps)

    def generate(self, x_t0, t_0, n_steps, *, eta=0.0, generator=None, checkpoint=False, return_x0=False):
        """DiffusionCLIP's generation: x_{t_0} (B, 3, S, S) -> images in ``n_steps`` DDIM steps.

        The last step goes from timestep 0 to "-1", where alpha-bar is 1.
        Differentiable when gradients are enabled; ``checkpoint`` recomputes
        each network call in the backward pass. Returns the images, or
        ``(images, [x0 of each step])`` with ``return_x0``.
        """
        return diffusion.partial_generate(
            self.eps, x_t0, self.alphas_cumprod, t_0, n_steps, eta=eta, generator=generator, checkpoint=checkpoint, return_x0=return_x0
        )

    def generate_steps(self, x_t0, t_0, n_steps, *, eta=0.0, generator=None, detach=True) -> Iterator[diffusion.StepOutput]:
        """:meth:`generate` one step at a time (DiffusionCLIP's per-step fine-tuning); see :func:`ipl.diffusion.ddim_loop`."""
        steps = diffusion.partial_generation_steps(self.alphas_cumprod, t_0, n_steps)
        return diffusion.ddim_loop(self.eps, x_t0, steps, eta=eta, generator=generator, detach=detach)


def get_architecture(arch):
    """An :class:`Architecture` from itself or a name in :data:`ARCHITECTURES`."""
    if isinstance(arch, Architecture):
        return arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown DDPM architecture {arch!r}; named ones: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]
