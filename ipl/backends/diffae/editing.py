"""Editing real images with a fine-tuned autoencoder, as DiffusionCLIP does after training.

An image x0 is encoded (z_sem) and inverted to x_{t_0} by the *source*
model; the source model's render of (x_{t_0}, z_sem) is the reconstruction,
the fine-tuned model's render of the same latents is the edit. With
``ratio < 1`` the edit mixes the two models' noise predictions,
``ratio * eps_adapted + (1 - ratio) * eps_source`` (DiffusionCLIP's
``model_ratio``, "the degree of change").
"""


import torch

from ... import diffusion
from .checkpoint import load_autoencoder


class Editor:
    """The source and fine-tuned autoencoders of a Diff-IPL run, with the run's DDIM settings.

    Args:
        source, adapted: :class:`~.autoencoder.DiffusionAutoencoder` (same architecture).
        t_0, n_inv_step, n_test_step, eta: DiffusionCLIP's settings of the run.
        ratio: Mix of the noise predictions in :meth:`edit` (1 = the adapted model alone).
    """

    def __init__(self, source, adapted, *, t_0, n_inv_step, n_test_step, eta=0.0, ratio=1.0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1] (0 = source, 1 = adapted), got {ratio}")
        if source.hyper_parameters != adapted.hyper_parameters:
            from stylegan2.checkpoint import CheckpointError

            raise CheckpointError("the source and adapted autoencoders have different architectures: pass the source the run was fine-tuned from")
        self.source, self.adapted = source.eval(), adapted.eval()
        self.t_0, self.n_inv_step, self.n_test_step, self.eta, self.ratio = t_0, n_inv_step, n_test_step, eta, float(ratio)
        self.device = next(source.parameters()).device

    @property
    def resolution(self):
        return self.source.img_size

    @torch.no_grad()
    def invert(self, x0):
        """``(z_sem (B, style_ch), x_{t_0} (B, 3, S, S))`` of images ``(B, 3, S, S)`` in [-1, 1], by the source model."""
        x0 = x0.to(self.device)
        z_sem = self.source.encode(x0)
        return z_sem, self.source.invert(x0, z_sem, self.t_0, self.n_inv_step)

    def _render(self, eps_fn, z_sem, x_t):
        return diffusion.partial_generate(eps_fn, x_t.to(self.device), self.source.alphas_cumprod, self.t_0, self.n_test_step, eta=self.eta)

    @torch.no_grad()
    def reconstruct(self, z_sem, x_t):
        """The source model's render of the latents, ``(B, 3, S, S)``."""
        z_sem = z_sem.to(self.device)
        return self._render(lambda x, t: self.source.eps(x, t, z_sem), z_sem, x_t)

    @torch.no_grad()
    def edit(self, z_sem, x_t):
        """The fine-tuned model's render of the same latents (its noise mixed with the source's when ``ratio < 1``)."""
        z_sem = z_sem.to(self.device)
        if self.ratio == 1.0:
            return self._render(lambda x, t: self.adapted.eps(x, t, z_sem), z_sem, x_t)

        def mixed(x, t):
            return self.ratio * self.adapted.eps(x, t, z_sem) + (1 - self.ratio) * self.source.eps(x, t, z_sem)

        return self._render(mixed, z_sem, x_t)


def run_settings(checkpoint_path):
    """The run config stored in a fine-tuned autoencoder file (plain dict), or None."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the loader raises many types for damaged files
        from stylegan2.checkpoint import read_checkpoint

        from .. import ADAPTED_REMEDY

        checkpoint = read_checkpoint(checkpoint_path, "Diff-IPL autoencoder checkpoint", ADAPTED_REMEDY)  # its errors name the problem
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return config if isinstance(config, dict) else None


def load_editor(adapted_path, device, *, source="recorded", ratio=1.0, progress=True):
    """An :class:`Editor` for a Diff-IPL run's ``autoencoder.pt``, with the run's own DDIM settings.

    Args:
        adapted_path: The fine-tuned autoencoder (``RUN/autoencoder.pt``).
        source: ``"recorded"`` (the source model named in the file's run
            config, a seeded random one included), a released name or a path.
        ratio: See :class:`Editor`.
    """
    from stylegan2.checkpoint import CheckpointError

    from ...config import ConfigError, from_dict
    from .backend import load_source_autoencoder

    config = run_settings(adapted_path)
    if config is None:
        raise CheckpointError(f"{adapted_path}: no run config inside: not an autoencoder written by a Diff-IPL run (scripts/adapt.py)")
    try:
        run = from_dict(config)
    except ConfigError as e:
        raise CheckpointError(f"{adapted_path}: its run config cannot be read ({e})") from None
    adapted = load_autoencoder(adapted_path, device).use_channels_last(torch.device(device).type == "cpu")
    if source == "recorded":
        source_model, _ = load_source_autoencoder(run.generator, run.diffae, device, progress)
    else:
        source_model = load_autoencoder(source, device, download=True, progress=progress)
        source_model.use_channels_last(torch.device(device).type == "cpu")
    dc = run.diffusionclip
    return Editor(source_model, adapted, t_0=dc.t_0, n_inv_step=dc.n_inv_step, n_test_step=dc.n_test_step, eta=dc.eta, ratio=ratio), run
