"""Tiny models and configs shared by the stage tests."""

import math
import runpy
import sys
import zlib
from pathlib import Path

import torch

from ipl import config as config_lib
from ipl.backends.stylegan2 import StyleGAN2Backend, mean_latent
from ipl.build import build_clip

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


def golden_fill(name, shape):
    """The deterministic parameter fill of shared/fixtures/stylegan2 (its README gives the rule)."""
    c = zlib.crc32(name.encode()) % 1000
    x = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 12.9898 + c) * 43758.5453
    t = (x - torch.floor(x)) * 2 - 1
    value = (t * math.sqrt(3)).float().reshape(shape)
    if name.startswith("style.") and name.endswith(".weight"):
        value = value * 100
    return value


def assert_matches_recorded_run(name, tensors, kind):
    """``tensors`` (a state dict) equal the ``kind`` tensors of run ``name`` in
    tests/fixtures/stylegan2_runs.pt, recorded before the code was restructured.

    Bit for bit on the torch version and CPU capability the file was written
    with; elsewhere (other kernels round differently) to a tolerance.
    """
    recorded = torch.load(REPO / "tests" / "fixtures" / "stylegan2_runs.pt", weights_only=True)
    expected = recorded["runs"][name][kind]
    assert sorted(tensors) == sorted(expected), f"{name} {kind}: the state dict keys changed"
    env = recorded["environment"]
    exact = env["torch"] == str(torch.__version__) and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for key, value in expected.items():
        if exact:
            assert torch.equal(tensors[key], value), f"{name} {kind} {key} differs from the recorded run"
        else:
            torch.testing.assert_close(tensors[key], value, rtol=1e-3, atol=1e-4, msg=f"{name} {kind} {key}")
