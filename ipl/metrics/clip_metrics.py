"""CLIP-feature metrics: CLIP score to the target text and feature diversity.

Both are pure functions of CLIP features. The CLIP model (and its image
preprocessing) is built elsewhere in the package; the streaming versions take
an ``encode_image`` callable: (B, 3, H, W) in [-1, 1] -> (B, D) features.
"""

import torch
import torch.nn.functional as F

from .images import iter_image_batches


def _unit(features):
    return F.normalize(features.detach().to(torch.float64), dim=-1)


def _check_features(features, name):
    if not torch.is_tensor(features) or features.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) tensor, got {getattr(features, 'shape', type(features))}")


def clip_score(image_features, text_features, *, scale=1.0):
    """Mean cosine between image features and the target text feature.

    Args:
        image_features: (N, D).
        text_features: (D,) or (1, D) for one text shared by all images, or
            (N, D) for one text per image.
        scale: multiply the result (100 gives the common "CLIPScore" scale).
    """
    _check_features(image_features, "image_features")
    text = text_features[None] if text_features.ndim == 1 else text_features
    if text.shape[-1] != image_features.shape[-1] or text.shape[0] not in (1, image_features.shape[0]):
        raise ValueError(
            f"text_features {tuple(text_features.shape)} do not fit image_features {tuple(image_features.shape)}"
        )
    return scale * (_unit(image_features) * _unit(text)).sum(dim=1).mean().item()


def mean_pairwise_cosine_distance(features):
    """Mean of ``1 - cos(f_i, f_j)`` over all pairs i < j of (N, D) features."""
    _check_features(features, "features")
    n = features.shape[0]
    if n < 2:
        raise ValueError("need at least 2 feature vectors")
    f = _unit(features)
    i, j = torch.triu_indices(n, n, offset=1)
    return (1 - (f[i] * f[j]).sum(dim=1)).mean().item()


@torch.no_grad()
def unit_features(encode_image, batch):
    """Unit-norm CLIP features (B, D) float64 on the CPU of one batch."""
    return _unit(encode_image(batch)).cpu()


def diversity_from_sum(total, count):
    """``mean_pairwise_cosine_distance`` from the sum S of N unit features.

    ``sum_{i<j} cos(f_i, f_j) = (|S|^2 - N) / 2``, so the features themselves are not needed.
    """
    if count < 2:
        raise ValueError("need at least 2 images")
    mean_cosine = ((total @ total).item() - count) / (count * (count - 1))
    return 1 - mean_cosine


def compute_clip_score(encode_image, images, text_features, *, scale=1.0, batch_size=32):
    """``clip_score`` streamed over image batches (one text for all images)."""
    text = _unit(text_features.reshape(1, -1)).cpu()
    scores = [unit_features(encode_image, batch) @ text[0] for batch in iter_image_batches(images, batch_size)]
    if not scores:
        raise ValueError("images is empty")
    return scale * torch.cat(scores).mean().item()


@torch.no_grad()
def compute_clip_diversity(encode_image, images, *, batch_size=32):
    """``mean_pairwise_cosine_distance`` of CLIP features, streamed.

    With unit features f_i and their sum S, ``sum_{i<j} cos(f_i, f_j) =
    (|S|^2 - N) / 2``, so only S and N are accumulated, never the features.
    """
    total, count = None, 0
    for batch in iter_image_batches(images, batch_size):
        f = unit_features(encode_image, batch).sum(dim=0)
        total = f if total is None else total + f
        count += batch.shape[0]
    return diversity_from_sum(total, count)
