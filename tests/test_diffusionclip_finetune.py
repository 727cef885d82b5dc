"""DiffusionCLIP's fine-tuning loop as wired in Stage 2, on both diffusion backends (Diff-AE and the DDPM)."""

import pytest
import torch
from helpers import tiny_ddpm_config, tiny_diffae_config

import ipl.backends.diffusionclip as shared
from ipl.backends import checkpoint_kind
from ipl.backends.ddpm import load_ddpm
from ipl.build import build_backend, build_clip
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


def run_stage2(tiny, run_dir, *overrides):
    kind, root, backend, clip_model = tiny
    config = CONFIGS[kind](root, "prompt.scheme=manual", f"run_dir={run_dir}", *overrides)
    return train_generator(config, backend, clip_model, run_dir, "cpu", progress=False)


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
