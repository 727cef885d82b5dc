"""Structural Consistency Score (RSSA, Xiao et al., 2022) from HED edge maps.

For a source image and the adapted image of the same latent, with edge maps
s and t: ``SCS = 2 sum(s t) / sum(s^2 + t^2)``, averaged over pairs (500 in
the reference evaluation).
"""

import torch

from .images import iter_image_pairs, module_device, prepare


def structural_consistency(source_edges, target_edges):
    """Per-pair ``2 sum(s t) / sum(s^2 + t^2)``, in float64.

    Args:
        source_edges, target_edges: (B, ...) edge maps of the same shape.

    Returns:
        (B,) float64 tensor in [0, 1] for non-negative maps; a pair of two
        empty (all-zero) maps counts as identical, 1.
    """
    if source_edges.shape != target_edges.shape:
        raise ValueError(
            f"edge maps differ in shape: {tuple(source_edges.shape)} vs {tuple(target_edges.shape)}"
        )
    s = source_edges.detach().flatten(1).to(torch.float64)
    t = target_edges.detach().flatten(1).to(torch.float64)
    numerator = 2 * (s * t).sum(dim=1)
    denominator = (s * s + t * t).sum(dim=1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.ones_like(numerator))


def quantize_edges(edges):
    """Edge maps as the reference evaluation stores them: 8-bit PNG, truncated.

    It writes ``uint8(clip(e, 0, 1) * 255)`` (truncation, not rounding) and
    reads the PNG back divided by 255.
    """
    return torch.floor(edges.clamp(0, 1) * 255) / 255


@torch.no_grad()
def scs_values(hed, source, target, *, quantize=True, image_size=None, device=None):
    """SCS of each pair of one batch: (B,) float64 on the CPU.

    Args:
        hed: ``HED`` network.
        source, target: (B, 3, H, W) paired images in [-1, 1].
        quantize, image_size: As in :func:`compute_scs`.
    """
    device = device or module_device(hed)
    s = hed(prepare(source, device, image_size))  # (B, 1, H, W)
    t = hed(prepare(target, device, image_size))
    if quantize:
        s, t = quantize_edges(s), quantize_edges(t)
    return structural_consistency(s, t).to("cpu", torch.float64)


@torch.no_grad()
def compute_scs(hed, source_images, target_images, *, quantize=True, image_size=None, batch_size=16, device=None):
    """Mean SCS between HED edge maps of paired source and adapted images.

    Args:
        hed: ``HED`` network (``load_hed`` / ``HED()``).
        source_images, target_images: tensors or iterables of (B, 3, H, W)
            batches in [-1, 1]; the i-th images of both come from the same w.
        quantize: store edges as 8-bit like the reference evaluation
            (``quantize_edges``); False keeps the float maps.
        image_size: optional square resize before HED (the reference runs
            HED at the images' own size).

    Returns:
        mean SCS over all pairs (float).
    """
    values = [
        scs_values(hed, source, target, quantize=quantize, image_size=image_size, device=device)
        for source, target in iter_image_pairs(source_images, target_images, batch_size)
    ]
    if not values:
        raise ValueError("no image pairs given")
    return torch.cat(values).mean().item()
