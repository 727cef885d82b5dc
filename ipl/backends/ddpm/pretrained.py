"""The DDPMs DiffusionCLIP fine-tunes and the ``google/ddpm-*`` models, and where they are found or fetched.

Two kinds of published weights, both of Ho et al.'s network:

* DiffusionCLIP's raw checkpoints (SDEdit's ``celeba_hq.ckpt``,
  ``bedroom.ckpt``, ``church_outdoor.ckpt``): plain state dicts of its
  ``models/ddpm/diffusion.py`` ``DDPM``. Its code downloads them from an S3
  bucket (``image-editing-test-12345``) that answers 403 Forbidden
  (DiffusionCLIP issues #33 and #40). The mirrors named there: for
  CelebA-HQ the Hugging Face copy ``gwang-kim/DiffusionCLIP-CelebA_HQ``
  (pointed to from bahjat-kawar/ddrm #24, which #40 duplicates); for the
  LSUN models, issue #33 points to ermongroup/ddim's
  ``functions/ckpt_util.py``, whose ``ema_lsun_bedroom`` and
  ``ema_lsun_church`` files are Ho et al.'s EMA weights in the same layout
  (SDEdit's files are these models; byte identity is not verified here).
  Installed as ``<pretrained folder>/ddpm/<name>.ckpt``.
* diffusers' ``google/ddpm-*`` repositories (``UNet2DModel`` folders),
  found under ``<pretrained folder>/ddpm/google/<model>/`` or in the Hugging
  Face cache, else fetched by ``from_pretrained``.

The pretrained folder is the ``root`` argument, else ``$IPL_PRETRAINED_DIR``,
else the repository's ``pretrained/`` (as for every other model).
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from stylegan2.checkpoint import CheckpointError
from stylegan2.pretrained import DownloadError, download_file, pretrained_dir

SUBDIR = "ddpm"
DEAD_BUCKET = "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints"


class DDPMCheckpointError(CheckpointError):
    """A DDPM checkpoint that cannot be used or found; the message says why and what to do."""


@dataclass(frozen=True)
class RawCheckpoint:
    """One of DiffusionCLIP's raw DDPM checkpoints.

    Attributes:
        name: DiffusionCLIP's file stem (``<name>.ckpt``).
        architecture: Name in :data:`~.model.ARCHITECTURES` (its ``configs/*.yml``).
        description: Data set and resolution.
        mirrors: Where the file can be downloaded today, tried in order.
        source: Where DiffusionCLIP's and SDEdit's code download it from (dead).
        note: Where the mirrors are named.
    """

    name: str
    architecture: str
    description: str
    mirrors: Tuple[str, ...]
    note: str

    @property
    def source(self):
        return f"{DEAD_BUCKET}/{self.name}.ckpt"


REGISTRY = {
    model.name: model
    for model in (
        RawCheckpoint(
            "celeba_hq", "celeba_hq", "CelebA-HQ faces 256x256 (SDEdit's DDPM; DiffusionCLIP's model for human faces)",
            ("https://huggingface.co/gwang-kim/DiffusionCLIP-CelebA_HQ/resolve/main/celeba_hq.ckpt",),
            "the Hugging Face copy named in bahjat-kawar/ddrm #24 (DiffusionCLIP #40)",
        ),
        RawCheckpoint(
            "bedroom", "bedroom", "LSUN bedrooms 256x256 (Ho et al.'s EMA model)",
            ("https://heibox.uni-heidelberg.de/f/b95206528f384185889b/?dl=1",),
            "ermongroup/ddim functions/ckpt_util.py, ema_lsun_bedroom (DiffusionCLIP #33)",
        ),
        RawCheckpoint(
            "church_outdoor", "church_outdoor", "LSUN churches 256x256 (Ho et al.'s EMA model)",
            ("https://heibox.uni-heidelberg.de/f/44ccb50ef3c6436db52e/?dl=1",),
            "ermongroup/ddim functions/ckpt_util.py, ema_lsun_church (DiffusionCLIP #33)",
        ),
    )
}

# diffusers' unconditional DDPMs of Ho et al. (UNet2DModel folders on the Hub).
HUB_MODELS = (
    "google/ddpm-celebahq-256",
    "google/ddpm-ema-celebahq-256",
    "google/ddpm-church-256",
    "google/ddpm-ema-church-256",
    "google/ddpm-bedroom-256",
    "google/ddpm-ema-bedroom-256",
    "google/ddpm-cat-256",
    "google/ddpm-ema-cat-256",
    "google/ddpm-cifar10-32",
)


def checkpoint_file(name, root=None):
    """Where DiffusionCLIP's ``<name>.ckpt`` belongs: ``<pretrained folder>/ddpm/<name>.ckpt``."""
    return pretrained_dir(root) / SUBDIR / f"{REGISTRY[name].name}.ckpt"


def hub_folder(model_id, root=None):
    """Where a diffusers model ``owner/name`` is looked for first: ``<pretrained folder>/ddpm/owner/name/``."""
    return pretrained_dir(root) / SUBDIR / Path(*model_id.split("/"))


def manual_instructions(name, root=None):
    """One paragraph: where to download ``name`` by hand and where to put it."""
    if name in REGISTRY:
        model, dest = REGISTRY[name], checkpoint_file(name, root)
        return (
            f"To install DiffusionCLIP's DDPM '{name}' ({model.description}), download {model.mirrors[0]} "
            f"({model.note}; DiffusionCLIP's own link {model.source} answers 403) and save it as {dest}, "
            "or pass download=True (the backend does)."
        )
    return (
        f"To use the diffusers model '{name}' offline, save its folder (config.json and the weights, e.g. from "
        f"https://huggingface.co/{name}) as {hub_folder(name, root)}, or run once online so that it lands in the "
        "Hugging Face cache."
    )


def checkpoint_path(name, root=None, *, download=False, progress=True):
    """Path of DiffusionCLIP's ``<name>.ckpt``, downloaded from its mirrors first when missing and ``download`` is set.

    Raises:
        DDPMCheckpointError: missing and ``download`` is False (the message says how to get it).
        DownloadError: every mirror failed.
    """
    path = checkpoint_file(name, root)
    if path.is_file():
        return path
    if not download:
        raise DDPMCheckpointError(f"DDPM checkpoint '{name}' is not installed ({path} is missing). {manual_instructions(name, root)}")
    errors = []
    for url in REGISTRY[name].mirrors:
        print(f"Downloading {name} from {url}", file=sys.stderr)
        try:
            download_file(url, path, progress=progress)
            return path
        except DownloadError as e:
            errors.append(str(e))
    raise DownloadError(f"could not download '{name}' ({'; '.join(errors)}). {manual_instructions(name, root)}")
