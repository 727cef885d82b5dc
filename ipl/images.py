"""Image files in and out of tensors: listing a folder, reading one image at a model's resolution.

Images are read as what they are: 16-bit and other high-depth images are
scaled to 8 bits (Pillow's ``convert("RGB")`` clips them, turning a 16-bit
grey photo white), images smaller than :data:`MIN_IMAGE_SIDE` are refused
with their size, and the reason a file cannot be read (truncated, larger
than Pillow's decompression-bomb guard, not an image) stays in the message.
"""

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The smallest side this project reads: nothing smaller holds a face or a
# style, and upsampling it to a model's resolution would only invent one.
MIN_IMAGE_SIDE = 32
# Pillow's modes of more than 8 bits per channel, and the largest value each holds:
# 16-bit PNG / TIFF greys ("I;16*", or "I" as older Pillow and TIFF give them).
_HIGH_DEPTH_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


class UnreadableImageError(ValueError):
    """A file that cannot be read as an image; the message names it and why."""


def list_images(folder, what="image folder"):
    """The image files of ``folder`` (by suffix), sorted by name.

    Raises:
        ConfigError: the folder does not exist or holds no images (``what``
            names the setting that gave it).
    """
    from .config import ConfigError

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{what}: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{what}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@contextlib.contextmanager
def _opened(path):
    """``PIL.Image.open(path)`` as a context, every failure (missing file, damaged data) an :class:`UnreadableImageError`."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: {'a folder, not an image file' if path.is_dir() else 'no such file'}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) < MIN_IMAGE_SIDE:
                raise UnreadableImageError(
                    f"{path}: the image is {width}x{height} pixels, smaller than the {MIN_IMAGE_SIDE} px "
                    "this project reads on each side; use a larger image"
                )
            yield image
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(
            f"{path}: too large for Pillow's decompression-bomb guard ({error}); resize it, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        # PIL reports some damage as SyntaxError (e.g. a broken PNG chunk).
        truncated = "truncated" in str(error).lower() or isinstance(error, EOFError)
        what = "the file is truncated" if truncated else "not a readable image"
        raise UnreadableImageError(f"{path}: {what} ({type(error).__name__}: {error})") from None


def check_image(path):
    """Raise :class:`UnreadableImageError` unless ``path`` is an image file PIL can open (header and
    checksums, no decoding) of at least :data:`MIN_IMAGE_SIDE` pixels a side."""
    with _opened(path) as image:
        image.verify()
    return Path(path)


def to_rgb(image):
    """A ``PIL.Image`` of any mode as 8-bit RGB, high-depth modes scaled (not clipped) to 0..255."""
    if image.mode in _HIGH_DEPTH_MAX or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = _HIGH_DEPTH_MAX.get(image.mode, 1.0 if array.max(initial=0.0) <= 1.0 else 65535)  # "F": [0, 1], else 16-bit
        array = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    return image.convert("RGB")


def expand_image_paths(paths):
    """Image files of ``paths``: a folder stands for its images (:func:`list_images`), a file for itself."""
    files = []
    for path in map(Path, paths):
        files.extend(list_images(path, str(path)) if path.is_dir() else [path])
    return files


def load_photo(path):
    """An image file as an RGB ``PIL.Image``, turned upright by its EXIF orientation.

    Landmarks and crops are both taken from this one image, so honouring the
    orientation tag changes nothing for photos without one and keeps phone
    photos (stored sideways plus a tag) upright.

    Raises:
        UnreadableImageError: missing file, or not an image PIL can decode.
    """
    with _opened(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def center_square(image):
    """The largest centred square of a ``PIL.Image``."""
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))


def to_tensor(image, size=None, resample=Image.Resampling.LANCZOS):
    """``PIL.Image`` -> ``(1, 3, H, W)`` float32 in [-1, 1], optionally resized to ``size`` x ``size`` first."""
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), resample)
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3) in [0, 255]
    # The operations of torchvision's ToTensor and Normalize(0.5, 0.5), in their order.
    return (torch.from_numpy(array).permute(2, 0, 1)[None] / 255 - 0.5) / 0.5


def image_tensor(path, size):
    """One image file as a model input: its centred square resized to ``size`` (bilinear), ``(1, 3, size, size)`` in [-1, 1].

    The centred square then a square resize is what diffae's datasets do
    (``Resize`` + ``CenterCrop``) for any aspect ratio; aligned face crops
    are square already.
    """
    return to_tensor(center_square(load_photo(path)), size, Image.Resampling.BILINEAR)
