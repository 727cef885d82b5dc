"""The frozen source generator G_s of a run, and the truncation centre."""

import json

import torch

from stylegan2 import Generator, load_generator
from stylegan2.utils import sha256_file


def build_source_generator(gcfg, device):
    """The frozen source generator G_s of a run, and what identifies it.

    Args:
        gcfg: The run's :class:`ipl.config.GeneratorConfig`.
        device: Where the generator runs.

    Returns:
        ``(generator, info)``; ``info["fingerprint"]`` identifies the weights
        (file hash, or the architecture and seed of a random generator).
    """
    if gcfg.checkpoint == "random":
        arch = dict(
            size=gcfg.size,
            style_dim=gcfg.style_dim,
            n_mlp=gcfg.n_mlp,
            channel_multiplier=gcfg.channel_multiplier,
            channel_max=gcfg.channel_max,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gcfg.seed)
            generator = Generator(**arch)
        with torch.no_grad():
            # A fresh StyleGAN2 starts with zero noise strengths; trained ones
            # are not zero, and Stage 2 relies on it (G_s and G_t draw
            # independent noise, so their first images differ).
            for name, p in generator.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.1)
        info = {"latent_avg": None, "config": generator.config, "meta": {"seed": gcfg.seed}, "path": None}
        info["fingerprint"] = "random:" + json.dumps({**arch, "seed": gcfg.seed}, sort_keys=True)
    else:
        generator, info = load_generator(gcfg.checkpoint, device="cpu", download=True)
        info = dict(info)
        info["fingerprint"] = "sha256:" + sha256_file(info["path"])
    return generator.to(device).eval().requires_grad_(False), info


@torch.no_grad()
def mean_latent(generator, n=4096, seed=0):
    """Mean W of ``n`` seeded Z codes ``(1, style_dim)`` (the truncation centre)."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    return generator.style(z.to(device)).mean(0, keepdim=True)
