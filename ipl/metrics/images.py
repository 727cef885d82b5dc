"""Image batches as the metrics take them: float (B, 3, H, W) in [-1, 1].

Every ``compute_*`` metric takes its images as either one tensor or an
iterable of tensors (e.g. a generator that renders batches on the fly), so
that no metric needs all images in memory at once.
"""

import itertools

import torch
import torch.nn.functional as F


def check_image_batch(batch, name="images"):
    """Raise a clear error unless ``batch`` is a float (B, 3, H, W) tensor."""
    if not torch.is_tensor(batch):
        raise TypeError(f"{name}: expected a torch.Tensor batch, got {type(batch).__name__}")
    if batch.ndim == 3 and batch.shape[0] == 3:
        raise ValueError(f"{name}: got one image of shape {tuple(batch.shape)}; add a batch axis (x[None])")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (B, 3, H, W), got {tuple(batch.shape)}")
    if not batch.is_floating_point():
        raise TypeError(
            f"{name}: expected float images in [-1, 1], got dtype {batch.dtype}; "
            "convert uint8 images with x.float() / 127.5 - 1"
        )
    if batch.numel() and batch.abs().max() > 10:
        raise ValueError(
            f"{name}: values reach {batch.abs().max().item():.1f}, but images must be in [-1, 1] "
            "(for 0..255 images use x / 127.5 - 1)"
        )


def iter_image_batches(images, batch_size=32, name="images"):
    """Yield checked (B, 3, H, W) batches from a tensor or an iterable of tensors.

    A single tensor is split into chunks of ``batch_size``; an iterable is
    passed through batch by batch, so it may be a lazy generator.
    """
    if torch.is_tensor(images):
        check_image_batch(images, name)
        yield from images.split(batch_size)
        return
    for batch in images:
        check_image_batch(batch, name)
        if len(batch):
            yield batch


def iter_image_pairs(source_images, target_images, batch_size=32):
    """Yield matching (source, target) batches; both streams must pair up exactly."""
    end = object()
    pairs = itertools.zip_longest(
        iter_image_batches(source_images, batch_size, "source_images"),
        iter_image_batches(target_images, batch_size, "target_images"),
        fillvalue=end,
    )
    for source, target in pairs:
        if source is end or target is end:
            raise ValueError("source_images and target_images yield a different number of batches")
        if source.shape[0] != target.shape[0]:
            raise ValueError(
                f"paired batches differ in size ({source.shape[0]} vs {target.shape[0]}): "
                "the i-th source and target images must come from the same latent"
            )
        yield source, target


def module_device(module, default="cpu"):
    """Device of a module's first parameter (``default`` for callables without any)."""
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
    return torch.device(default)


def prepare(batch, device, size=None, *, mode="bilinear", antialias=False):
    """Clamp to [-1, 1] (as saving to an image file would), move, optionally resize.

    Args:
        batch: (B, 3, H, W) float images.
        device: target device.
        size: None to keep the size, an int for a square (size, size) output.
        mode, antialias: ``F.interpolate`` settings for the resize.
    """
    x = batch.to(device=device, dtype=torch.float32).clamp(-1, 1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    return x
