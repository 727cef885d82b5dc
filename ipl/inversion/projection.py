"""Projection of an image into a StyleGAN2's W or W+ by optimisation (NVIDIA's ``projector.py``).

The algorithm of stylegan2-ada-pytorch's ``project``, with its numbers:

* start at ``w_avg``, the mean of 10,000 mapped codes (``z`` drawn by
  ``np.random.RandomState(123)``); ``w_std`` is the root mean squared
  distance of those codes to it (one scalar over all dimensions);
* every noise map is redrawn from N(0, 1) and optimised with the code;
* step ``i`` of ``N`` (``t = i / N``): learning rate ``0.1 * ramp``, where
  the ramp rises linearly over the first 5% (``lr_rampup_length``) and
  falls as half a cosine over the last 25% (``lr_rampdown_length``); the
  rendered code is ``w + n``, ``n ~ N(0, s^2)`` with ``s = w_std * 0.05 *
  max(0, 1 - t / 0.75)^2`` (``initial_noise_factor``, ``noise_ramp_length``);
* loss: the LPIPS (VGG16) distance between the rendering and the target,
  both area-downsampled to 256x256 when larger, plus ``1e5`` times the noise
  regularisation: for every noise map and each level of its pyramid (halved
  by 2x2 average pooling down to 8x8), the squared mean product of the map
  with itself shifted by one pixel, vertically and horizontally;
* Adam with betas (0.9, 0.999) over the code and the noise maps; after
  each step every noise map is re-normalised to zero mean and unit variance;
* 1000 steps. The result is the code after the last step.

NVIDIA's distance network (``vgg16.pt``) is LPIPS-VGG in TorchScript,
which is not loaded here; the ``lpips`` package's VGG LPIPS
(:func:`ipl.metrics.load_lpips`) computes the same kind of distance on
images in [-1, 1]. Any other distance can be passed instead.

Differences that change no result's meaning: W (one code for every slot, as
NVIDIA) or W+ (one code per slot, :func:`project` ``space="w+"``); an optional
start from another code (e.g. an encoder's); random draws from a seeded
``torch.Generator`` (NVIDIA uses the global RNG), so a projection depends
only on its seed; the generator is never modified (the noise maps are
passed to it, not written into its buffers).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

W_STATS_SEED = 123  # NVIDIA's RandomState(123) for the w_avg / w_std samples
DISTANCE_SIZE = 256  # larger images are area-downsampled to this before the distance


@dataclass
class Projection:
    """The result of :func:`project` for a batch of targets.

    Attributes:
        wplus: ``(B, n_latent, style_dim)`` the projected codes (in W space
            every slot holds the same code).
        noise: Per target, the optimised noise maps (``(1, 1, r, r)`` each,
            in the generator's layer order). Renderings with the generator's
            own fixed buffers (``randomize_noise=False``) do not use them.
        distance: ``(B, num_steps)`` the distance at each step.
        loss: ``(B, num_steps)`` distance plus weighted noise regularisation.
        space: ``"w"`` or ``"w+"``.
    """

    wplus: torch.Tensor
    noise: list
    distance: torch.Tensor
    loss: torch.Tensor
    space: str


def learning_rate(t, initial_learning_rate=0.1, lr_rampdown_length=0.25, lr_rampup_length=0.05):
    """NVIDIA's schedule at ``t = step / num_steps``: linear warm-up, cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / lr_rampup_length)
    return initial_learning_rate * ramp


def w_noise_scale(t, w_std, initial_noise_factor=0.05, noise_ramp_length=0.75):
    """Standard deviation of the noise added to the code at ``t = step / num_steps``."""
    return w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2


def noise_regularization(noise_maps):
    """Sum of squared one-pixel autocorrelations of every noise map over its pyramid.

    Args:
        noise_maps: Tensors ``(1, 1, r, r)``.

    Returns:
        A scalar tensor; zero for maps without spatial correlation.
    """
    total = 0.0
    for noise in noise_maps:
        while True:
            total = total + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            total = total + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return total


@torch.no_grad()
def w_statistics(generator, samples=10_000, seed=W_STATS_SEED, chunk=2_000):
    """``(w_avg (1, style_dim), w_std)`` of ``samples`` mapped codes, as NVIDIA's projector draws them."""
    device = generator.input.input.device
    z = np.random.RandomState(seed).randn(samples, generator.style_dim)
    w = torch.cat([generator.style(torch.from_numpy(part).float().to(device)) for part in np.array_split(z, max(1, samples // chunk))])
    w_avg = w.mean(0, keepdim=True)  # (1, D)
    w_std = ((w - w_avg).square().sum() / samples).sqrt().item()
    return w_avg, w_std


def _downsample(images, size=DISTANCE_SIZE):
    """Area-downsample to ``size`` when larger (the distance network's working size)."""
    return F.interpolate(images, size=(size, size), mode="area") if images.shape[-1] > size else images


class LPIPSDistance(nn.Module):
    """LPIPS between images in [-1, 1] (the ``lpips`` package's model, any backbone).

    ``distance(x, y) -> (B,)`` equals ``lpips_model(x, y)`` (version 0.1, not
    spatial); :meth:`bind` computes the target's features once, for an
    optimisation that compares many images with one target.
    """

    def __init__(self, lpips_model):
        super().__init__()
        self.model = lpips_model.eval().requires_grad_(False)

    def _features(self, images):
        import lpips

        outs = self.model.net.forward(self.model.scaling_layer(images))
        return [lpips.normalize_tensor(out) for out in outs]

    def _compare(self, features, target_features):
        total = 0.0
        for lin, f, g in zip(self.model.lins, features, target_features):
            total = total + lin((f - g) ** 2).mean(dim=(2, 3))  # (B, 1)
        return total[:, 0]

    def forward(self, x, y):
        return self._compare(self._features(x), self._features(y))

    def bind(self, target):
        """``f(images) -> (B,)``: the distance of each image to ``target`` ``(1 or B, 3, H, W)``."""
        with torch.no_grad():
            target_features = self._features(target)
        return lambda images: self._compare(self._features(images), target_features)


def default_distance(device, download=True):
    """LPIPS-VGG16 with torchvision's ImageNet VGG16 and the ``lpips`` package's linear heads."""
    from ipl.metrics.diversity import load_lpips

    return LPIPSDistance(load_lpips("vgg", device=device, download=download))


def mean_squared_error(x, y):
    """Mean squared pixel difference ``(B,)`` of images in [-1, 1]: a distance that needs no weight file
    (offline demos and tests; NVIDIA's projector, the default, uses LPIPS)."""
    return (x - y).square().flatten(1).mean(1)


def _bind(distance, target):
    if hasattr(distance, "bind"):
        return distance.bind(target)
    return lambda images: distance(images, target.expand_as(images)).reshape(images.shape[0], -1).sum(1)


def _initial_codes(init, w_avg, batch, n_latent, space):
    """``(B, 1 or n_latent, D)`` starting codes.

    ``init``: None (``w_avg``); ``(D,)`` one W code; 2-D: W codes ``(B, D)``
    in W space, one W+ code ``(n_latent, D)`` in W+; 3-D ``(1 or B, 1 or
    n_latent, D)``. A W code starts every slot of a W+ projection.
    """
    if init is None:
        start = w_avg[:, None]  # (1, 1, D)
    else:
        start = init.detach().float()
        if start.ndim == 1:
            start = start[None, None]
        elif start.ndim == 2:
            start = start[:, None] if space == "w" else start[None]
        if start.ndim != 3 or start.shape[1] not in (1, n_latent) or start.shape[0] not in (1, batch):
            raise ValueError(
                f"init for {batch} target(s) must be W (D,) / (B, D) or W+ (n_latent, D) / (B, n_latent, D) "
                f"with n_latent={n_latent}, got {tuple(init.shape)}"
            )
        if space == "w" and start.shape[1] != 1:
            raise ValueError("a projection in W starts from a W code; pass space='w+' to start from a W+ code")
    slots = 1 if space == "w" else n_latent
    return start.expand(batch, slots, -1).clone()


def project(
    generator,
    target,
    *,
    distance=None,
    space="w",
    init=None,
    num_steps=1000,  # optimisation steps
    w_avg_samples=10_000,  # mapped codes behind w_avg and w_std
    initial_learning_rate=0.1,  # peak learning rate
    initial_noise_factor=0.05,  # code noise at the start, in units of w_std
    lr_rampdown_length=0.25,  # fraction of the steps of the cosine ramp-down
    lr_rampup_length=0.05,  # fraction of the steps of the linear warm-up
    noise_ramp_length=0.75,  # fraction of the steps over which the code noise fades out
    regularize_noise_weight=1e5,  # weight of the noise-map autocorrelation penalty
    seed=0,
    progress=True,
):
    """Codes whose renderings match target images (NVIDIA's projector, see the module docstring).

    Args:
        generator: A :class:`stylegan2.Generator` (frozen; never modified).
        target: ``(B, 3, S, S)`` or ``(3, S, S)`` images in [-1, 1] at the
            generator's resolution ``S``. Each image is projected on its own
            with the same seed, so a result does not depend on the batch.
        distance: ``f(images, targets) -> (B,)`` on images in [-1, 1] (at
            most 256 px; larger images are area-downsampled first), or an
            object with ``bind(target) -> f(images)``. Default: LPIPS-VGG16
            (:func:`default_distance`).
        space: ``"w"`` (one code broadcast to every slot) or ``"w+"``.
        init: Starting code instead of ``w_avg``: W ``(D,)`` / ``(B, D)``, or
            (with ``space="w+"``) W+ ``(n_latent, D)`` / ``(B, n_latent, D)``,
            e.g. an encoder's.
        seed: Seeds the initial noise maps and the code noise.
        progress: Show a tqdm progress bar per image.

    Returns:
        :class:`Projection` (codes on the generator's device).
    """
    from tqdm import tqdm

    if space not in ("w", "w+"):
        raise ValueError(f"space must be 'w' or 'w+', got {space!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    device = generator.input.input.device
    target = (target[None] if target.ndim == 3 else target).to(device, torch.float32)
    size = generator.size
    if tuple(target.shape[1:]) != (3, size, size):
        raise ValueError(f"targets must be (B, 3, {size}, {size}) images for this generator, got {tuple(target.shape)}")
    if distance is None:
        distance = default_distance(device)

    w_avg, w_std = w_statistics(generator, w_avg_samples)
    starts = _initial_codes(None if init is None else init.to(device), w_avg, target.shape[0], generator.n_latent, space)
    buffers = [getattr(generator.noises, f"noise_{i}") for i in range(generator.num_layers)]

    codes, noises, distances, losses = [], [], [], []
    for b in range(target.shape[0]):
        rng = torch.Generator().manual_seed(seed)
        # Draws on the CPU: the same projection on any device.
        noise = [torch.randn(buf.shape, generator=rng).to(device).requires_grad_(True) for buf in buffers]
        w_opt = starts[b : b + 1].clone().requires_grad_(True)  # (1, 1 or n_latent, D)
        optimizer = torch.optim.Adam([w_opt] + noise, betas=(0.9, 0.999), lr=initial_learning_rate)
        to_target = _bind(distance, _downsample(target[b : b + 1]))
        history = torch.zeros(2, num_steps)

        for step in tqdm(range(num_steps), desc=f"projection {b + 1}/{target.shape[0]}", disable=not progress, leave=False):
            t = step / num_steps
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(t, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
            scale = w_noise_scale(t, w_std, initial_noise_factor, noise_ramp_length)
            w_noise = torch.randn(w_opt.shape, generator=rng).to(device) * scale
            ws = (w_opt + w_noise).expand(1, generator.n_latent, -1)  # (1, n_latent, D)
            images, _ = generator([ws], input_is_latent=True, noise=noise)
            dist = to_target(_downsample(images)).sum()
            loss = dist + noise_regularization(noise) * regularize_noise_weight

            # Gradients for the code and the noise only: nothing accumulates in the generator.
            grads = torch.autograd.grad(loss, [w_opt] + noise)
            for tensor, grad in zip([w_opt] + noise, grads):
                tensor.grad = grad
            optimizer.step()
            history[0, step], history[1, step] = dist.item(), loss.item()

            with torch.no_grad():
                for n in noise:
                    n -= n.mean()
                    n *= n.square().mean().rsqrt()

        codes.append(w_opt.detach().expand(1, generator.n_latent, -1).clone())
        noises.append([n.detach() for n in noise])
        distances.append(history[0])
        losses.append(history[1])
    return Projection(torch.cat(codes), noises, torch.stack(distances), torch.stack(losses), space)
