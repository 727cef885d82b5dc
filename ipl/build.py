"""Builders: the only place where a config is unpacked into objects."""

from .clip import load_clip


def build_clip(ccfg, device):
    """The run's frozen CLIP from its :class:`ipl.config.ClipConfig`."""
    return load_clip(ccfg.model, device=device, dtype=ccfg.dtype, download_root=ccfg.download_root, seed=ccfg.seed)


def build_backend(config, device, progress=True):
    """The backend of ``config.generator.kind``, with its source model on ``device``."""
    if config.generator.kind == "diffae":
        from .backends.diffae.backend import DiffAEBackend

        return DiffAEBackend(config, device, progress=progress)
    if config.generator.kind == "ddpm":
        from .backends.ddpm.backend import DDPMBackend

        return DDPMBackend(config, device, progress=progress)
    from .backends.stylegan2 import StyleGAN2Backend

    return StyleGAN2Backend(config, device)
