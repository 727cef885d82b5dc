"""Registry of diffae's released autoencoders, and where their files are found or fetched.

diffae publishes each checkpoint as a Google Drive *folder* (linked from its
README, "Checkpoints", "DiffAE (autoencoding only)") holding ``last.ckpt``
(the Lightning checkpoint) and ``latent.ckpt`` (the z_sem of its training
set). The file used here is ``last.ckpt``, installed as::

    <pretrained folder>/diffae/<name>/last.ckpt

where the pretrained folder is the ``root`` argument, else
``$IPL_PRETRAINED_DIR``, else the repository's ``pretrained/`` (as for the
StyleGAN2 generators). :func:`fetch` downloads it:

* from a mirror, when ``base_url`` or ``$IPL_DIFFAE_URL`` is set (serving
  ``<url>/<name>/last.ckpt``; resumable, see :func:`stylegan2.pretrained.download_file`);
* else with ``gdown`` (``pip install gdown``), when it is installed; it is
  optional and never required;
* else it stops with a paragraph saying where to download the file by hand
  and where to put it.

Hashes, trust on first use as for the generators: Google Drive publishes
none, so the first use of a file (downloaded or placed by hand) records its
SHA-256 in ``last.ckpt.sha256`` beside it, and every later use (once per
process) checks the file against it.
"""

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stylegan2.checkpoint import CheckpointError
from stylegan2.pretrained import DownloadError, download_file, pretrained_dir, verify_file

SUBDIR = "diffae"
FILENAME = "last.ckpt"
ENV_URL = "IPL_DIFFAE_URL"
README = "https://github.com/phizaz/diffae#checkpoints"


class DiffAECheckpointError(CheckpointError):
    """A Diff-AE checkpoint that cannot be used or found; the message says why and what to do."""


@dataclass(frozen=True)
class PretrainedAutoencoder:
    """One released Diff-AE autoencoder.

    Attributes:
        name: diffae's checkpoint folder name (``checkpoints/<name>/last.ckpt`` in diffae).
        resolution: Image size.
        architecture: Name in :data:`~.model.ARCHITECTURES`.
        description: Data set and training length.
        page: The Google Drive folder diffae's README links.
        sha256: Expected SHA-256 of ``last.ckpt``, or None (trust on first use).
    """

    name: str
    resolution: int
    architecture: str
    description: str
    page: str
    sha256: Optional[str] = None


REGISTRY = {
    model.name: model
    for model in (
        PretrainedAutoencoder(
            "ffhq256_autoenc", 256, "ffhq256", "FFHQ faces 256x256, 200M training images",
            "https://drive.google.com/drive/folders/1-5zfxT6Gl-GjxM7z9ZO2AHlB70tfmF6V",
        ),
        PretrainedAutoencoder(
            "ffhq128_autoenc_130M", 128, "ffhq128", "FFHQ faces 128x128, 130M training images",
            "https://drive.google.com/drive/folders/10UNtFNfxbHBPkoIh003JkSPto5s-VbeN",
        ),
        PretrainedAutoencoder(
            "ffhq128_autoenc_72M", 128, "ffhq128", "FFHQ faces 128x128, 72M training images",
            "https://drive.google.com/drive/folders/10bmB6WhLkgxybkhso5g3JmIFPAnmZMQO",
        ),
        PretrainedAutoencoder(
            "bedroom128_autoenc", 128, "bedroom128", "LSUN bedrooms 128x128, 120M training images",
            "https://drive.google.com/drive/folders/12EdjbIKnvP5RngKsR0UU-4kgpPAaYtlp",
        ),
        PretrainedAutoencoder(
            "horse128_autoenc", 128, "horse128", "LSUN horses 128x128, 130M training images",
            "https://drive.google.com/drive/folders/12EtTRXzQc5uPHscpjIcci-Rg-OGa_N30",
        ),
    )
}

_verified = {}  # (path, size, mtime_ns) -> sha256 of files checked in this process


def get(name):
    """The registry entry ``name``."""
    if name not in REGISTRY:
        raise DiffAECheckpointError(f"unknown Diff-AE checkpoint {name!r}; released ones: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def checkpoint_file(name, root=None):
    """Where ``last.ckpt`` of ``name`` belongs: ``<pretrained folder>/diffae/<name>/last.ckpt``."""
    get(name)
    return pretrained_dir(root) / SUBDIR / name / FILENAME


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def expected_sha256(name, root=None):
    """The registry's SHA-256 of ``name``, else the one recorded beside the file, else None."""
    model = get(name)
    if model.sha256:
        return model.sha256.lower()
    sidecar = _sidecar(checkpoint_file(name, root))
    if sidecar.is_file():
        return sidecar.read_text().split()[0].strip().lower()
    return None


def manual_instructions(name, root=None):
    """One paragraph: where to download ``name`` by hand and where to put it."""
    model, dest = get(name), checkpoint_file(name, root)
    return (
        f"To install the Diff-AE checkpoint '{name}' ({model.description}), open diffae's Google Drive folder "
        f"{model.page} (linked from {README}, 'DiffAE (autoencoding only)'), download {FILENAME} and save it as "
        f"{dest}. Alternatively install gdown (pip install gdown) and pass download=True, or set ${ENV_URL} to a "
        f"mirror that serves <url>/{name}/{FILENAME}. The file's SHA-256 is recorded at its first use in "
        f"{_sidecar(dest).name} beside it and checked at every later use."
    )


def verify_installed(name, path=None, root=None):
    """Check an installed ``last.ckpt`` against its recorded SHA-256, recording it on first use.

    Returns:
        The file's SHA-256.

    Raises:
        DownloadError: the file differs from the recorded hash.
    """
    path = Path(path) if path is not None else checkpoint_file(name, root)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return _verified[key]
    known = expected_sha256(name, root)
    try:
        digest = verify_file(path, known)
    except DownloadError as e:
        raise DownloadError(
            f"{e}. The installed file is not the one recorded for '{name}': delete {path} (and "
            f"{_sidecar(path).name} if you replaced the file on purpose) and install it again. {manual_instructions(name, root)}"
        ) from None
    return _record(name, path, digest, known)


def _record(name, path, digest, known):
    """Store a first-seen hash beside the file and remember the file as checked."""
    if known is None:
        _sidecar(path).write_text(f"{digest}  {path.name}\n")
        print(
            f"{name}/{path.name}: SHA-256 {digest} (no published hash; recorded in {_sidecar(path).name}, later uses are checked against it)",
            file=sys.stderr,
        )
    stat = path.stat()
    _verified[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = digest
    return digest


def checkpoint_path(name, root=None, *, download=False, progress=True, base_url=None):
    """Path of the verified ``last.ckpt`` of ``name``, fetched first when missing and ``download`` is set.

    Raises:
        DiffAECheckpointError: missing and ``download`` is False (the message says how to get it).
        DownloadError: the download failed, or the file does not match its recorded hash.
    """
    path = checkpoint_file(name, root)
    if path.is_file():
        verify_installed(name, path, root)
        return path
    if not download:
        raise DiffAECheckpointError(f"Diff-AE checkpoint '{name}' is not installed ({path} is missing). {manual_instructions(name, root)}")
    return fetch(name, root, progress=progress, base_url=base_url)


def fetch(name, root=None, *, progress=True, base_url=None):
    """Download ``last.ckpt`` of ``name`` (unless installed), verify it and return its path.

    Raises:
        DownloadError: no way to download (the message says how to do it by
            hand), a failed transfer, or a hash mismatch (nothing installed).
    """
    model = get(name)
    dest = checkpoint_file(name, root)
    if dest.is_file():
        verify_installed(name, dest, root)
        return dest
    known = expected_sha256(name, root)
    mirror = base_url or os.environ.get(ENV_URL)
    if mirror:
        url = f"{mirror.rstrip('/')}/{name}/{FILENAME}"
        print(f"Downloading {name} from {url}", file=sys.stderr)
        try:
            digest = download_file(url, dest, known, progress=progress)
        except DownloadError as e:
            raise DownloadError(f"{e} (the Diff-AE mirror comes from base_url or ${ENV_URL}). {manual_instructions(name, root)}") from None
    else:
        try:
            import gdown
        except ImportError:
            raise DownloadError(f"cannot download '{name}': gdown is not installed and no mirror is set. {manual_instructions(name, root)}") from None
        digest = _fetch_with_gdown(gdown, model, dest, known, progress, root)
    _record(name, dest, digest, known)
    return dest


def _fetch_with_gdown(gdown, model, dest, known, progress, root):
    """``last.ckpt`` of the model's Drive folder into ``dest``, through ``dest.part``; returns its SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"Downloading {model.name} from {model.page} with gdown", file=sys.stderr)
    # gdown's errors vary by version (its own, requests', OSError); each becomes one message.
    try:
        try:
            listing = gdown.download_folder(url=model.page, skip_download=True, quiet=not progress, use_cookies=False)
        except TypeError:  # gdown < 5 cannot list a folder without downloading it
            listing = None
        if listing is not None:
            entry = next((f for f in listing if Path(f.path).name == FILENAME), None)
            if entry is None:
                raise DownloadError(f"the Drive folder {model.page} lists no {FILENAME} (it has {[f.path for f in listing]})")
            if not gdown.download(id=entry.id, output=str(part), quiet=not progress, resume=True):
                raise DownloadError(f"gdown could not download {FILENAME} of {model.page}")
        else:
            staging = dest.parent / ".gdown"
            gdown.download_folder(url=model.page, output=str(staging), quiet=not progress, use_cookies=False)
            found = sorted(staging.rglob(FILENAME))
            if not found:
                raise DownloadError(f"the Drive folder {model.page} held no {FILENAME}")
            os.replace(found[0], part)
            shutil.rmtree(staging, ignore_errors=True)
    except DownloadError as e:
        raise DownloadError(f"{e}. {manual_instructions(model.name, root)}") from None
    except Exception as e:
        kept = f"; {part.stat().st_size} bytes kept in {part} for the next attempt" if part.is_file() else ""
        raise DownloadError(
            f"gdown failed to download '{model.name}' ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no details'}){kept}. "
            f"{manual_instructions(model.name, root)}"
        ) from None
    try:
        digest = verify_file(part, known)
    except DownloadError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{e}. The download was deleted and nothing was installed.") from None
    os.replace(part, dest)
    return digest
