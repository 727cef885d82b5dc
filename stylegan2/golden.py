"""The deterministic "golden" generator of the reference fixtures.

``tests/fixtures/stylegan2/golden_64_cm1.pt`` holds the outputs of the
reference PyTorch port for a ``Generator(64, 512, 8, channel_multiplier=1)``
whose parameters follow a fill rule (the fixture's README gives it). The rule
and the calls live here, beside the generator, so that the tests and
``benchmarks/gpu_check.py`` build exactly the same network and inputs.
"""

import math
import zlib

import torch

from .model import Generator

# Output name -> keyword arguments of the call that produced it (the fixture's
# README), from the fixture's input tensors ``d``.
GOLDEN_CALLS = {
    "out_z": lambda d: dict(styles=[d["z"]]),
    "out_w": lambda d: dict(styles=[d["w"]], input_is_latent=True),
    "out_mix_inject3": lambda d: dict(styles=[d["z"], d["z2"]], inject_index=3),
    "out_trunc07": lambda d: dict(styles=[d["z"]], truncation=0.7, truncation_latent=d["truncation_mean_w"]),
    "out_wplus": lambda d: dict(styles=[d["wplus"]], input_is_latent=True),
}
# Outputs whose call also returned the W+ latent, and the latent's name.
GOLDEN_LATENTS = {"out_z": "latent_z", "out_mix_inject3": "latent_mix_inject3"}
# The fixture's outputs have a mean absolute value of about 7-9 (its README).
GOLDEN_RTOL, GOLDEN_ATOL = 1e-4, 1e-3


def golden_fill(name, shape):
    """The deterministic fill of parameter (or input) ``name`` with ``shape`` (float32)."""
    c = zlib.crc32(name.encode()) % 1000
    x = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 12.9898 + c) * 43758.5453
    t = (x - torch.floor(x)) * 2 - 1
    value = (t * math.sqrt(3)).float().reshape(shape)
    if name.startswith("style.") and name.endswith(".weight"):
        value = value * 100  # mapping layers store weight / lr_mul, lr_mul = 0.01
    return value


def golden_generator(size=64, channel_multiplier=1):
    """``Generator(size, 512, 8, channel_multiplier)`` in eval mode, every parameter filled.

    Buffers (the fixed noise maps) keep their random initial values; the
    fixture passes its noise explicitly.
    """
    g = Generator(size, 512, 8, channel_multiplier=channel_multiplier).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            p.copy_(golden_fill(name, p.shape))
    return g


@torch.no_grad()
def golden_inputs(g, batch=2):
    """Inputs of the golden calls made by the fill rule, for use without the fixture file.

    ``z``, ``z2``, ``w``, ``wplus`` and ``truncation_mean_w`` are made as the
    fixture's README describes (the fixture's own tensors are these); the
    noise maps, which the README does not derive, are filled under the names
    ``"noise.<i>"``.

    Returns:
        Dict with the keys of :data:`GOLDEN_CALLS`' inputs and ``noise``
        (a list of ``g.num_layers`` maps ``(batch, 1, r, r)``).
    """
    d = {name: golden_fill(name, (batch, g.style_dim)) for name in ("z", "z2", "w")}
    d["wplus"] = golden_fill("wplus", (batch, g.n_latent, g.style_dim))
    device = g.input.input.device
    d["truncation_mean_w"] = g.style(golden_fill("zmean", (64, g.style_dim)).to(device)).mean(0, keepdim=True).cpu()
    sizes = [2 ** ((i + 5) // 2) for i in range(g.num_layers)]  # the layers' resolutions
    d["noise"] = [golden_fill(f"noise.{i}", (batch, 1, r, r)) for i, r in enumerate(sizes)]
    return d
