"""Single Image FID (SinGAN, Shaham et al., 2019) against reference images.

For one image, the H'W' locations of the Inception stem's 64-channel map are
64-d samples; a Gaussian fitted to them describes the image's internal patch
statistics. SIFID is the Frechet distance between the Gaussians of a
generated image and of a reference image. The paper reports, for each of 3
reference images of the target domain, the SIFID averaged over the generated
images.
"""

import numpy as np
import torch

from .frechet import frechet_distance, gaussian_statistics
from .images import check_image_batch, iter_image_batches, module_device, prepare


@torch.no_grad()
def sifid_statistics(stem, images, *, image_size=None, device=None):
    """Per-image Gaussian statistics of the stem's features.

    Args:
        stem: ``InceptionStem``.
        images: (B, 3, H, W) in [-1, 1], fed as they are (SinGAN's SIFID
            code does not resize); ``image_size`` resizes bilinearly first.

    Returns:
        list of B (mu (64,), sigma (64, 64)) float64 pairs.
    """
    check_image_batch(images)
    device = device or module_device(stem)
    features = stem(prepare(images, device, image_size))  # (B, 64, H', W')
    samples = features.flatten(2).transpose(1, 2)  # (B, H'W', 64)
    return [gaussian_statistics(x) for x in samples]


def reference_statistics(stem, references, *, image_size=None, device=None):
    """The (mu, sigma) of each reference image: (R, 3, H, W) or a list of (3, H, W) / (1, 3, H, W)."""
    if torch.is_tensor(references):
        references = list(references.unbind(0)) if references.ndim == 4 else [references]
    if not references:
        raise ValueError("references is empty")
    return [sifid_statistics(stem, r if r.ndim == 4 else r[None], image_size=image_size, device=device)[0] for r in references]


def sifid_values(stem, batch, reference_stats, *, image_size=None, device=None):
    """SIFID of each image of one batch to each reference: (B, R) float64 numpy array."""
    return np.array(
        [[frechet_distance(mu, sigma, mu_r, sigma_r) for mu_r, sigma_r in reference_stats]
         for mu, sigma in sifid_statistics(stem, batch, image_size=image_size, device=device)]  # fmt: skip
    ).reshape(-1, len(reference_stats))


def compute_sifid(stem, images, references, *, image_size=None, batch_size=8, device=None):
    """SIFID of every generated image to each reference, averaged over images.

    Args:
        stem: ``InceptionStem`` (``load_sifid_stem`` / ``InceptionStem()``).
        images: generated images, a tensor or an iterable of (B, 3, H, W)
            batches in [-1, 1].
        references: (R, 3, H, W) reference images in [-1, 1], or a list of
            (3, H, W) / (1, 3, H, W) tensors when their sizes differ.
        image_size: optional square resize applied to both.

    Returns:
        (R,) float64 numpy array: mean SIFID to reference r over all images.
    """
    reference_stats = reference_statistics(stem, references, image_size=image_size, device=device)
    values = [sifid_values(stem, batch, reference_stats, image_size=image_size, device=device) for batch in iter_image_batches(images, batch_size)]
    if not values:
        raise ValueError("images is empty")
    return np.concatenate(values).mean(axis=0)
