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

import torch

from ..diffusionclip import (  # noqa: F401  (the shared fine-tuning, under the names this module had)
    CACHE_FORMAT,
    DiffusionBackend,
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


class DiffAEBackend(DiffusionBackend):
    """A pretrained (or seeded random) diffusion autoencoder and a folder of real images; the mapper reads z_sem."""

    kind = "diffae"
    adapted_file = "autoencoder.pt"

    def load_source(self, config, device, progress):
        return load_source_autoencoder(config.generator, config.diffae, device, progress)

    def code_width(self, config):
        return self.model.style_ch

    def codes(self, x0, cond, features):
        """What the mapper reads of images x0: their z_sem (the condition the cache holds)."""
        return cond

    def describe_codes(self):
        return f"z_sem={self.model.style_ch}"

    @staticmethod
    def save_model(path, model, **extra):
        return save_autoencoder(path, model, **extra)
