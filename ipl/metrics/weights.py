"""Where the evaluation networks' weight files come from, and how they are found.

Each metric network loads from a local file. ``WEIGHTS`` documents every file:
its expected name, the page or URL it comes from and the SHA-256 (or the
SHA-256 prefix that the publisher encodes in the file name) where one is
published. ``resolve_weights`` finds a file in this order:

1. the ``path`` given to the loader;
2. the file's environment variable (e.g. ``IPL_INCEPTION_WEIGHTS``);
3. ``<weights_dir>/<filename>``, where ``weights_dir`` defaults to
   ``$IPL_PRETRAINED_DIR``, else the repository's ``pretrained/`` folder
   (the folder that also holds the source generators);
4. torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where
   torchvision and lpips keep the files they downloaded;
5. with ``download=True`` and a direct URL, a download into ``weights_dir``.

A file that cannot be found raises ``MissingWeightsError`` naming the file,
where to get it and how to point the loader at it.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch


@dataclass(frozen=True)
class WeightFile:
    """One pretrained weight file used by the evaluation code."""

    key: str  # registry key, e.g. "inception_v3"
    filename: str  # the name the publisher gives the file
    description: str  # what the file holds and which metric uses it
    env_var: str  # environment variable that may hold the file's path
    loader: str  # the function(s) that load it (named in error messages)
    source: str  # the page that publishes the file
    url: Optional[str] = None  # direct download URL; None when only a web page exists
    sha256: Optional[str] = None  # full SHA-256, where published
    sha256_prefix: Optional[str] = None  # SHA-256 prefix encoded in the file name
    path_arg: str = "path"  # the loader argument that takes the file's path


WEIGHTS = {
    entry.key: entry
    for entry in (
        WeightFile(
            key="inception_v3",
            filename="inception_v3_google-0cc3c7bd.pth",
            description="torchvision Inception-v3, ImageNet-1k (1000 classes): IS, SIFID",
            env_var="IPL_INCEPTION_WEIGHTS",
            loader="load_inception or load_sifid_stem",
            source="torchvision.models.Inception_V3_Weights.IMAGENET1K_V1",
            url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
            sha256_prefix="0cc3c7bd",
        ),
        WeightFile(
            key="fid_inception_v3",
            filename="pt_inception-2015-12-05-6726825d.pth",
            description=(
                "pytorch-fid's port of the TensorFlow FID Inception (2015-12-05); "
                "optional alternative stem for SIFID, not the default"
            ),
            env_var="IPL_FID_INCEPTION_WEIGHTS",
            loader="load_sifid_stem",
            source="https://github.com/mseitzer/pytorch-fid (release fid_weights)",
            url=(
                "https://github.com/mseitzer/pytorch-fid/releases/download/"
                "fid_weights/pt_inception-2015-12-05-6726825d.pth"
            ),
            sha256_prefix="6726825d",
        ),
        WeightFile(
            key="hed_bsds500",
            filename="network-bsds500.pytorch",
            description="HED edge detector, BSDS500 weights (sniklaus/pytorch-hed): SCS",
            env_var="IPL_HED_WEIGHTS",
            loader="load_hed",
            source="https://github.com/sniklaus/pytorch-hed",
            url="http://content.sniklaus.com/github/pytorch-hed/network-bsds500.pytorch",
        ),
        WeightFile(
            key="arcface_ir_se50",
            filename="model_ir_se50.pth",
            description=(
                "ArcFace IR-SE50 (TreB1eN/InsightFace_Pytorch), the file used by "
                "pSp / e4e / StyleGAN-NADA: ID for faces"
            ),
            env_var="IPL_ARCFACE_WEIGHTS",
            loader="load_arcface",
            source=(
                "pixel2style2pixel README, 'IR-SE50 Model' (Google Drive: "
                "https://drive.google.com/file/d/1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn)"
            ),
        ),
        WeightFile(
            key="lpips_vgg",
            filename="vgg16-397923af.pth",
            description="torchvision VGG16 (ImageNet), the LPIPS 'vgg' backbone: intra-cluster LPIPS",
            env_var="IPL_LPIPS_VGG_WEIGHTS",
            loader="load_lpips",
            path_arg="backbone_path",
            source="torchvision.models.VGG16_Weights.IMAGENET1K_V1",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256_prefix="397923af",
        ),
        WeightFile(
            key="lpips_alex",
            filename="alexnet-owt-7be5be79.pth",
            description="torchvision AlexNet (ImageNet), the LPIPS 'alex' backbone",
            env_var="IPL_LPIPS_ALEX_WEIGHTS",
            loader="load_lpips",
            path_arg="backbone_path",
            source="torchvision.models.AlexNet_Weights.IMAGENET1K_V1",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256_prefix="7be5be79",
        ),
    )
}


class MissingWeightsError(FileNotFoundError):
    """A weight file was not found; the message says where to get it."""


ENV_DIR = "IPL_PRETRAINED_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "pretrained"


def default_weights_dir():
    """``$IPL_PRETRAINED_DIR``, else the repository's ``pretrained/`` folder."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def _entry(key_or_entry):
    if isinstance(key_or_entry, WeightFile):
        return key_or_entry
    try:
        return WEIGHTS[key_or_entry]
    except KeyError:
        raise KeyError(
            f"unknown weight file {key_or_entry!r}; known: {', '.join(sorted(WEIGHTS))}"
        ) from None


def _how_to_get(entry, weights_dir):
    lines = [f"  file:    {entry.filename} ({entry.description})", f"  source:  {entry.source}"]
    if entry.url:
        lines.append(f"  url:     {entry.url}")
    if entry.sha256:
        lines.append(f"  sha256:  {entry.sha256}")
    elif entry.sha256_prefix:
        lines.append(f"  sha256 starts with: {entry.sha256_prefix}")
    lines.append(
        f"  then:    pass {entry.path_arg}=/path/to/file to {entry.loader}, set {entry.env_var}=/path/to/file, "
        f"or place it at {weights_dir / entry.filename}"
    )
    if entry.url:
        lines.append(f"  or:      pass download=True to {entry.loader} on a machine with internet")
    return "\n".join(lines)


def resolve_weights(key_or_entry, path=None, *, download=False, weights_dir=None):
    """Local path of a registered weight file (see the module docstring for the order).

    Args:
        key_or_entry: a key of ``WEIGHTS`` or a ``WeightFile``.
        path: explicit file path; when given it must exist.
        download: fetch the file from its URL when it is not found locally.
        weights_dir: directory searched for (and downloaded into) by file name;
            defaults to ``default_weights_dir()``.

    Returns:
        ``pathlib.Path`` of an existing file.

    Raises:
        MissingWeightsError: the file is not found (and not downloadable).
    """
    entry = _entry(key_or_entry)
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()

    explicit = [("path argument", path), (f"${entry.env_var}", os.environ.get(entry.env_var))]
    for origin, candidate in explicit:
        if candidate:
            candidate = Path(candidate).expanduser()
            if candidate.is_file():
                return candidate
            raise MissingWeightsError(
                f"{entry.key}: {origin} points to {candidate}, which is not a file.\n"
                + _how_to_get(entry, weights_dir)
            )

    hub_cache = Path(torch.hub.get_dir()) / "checkpoints" / entry.filename
    for candidate in (weights_dir / entry.filename, hub_cache):
        if candidate.is_file():
            return candidate

    if download and entry.url:
        return download_weights(entry, weights_dir)
    raise MissingWeightsError(
        f"{entry.key}: weight file not found (looked in {weights_dir} and {hub_cache.parent}).\n"
        + _how_to_get(entry, weights_dir)
    )


def download_weights(key_or_entry, weights_dir=None, *, progress=True):
    """Download a registered file into ``weights_dir`` and check its hash.

    The SHA-256 prefix (or full hash) is verified when the registry knows it;
    a mismatch deletes the download and raises ``RuntimeError``.
    """
    from stylegan2.utils import sha256_file

    entry = _entry(key_or_entry)
    if not entry.url:
        raise MissingWeightsError(
            f"{entry.key} has no direct download URL.\n"
            + _how_to_get(entry, Path(weights_dir or default_weights_dir()))
        )
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    weights_dir.mkdir(parents=True, exist_ok=True)
    dst = weights_dir / entry.filename
    # torch.hub writes to a temporary file and moves it into place only when
    # the hash prefix matches, so an interrupted download leaves nothing.
    torch.hub.download_url_to_file(entry.url, str(dst), hash_prefix=entry.sha256_prefix, progress=progress)
    if entry.sha256 and sha256_file(dst) != entry.sha256:
        dst.unlink()
        raise RuntimeError(f"{entry.key}: downloaded file does not match sha256 {entry.sha256}")
    return dst


def load_state_dict_file(path):
    """Read a state dict saved with ``torch.save`` (tensors only) onto the CPU.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, and
    strips a ``module.`` prefix left by ``nn.DataParallel``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises several types
        raise RuntimeError(
            f"could not read {path} as a tensors-only state dict ({error}). "
            "Is it the right file? Loading runs torch.load(weights_only=True), which refuses "
            "files that hold arbitrary Python objects."
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise RuntimeError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(module, state_dict, what):
    """``module.load_state_dict(strict=True)`` with an error that lists a few bad keys."""
    expected = module.state_dict()
    # Files saved before PyTorch 0.4.1 have no BatchNorm step counters; they
    # are not used in eval mode, so the module keeps its own.
    state_dict = dict(state_dict)
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in state_dict:
            state_dict[k] = v
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong_shape:
        def head(items):
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5})" if len(items) > 5 else "")

        raise RuntimeError(
            f"the file does not fit the {what} architecture:"
            + (f"\n  missing keys: {head(missing)}" if missing else "")
            + (f"\n  unexpected keys: {head(unexpected)}" if unexpected else "")
            + (f"\n  wrong shapes: {head(wrong_shape)}" if wrong_shape else "")
        )
    module.load_state_dict(state_dict, strict=True)
    return module


def rename_keys(state_dict, pattern, replacement):
    """Apply ``re.sub(pattern, replacement, key)`` to every key."""
    return {re.sub(pattern, replacement, k): v for k, v in state_dict.items()}
