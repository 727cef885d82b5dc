"""Per-seed sampling, image conversion and grids.

Every image depends only on its seed (and the weights): each seed draws its
own Z code from its own generator, and noise comes from the generator's fixed
buffers, so an image is the same whatever batch it is rendered in.
"""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def parse_seeds(text):
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"cannot read seeds {text!r}: use e.g. 0-99 or 1,5,9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"seed range {part!r} is empty")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def z_from_seeds(seeds, dim):
    """One Z code per seed, ``(len(seeds), dim)``, each from its own CPU generator."""
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def render(generator, z, truncation=1.0, truncation_latent=None, chunk=8):
    """Images ``(N, 3, H, W)`` on the CPU from Z codes, with the fixed noise buffers."""
    device = next(generator.parameters()).device
    out = []
    for part in z.split(max(1, chunk)):
        w = generator.style(part.to(device))
        image, _ = generator(
            [w],
            input_is_latent=True,
            truncation=truncation,
            truncation_latent=truncation_latent,
            randomize_noise=False,
        )
        out.append(image.float().cpu())
    return torch.cat(out)


def to_uint8(images):
    """``(N, 3, H, W)`` in [-1, 1] -> ``(N, H, W, 3)`` uint8 (rounded as torchvision saves)."""
    x = ((images.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(rows, pad=2):
    """An image grid (H, W, 3) uint8 from rows of images, each ``(N, 3, H, W)``."""
    rows = [to_uint8(r) for r in rows]
    n, h, w, _ = rows[0].shape
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_png(array, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))
