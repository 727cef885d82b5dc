"""Tiny models and configs shared by the stage tests."""

import math
import runpy
import sys
from pathlib import Path

import torch

from ipl import config as config_lib
from ipl.backends.stylegan2 import StyleGAN2Backend, mean_latent
from ipl.build import build_clip
from stylegan2.golden import golden_fill  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]

# The tiny config of the demo, made smaller still so that a test runs in seconds.
TINY_OVERRIDES = [
    "device=cpu",
    "generator.checkpoint=random",
    "generator.size=16",
    "generator.style_dim=16",
    "generator.n_mlp=2",
    "generator.channel_multiplier=1",
    "generator.channel_max=16",
    "generator.render_chunk=8",
    "clip.model=tiny",
    "prompt.source_class=human",
    "prompt.target_class=tolkien elf",
    "mapper.hidden_dim=16",
    "stage1.batch=4",
    "stage1.iterations=6",
    "stage1.checkpoint_every=3",
    "stage1.log_every=2",
    "stage2.batch=2",
    "stage2.iterations=4",
    "stage2.auto_layer_batch=2",
    "stage2.n_sample=2",
    "stage2.output_interval=2",
    "stage2.checkpoint_every=2",
    "stage2.log_every=2",
]


def tiny_config(tmp_path, *overrides):
    return config_lib.load_config(
        None, TINY_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *overrides]
    )


class Tiny:
    """A tiny StyleGAN2 backend (its source generator) and CLIP built from a config."""

    def __init__(self, config):
        self.config = config
        self.backend = StyleGAN2Backend(config, "cpu")
        self.generator, self.info = self.backend.generator, self.backend.info
        self.clip = build_clip(config.clip, "cpu")
        self.derived = config_lib.resolve(config, self.generator.size)
        self.truncation_latent = mean_latent(self.generator)


def naive_equal_linear(x, layer):
    """EqualLinear + fused leaky ReLU written out from the weights."""
    y = x @ (layer.weight * layer.lr_mul / math.sqrt(layer.weight.shape[1])).t() + layer.bias * layer.lr_mul
    return torch.nn.functional.leaky_relu(y, 0.2) * math.sqrt(2)


def run_script(name, args, monkeypatch, capsys):
    """Run scripts/<name> in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    code = 0
    try:
        runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


# How far a recorded run's tensors may move between machines: the largest difference
# measured between the recordings and the same runs on other CPUs, kernels (AVX2,
# AVX-512) and thread counts (1, 2), relative to each tensor's largest value, was
# MEASURED_DRIFT; the bound is ten times that (tests/fixtures/README.md). A change
# of what is computed moves the tensors far more (test_refactor_baseline.py checks
# that the recorded runs of different prompt schemes lie much further apart).
MEASURED_DRIFT = 1.5e-5
RECORDED_RUN_TOLERANCE = 1.5e-4


def recorded_difference(actual, expected):
    """``max |actual - expected| / max |expected|`` of one tensor (the measure the tolerance bounds)."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def assert_matches_recorded_run(name, tensors, kind):
    """``tensors`` (a state dict) equal the ``kind`` tensors of run ``name`` in
    tests/fixtures/stylegan2_runs.pt within :data:`RECORDED_RUN_TOLERANCE`.

    Not bit for bit: other CPUs, kernels and splits of a reduction round
    differently, and the recording's torch version, capability and thread
    count do not decide bit-equality (forced AVX2 kernels on an Intel CPU
    differ from an AMD CPU's AVX2 ones).
    """
    recorded = torch.load(REPO / "tests" / "fixtures" / "stylegan2_runs.pt", weights_only=True)
    expected = recorded["runs"][name][kind]
    assert sorted(tensors) == sorted(expected), f"{name} {kind}: the state dict keys changed"
    for key, value in expected.items():
        assert tensors[key].shape == value.shape, f"{name} {kind} {key}: shape {tuple(tensors[key].shape)}, recorded {tuple(value.shape)}"
        difference = recorded_difference(tensors[key], value)
        assert difference <= RECORDED_RUN_TOLERANCE, (
            f"{name} {kind} {key} differs from the recorded run by {difference:.2e} of its largest value "
            f"(machines differ by at most {MEASURED_DRIFT:.1e})"
        )


def synthetic_photos(n, size=64, seed=0):
    """``n`` smooth RGB images ``(size, size, 3)`` uint8: a lit background and a face-like ellipse.

    The demo config's images (``assets/demo_images``) are these, so that the
    Diff-IPL demo has real image files without downloading any.
    """
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    photos = []
    for _ in range(n):
        r = torch.rand(10, generator=g)
        background = (0.3 + 0.4 * r[:3])[:, None, None] + 0.2 * (x * (r[3] - 0.5) + y * (r[4] - 0.5))[None]
        inside = ((x - 0.2 * (r[5] - 0.5)) / (0.45 + 0.1 * r[6])) ** 2 + ((y - 0.1) / (0.6 + 0.1 * r[7])) ** 2 < 1
        skin = torch.tensor([0.8, 0.6, 0.5]) * (0.7 + 0.4 * r[8])
        image = torch.where(inside[None], skin[:, None, None] * (1 - 0.3 * y[None] * r[9]), background)
        photos.append((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return photos


# A Diff-IPL run small enough for seconds: the tiny autoencoder on six of the
# demo images, short schedules.
TINY_DIFFAE_OVERRIDES = [
    "device=cpu",
    "generator.kind=diffae",
    "generator.checkpoint=random",
    "diffae.arch=tiny",
    "clip.model=tiny",
    "prompt.source_class=photo",
    "prompt.target_class=wall painting",
    "mapper.hidden_dim=16",
    f"data.images={REPO / 'assets' / 'demo_images'}",
    "data.n_images=6",
    "data.n_train=3",
    "data.n_test=2",
    "stage1.iterations=4",
    "stage1.batch=4",
    "stage1.checkpoint_every=2",
    "stage1.log_every=2",
    "diffusionclip.t_0=300",
    "diffusionclip.n_inv_step=4",
    "diffusionclip.n_train_step=3",
    "diffusionclip.n_test_step=3",
    "diffusionclip.epochs=2",
    "diffusionclip.lr=0.001",
    "stage2.output_interval=3",
    "stage2.checkpoint_every=3",
    "stage2.log_every=3",
]


def tiny_diffae_config(tmp_path, *overrides):
    return config_lib.load_config(
        None, TINY_DIFFAE_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *overrides]
    )


def save_tiny_diffae_run(root, seed=3, scale=0.05):
    """A Diff-IPL run's ``autoencoder.pt`` without training: the tiny random source (recorded in
    the run config) with its UNet weights moved. Returns ``(path, config, source, adapted)``."""
    import copy

    from ipl.backends.diffae import build_autoencoder, save_autoencoder

    config = tiny_diffae_config(root)
    source = build_autoencoder("tiny", seed=config.generator.seed)
    adapted = copy.deepcopy(source)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.net.named_parameters():
            if not name.startswith("encoder."):
                p.add_(scale * torch.randn(p.shape, generator=gen))
    path = root / "autoencoder.pt"
    meta = {"kind": "diffae", "source_class": config.prompt.source_class, "target_class": config.prompt.target_class}
    save_autoencoder(path, adapted, config=config_lib.to_dict(config), step=1, meta=meta)
    return path, config, source, adapted


# The same run on the plain DDPM backend (DiffusionCLIP's Diff-CLIP): the tiny
# random UNet2DModel, whose mapper reads CLIP image features.
TINY_DDPM_OVERRIDES = [
    o.replace("generator.kind=diffae", "generator.kind=ddpm").replace("diffae.arch=tiny", "ddpm.arch=tiny") for o in TINY_DIFFAE_OVERRIDES
]


def tiny_ddpm_config(tmp_path, *overrides):
    return config_lib.load_config(
        None, TINY_DDPM_OVERRIDES + [f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *overrides]
    )


def save_tiny_ddpm_run(root, seed=3, scale=0.05):
    """A DDPM run's ``ddpm.pt`` without training: the tiny random source (recorded in the run
    config) with its weights moved. Returns ``(path, config, source, adapted)``."""
    import copy

    from ipl.backends.ddpm import build_ddpm, save_ddpm

    config = tiny_ddpm_config(root)
    source = build_ddpm("tiny", seed=config.generator.seed)
    adapted = copy.deepcopy(source)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    path = root / "ddpm.pt"
    meta = {"kind": "ddpm", "source_class": config.prompt.source_class, "target_class": config.prompt.target_class}
    save_ddpm(path, adapted, config=config_lib.to_dict(config), step=1, meta=meta)
    return path, config, source, adapted
