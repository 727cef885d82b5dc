"""Diff-AE as the stages see it: real images, their z_sem codes, and DiffusionCLIP's fine-tuning.

Diff-IPL (the paper's Sec. 4.3) is DiffusionCLIP with its DDIM model
replaced by a diffusion autoencoder and NADA's single text direction by
IPL's image-specific ones:

* the latent mapper reads z_sem = Enc(x0), the semantic code of a real
  training image (StyleGAN2's w), and Stage 1's pairs are
  (z_sem, E_I(x0)) of those images;
* every training image is encoded and inverted once, deterministically, to
  x_{t_0} in ``n_inv_step`` DDIM steps conditioned on its z_sem, and kept
  on disk (:class:`~ipl.backends.diffusionclip.InversionCache`), the
  counterpart of the source-feature bank;
* Stage 2 runs ``n_train_step`` DDIM steps from x_{t_0} through the
  trainable UNet, with gradients, and minimises DiffusionCLIP's loss
  ``clip_w * -log((2 - L_dir) / 2) + l1_w * |x0 - x| + id_w * L_id``, where
  L_dir compares the image direction E_I(x) - E_I(x0) with each image's
  text direction. Adam and StepLR as in DiffusionCLIP's ``clip_finetune``;
  its ``clip_finetune_eff`` (a loss and an optimiser step per DDIM step) is
  ``diffusionclip.per_step``. The fine-tuning is
  :mod:`ipl.backends.diffusionclip`'s, shared with the plain DDPM backend.
"""

import json
from pathlib import Path

import torch

from ..diffusionclip import (  # noqa: F401  (the shared fine-tuning, under the names this module had)
    CACHE_FORMAT,
    DiffusionCLIPAdaptation,
    ImagePairs,
    InversionCache,
    clip_features,
    diffusionclip_losses,
    load_identity,
    source_image_features,
    training_images,
)
from .checkpoint import build_autoencoder, load_autoencoder, save_autoencoder

# Stage 2 of Diff-IPL is DiffusionCLIP's fine-tuning on the autoencoder.
DiffAEAdaptation = DiffusionCLIPAdaptation


def model_fingerprint(gcfg, dcfg, model):
    """What identifies the source autoencoder's weights (file hash, or random architecture and seed)."""
    if gcfg.checkpoint == "random":
        return "random:" + json.dumps({"arch": dcfg.arch, "seed": gcfg.seed}, sort_keys=True)
    from stylegan2.utils import sha256_file

    return "sha256:" + sha256_file(model.checkpoint_info["path"])


def load_source_autoencoder(gcfg, dcfg, device, progress=True):
    """The frozen source autoencoder of a run: ``(model, fingerprint)``."""
    if gcfg.checkpoint == "random":
        model = build_autoencoder(dcfg.arch, seed=gcfg.seed, device=device)
    else:
        model = load_autoencoder(gcfg.checkpoint, device, download=True, progress=progress)
    model.use_channels_last(torch.device(device).type == "cpu")
    return model.eval().requires_grad_(False), model_fingerprint(gcfg, dcfg, model)


class DiffAEBackend:
    """A pretrained (or seeded random) diffusion autoencoder and a folder of real images.

    Args:
        config: The run's :class:`ipl.config.Config` (``generator``, ``diffae``,
            ``data``, ``diffusionclip``).
        device: Where the models run.
    """

    kind = "diffae"
    adapted_file = "autoencoder.pt"

    def __init__(self, config, device, progress=True):
        self.device = torch.device(device)
        # The data first: a missing folder stops the run before any download.
        self.files = training_images(config.data.images, config.data.n_images)
        self.test_files = training_images(config.data.test_images, config.data.n_test, "data.test_images") if config.data.test_images else []
        self.model, self.fingerprint = load_source_autoencoder(config.generator, config.diffae, self.device, progress)
        self.code_dim = self.model.style_ch
        self.progress = progress
        t_0 = config.diffusionclip.t_0
        if t_0 >= self.model.T:
            from ...config import ConfigError

            raise ConfigError(f"diffusionclip.t_0: {t_0} must be below the model's T = {self.model.T}")

    def describe(self):
        m = self.model
        return f"img_size={m.img_size}, z_sem={m.style_ch}, T={m.T}, images={len(self.files)}"

    def cache(self, cache_dir):
        return InversionCache(self.model, self.fingerprint, Path(cache_dir) / "diffae")

    def codes(self, x0, cond, clip_model, antialias):
        """What the mapper reads of images x0: their z_sem (the condition the cache holds)."""
        return cond

    def stage1_pairs(self, config, clip_model, cache_dir, progress=True):
        x0, z_sem = self.cache(cache_dir).encoded(self.files, progress=progress)
        features = clip_features(clip_model, x0, antialias=config.clip.antialias)
        return ImagePairs(self.codes(x0, z_sem, clip_model, config.clip.antialias), features, config.stage1.batch, config.stage1.seed)

    def source_features(self, config, clip_model, n):
        """CLIP features ``(n, D)`` of n source images (NADA's image direction): the first n training images."""
        return source_image_features(self, config, clip_model, n)

    def adaptation(self, config, clip_model, constants):
        return DiffAEAdaptation(self, config, clip_model)

    @staticmethod
    def save_model(path, model, **extra):
        return save_autoencoder(path, model, **extra)
