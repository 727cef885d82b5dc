"""The plain DDPM as the stages see it: real images, their CLIP features, and DiffusionCLIP's fine-tuning.

With ``prompt.scheme=manual`` this is DiffusionCLIP itself, the paper's
Diff-CLIP column of Fig. 5. IPL on a model with no semantic code (this
project's extension, not in the paper): the latent mapper reads the
normalised CLIP image feature of each real image, so Stage 1's pairs are
(feature, feature) of the same image and Stage 2 takes one direction per
image from its own feature's prompts; every prompt scheme works.
"""

import json
from pathlib import Path

import torch

from ...method.losses import normalize
from ..diffusionclip import DiffusionBackend
from .checkpoint import build_ddpm, load_ddpm, save_ddpm

# Widths of the image features of the CLIP models (the codes the mapper reads):
# OpenAI's names (their text_projection's width) and the random architectures.
CLIP_EMBED_DIMS = {
    "RN50": 1024, "RN101": 512, "RN50x4": 640, "RN50x16": 768, "RN50x64": 1024,
    "ViT-B/32": 512, "ViT-B/16": 512, "ViT-L/14": 768, "ViT-L/14@336px": 768,
}  # fmt: skip


def clip_embed_dim(name):
    """Width of the image features of the CLIP ``name`` (``clip.model``), known without loading it."""
    from ...clip import RANDOM_ARCHS
    from ...config import ConfigError

    arch = name.removeprefix("random:")
    if arch in RANDOM_ARCHS:
        return RANDOM_ARCHS[arch]["embed_dim"]
    if name in CLIP_EMBED_DIMS:
        return CLIP_EMBED_DIMS[name]
    raise ConfigError(
        f"clip.model: {name!r}: a DDPM run's mapper reads CLIP image features, whose width is known only for "
        f"{', '.join(CLIP_EMBED_DIMS)}, 'tiny' and 'random:ViT-B/32'; use one of those names"
    )


def model_fingerprint(gcfg, dcfg, model):
    """What identifies the source DDPM's weights (file hash, or random architecture and seed)."""
    if gcfg.checkpoint == "random":
        return "random:" + json.dumps({"arch": dcfg.arch, "seed": gcfg.seed}, sort_keys=True)
    path = Path(model.checkpoint_info["path"])
    if path.is_file():
        from stylegan2.utils import sha256_file

        return "sha256:" + sha256_file(path)
    # A diffusers folder: its weight files' hashes.
    from stylegan2.utils import sha256_file

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")) if path.is_dir() else []
    return "folder:" + json.dumps({str(p.relative_to(path)): sha256_file(p) for p in files} or {"id": gcfg.checkpoint}, sort_keys=True)


def load_source_ddpm(gcfg, dcfg, device, progress=True):
    """The frozen source DDPM of a run: ``(model, fingerprint)``."""
    if gcfg.checkpoint == "random":
        model = build_ddpm(dcfg.arch, seed=gcfg.seed, device=device)
    else:
        model = load_ddpm(gcfg.checkpoint, device, download=True, progress=progress)
    model.use_channels_last(torch.device(device).type == "cpu")
    return model.eval().requires_grad_(False), model_fingerprint(gcfg, dcfg, model)


class DDPMBackend(DiffusionBackend):
    """A pretrained (or seeded random) DDPM and a folder of real images; the mapper reads each image's
    normalised CLIP image feature (a DDPM has no semantic code; ``clip.model`` sets the width)."""

    kind = "ddpm"
    adapted_file = "ddpm.pt"

    def load_source(self, config, device, progress):
        return load_source_ddpm(config.generator, config.ddpm, device, progress)

    def code_width(self, config):
        return clip_embed_dim(config.clip.model)

    def codes(self, x0, cond, features):
        """What the mapper reads of images x0: their normalised CLIP image features ``(N, D)``."""
        return normalize(features)

    def describe_codes(self):
        return f"codes=CLIP image features ({self.code_dim})"

    @staticmethod
    def save_model(path, model, **extra):
        return save_ddpm(path, model, **extra)
