"""Never lose work: output folders, images read as what they are, caches that heal, resume advice."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO, run_script, tiny_diffae_config
from ipl import cli
from ipl.images import MIN_IMAGE_SIDE, UnreadableImageError, check_image, load_photo
from ipl.outputs import MANIFEST, OutputError, OutputFolder


# ---------------------------------------------------------------------------
# Output folders


def test_a_script_replaces_its_own_outputs_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out, "--outdir", "generate.py")
    first.path("grid.png").write_text("first")
    # The same command again: its own file is replaced, as the manifest says it owns it.
    again = OutputFolder(out, "--outdir", "generate.py")
    again.path("grid.png").write_text("second")
    assert (out / "grid.png").read_text() == "second"
    assert (out / MANIFEST).is_file()
    # A file the user put there is never replaced.
    (out / "notes.png").write_text("mine")
    with pytest.raises(OutputError, match=r"--outdir .* already holds notes.png, which generate.py did not write"):
        OutputFolder(out, "--outdir", "generate.py").path("notes.png")
    assert (out / "notes.png").read_text() == "mine"


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for outdir, relation in ((photos, "is the input folder"), (photos / "out", "lies inside the input folder")):
        with pytest.raises(OutputError, match=relation):
            OutputFolder(outdir, "--outdir", "translate.py", reads=[photos])
    OutputFolder(tmp_path / "elsewhere", "--outdir", "translate.py", reads=[photos])  # beside it is fine


def test_an_output_that_would_replace_an_input_is_refused_even_if_owned(tmp_path):
    out = tmp_path / "out"
    OutputFolder(out, "--outdir", "translate.py").path("face.pt").write_text("codes")
    with pytest.raises(OutputError, match="which translate.py reads"):
        OutputFolder(out, "--outdir", "translate.py", reads=[out / "face.pt"]).path("face.pt")


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "f", "--out", "evaluate.py")


# ---------------------------------------------------------------------------
# Images


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # Pillow keeps the 16 bits
    rgb = np.asarray(load_photo(tmp_path / "grey16.png"))
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    assert rgb.shape == (48, 48, 3)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 1], expected)
    assert rgb.mean() < 200  # Pillow's convert("RGB") gives an almost white image
    assert np.asarray(Image.open(tmp_path / "grey16.png").convert("RGB")).mean() > 250


def test_images_below_the_minimum_side_are_refused_with_their_size(tmp_path):
    Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE - 1)).save(tmp_path / "thin.png")
    Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)).save(tmp_path / "ok.png")
    with pytest.raises(UnreadableImageError, match=rf"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE - 1} pixels"):
        check_image(tmp_path / "thin.png")
    with pytest.raises(UnreadableImageError, match="smaller than"):
        load_photo(tmp_path / "thin.png")
    assert check_image(tmp_path / "ok.png") == tmp_path / "ok.png"


def test_the_reason_an_image_cannot_be_read_is_kept(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:400])
    with pytest.raises(UnreadableImageError, match="truncated"):
        load_photo(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UnreadableImageError, match="decompression-bomb guard"):
        check_image(tmp_path / "whole.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="not a readable image"):
        check_image(tmp_path / "text.png")


# ---------------------------------------------------------------------------
# Caches


def test_inversion_cache_entries_of_the_wrong_shape_or_non_finite_are_recomputed(tmp_path, caplog):
    from ipl.backends.diffae.backend import load_source_autoencoder
    from ipl.backends.diffusionclip import InversionCache

    config = tiny_diffae_config(tmp_path)
    model, fingerprint = load_source_autoencoder(config.generator, config.diffae, "cpu")
    files = sorted((REPO / "assets" / "demo_images").glob("*.png"))[:2]
    cache = InversionCache(model, fingerprint, tmp_path / "cache")
    x0, cond, x_t = cache.inverted(files, 300, 4, progress=False)
    entries = sorted((tmp_path / "cache").rglob("*.pt"))
    encoded = [p for p in entries if p.name.endswith("-encoded.pt")]
    inverted = [p for p in entries if "-inverted-" in p.name]

    # Damage one entry of each kind: a wrong shape, and NaNs.
    entry = torch.load(encoded[0], weights_only=True)
    torch.save({**entry, "x0": entry["x0"][:, :, :5]}, encoded[0])
    entry = torch.load(inverted[1], weights_only=True)
    torch.save({**entry, "x_t": torch.full_like(entry["x_t"], float("nan"))}, inverted[1])

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = InversionCache(model, fingerprint, tmp_path / "cache").inverted(files, 300, 4, progress=False)
    assert torch.equal(again[0], x0) and torch.equal(again[1], cond) and torch.equal(again[2], x_t)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(encoded[0]) in w and "'x0' has shape" in w for w in warnings), warnings
    assert any(str(inverted[1]) in w and "non-finite" in w for w in warnings), warnings
    assert torch.isfinite(torch.load(inverted[1], weights_only=True)["x_t"]).all()  # healed on disk


def test_a_bank_with_non_finite_features_is_rebuilt(tmp_path, caplog):
    from helpers import TINY_OVERRIDES

    from ipl import config as config_lib
    from ipl.backends.stylegan2 import build_bank, build_source_generator, load_bank
    from ipl.clip import load_clip

    generator, _ = build_source_generator(config_lib.load_config(None, TINY_OVERRIDES).generator, "cpu")
    clip_model, fields = load_clip("tiny"), {"k": 1}
    bank = build_bank(tmp_path / "bank.pt", fields, generator, clip_model, steps=1, batch=2, seed=0, progress=False)
    data = torch.load(tmp_path / "bank.pt", weights_only=True)
    data["features"][0, 0] = float("inf")
    torch.save(data, tmp_path / "bank.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_bank(tmp_path / "bank.pt", fields) is None
    assert any("non-finite" in r.getMessage() and str(tmp_path / "bank.pt") in r.getMessage() for r in caplog.records)
    rebuilt = build_bank(tmp_path / "bank.pt", fields, generator, clip_model, steps=1, batch=2, seed=0, progress=False)
    assert torch.equal(rebuilt.features, bank.features)


# ---------------------------------------------------------------------------
# Interrupted scripts say the command that continues them


@pytest.mark.parametrize(
    "script, advice, never",
    [
        ("adapt.py", "run the same command again (without --restart)", "--resume"),
        ("train_mapper.py", "add --resume to the same command", None),
        ("train_generator.py", "add --resume to the same command", None),
    ],
)
def test_ctrl_c_advises_the_command_that_resumes(script, advice, never, tmp_path, monkeypatch, capsys):
    import ipl.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ipl.pipeline.Session, "__init__", interrupted)
    args = ["--config", REPO / "configs" / "tiny.yaml", "--set", f"run_dir={tmp_path / 'run'}", "--set", "prompt.scheme=manual"]
    code, _, err = run_script(script, args, monkeypatch, capsys)
    assert code == cli.INTERRUPTED_EXIT
    assert advice in err and (never is None or never not in err)


def test_a_refused_run_does_not_rewrite_its_recorded_config(tmp_path, monkeypatch, capsys):
    from helpers import TINY_OVERRIDES

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("# the finished run's config\n")
    (run_dir / "mapper.pt").write_bytes(b"a finished mapper")
    sets = [a for o in (*TINY_OVERRIDES, f"run_dir={run_dir}") for a in ("--set", o)]
    code, _, err = run_script("train_mapper.py", ["--config", REPO / "configs" / "tiny.yaml", *sets], monkeypatch, capsys)
    assert code == cli.USAGE_EXIT and "mapper.pt exists" in err
    assert (run_dir / "config.yaml").read_text() == "# the finished run's config\n"
