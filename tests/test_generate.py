"""scripts/generate.py and the sampling helpers behind it, on tiny generators (CPU, seconds)."""

import copy
import logging

import numpy as np
import pytest
import torch
from helpers import run_script
from PIL import Image

from ipl import config as config_lib
from ipl.backends.stylegan2 import build_source_generator, mean_latent
from ipl.sampling import (
    alpha_strip,
    blend_generators,
    lerp_path,
    load_adapted,
    load_source,
    read_png,
    render,
    seed_strip,
    to_uint8,
    truncation_centre,
    write_samples,
    z_from_seeds,
)
from stylegan2 import CheckpointError, Generator, save_generator

ARCH = ["generator.checkpoint=random", "generator.size=32", "generator.style_dim=32", "generator.n_mlp=2",
        "generator.channel_multiplier=1", "generator.channel_max=32"]  # fmt: skip
SIZE = 32


def tiny_pair():
    """A seeded random source and an 'adapted' copy whose synthesis weights moved (mapping unchanged)."""
    config = config_lib.load_config(None, ARCH + ["prompt.source_class=human", "prompt.target_class=tolkien elf"])
    source, _ = build_source_generator(config.generator, "cpu")
    adapted = copy.deepcopy(source)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("style."):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return config, source, adapted


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    config, source, adapted = tiny_pair()
    meta = {"source_class": "human", "target_class": "tolkien elf"}
    save_generator(root / "adapted.pt", adapted, meta=meta, config=config_lib.to_dict(config), step=1)
    save_generator(root / "source.pt", source)
    other = Generator(SIZE, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    save_generator(root / "narrow.pt", other)
    return {"root": root, "adapted": root / "adapted.pt", "source": root / "source.pt", "narrow": root / "narrow.pt"}


def seed_image(generator, seed, truncation=0.7, centre=None):
    return to_uint8(render(generator, z_from_seeds([seed], generator.style_dim), truncation, centre))[0]


def seed_images(generator, seeds, truncation=0.7, centre=None):
    """Images of ``seeds`` rendered in one batch, as the code under test renders them
    (batches of other sizes agree only up to float rounding)."""
    return to_uint8(render(generator, z_from_seeds(seeds, generator.style_dim), truncation, centre, chunk=len(seeds)))


def test_image_depends_only_on_its_seed_not_on_batch_or_order(files, tmp_path):
    adapted, info = load_adapted(files["adapted"], "cpu")
    centre, _ = truncation_centre(info, None, adapted)
    a = write_samples(adapted, tmp_path / "a", [3, 1, 2], truncation=0.7, truncation_latent=centre, batch=1, progress=False)
    b = write_samples(adapted, tmp_path / "b", list(range(5)), truncation=0.7, truncation_latent=centre, batch=4, progress=False)
    assert len(a["images"]) == 3 and len(b["images"]) == 5
    # Same latent and noise whatever the batch: the images agree up to the
    # float rounding of batched kernels (a batch of 1 takes another matmul
    # path on the CPU), i.e. at most one 8-bit level in a few pixels.
    for seed in (1, 2, 3):
        first = read_png(tmp_path / "a" / f"seed{seed:04d}.png").astype(int)
        for other in (read_png(tmp_path / "b" / f"seed{seed:04d}.png"), seed_image(adapted, seed, centre=centre)):
            diff = np.abs(first - other.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01
    # ... while different seeds give different images.
    assert np.abs(read_png(tmp_path / "b" / "seed0001.png").astype(int) - read_png(tmp_path / "b" / "seed0002.png")).mean() > 10


def test_blend_is_exact_at_both_ends_and_linear_between(files):
    _, source, adapted = tiny_pair()
    s, t = source.state_dict(), adapted.state_dict()
    for alpha, expected in ((0.0, s), (1.0, t)):
        blended = blend_generators(source, adapted, alpha).state_dict()
        assert all(torch.equal(blended[k], expected[k]) for k in expected)
    half = blend_generators(source, adapted, 0.5).state_dict()
    key = "convs.0.conv.weight"
    assert not torch.equal(s[key], t[key])
    torch.testing.assert_close(half[key], (s[key] + t[key]) / 2)
    # Rendered images follow: alpha 0 is the source's image, alpha 1 the adapted one's.
    for alpha, generator in ((0.0, source), (1.0, adapted)):
        assert np.array_equal(seed_image(blend_generators(source, adapted, alpha), 5, 1.0), seed_image(generator, 5, 1.0))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        blend_generators(source, adapted, 1.5)


def test_alpha_zero_writes_the_source_images(files, tmp_path):
    adapted, info = load_adapted(files["adapted"], "cpu")
    source, source_info = load_source(str(files["source"]), adapted, info, "cpu")
    centre, _ = truncation_centre(info, source_info, source)
    out = write_samples(adapted, tmp_path, [4, 7], source=source, alpha=0.0, truncation=0.7, truncation_latent=centre, progress=False)
    expected = seed_images(source, [4, 7], centre=centre)
    for seed, image in zip((4, 7), expected):
        assert np.array_equal(read_png(tmp_path / f"seed{seed:04d}.png"), image)
    # The grid: source row over the (here identical) blended row, 2 images each.
    grid = read_png(out["grid"])
    assert grid.shape == (2 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2, 3)
    assert np.array_equal(grid[2 : 2 + SIZE, 2 : 2 + SIZE], expected[0])
    assert np.array_equal(grid[4 + SIZE : 4 + 2 * SIZE, 4 + SIZE : 4 + 2 * SIZE], expected[1])


def test_recorded_source_rebuilds_the_training_source(files):
    _, source, _ = tiny_pair()
    adapted, info = load_adapted(files["adapted"], "cpu")
    rebuilt, _ = load_source("recorded", adapted, info, "cpu")
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in source.state_dict().items())


def test_recorded_source_missing_is_a_clear_error(files):
    adapted, info = load_adapted(files["source"], "cpu")  # written without a run config
    with pytest.raises(CheckpointError, match="does not record the source"):
        load_source("recorded", adapted, info, "cpu")


def test_mismatched_architectures_are_refused_naming_the_difference(files, monkeypatch, capsys):
    adapted, info = load_adapted(files["adapted"], "cpu")
    with pytest.raises(CheckpointError, match=r"channel_max: 16 in the source, 32 in the adapted"):
        load_source(str(files["narrow"]), adapted, info, "cpu")
    code, _, err = run_script(
        "generate.py", ["--ckpt", files["adapted"], "--source", files["narrow"], "--outdir", files["root"] / "x", "--no-progress"], monkeypatch, capsys
    )
    assert code == 2 and "channel_max" in err and "Traceback" not in err


def test_another_source_of_the_same_architecture_is_flagged(files, caplog):
    adapted, info = load_adapted(files["adapted"], "cpu")
    stranger = files["root"] / "stranger.pt"
    save_generator(stranger, Generator(SIZE, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=32))
    with caplog.at_level(logging.WARNING):
        load_source(str(stranger), adapted, info, "cpu")
    assert "mapping networks" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_source(str(files["source"]), adapted, info, "cpu")
    assert "mapping networks" not in caplog.text


def test_truncation_centre_prefers_latent_avg_then_mean_latent():
    _, source, _ = tiny_pair()
    avg = torch.arange(32.0)
    centre, origin = truncation_centre({"latent_avg": avg}, {"latent_avg": -avg}, source)
    assert torch.equal(centre, avg[None]) and "adapted" in origin
    centre, origin = truncation_centre({"latent_avg": None}, {"latent_avg": -avg}, source)
    assert torch.equal(centre, -avg[None]) and "source" in origin
    centre, origin = truncation_centre({"latent_avg": None}, None, source)
    assert torch.equal(centre, mean_latent(source))


def test_alpha_strip_goes_from_source_to_adapted(files):
    _, source, adapted = tiny_pair()
    centre = mean_latent(source)
    strip, frames = alpha_strip(source, adapted, [0, 9], steps=4, truncation=0.7, truncation_latent=centre)
    cell = lambda row, col: strip[2 + row * (SIZE + 2) : 2 + row * (SIZE + 2) + SIZE, 2 + col * (SIZE + 2) : 2 + col * (SIZE + 2) + SIZE]  # noqa: E731
    assert strip.shape == (2 * (SIZE + 2) + 2, 4 * (SIZE + 2) + 2, 3)
    first, last = seed_images(source, [0, 9], centre=centre), seed_images(adapted, [0, 9], centre=centre)
    for row in range(2):
        assert np.array_equal(cell(row, 0), first[row]) and np.array_equal(cell(row, 3), last[row])
    assert not np.array_equal(cell(0, 1), first[0]) and not np.array_equal(cell(0, 1), last[0])
    assert len(frames) == 4 and frames[0].shape == (SIZE + 4, 2 * (SIZE + 2) + 2, 3)


def test_seed_interpolation_is_linear_in_w_and_ends_on_the_seeds():
    _, _, adapted = tiny_pair()
    w = adapted.style(z_from_seeds([1, 2], 32))
    path = lerp_path(w[0], w[1], 5)
    torch.testing.assert_close(path[2], (w[0] + w[1]) / 2)
    assert torch.equal(path[0], w[0]) and torch.equal(path[-1], w[1])
    strip, frames = seed_strip(adapted, [1, 2, 3], steps=5)
    assert strip.shape == (2 * (SIZE + 2) + 2, 5 * (SIZE + 2) + 2, 3)
    assert len(frames) == 9  # 5 + 4: the shared end is not repeated
    for frame, seed in ((frames[0], 1), (frames[4], 2), (frames[8], 3)):
        assert np.abs(frame.astype(int) - seed_image(adapted, seed, truncation=1.0).astype(int)).max() <= 1


def test_script_writes_images_grid_strip_and_gif(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_script(
        "generate.py",
        ["--ckpt", files["adapted"], "--source", "recorded", "--seeds", "0-2,5", "--outdir", out, "--device", "cpu",
         "--interpolate", "alpha", "--steps", "3", "--gif", "--batch", "3", "--no-progress"],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.glob("seed*.png")) == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0005.png"]
    assert read_png(out / "grid.png").shape == (2 * (SIZE + 2) + 2, 4 * (SIZE + 2) + 2, 3)
    assert read_png(out / "interp_alpha.png").shape == (4 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)
    assert Image.open(out / "interp_alpha.gif").n_frames == 3
    assert '"truncation_centre"' in (out / "generate.json").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "0.5"], "--source"),
        (["--alpha", "1.5", "--source", "recorded"], "--alpha must be in [0, 1]"),
        (["--interpolate", "alpha"], "--source"),
        (["--seeds", "3,3"], "twice"),
    ],
)
def test_script_rejects_bad_arguments_clearly(files, tmp_path, monkeypatch, capsys, args, message):
    code, _, err = run_script("generate.py", ["--ckpt", files["adapted"], "--outdir", tmp_path, *args], monkeypatch, capsys)
    assert code == 2 and message in err
    assert not list(tmp_path.glob("*.png"))
