"""The encoders' input transform; image files are read by :mod:`ipl.images`."""

from PIL import Image

from ..images import UnreadableImageError, center_square, load_photo, to_tensor

__all__ = ["UnreadableImageError", "center_square", "encoder_input", "load_photo", "to_tensor"]


def encoder_input(image, size=256):
    """The e4e / ReStyle inference transform of an aligned face: ``(1, 3, 256, 256)`` in [-1, 1].

    ``Resize((256, 256))`` of a PIL image (PIL's bilinear filter, which
    widens with the scale factor), ``ToTensor`` and ``Normalize`` with mean
    = std = 0.5 (``(x - 0.5) / 0.5``, the same as ``2 x - 1``).
    """
    return to_tensor(image, size, Image.Resampling.BILINEAR)
