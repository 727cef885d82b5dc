"""Builders: the only place where a config is unpacked into objects."""

import json
from pathlib import Path

import torch

from stylegan2 import Generator
from stylegan2.utils import sha256_file

from .bank import bank_key, build_bank
from .clip import clip, load_clip


def build_source_generator(gcfg, device):
    """The frozen source generator G_s of a run, and what identifies it.

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
        from stylegan2 import load_generator

        generator, info = load_generator(gcfg.checkpoint, device="cpu", download=True)
        info = dict(info)
        info["fingerprint"] = "sha256:" + sha256_file(info["path"])
    return generator.to(device).eval().requires_grad_(False), info


def build_clip(ccfg, device):
    return load_clip(ccfg.model, device=device, dtype=ccfg.dtype, download_root=ccfg.download_root, seed=ccfg.seed)


@torch.no_grad()
def mean_latent(generator, n=4096, seed=0):
    """Mean W of ``n`` seeded Z codes ``(1, style_dim)`` (the truncation centre)."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    return generator.style(z.to(device)).mean(0, keepdim=True)


def bank_fields(config, generator_info, clip_model):
    """Everything the (w, feature) pairs of a source-feature bank depend on."""
    c1 = config.stage1
    return {
        "generator": generator_info["fingerprint"],
        # Random CLIPs are identified by their seed too.
        "clip": config.clip.model if config.clip.model in clip.available_models() else f"{config.clip.model}@seed{config.clip.seed}",
        "clip_dtype": str(clip_model.dtype),
        "clip_resolution": clip_model.input_resolution,
        "antialias": config.clip.antialias,
        "truncation": c1.truncation,
        "seed": c1.seed,
        "batch": c1.batch,
    }


def build_stage1_bank(config, derived, generator, generator_info, clip_model, truncation_latent=None, progress=True):
    """Load or build the source-feature bank a Stage-1 run draws from."""
    fields = bank_fields(config, generator_info, clip_model)
    path = Path(derived.cache_dir) / "banks" / f"bank-{bank_key(fields)}.pt"
    return build_bank(
        path,
        fields,
        generator,
        clip_model,
        steps=config.stage1.iterations,
        batch=config.stage1.batch,
        seed=config.stage1.seed,
        truncation=config.stage1.truncation,
        truncation_latent=truncation_latent,
        chunk=config.generator.render_chunk,
        antialias=config.clip.antialias,
        progress=progress,
    )
