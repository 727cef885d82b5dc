"""Diff-AE (diffusion autoencoder, Preechakul et al. CVPR 2022): network, schedule, DDIM walks, checkpoints.

* :mod:`.model`: the semantic encoder and conditional UNet under diffae's state-dict names;
* :mod:`ipl.diffusion` (shared with the DDPM backend): beta schedule, timestep respacing, one DDIM step and the loops
  (diffae's full walks, DiffusionCLIP's partial ones to ``t_0``);
* :mod:`.autoencoder`: :class:`DiffusionAutoencoder`, the network with its schedule;
* :mod:`.checkpoint`: diffae's released Lightning files and ours, read without running code;
* :mod:`.pretrained`: the released checkpoints and where they are found or fetched.
"""

from .autoencoder import DiffusionAutoencoder
from .checkpoint import DiffAECheckpointError, build_autoencoder, load_autoencoder, save_autoencoder
from .model import ARCHITECTURES, Architecture
from .pretrained import REGISTRY, PretrainedAutoencoder

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "DiffAECheckpointError",
    "DiffusionAutoencoder",
    "PretrainedAutoencoder",
    "REGISTRY",
    "build_autoencoder",
    "load_autoencoder",
    "save_autoencoder",
]
