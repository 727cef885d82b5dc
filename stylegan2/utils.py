"""Small utilities shared by both packages: atomic saves, file hashes, progress bars, load errors."""

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import torch


def atomic_save(obj, path):
    """``torch.save`` to ``path`` without ever leaving a partial file there.

    The data goes to a temporary file in the same directory, is flushed to
    disk, and is renamed over ``path`` (an atomic operation on POSIX and
    Windows), so an interrupted save keeps the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path, chunk_size=1 << 20):
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


# Seconds between refreshes of a progress bar whose output is not a terminal
# (a log file or a batch system's output): readable logs instead of one
# carriage-return update per step.
LOG_REFRESH_SECONDS = 10.0


def progress_bar(iterable=None, **kwargs):
    """``tqdm`` on stderr that refreshes at most every :data:`LOG_REFRESH_SECONDS` when stderr is not a terminal."""
    from tqdm import tqdm

    stream = kwargs.setdefault("file", sys.stderr)
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.setdefault("mininterval", LOG_REFRESH_SECONDS)
        kwargs.setdefault("maxinterval", max(LOG_REFRESH_SECONDS, 10.0))
    return tqdm(iterable, **kwargs)


# ----------------------------------------------------------------------------
# Describing files that torch.load cannot read

# torch's tensors-only loader names a refused global in one of two ways:
# "Unsupported global: GLOBAL pkg.Name" (not on its allow-list) and
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
# Sentences of torch's loader errors that advise on calling torch.load rather
# than describe the file; one of them suggests weights_only=False, which would
# run code from the file, so none is ever passed on.
_TORCH_ADVICE = (
    "weights_only",
    "weights only",
    "file an issue",
    "documentation",
    "if you are seeing this error",
    "this can happen if",
    "internal miniz error",
    "http://",
    "https://",
    "trusted source",
    "arbitrary code",
)
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch's legacy-format magic number, pickled


def refused_global(error):
    """The global (``"posix.system"``) that torch's tensors-only loader refused in ``error``, or None."""
    match = _REFUSED_GLOBAL.search(str(error))
    return match.group(1) if match else None


def safe_globals(classes):
    """A context in which ``torch.load(weights_only=True)`` also accepts ``classes``.

    torch 2.5 and newer scope the allowance to the block
    (``torch.serialization.safe_globals``); torch 2.4 has only the
    process-wide ``add_safe_globals``, used there instead.
    """
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped(classes)
    torch.serialization.add_safe_globals(classes)
    return contextlib.nullcontext()


def without_torch_advice(text):
    """``text`` without the sentences of torch's loader errors that advise on calling ``torch.load``."""
    sentences = [s.strip(" .:") for s in re.split(r"(?<=\.)\s+|\n+", str(text)) if s.strip(" .:")]
    return "; ".join(s for s in sentences if not any(advice in s.lower() for advice in _TORCH_ADVICE))


def load_error_summary(error, limit=160):
    """A short description of a ``torch.load`` error, without torch's advice on calling ``torch.load``."""
    text = without_torch_advice(error)[:limit].strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def torch_file_problem(path, error=None):
    """Why ``path`` is not a readable torch file, in a few words: from its first bytes, then ``error``."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (an interrupted download or copy?)"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    detail = f": {load_error_summary(error)}" if error is not None else ""
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return "truncated: its zip archive ends early (an interrupted download or copy?)"
        return f"a zip archive that is damaged or was not written by torch.save{detail}"
    if head.startswith(_LEGACY_MAGIC):
        return f"a damaged file in torch's legacy format (truncated or corrupt){detail}"
    if head[:1] == b"\x80":
        return f"a damaged pickle, or one that holds more than tensors{detail}"
    return "corrupt, or not a PyTorch file at all (neither torch's zip format nor a pickle)"


# ----------------------------------------------------------------------------
# Checkpoint contents


def unwrap_module(module):
    """The bare module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def check_extra(extra, reserved, writer, hint=""):
    """Raise unless the extra top-level entries of a checkpoint avoid its ``reserved`` keys
    (``ValueError``) and are plain data (``TypeError``, see :func:`check_plain`)."""
    clash = sorted(set(extra) & set(reserved))
    if clash:
        raise ValueError(f"{writer}: extra keys {clash} are reserved{hint}")
    for key, value in extra.items():
        check_plain(value, key, writer)


def check_plain(value, where, writer):
    """Raise ``TypeError`` unless ``value`` loads under ``weights_only=True`` (``writer`` names the caller)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]", writer)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{writer}: {where} has a key of type {type(key).__name__}; use str or int keys")
            check_plain(item, f"{where}[{key!r}]", writer)
        return
    raise TypeError(
        f"{writer}: {where} is a {type(value).__name__}, which is not plain data; "
        "store dicts, lists, numbers, strings and tensors only (e.g. dataclasses.asdict(config))"
    )
