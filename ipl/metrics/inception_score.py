"""Inception Score (Salimans et al., 2016): IS = exp(E_x KL(p(y|x) || p(y)))."""

import math

import torch
import torch.nn.functional as F

from .images import iter_image_batches, module_device, prepare


def inception_score(probs, splits=10):
    """IS of class probabilities, over ``splits`` contiguous splits.

    Each split of ``N // splits`` consecutive rows gets its own marginal p(y)
    and score; the remaining ``N % splits`` rows are dropped, as in the
    original implementation.

    Args:
        probs: (N, C) class probabilities p(y|x) (rows are renormalised in
            float64, as ``scipy.stats.entropy`` does).
        splits: number of splits.

    Returns:
        (mean, std) of the split scores; std is the population std (ddof 0).
    """
    p = torch.as_tensor(probs).to(torch.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {tuple(p.shape)}")
    if splits < 1 or p.shape[0] < splits:
        raise ValueError(f"need at least splits={splits} >= 1 rows of probabilities, got {p.shape[0]}")
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("probs must be finite and non-negative (softmax outputs)")
    p = p / p.sum(dim=1, keepdim=True)

    size = p.shape[0] // splits
    scores = []
    for k in range(splits):
        part = p[k * size : (k + 1) * size]  # (size, C)
        marginal = part.mean(dim=0, keepdim=True)  # p(y), (1, C)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1)
        scores.append(math.exp(kl.mean().item()))
    scores = torch.tensor(scores, dtype=torch.float64)
    return scores.mean().item(), scores.std(unbiased=False).item()


@torch.no_grad()
def inception_probabilities(model, images, *, image_size=299, batch_size=32, device=None):
    """Softmax class probabilities of Inception-v3, streamed over image batches.

    Args:
        model: torchvision Inception-v3 (``load_inception`` / ``build_inception``).
        images: a (N, 3, H, W) tensor or an iterable of (B, 3, H, W) tensors,
            in [-1, 1] (values are clamped to it).
        image_size: bilinear resize (align_corners=False, no antialias, as
            ``nn.Upsample`` does) to this square size; None feeds images as they are.
        batch_size: chunk size when ``images`` is one tensor.
        device: where to run; defaults to the model's device.

    Returns:
        (N, C) float64 CPU tensor; only these probabilities are kept, never the images.
    """
    device = device or module_device(model)
    probs = []
    for batch in iter_image_batches(images, batch_size):
        logits = model(prepare(batch, device, image_size))  # (B, C)
        probs.append(F.softmax(logits.float(), dim=1).to("cpu", torch.float64))
    if not probs:
        raise ValueError("images is empty")
    return torch.cat(probs)


def compute_inception_score(model, images, *, splits=10, image_size=299, batch_size=32, device=None):
    """IS of a stream of images: ``inception_score(inception_probabilities(...))``.

    The paper's protocol: 1000 samples, torchvision Inception-v3, resize to
    299 bilinear, 10 contiguous splits. Returns (mean, std).
    """
    probs = inception_probabilities(
        model, images, image_size=image_size, batch_size=batch_size, device=device
    )
    return inception_score(probs, splits=splits)
