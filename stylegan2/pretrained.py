"""Registry of NVIDIA's pretrained StyleGAN2 generators: verified, resumable downloads.

Each model is NVIDIA's stylegan2-ada-pytorch pickle. :func:`fetch` downloads
it into the pretrained folder (resuming a partial ``.part`` file with an HTTP
Range request), checks its size and SHA-256, and converts it with
:mod:`stylegan2.nvidia` (no code from the pickle runs) into ``<name>.pt``,
which :func:`stylegan2.load_generator` reads.

Hashes: where the registry records none, the first complete download's
SHA-256 is printed and stored beside the file (``<name>.pkl.sha256``); every
later use checks the file against it.

Locations:
    * folder: the ``root`` argument, else ``$IPL_PRETRAINED_DIR``, else the
      repository's ``pretrained/``;
    * server: the ``base_url`` argument, else ``$IPL_PRETRAINED_URL``, else
      NVIDIA's server (a mirror must serve ``<base_url>/<name>.pkl``).
"""

import http.client
import os
import shlex
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError
from .utils import sha256_file

NVIDIA_BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
ENV_DIR = "IPL_PRETRAINED_DIR"
ENV_URL = "IPL_PRETRAINED_URL"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "pretrained"
DOWNLOAD_SCRIPT = "scripts/download_pretrained.py"


@dataclass(frozen=True)
class PretrainedModel:
    """One downloadable generator.

    Attributes:
        name: Registry name; the files are ``<name>.pkl`` and ``<name>.pt``.
        resolution: Output resolution of the generator.
        description: What it generates and how NVIDIA trained it.
        sha256: Expected SHA-256 of the pickle, or None if not yet recorded.
        size: Expected size of the pickle in bytes, or None.
    """

    name: str
    resolution: int
    description: str
    sha256: str = None
    size: int = None

    def url(self, base_url=None):
        base = base_url or os.environ.get(ENV_URL) or NVIDIA_BASE_URL
        return f"{base.rstrip('/')}/{self.name}.pkl"


REGISTRY = {
    model.name: model
    for model in (
        PretrainedModel("ffhq", 1024, "FFHQ faces, original StyleGAN2 config-f"),
        PretrainedModel("metfaces", 1024, "MetFaces art portraits, ADA (transfer from FFHQ)"),
        PretrainedModel("afhqdog", 512, "AFHQ dogs, ADA"),
        PretrainedModel("afhqcat", 512, "AFHQ cats, ADA"),
        PretrainedModel("afhqwild", 512, "AFHQ wild animals, ADA"),
    )
}


class DownloadError(CheckpointError):
    """A download that failed or did not verify; the message says what to do."""


def _model(name):
    if name not in REGISTRY:
        raise CheckpointError(f"unknown pretrained model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def pretrained_dir(root=None):
    """The pretrained folder: ``root``, else ``$IPL_PRETRAINED_DIR``, else the repository's ``pretrained/``."""
    return Path(root or os.environ.get(ENV_DIR) or DEFAULT_DIR)


def download_command(name, root=None):
    """The shell command that downloads and converts ``name``."""
    command = f"python {DOWNLOAD_SCRIPT} {name}"
    if root is not None and Path(root).resolve() != pretrained_dir().resolve():
        command += f" --dir {shlex.quote(str(root))}"
    return command


def checkpoint_path(name, root=None, download=False, base_url=None, progress=True):
    """Path of the converted ``<name>.pt``, fetching it first when ``download`` is set.

    Raises:
        CheckpointError: the file is missing and ``download`` is False; the
            message gives the command that fetches it.
    """
    _model(name)
    path = pretrained_dir(root) / f"{name}.pt"
    if path.is_file():
        return path
    if not download:
        raise CheckpointError(
            f"pretrained model '{name}' is not installed ({path} is missing). Get it with: "
            f"{download_command(name, root)}   (or call load_generator('{name}', download=True))"
        )
    return fetch(name, root=root, base_url=base_url, progress=progress)


# ----------------------------------------------------------------------------
# Hashes


def _sidecar(path):
    return path.with_name(path.name + ".sha256")


def expected_sha256(name, root=None):
    """The recorded SHA-256 of ``<name>.pkl``: the registry's, else the stored one, else None."""
    model = _model(name)
    if model.sha256:
        return model.sha256
    sidecar = _sidecar(pretrained_dir(root) / f"{name}.pkl")
    if sidecar.is_file():
        return sidecar.read_text().split()[0].strip().lower()
    return None


def verify_file(path, sha256=None, size=None):
    """Check ``path`` against an expected size and SHA-256; return its SHA-256.

    Raises:
        DownloadError: size or hash differ.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{path}: size {actual_size} bytes, expected {size}")
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise DownloadError(f"{path}: SHA-256 {digest} does not match the expected {sha256.lower()}")
    return digest


def check_provenance(name, path, meta, root=None):
    """Check that an installed ``<name>.pt`` was converted from the recorded pickle.

    Compares the SHA-256 of the source pickle stored in the file's ``meta``
    with the registry's or the stored ``<name>.pkl.sha256`` (no hashing).

    Raises:
        CheckpointError: the hashes differ.
    """
    known = expected_sha256(name, root)
    source = meta.get("source_sha256")
    if known and source and source != known:
        raise CheckpointError(
            f"{path} was converted from a pickle with SHA-256 {source}, but the recorded hash of {name}.pkl is "
            f"{known}. Download and convert it again: {download_command(name, root)} --force"
        )


# ----------------------------------------------------------------------------
# Download


def _content_range(header):
    """``(start, total)`` of a ``Content-Range: bytes start-end/total`` header (total may be None)."""
    try:
        unit, spec = header.split(" ", 1)
        span, total = spec.split("/", 1)
        start = int(span.split("-", 1)[0]) if span != "*" else None
        return start, (int(total) if total != "*" else None)
    except ValueError:
        raise DownloadError(f"malformed Content-Range header from the server: {header!r}") from None


def _open(url, offset, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": "ipl-stylegan2"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def download_file(url, dest, expected_sha256=None, expected_size=None, progress=True, timeout=60, chunk_size=1 << 20):
    """Download ``url`` to ``dest`` through ``dest.part``, resuming and verifying.

    An existing ``dest.part`` is continued with ``Range: bytes=<size>-``; a
    server that answers 200 instead of 206 restarts it. When the transfer
    ends short, the ``.part`` stays for the next call to resume. A complete
    file whose size or SHA-256 does not match is deleted and never becomes
    ``dest``.

    Args:
        url: Source URL.
        dest: Final path; it appears only once verified.
        expected_sha256: Required SHA-256, or None.
        expected_size: Required size in bytes, or None (the server's length is
            always enforced).
        progress: Show a tqdm progress bar (on stderr).
        timeout: Socket timeout in seconds.

    Returns:
        The SHA-256 of the downloaded file.

    Raises:
        DownloadError: network failure, short transfer (resumable), or a
            size / hash mismatch (the data is discarded).
    """
    from .utils import progress_bar

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not offset:
                raise
            # Range not satisfiable: the .part already holds the whole file, or is bogus.
            _, total = _content_range(e.headers.get("Content-Range", "bytes */0"))
            if total != offset:
                part.unlink()
                offset = 0
                response = _open(url, 0, timeout)
            else:
                response = None
        if response is None:
            total = offset
        else:
            with response:
                if response.status == 206:
                    start, total = _content_range(response.headers.get("Content-Range", ""))
                    if start != offset:
                        raise DownloadError(f"{url}: the server resumed at byte {start}, not {offset}")
                else:  # 200: the server sent the whole file
                    offset = 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                if total is None and expected_size is not None:
                    total = expected_size
                with open(part, "ab" if offset else "wb") as f, progress_bar(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=not progress, file=sys.stderr,
                ) as bar:
                    while True:
                        block = response.read(chunk_size)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise DownloadError(
            f"download of {url} failed: the server answered {e.code} {e.reason}. "
            f"Check the address (--base-url / ${ENV_URL}) or try again later."
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
        kept = part.stat().st_size if part.is_file() else 0
        raise DownloadError(
            f"download of {url} failed ({type(e).__name__}: {e}); {kept} bytes kept in {part}. "
            "Run the same command again to resume."
        ) from None

    received = part.stat().st_size
    if total is not None and received < total:
        raise DownloadError(
            f"download of {url} stopped at {received} of {total} bytes ({part} kept). "
            "Run the same command again to resume."
        )
    try:
        if total is not None and received != total:
            raise DownloadError(f"{url}: received {received} bytes, the server announced {total}")
        digest = verify_file(part, expected_sha256, expected_size)
    except DownloadError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{e}. The corrupt download was deleted and nothing was installed; run the command again.") from None
    os.replace(part, dest)
    return digest


def fetch(name, root=None, base_url=None, progress=True, force=False):
    """Download (if needed), verify and convert a registry model; return the ``.pt`` path.

    Steps: ``<name>.pkl`` is downloaded (or resumed) unless present; it is
    checked against the registry's SHA-256 or the stored
    ``<name>.pkl.sha256`` (a first download prints and stores its hash); it
    is converted safely into ``<name>.pt``. ``force`` re-converts an
    existing ``.pt``.

    Raises:
        DownloadError: the download failed or did not verify.
        stylegan2.nvidia.NvidiaPickleError: the pickle cannot be converted.
    """
    from .nvidia import convert_nvidia_pickle  # late: nvidia imports checkpoint, which imports this lazily

    model = _model(name)
    folder = pretrained_dir(root)
    out = folder / f"{name}.pt"
    if out.is_file() and not force:
        return out
    pkl = folder / f"{name}.pkl"
    known = expected_sha256(name, root)
    if pkl.is_file():
        try:
            digest = verify_file(pkl, known, model.size)
        except DownloadError as e:
            raise DownloadError(f"{e}. Delete {pkl} and run: {download_command(name, root)}") from None
    else:
        url = model.url(base_url)
        print(f"Downloading {name} ({model.resolution}x{model.resolution}) from {url}", file=sys.stderr)
        digest = download_file(url, pkl, known, model.size, progress=progress)
    if known is None:
        _sidecar(pkl).write_text(f"{digest}  {pkl.name}\n")
        print(
            f"{pkl.name}: SHA-256 {digest} (no recorded hash to check against; stored in {_sidecar(pkl).name}, "
            "later uses are checked against it)",
            file=sys.stderr,
        )
    print(f"Converting {pkl.name} -> {out.name} (safe unpickler, no code from the file runs)", file=sys.stderr)
    convert_nvidia_pickle(pkl, out, source_sha256=digest)
    return out
