"""Diff-IPL: the Diff-AE backend's data (cache, pairs), DiffusionCLIP's loss and fine-tuning loop, outputs, resume."""

import math

import numpy as np
import pytest
import torch
from helpers import REPO, synthetic_photos, tiny_diffae_config

import ipl.backends.diffae.backend as B
import ipl.backends.diffusionclip as shared
from ipl import diffusion
from ipl.backends.diffae import load_autoencoder
from ipl.build import build_clip
from ipl.config import ConfigError
from ipl.images import image_tensor
from ipl.sampling import read_png
from ipl.method.losses import normalize
from ipl.runtime import TrainingDiverged
from ipl.stages.stage1 import load_prompt_model, train_mapper
from ipl.stages.stage2 import train_generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffae")
    config = tiny_diffae_config(root)
    backend = B.DiffAEBackend(config, "cpu", progress=False)
    return config, backend, build_clip(config.clip, "cpu"), root


@pytest.fixture(scope="module")
def mapper(tiny):
    config, backend, clip_model, root = tiny
    path = train_mapper(config, backend, clip_model, root / "stage1", "cpu", progress=False)
    return load_prompt_model(path)[0]


def test_demo_images_are_the_synthetic_photos():
    files = sorted((REPO / "assets" / "demo_images").glob("*.png"))
    assert len(files) == 12
    for path, expected in zip(files, synthetic_photos(12)):
        assert np.array_equal(read_png(path), expected), path.name


# -- data ---------------------------------------------------------------------


def test_inversion_cache_holds_enc_and_the_deterministic_inversion(tiny, tmp_path, monkeypatch):
    config, backend, _, _ = tiny
    model, files = backend.model, backend.files[:3]
    cache = B.InversionCache(model, backend.fingerprint, tmp_path / "c")
    x0, codes, x_t = cache.inverted(files, 300, 4, progress=False)
    # Computed the way the model's own methods compute them, image by image.
    for i, path in enumerate(files):
        image = image_tensor(path, model.img_size)
        torch.testing.assert_close(x0[i : i + 1], image)
        with torch.no_grad():
            torch.testing.assert_close(codes[i : i + 1], model.encode(image))
            torch.testing.assert_close(x_t[i : i + 1], model.invert(image, codes[i : i + 1], 300, 4))

    calls = {"encode": 0, "invert": 0}
    real_encode, real_invert = model.encode, diffusion.partial_invert
    monkeypatch.setattr(model, "encode", lambda *a, **k: calls.__setitem__("encode", calls["encode"] + 1) or real_encode(*a, **k))
    monkeypatch.setattr(diffusion, "partial_invert", lambda *a, **k: calls.__setitem__("invert", calls["invert"] + 1) or real_invert(*a, **k))
    again = cache.inverted(files, 300, 4, progress=False)
    assert calls == {"encode": 0, "invert": 0}  # a second run reads the disk
    assert all(torch.equal(a, b) for a, b in zip(again, (x0, codes, x_t)))
    cache.inverted(files, 350, 4, progress=False)
    assert calls == {"encode": 0, "invert": 3}  # another t_0: new inversions, the same codes
    other = B.InversionCache(model, "random:another", tmp_path / "c")
    other.encoded(files[:1], progress=False)
    assert calls["encode"] == 1  # another model: nothing reused


def test_a_damaged_cache_entry_is_recomputed(tiny, tmp_path):
    _, backend, _, _ = tiny
    cache = B.InversionCache(backend.model, backend.fingerprint, tmp_path / "c")
    x0, codes = cache.encoded(backend.files[:1], progress=False)
    entry = next((tmp_path / "c").rglob("*encoded.pt"))
    entry.write_bytes(b"truncated")
    x0b, codesb = cache.encoded(backend.files[:1], progress=False)
    assert torch.equal(codes, codesb) and torch.load(entry, weights_only=True)["format"] == B.CACHE_FORMAT


def test_stage1_pairs_are_distinct_images_from_a_seeded_stream(tiny):
    config, backend, clip_model, root = tiny
    pairs = backend.stage1_pairs(config, clip_model, root / "cache", progress=False)
    x0, codes = backend.cache(root / "cache").encoded(backend.files, progress=False)
    features = B.clip_features(clip_model, x0)
    seen = []
    for step in range(5):
        c, f = pairs.batch(step, "cpu")
        rows = [next(i for i in range(len(codes)) if torch.equal(codes[i], row)) for row in c]
        assert len(set(rows)) == config.stage1.batch  # distinct within a batch
        torch.testing.assert_close(f, features[rows])  # each code with its own image's feature
        seen.append(rows)
    assert len({tuple(r) for r in seen}) > 1
    # The same seed draws the same stream; a stored state continues it.
    fresh = backend.stage1_pairs(config, clip_model, root / "cache", progress=False)
    assert torch.equal(fresh.batch(0, "cpu")[0], codes[seen[0]])
    state = fresh.state()
    expected = fresh.batch(1, "cpu")[0]
    fresh.load_state(state)
    assert torch.equal(fresh.batch(1, "cpu")[0], expected)


def test_the_mapper_reads_z_sem(mapper, tiny):
    _, backend, _, _ = tiny
    assert mapper.mapping[1].weight.shape[1] == backend.model.style_ch == backend.code_dim


def test_missing_or_short_image_folders_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.images is empty: a diffusion run trains on real images"):
        B.DiffAEBackend(tiny_diffae_config(tmp_path, "data.images="), "cpu")
    with pytest.raises(ConfigError, match="is not a folder"):
        B.DiffAEBackend(tiny_diffae_config(tmp_path, f"data.images={tmp_path / 'nowhere'}"), "cpu")
    with pytest.raises(ConfigError, match=r"holds 12 images .* fewer than the 20"):
        B.DiffAEBackend(tiny_diffae_config(tmp_path, "data.n_images=20"), "cpu")
    with pytest.raises(ConfigError, match="t_0: 1000 must be below the model's T = 1000"):
        B.DiffAEBackend(tiny_diffae_config(tmp_path, "diffusionclip.t_0=1000"), "cpu")


# -- DiffusionCLIP's loss -------------------------------------------------------


def test_diffusionclip_losses_by_hand():
    torch.manual_seed(0)
    fs, ft, d = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    x0, x = torch.rand(3, 3, 4, 4) * 2 - 1, torch.rand(3, 3, 4, 4) * 2 - 1
    identity = lambda images: normalize(images.flatten(1)[:, :5])  # noqa: E731
    terms = B.diffusionclip_losses(fs, ft, d, x0, x, clip_w=3.0, l1_w=0.5, id_w=2.0, identity=identity)
    # By hand: the image direction against each text direction, then DiffusionCLIP's transform.
    dI = normalize(normalize(ft) - normalize(fs))
    l_dir = (1 - (dI * normalize(d)).sum(-1)).mean()
    clip = -math.log((2 - l_dir.item()) / 2)
    l1 = (x0 - x).abs().mean().item()
    l_id = (1 - (identity(x0) * identity(x)).sum(-1)).mean().item()
    assert terms["clip"].item() == pytest.approx(clip, rel=1e-6)
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-6)
    assert terms["id"].item() == pytest.approx(l_id, rel=1e-6)
    assert terms["total"].item() == pytest.approx(3 * clip + 0.5 * l1 + 2 * l_id, rel=1e-6)
    only_clip = B.diffusionclip_losses(fs, ft, d, x0, x, clip_w=3.0, l1_w=0.0, id_w=0.0)
    assert set(only_clip) == {"clip", "total"}  # zero-weight terms are not computed (no ID network needed)


# -- Stage 2 --------------------------------------------------------------------


def run_stage2(tiny, mapper, run_dir, *overrides, resume=False):
    _, backend, clip_model, root = tiny
    config = tiny_diffae_config(root, f"run_dir={run_dir}", *overrides)
    return train_generator(config, backend, clip_model, run_dir, "cpu", prompt_model=mapper, resume=resume, progress=False)


def test_finetuning_writes_a_loadable_autoencoder_grids_and_stats(tiny, mapper, tmp_path):
    config, backend, _, _ = tiny
    out = run_stage2(tiny, mapper, tmp_path / "run")
    assert out.name == "autoencoder.pt"
    adapted = load_autoencoder(out)
    source = backend.model.net.state_dict()
    changed = {k for k, v in adapted.net.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and not any(k.startswith("encoder.") for k in changed)  # the UNet trains, the encoder does not
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["target_class"] == "wall painting" and ckpt["step"] == 6 and ckpt["config"]["generator"]["kind"] == "diffae"
    # Three rows (input, source reconstruction, adapted) of data.n_test images, every output_interval steps.
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert grids == ["step_000003.png", "step_000006.png"]
    grid = read_png(tmp_path / "run" / "samples" / "step_000006.png")
    size, pad = backend.model.img_size, 2
    assert grid.shape == (3 * (size + pad) + pad, 2 * (size + pad) + pad, 3)
    lines = (tmp_path / "run" / "stats_stage2.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"clip"' in lines[0] and '"loss"' in lines[0]


def test_two_epochs_pass_over_the_training_images_in_order_and_the_lr_grows_by_gamma(tiny, mapper, tmp_path, monkeypatch):
    config, backend, clip_model, root = tiny
    seen = []
    real = B.DiffAEAdaptation.batch

    def spy(self, step):
        batch = real(self, step)
        seen.append(batch.codes.clone())
        return batch

    monkeypatch.setattr(B.DiffAEAdaptation, "batch", spy)
    run_stage2(tiny, mapper, tmp_path / "run", "diffusionclip.lr_gamma=2.0")
    _, codes, _ = backend.cache(root / "cache").inverted(backend.files[:3], 300, 4, progress=False)
    assert len(seen) == 6 and all(torch.equal(seen[s], codes[s % 3 : s % 3 + 1]) for s in range(6))
    state = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 2.0**2)  # StepLR after each epoch


def test_resume_reaches_the_uninterrupted_autoencoder(tiny, mapper, tmp_path):
    straight = torch.load(run_stage2(tiny, mapper, tmp_path / "a"), weights_only=True)["state_dict"]
    run_stage2(tiny, mapper, tmp_path / "b", "diffusionclip.epochs=1")
    state = torch.load(tmp_path / "b" / "stage2.pt", weights_only=True)
    assert state["step"] == 3
    # Resuming with the full schedule continues from step 3.
    resumed = torch.load(run_stage2(tiny, mapper, tmp_path / "b", resume=True), weights_only=True)["state_dict"]
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]), k


def test_gradient_checkpointing_changes_memory_not_the_weights(tiny, mapper, tmp_path):
    a = torch.load(run_stage2(tiny, mapper, tmp_path / "a", "diffusionclip.epochs=1", "diffusionclip.checkpoint=true"), weights_only=True)
    b = torch.load(run_stage2(tiny, mapper, tmp_path / "b", "diffusionclip.epochs=1", "diffusionclip.checkpoint=false"), weights_only=True)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-5, atol=1e-7)


def test_per_step_variant_steps_the_optimiser_at_every_ddim_step(tiny, mapper, tmp_path, monkeypatch):
    counts = {"step": 0}
    real = torch.optim.Adam.step

    def counting(self, *a, **k):
        counts["step"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    run_stage2(tiny, mapper, tmp_path / "per_step", "diffusionclip.per_step=true", "diffusionclip.epochs=1")
    assert counts["step"] == 3 * 3  # 3 images x n_train_step = 3
    counts["step"] = 0
    run_stage2(tiny, mapper, tmp_path / "full", "diffusionclip.epochs=1")
    assert counts["step"] == 3  # one step per image


def test_the_finetuning_chain_is_deterministic_unless_dropout_is_asked_for(tiny, mapper, tmp_path, monkeypatch):
    modes = []
    real = B.DiffAEAdaptation.trainable_images

    def spy(self, part):
        modes.append(self.trainable.training)
        return real(self, part)

    monkeypatch.setattr(B.DiffAEAdaptation, "trainable_images", spy)
    run_stage2(tiny, mapper, tmp_path / "a", "diffusionclip.epochs=1")
    run_stage2(tiny, mapper, tmp_path / "b", "diffusionclip.epochs=1", "diffusionclip.dropout=true")
    # DiffusionCLIP's models have dropout 0, so its chain is deterministic: eval() by default.
    assert modes == [False] * 3 + [True] * 3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, mapper, tmp_path, monkeypatch):
    real = shared.diffusionclip_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] >= 4:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    monkeypatch.setattr(shared, "diffusionclip_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 6.*stage2.pt"):
        run_stage2(tiny, mapper, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "stage2.pt", weights_only=True)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "autoencoder.pt").exists()


@pytest.mark.parametrize("scheme", ["manual", "random"])
def test_schemes_without_a_mapper_checkpoint_finetune(tiny, tmp_path, scheme):
    out = run_stage2(tiny, None, tmp_path / "run", f"prompt.scheme={scheme}", "diffusionclip.epochs=1")
    assert load_autoencoder(out).img_size == tiny[1].model.img_size
