"""Identity similarity (ID) between source and adapted images of the same latent.

ID = mean over pairs of cos(E(x_s), E(x_t)) with E an identity embedding:
ArcFace IR-SE50 for faces; for dogs the paper uses TransFG, whose weights
were never released, so the extractor is any callable images -> features.
"""

import torch
import torch.nn.functional as F

from .images import iter_image_pairs, module_device, prepare


def identity_similarity(source_features, target_features):
    """Per-pair cosine similarity of (B, D) features (normalised here), float64 (B,)."""
    if source_features.shape != target_features.shape or source_features.ndim != 2:
        raise ValueError(
            "features must be two (B, D) tensors of equal shape, got "
            f"{tuple(source_features.shape)} and {tuple(target_features.shape)}"
        )
    s = F.normalize(source_features.detach().to(torch.float64), dim=1)
    t = F.normalize(target_features.detach().to(torch.float64), dim=1)
    return (s * t).sum(dim=1)


@torch.no_grad()
def id_values(extractor, source, target, *, device=None):
    """Identity similarity of each pair of one batch: (B,) float64 on the CPU."""
    device = device or module_device(extractor)
    return identity_similarity(extractor(prepare(source, device)), extractor(prepare(target, device))).cpu()


@torch.no_grad()
def compute_id(extractor, source_images, target_images, *, batch_size=16, device=None):
    """Mean identity similarity of paired source / adapted images.

    Args:
        extractor: callable (B, 3, H, W) in [-1, 1] -> (B, D) features, e.g.
            ``load_arcface(...)``; it does its own preprocessing.
        source_images, target_images: tensors or iterables of (B, 3, H, W)
            batches in [-1, 1]; the i-th images of both come from the same w.
        device: where batches go; defaults to the extractor's device when it
            is a module with parameters, else the CPU.

    Returns:
        mean cosine similarity (float).
    """
    values = [id_values(extractor, source, target, device=device) for source, target in iter_image_pairs(source_images, target_images, batch_size)]
    if not values:
        raise ValueError("no image pairs given")
    return torch.cat(values).mean().item()
