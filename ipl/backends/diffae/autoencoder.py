"""A diffusion autoencoder: the network, its noise schedule and the DDIM walks that use them.

The methods reproduce diffae's ``LitModel`` on its EMA network:
``encode`` (the semantic encoder), ``eps`` (the network's forward),
``encode_stochastic`` (``ddim_reverse_sample_loop``) and ``render``
(``ddim_sample_loop`` with the semantic code), with images in [-1, 1]
(diffae's ``render`` returns ``(x + 1) / 2``). ``invert`` and ``generate``
are DiffusionCLIP's partial walks to and from ``t_0``, the ones its
fine-tuning uses, here conditioned on z_sem (Diff-CLIP+ / Diff-IPL).
"""

from typing import Iterator

import torch
from torch import nn

from ... import diffusion
from .model import Architecture, AutoencoderUNet, get_architecture

# Defaults of diffae's TrainConfig / autoenc_base template for the diffusion part.
DEFAULT_T = 1000
DEFAULT_T_EVAL = 20
DEFAULT_BETA_SCHEDULE = "linear"


class DiffusionAutoencoder(nn.Module):
    """diffae's autoencoder (network + schedule) with its encode / invert / render walks.

    Args:
        arch: The network's :class:`~.model.Architecture` (or a name in
            :data:`~.model.ARCHITECTURES`).
        T: Length of the diffusion process.
        T_eval: Default number of DDIM steps of ``render`` / ``encode_stochastic``.
        beta_scheduler: diffae's beta schedule name (``"linear"``).
        rescale_timesteps: diffae's ``beatgans_rescale_timesteps``: the
            network gets ``t * 1000 / T`` instead of ``t``.

    Attributes:
        net: The :class:`~.model.AutoencoderUNet` (diffae's ``ema_model``).
        arch, img_size, style_ch, T, T_eval, beta_scheduler, rescale_timesteps.
        alphas_cumprod: float64 numpy array (T,).
    """

    def __init__(self, arch, *, T=DEFAULT_T, T_eval=DEFAULT_T_EVAL, beta_scheduler=DEFAULT_BETA_SCHEDULE, rescale_timesteps=False):
        super().__init__()
        self.arch: Architecture = get_architecture(arch)
        self.net = AutoencoderUNet(self.arch)
        self.T = int(T)
        self.T_eval = int(T_eval)
        self.beta_scheduler = beta_scheduler
        self.rescale_timesteps = bool(rescale_timesteps)
        self.alphas_cumprod = diffusion.alphas_cumprod(diffusion.beta_schedule(beta_scheduler, self.T))
        self.memory_format = torch.contiguous_format

    def use_channels_last(self, enabled=True):
        """Keep weights and activations channels-last (NHWC), which oneDNN's CPU convolutions run
        about 1.3x faster at 256 px (``benchmarks/bench_diffae.py``); the same function, with the
        float rounding of another summation order. Returns ``self``."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        return self

    @property
    def img_size(self):
        return self.arch.img_size

    @property
    def style_ch(self):
        return self.arch.style_ch

    @property
    def hyper_parameters(self):
        """Plain dict under diffae's TrainConfig names: architecture and diffusion settings."""
        return {
            **self.arch.as_dict(),
            "T": self.T,
            "T_eval": self.T_eval,
            "beta_scheduler": self.beta_scheduler,
            "beatgans_rescale_timesteps": self.rescale_timesteps,
            "diffusion_type": "beatgans",
        }

    def schedule(self, steps=None) -> diffusion.Schedule:
        """The respaced schedule of ``steps`` DDIM steps (default ``T_eval``)."""
        return diffusion.respace(self.alphas_cumprod, steps or self.T_eval)

    # ------------------------------------------------------------------
    # The network

    def encode(self, x0):
        """Semantic code z_sem (B, style_ch) of images x0 (B, 3, img_size, img_size) in [-1, 1]."""
        return self.net.encode(x0.contiguous(memory_format=self.memory_format))

    def eps(self, x_t, t, z_sem):
        """Noise prediction (B, 3, H, W) for ``x_t`` (B, 3, H, W) at original timesteps ``t`` (int or (B,)), given z_sem (B, style_ch)."""
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        if self.rescale_timesteps:
            t = t.float() * (1000.0 / self.T)
        return self.net(x_t.contiguous(memory_format=self.memory_format), t, z_sem)

    def forward(self, x_t, t, z_sem):
        return self.eps(x_t, t, z_sem)

    def condition(self, x0):
        """What the UNet is conditioned on for images x0: their z_sem (the DiffusionCLIP fine-tuning's condition)."""
        return self.encode(x0)

    def trainable_parameters(self):
        """The UNet's parameters: DiffusionCLIP fine-tunes the denoiser, not the semantic encoder."""
        return [p for name, p in self.net.named_parameters() if not name.startswith("encoder.")]

    def _eps_fn(self, z_sem):
        return lambda x, t: self.eps(x, t, z_sem)

    # ------------------------------------------------------------------
    # diffae's full walks (no gradients, like diffae's)

    @torch.no_grad()
    def encode_stochastic(self, x0, z_sem, steps=None):
        """diffae's ``encode_stochastic``: x0 (B, 3, H, W) in [-1, 1] -> x_T (B, 3, H, W), deterministic DDIM inversion in ``steps`` steps (default ``T_eval``)."""
        return diffusion.ddim_reverse(self._eps_fn(z_sem), x0, self.schedule(steps), clip_x0=True)

    @torch.no_grad()
    def render(self, x_T, z_sem, steps=None, *, eta=0.0, generator=None):
        """diffae's ``render``: x_T (B, 3, H, W) and z_sem (B, style_ch) -> images (B, 3, H, W) in [-1, 1] in ``steps`` DDIM steps (default ``T_eval``).

        ``eta`` is 0 in diffae; ``generator`` draws its noise otherwise.
        """
        return diffusion.ddim_sample(self._eps_fn(z_sem), x_T, self.schedule(steps), eta=eta, clip_x0=True, generator=generator)

    # ------------------------------------------------------------------
    # DiffusionCLIP's partial walks (gradient mode is the caller's)

    def invert(self, x0, z_sem, t_0, n_steps, *, clip_x0=False):
        """DiffusionCLIP's inversion: x0 (B, 3, H, W) in [-1, 1] -> x_{t_0} (B, 3, H, W).

        ``n_steps`` is DiffusionCLIP's ``n_inv_step``: the timesteps are
        ``int(linspace(0, 1, n_steps) * t_0)``, so it takes ``n_steps - 1``
        deterministic steps. x0 is unclamped unless ``clip_x0``. Run it under
        ``torch.no_grad()`` unless its gradient is wanted.
        """
        return diffusion.partial_invert(self._eps_fn(z_sem), x0, self.alphas_cumprod, t_0, n_steps, clip_x0=clip_x0)

    def generate(self, x_t, z_sem, t_0, n_steps, *, eta=0.0, generator=None, clip_x0=False, checkpoint=False, return_x0=False):
        """DiffusionCLIP's generation: x_{t_0} (B, 3, H, W) -> images (B, 3, H, W) in ``n_steps`` steps.

        ``n_steps`` is DiffusionCLIP's ``n_train_step`` / ``n_test_step`` (the
        last step goes from timestep 0 to the clean image). Differentiable
        when gradients are enabled.

        Args:
            eta: DDIM stochasticity; ``generator`` draws its noise.
            clip_x0: Clamp each x0 prediction (diffae's step) instead of
                DiffusionCLIP's unclamped one.
            checkpoint: Recompute each network call in the backward pass
                (same gradients, one step's activations in memory).
            return_x0: Also return the list of each step's x0 prediction.

        Returns:
            The images, or ``(images, [x0 of each step, each (B, 3, H, W)])``.
        """
        return diffusion.partial_generate(
            self._eps_fn(z_sem), x_t, self.alphas_cumprod, t_0, n_steps,
            eta=eta, generator=generator, clip_x0=clip_x0, checkpoint=checkpoint, return_x0=return_x0,
        )

    def generate_steps(self, x_t, z_sem, t_0, n_steps, *, eta=0.0, generator=None, clip_x0=False, detach=True, checkpoint=False) -> Iterator[diffusion.StepOutput]:
        """DiffusionCLIP's generation one step at a time, for its per-step ("GPU-efficient") fine-tuning.

        Yields a :class:`~.diffusion.StepOutput` per step (``x0`` is that
        step's x0 prediction). With ``detach`` (the default) each step starts
        from the previous state detached, so the caller can backpropagate each
        ``x0`` on its own and step its optimizer before asking for the next
        step, which then uses the updated network.
        """
        steps = diffusion.partial_generation_steps(self.alphas_cumprod, t_0, n_steps)
        return diffusion.ddim_loop(
            self._eps_fn(z_sem), x_t, steps, eta=eta, generator=generator, clip_x0=clip_x0, detach=detach, checkpoint=checkpoint
        )
