"""NVIDIA's projection on tiny generators: its schedule, its regulariser, and recovery of a known code."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ipl.inversion.projection import (
    LPIPSDistance,
    learning_rate,
    noise_regularization,
    project,
    w_noise_scale,
    w_statistics,
)
from stylegan2 import Generator


def tiny_generator(size=16, style_dim=16, channel_max=16, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(size, style_dim=style_dim, n_mlp=2, channel_multiplier=1, channel_max=channel_max)
    return g.eval().requires_grad_(False)


def mse(images, targets):
    return (images - targets).square().flatten(1).mean(1)


@pytest.fixture(scope="module")
def known():
    """A tiny generator and an image it renders from a known W code."""
    g = tiny_generator()
    with torch.no_grad():
        w = g.style(torch.randn(1, 16, generator=torch.Generator().manual_seed(5)))  # (1, D)
        target, _ = g([w], input_is_latent=True, randomize_noise=False)
    return g, w, target


def test_learning_rate_warms_up_holds_and_ramps_down_as_nvidia():
    assert learning_rate(0.0) == 0.0
    assert learning_rate(0.025) == pytest.approx(0.05)  # half-way through the 5% warm-up
    assert learning_rate(0.05) == learning_rate(0.5) == pytest.approx(0.1)
    assert learning_rate(0.875) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))  # half-way down
    assert learning_rate(1.0) == pytest.approx(0.0)


def test_code_noise_fades_quadratically_over_three_quarters_of_the_run():
    assert w_noise_scale(0.0, w_std=2.0) == pytest.approx(2.0 * 0.05)
    assert w_noise_scale(0.375, w_std=2.0) == pytest.approx(2.0 * 0.05 * 0.25)
    assert w_noise_scale(0.75, w_std=2.0) == w_noise_scale(0.9, w_std=2.0) == 0.0


def test_noise_regularization_sums_squared_autocorrelations_over_the_pyramid():
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1  # +-1 checkerboard
    # Level 16: each shifted product is -1 everywhere: (-1)^2 twice; the 8x8 pooled level is all zeros.
    assert noise_regularization([checker[None, None]]).item() == pytest.approx(2.0)
    ones = torch.ones(1, 1, 16, 16)
    assert noise_regularization([ones]).item() == pytest.approx(4.0)  # 16 and 8 px levels, 2 each
    assert noise_regularization([checker[None, None], ones]).item() == pytest.approx(6.0)


def test_w_statistics_use_nvidia_draws(known):
    g, _, _ = known
    w_avg, w_std = w_statistics(g, samples=500)
    z = torch.from_numpy(np.random.RandomState(123).randn(500, 16)).float()
    with torch.no_grad():
        w = g.style(z)
    torch.testing.assert_close(w_avg, w.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)
    assert w_std == pytest.approx(((w - w.mean(0)).square().sum(1).mean()).sqrt().item(), rel=1e-5)


def test_an_image_of_a_known_code_is_recovered(known):
    g, w, target = known
    before = {k: v.clone() for k, v in g.state_dict().items()}
    result = project(g, target, distance=mse, num_steps=200, w_avg_samples=1000, progress=False)
    start, end = result.distance[0, 0].item(), result.distance[0, -1].item()
    assert start > 0.1  # w_avg renders another image
    assert end < 1e-4 and end < 1e-3 * start
    assert result.wplus.shape == (1, g.n_latent, 16)
    assert torch.equal(result.wplus[0], result.wplus[0, :1].expand(g.n_latent, -1))  # W space: one code in every slot
    assert (result.wplus[0, 0] - w[0]).abs().max() < 0.05
    # The returned code renders the target with the generator's own fixed noise.
    with torch.no_grad():
        image, _ = g([result.wplus], input_is_latent=True, randomize_noise=False)
    assert mse(image, target).item() < 1e-4
    # The generator is untouched: same weights and buffers, no gradients.
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    assert all(p.grad is None for p in g.parameters())
    # The noise maps are re-normalised after every step.
    for noise in result.noise[0]:
        assert abs(noise.mean().item()) < 1e-5 and noise.square().mean().item() == pytest.approx(1.0, abs=1e-4)


def test_wplus_projection_from_a_given_start_improves_it(known):
    g, w, target = known
    start = (w + 0.5).expand(g.n_latent, -1)  # a W+ code (n_latent, D), as an encoder gives
    result = project(g, target, distance=mse, space="w+", init=start, num_steps=60, w_avg_samples=500, progress=False)
    with torch.no_grad():
        first, _ = g([start[None]], input_is_latent=True, randomize_noise=False)
    assert result.distance[0, -1] < 0.1 * mse(first, target).item()
    assert (result.wplus[0, 1:] - result.wplus[0, :1]).abs().max() > 0  # slots move apart in W+
    with pytest.raises(ValueError, match="W code"):
        project(g, target, distance=mse, space="w", init=start[None], num_steps=1, w_avg_samples=10, progress=False)


def test_projection_depends_only_on_its_seed(known):
    g, _, target = known
    run = lambda seed, t: project(g, t, distance=mse, num_steps=15, w_avg_samples=200, seed=seed, progress=False)
    a, b, c = run(3, target), run(3, target), run(4, target)
    assert torch.equal(a.wplus, b.wplus) and torch.equal(a.distance, b.distance)
    assert not torch.equal(a.wplus, c.wplus)
    # A batch is projected image by image: its first result is the single-image one.
    both = run(3, torch.cat([target, -target]))
    torch.testing.assert_close(both.wplus[:1], a.wplus, rtol=1e-5, atol=1e-6)


def test_large_renderings_are_area_downsampled_to_256_before_the_distance():
    g = tiny_generator(size=512, style_dim=8, channel_max=4)
    target = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = []

    def recording(images, targets):
        seen.append((images.shape, targets.clone()))
        return mse(images, targets)

    project(g, target, distance=recording, num_steps=1, w_avg_samples=50, progress=False)
    shape, passed_target = seen[0]
    assert shape == (1, 3, 256, 256)
    torch.testing.assert_close(passed_target, F.interpolate(target, size=(256, 256), mode="area"))


def test_lpips_distance_equals_the_lpips_model_and_binds_a_target():
    from ipl.metrics.diversity import build_lpips

    torch.manual_seed(0)
    model = build_lpips("vgg")  # random VGG backbone, the package's linear heads
    distance = LPIPSDistance(model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        expected = model(x, y).reshape(2)
        torch.testing.assert_close(distance(x, y), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(distance.bind(y[:1])(x[:1]), expected[:1], rtol=1e-5, atol=1e-7)
    assert expected.min() > 0

    g = tiny_generator()
    result = project(g, torch.zeros(1, 3, 16, 16), distance=distance, num_steps=2, w_avg_samples=50, progress=False)
    assert torch.isfinite(result.wplus).all() and torch.isfinite(result.loss).all()
