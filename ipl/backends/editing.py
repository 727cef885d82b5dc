"""Editing real images with a fine-tuned diffusion model, as DiffusionCLIP does after training.

An image x0 is inverted to x_{t_0} by the *source* model (Diff-AE: given
its z_sem, the network's condition; a DDPM has no condition, its code is
x_{t_0} alone); the source model's render of those latents is the
reconstruction, the fine-tuned model's render of the same latents is the
edit. With ``ratio < 1`` the edit mixes the two models' noise predictions,
``ratio * eps_adapted + (1 - ratio) * eps_source`` (DiffusionCLIP's
``model_ratio``, "the degree of change").

Both models are :class:`ipl.backends.diffusionclip.DiffusionModel`; nothing
here asks which family they are. :func:`load_editor` reads a finished run's
file (``RUN/autoencoder.pt`` or ``RUN/ddpm.pt``) and its recorded settings.
"""

import torch

from .. import diffusion
from .diffusionclip import eps_fn

# What a run of each diffusion family writes, for the messages.
RUN_NAMES = {"diffae": "a Diff-IPL run's autoencoder.pt", "ddpm": "a DDPM run's ddpm.pt"}


class Editor:
    """The source and fine-tuned models of a diffusion run, with the run's DDIM settings.

    Args:
        source, adapted: Diffusion models of one architecture (Diff-AE autoencoders or DDPMs).
        t_0, n_inv_step, n_test_step, eta: DiffusionCLIP's settings of the run.
        ratio: Mix of the noise predictions in :meth:`edit` (1 = the adapted model alone).
    """

    def __init__(self, source, adapted, *, t_0, n_inv_step, n_test_step, eta=0.0, ratio=1.0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1] (0 = source, 1 = adapted), got {ratio}")
        if type(source) is not type(adapted) or source.hyper_parameters != adapted.hyper_parameters:
            from stylegan2.checkpoint import CheckpointError

            raise CheckpointError("the source and adapted models have different architectures: pass the source the run was fine-tuned from")
        self.source, self.adapted = source.eval(), adapted.eval()
        self.t_0, self.n_inv_step, self.n_test_step, self.eta, self.ratio = t_0, n_inv_step, n_test_step, eta, float(ratio)
        self.device = next(source.parameters()).device

    @property
    def resolution(self):
        return self.source.img_size

    @torch.no_grad()
    def invert(self, x0):
        """``(cond, x_{t_0} (B, 3, S, S))`` of images ``(B, 3, S, S)`` in [-1, 1], by the source model.

        ``cond`` is the network's condition (Diff-AE: z_sem ``(B, style_ch)``), None for a DDPM.
        """
        x0 = x0.to(self.device)
        cond = self.source.condition(x0)
        return cond, diffusion.partial_invert(eps_fn(self.source, cond), x0, self.source.alphas_cumprod, self.t_0, self.n_inv_step)

    def _render(self, fn, x_t):
        return diffusion.partial_generate(fn, x_t.to(self.device), self.source.alphas_cumprod, self.t_0, self.n_test_step, eta=self.eta)

    def _cond(self, cond):
        return None if cond is None else cond.to(self.device)

    @torch.no_grad()
    def reconstruct(self, cond, x_t):
        """The source model's render of the latents, ``(B, 3, S, S)``."""
        return self._render(eps_fn(self.source, self._cond(cond)), x_t)

    @torch.no_grad()
    def edit(self, cond, x_t):
        """The fine-tuned model's render of the same latents (its noise mixed with the source's when ``ratio < 1``)."""
        cond = self._cond(cond)
        if self.ratio == 1.0:
            return self._render(eps_fn(self.adapted, cond), x_t)

        def mixed(x, t):
            return self.ratio * self.adapted.eps(x, t, cond) + (1 - self.ratio) * self.source.eps(x, t, cond)

        return self._render(mixed, x_t)


def run_settings(checkpoint_path):
    """The run config stored in a fine-tuned diffusion model file (plain dict), or None."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the loader raises many types for damaged files
        from stylegan2.checkpoint import read_checkpoint

        from . import ADAPTED_REMEDY

        checkpoint = read_checkpoint(checkpoint_path, "fine-tuned diffusion model checkpoint", ADAPTED_REMEDY)  # its errors name the problem
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    return config if isinstance(config, dict) else None


def _models(adapted_path, run, source, device, progress):
    """The source and the adapted model of a diffusion run of ``run.generator.kind``."""
    if run.generator.kind == "diffae":
        from .diffae.backend import load_source_autoencoder as load_source
        from .diffae.checkpoint import load_autoencoder as load

        section = run.diffae
    else:
        from .ddpm.backend import load_source_ddpm as load_source
        from .ddpm.checkpoint import load_ddpm as load

        section = run.ddpm
    cpu = torch.device(device).type == "cpu"
    adapted = load(adapted_path, device).use_channels_last(cpu)
    if source == "recorded":
        source_model, _ = load_source(run.generator, section, device, progress)
    else:
        source_model = load(source, device, download=True, progress=progress).use_channels_last(cpu)
    return source_model, adapted


def load_editor(adapted_path, device, *, source="recorded", ratio=1.0, progress=True):
    """An :class:`Editor` for a diffusion run's fine-tuned model, with the run's own DDIM settings.

    Args:
        adapted_path: ``RUN/autoencoder.pt`` (Diff-IPL) or ``RUN/ddpm.pt`` (a DDPM run).
        source: ``"recorded"`` (the source model named in the file's run
            config, a seeded random one included), a released name or a path.
        ratio: See :class:`Editor`.

    Returns:
        ``(editor, run config)``.
    """
    from stylegan2.checkpoint import CheckpointError

    from ..config import ConfigError, from_dict
    from . import checkpoint_kind

    kind = checkpoint_kind(adapted_path)
    if kind not in RUN_NAMES:
        raise CheckpointError(f"{adapted_path} is a {kind} model, not a fine-tuned diffusion model ({' or '.join(RUN_NAMES.values())})")
    config = run_settings(adapted_path)
    if config is None:
        raise CheckpointError(f"{adapted_path}: no run config inside: not a model written by a {kind} run (scripts/adapt.py)")
    try:
        run = from_dict(config)
    except ConfigError as e:
        raise CheckpointError(f"{adapted_path}: its run config cannot be read ({e})") from None
    source_model, adapted = _models(adapted_path, run, source, device, progress)
    dc = run.diffusionclip
    return Editor(source_model, adapted, t_0=dc.t_0, n_inv_step=dc.n_inv_step, n_test_step=dc.n_test_step, eta=dc.eta, ratio=ratio), run
