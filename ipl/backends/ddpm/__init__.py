"""A plain DDPM (Ho et al.'s network as diffusers' ``UNet2DModel``) fine-tuned as DiffusionCLIP does.

* :mod:`.model`: :class:`DDPM`, the UNet with its schedule and DiffusionCLIP's walks;
* :mod:`.checkpoint`: DiffusionCLIP's raw checkpoints (converted by key
  renaming), diffusers folders and Hub ids, and our own files;
* :mod:`.pretrained`: the published checkpoints and their mirrors;
* :mod:`.backend`: the backend the stages use (the paper's Diff-CLIP column).
"""

from .checkpoint import build_ddpm, convert_ddpm_state_dict, load_ddpm, save_ddpm
from .model import ARCHITECTURES, DDPM, Architecture
from .pretrained import HUB_MODELS, REGISTRY, DDPMCheckpointError

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "DDPM",
    "DDPMCheckpointError",
    "HUB_MODELS",
    "REGISTRY",
    "build_ddpm",
    "convert_ddpm_state_dict",
    "load_ddpm",
    "save_ddpm",
]
