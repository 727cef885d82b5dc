"""Small utilities shared by both packages: atomic saves, file hashes, progress bars."""

import hashlib
import os
import sys
import tempfile
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
