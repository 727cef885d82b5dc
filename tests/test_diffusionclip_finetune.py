"""DiffusionCLIP's fine-tuning loop as wired in Stage 2, on both diffusion backends (Diff-AE and the DDPM)."""

import logging

import pytest
import torch
from helpers import tiny_ddpm_config, tiny_diffae_config

import ipl.backends.diffusionclip as shared
from ipl.backends import checkpoint_kind
from ipl.backends.ddpm import load_ddpm
from ipl.build import build_backend, build_clip
from ipl.config import ConfigError, from_dict, to_dict
from ipl.images import image_tensor
from ipl.method.losses import normalize
from ipl.stages.stage2 import train_generator

CONFIGS = {"diffae": tiny_diffae_config, "ddpm": tiny_ddpm_config}


def build_tiny(kind, root):
    config = CONFIGS[kind](root, "prompt.scheme=manual")
    return kind, root, build_backend(config, "cpu", progress=False), build_clip(config.clip, "cpu")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    return build_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return build_tiny("ddpm", tmp_path_factory.mktemp("ddpm_only"))


def run_stage2(tiny, run_dir, *overrides, resume=False):
    kind, root, backend, clip_model = tiny
    config = CONFIGS[kind](root, "prompt.scheme=manual", f"run_dir={run_dir}", *overrides)
    return train_generator(config, backend, clip_model, run_dir, "cpu", resume=resume, progress=False)


def test_each_step_is_one_loss_on_a_full_batch_of_real_images(tiny, tmp_path, monkeypatch):
    kind, root, backend, clip_model = tiny
    seen = []
    real = shared.diffusionclip_losses

    def spy(source_features, target_features, direction, x0, x, **kw):
        seen.append((source_features.detach().clone(), x0.detach().clone(), x.shape))
        return real(source_features, target_features, direction, x0, x, **kw)

    monkeypatch.setattr(shared, "diffusionclip_losses", spy)
    # Two batches of 3 (DiffusionCLIP's n_train_img counts batches), 6 of the 6 images.
    run_stage2(tiny, tmp_path / "run", "diffusionclip.batch=3", "data.n_train=2", "diffusionclip.epochs=1", "clip.antialias=true")
    assert len(seen) == 2  # one loss per batch: -log((2 - L) / 2) of the batch mean, never split
    size = backend.model.img_size
    for step, (f_source, x0, shape) in enumerate(seen):
        expected = torch.cat([image_tensor(f, size) for f in backend.files[3 * step : 3 * step + 3]])
        torch.testing.assert_close(x0, expected)  # the real images, not their x_{t_0}
        assert tuple(shape) == tuple(expected.shape)
        with torch.no_grad():  # Stage 2's features antialias as Stage 1's do
            torch.testing.assert_close(f_source, clip_model.encode_images(expected, antialias=True), rtol=1e-4, atol=1e-5)


def test_steplr_grows_the_rate_after_the_last_step_of_each_pass(tiny, tmp_path, monkeypatch):
    rates = []
    real = torch.optim.Adam.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    run_stage2(tiny, tmp_path / "run", "diffusionclip.lr_gamma=2.0", "diffusionclip.epochs=2")
    # 3 batches a pass (data.n_train=3, batch 1), lr 0.001: the second pass at 2x.
    assert rates == pytest.approx([0.001] * 3 + [0.002] * 3)


def test_the_ddpm_mapper_reads_the_normalised_clip_feature_of_each_real_image(ddpm):
    kind, root, backend, clip_model = ddpm
    config = tiny_ddpm_config(root)
    assert backend.code_dim == clip_model.embed_dim
    pairs = backend.stage1_pairs(config, clip_model, root / "cache", progress=False)
    with torch.no_grad():
        features = torch.cat([clip_model.encode_images(image_tensor(f, backend.model.img_size)) for f in backend.files])
    codes, f = pairs.batch(0, "cpu")
    rows = [min(range(len(features)), key=lambda i: (features[i] - row).abs().max()) for row in f]
    torch.testing.assert_close(f, features[rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(codes, features[rows] / features[rows].norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-5)
    adaptation = backend.adaptation(config, clip_model, None)
    torch.testing.assert_close(adaptation.batch(1).codes, normalize(features[1:2]), rtol=1e-4, atol=1e-5)


def test_a_ddpm_run_writes_a_ddpm_that_loads_and_names_its_kind(ddpm, tmp_path):
    kind, root, backend, clip_model = ddpm
    out = run_stage2(ddpm, tmp_path / "run", "diffusionclip.epochs=1")
    assert out.name == "ddpm.pt" and checkpoint_kind(out) == "ddpm"
    adapted = load_ddpm(out)
    source = backend.model.net.state_dict()
    assert any(not torch.equal(v, source[k]) for k, v in adapted.net.state_dict().items())
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["kind"] == "ddpm" and ckpt["config"]["generator"]["kind"] == "ddpm"


def test_resume_on_the_ddpm_reaches_the_uninterrupted_model(ddpm, tmp_path):
    straight = torch.load(run_stage2(ddpm, tmp_path / "a"), weights_only=True)["state_dict"]
    run_stage2(ddpm, tmp_path / "b", "diffusionclip.epochs=1")
    assert torch.load(tmp_path / "b" / "stage2.pt", weights_only=True)["step"] == 3
    # Resuming with the full schedule (2 passes of 3 images) continues from step 3.
    resumed = torch.load(run_stage2(ddpm, tmp_path / "b", resume=True), weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k


def test_per_step_variant_on_the_ddpm_steps_the_optimiser_at_every_ddim_step(ddpm, tmp_path, monkeypatch):
    steps = []
    real = torch.optim.Adam.step

    def counting(self, *a, **k):
        steps.append(self.param_groups[0]["lr"])
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    per_step = run_stage2(ddpm, tmp_path / "per_step", "diffusionclip.per_step=true", "diffusionclip.epochs=1")
    assert len(steps) == 3 * 3  # 3 images x n_train_step = 3
    steps.clear()
    full = run_stage2(ddpm, tmp_path / "full", "diffusionclip.epochs=1")
    assert len(steps) == 3  # one step per image
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (per_step, full))
    assert any(not torch.equal(v, b[k]) for k, v in a.items())


def test_needs_checkpointing_only_when_the_chain_and_optimiser_state_do_not_fit():
    gib = 2**30
    # 6 steps x 2 GiB + 1 GiB = 13 GiB against 0.7 of the free memory.
    assert not shared.needs_checkpointing(2 * gib, 6, 1 * gib, 40 * gib)  # 13 <= 28
    assert not shared.needs_checkpointing(2 * gib, 6, 1 * gib, 19 * gib)  # 13 <= 13.3
    assert shared.needs_checkpointing(2 * gib, 6, 1 * gib, 18 * gib)  # 13 > 12.6
    assert shared.needs_checkpointing(2 * gib, 6, 1 * gib, 18 * gib, margin=0.7)
    assert not shared.needs_checkpointing(2 * gib, 6, 1 * gib, 18 * gib, margin=0.75)  # 13 <= 13.5
    assert shared.needs_checkpointing(1, 1, 0, None)  # free memory unknown: the safe choice


def test_saved_activation_bytes_counts_what_the_backward_keeps_not_the_weights():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def eps(self, x, t, cond=None):
            return torch.relu(self.conv(x))  # the convolution keeps x, the ReLU its output

    x = torch.randn(2, 3, 8, 8)
    assert shared.saved_activation_bytes(Net(), x, 0, None) == 4 * (2 * 3 * 8 * 8 + 2 * 4 * 8 * 8)


def test_free_memory_on_the_cpu_is_memavailable():
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert abs(shared.free_memory("cpu") - available) < 2**30  # other processes move it a little


@pytest.mark.parametrize("free, expected", [(1, True), (2**50, False)])
def test_auto_checkpoints_only_where_the_chain_would_not_fit(ddpm, monkeypatch, caplog, free, expected):
    _, root, backend, clip_model = ddpm
    monkeypatch.setattr(shared, "free_memory", lambda device: free)
    seen = []
    real = shared.diffusion.partial_generate
    monkeypatch.setattr(shared.diffusion, "partial_generate", lambda *a, **k: seen.append(k.get("checkpoint")) or real(*a, **k))
    config = tiny_ddpm_config(root, "prompt.scheme=manual")
    assert config.diffusionclip.checkpoint == "auto"  # the default
    with caplog.at_level(logging.INFO, logger=shared.__name__):
        adaptation = backend.adaptation(config, clip_model, None)
    assert adaptation.checkpoint is expected
    said = [m for m in caplog.messages if "diffusionclip.checkpoint=auto" in m]
    assert len(said) == 1 and ("no gradient checkpointing (the whole chain fits)" in said[0]) is not expected  # logged once
    next(adaptation.trainable_images(adaptation.batch(0)))
    assert seen == [expected]
    # Asked for explicitly, or the per-step variant (one call's graph at a time): no measuring.
    monkeypatch.setattr(shared, "saved_activation_bytes", lambda *a: pytest.fail("measured"))
    for setting, decided in (("diffusionclip.checkpoint=true", True), ("diffusionclip.checkpoint=false", False), ("diffusionclip.per_step=true", False)):
        assert backend.adaptation(tiny_ddpm_config(root, "prompt.scheme=manual", setting), clip_model, None).checkpoint is decided


def test_the_former_grad_checkpoint_key_is_read_as_checkpoint(tmp_path):
    config = tiny_ddpm_config(tmp_path)
    old = to_dict(config)
    dc = old["diffusionclip"]
    del dc["checkpoint"]
    for before, now in ((True, "true"), (False, "false")):
        dc["grad_checkpoint"] = before  # as run files written before the key was renamed record it
        assert from_dict(old).diffusionclip.checkpoint == now
    assert tiny_ddpm_config(tmp_path, "diffusionclip.checkpoint=false").diffusionclip.checkpoint == "false"  # YAML's boolean
    with pytest.raises(ConfigError, match="former name of diffusionclip.checkpoint: give only diffusionclip.checkpoint"):
        tiny_ddpm_config(tmp_path, "diffusionclip.checkpoint=auto", "diffusionclip.grad_checkpoint=true")
    with pytest.raises(ConfigError, match="diffusionclip.checkpoint: 'sometimes' is not one of 'auto', 'true', 'false'"):
        tiny_ddpm_config(tmp_path, "diffusionclip.checkpoint=sometimes")
