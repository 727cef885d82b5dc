"""scripts/translate.py and ipl.inversion.translate end to end on tiny generators (CPU, seconds)."""

import copy
import json
import sys

import numpy as np
import pytest
import torch
from helpers import run_script
from inversion_checkpoints import DECODER, save_checkpoint
from PIL import Image

from ipl import cli
from ipl.images import load_photo
from ipl.inversion import MissingDependencyError, load_encoder
from ipl.inversion.align import DetectedFace, align_face
from ipl.inversion.images import center_square, encoder_input
from ipl.inversion.translate import (
    StyleGAN2Translator,
    build_translator,
    translate_photos,
)
from ipl.sampling import blend_generators, read_png, to_uint8
from stylegan2 import CheckpointError, Generator, save_generator

RES = DECODER["size"]  # 32 px: 8 W+ slots


def mse(images, targets):
    return (images - targets).square().flatten(1).mean(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny source, an 'adapted' copy (synthesis weights moved), a ReStyle file on the source, photos."""
    root = tmp_path_factory.mktemp("translate")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = Generator(**DECODER).eval()
    with torch.no_grad():
        for name, p in source.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    adapted = copy.deepcopy(source)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("style."):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    save_generator(root / "source.pt", source)
    save_generator(root / "adapted.pt", adapted)
    save_checkpoint(root / "restyle.pt", "restyle", seed=4, decoder=source.state_dict())
    save_checkpoint(root / "e4e.pt", "e4e", seed=5, decoder=source.state_dict())

    # VGG16 features for LPIPS, random: the default projection distance without a download.
    from ipl.metrics.diversity import build_lpips

    torch.manual_seed(0)
    net = build_lpips("vgg").net.state_dict()
    torch.save({"features." + k.split(".", 1)[1]: v for k, v in net.items()}, root / "vgg16-397923af.pth")

    photo = np.uint8(np.random.default_rng(0).integers(0, 256, (48, 40, 3)))  # portrait, not square
    Image.fromarray(photo).resize((40, 48)).save(root / "photo.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return {"root": root, "source": source, "adapted": adapted}


def columns(path, n=3, size=RES, pad=2):
    """The n images of a one-row grid written by ipl.sampling.grid."""
    canvas = read_png(path)
    assert canvas.shape == (size + 2 * pad, n * (size + pad) + pad, 3)
    return [canvas[pad : pad + size, pad + j * (size + pad) : pad + j * (size + pad) + size] for j in range(n)]


def render(generator, wplus):
    with torch.no_grad():
        image, _ = generator([wplus[None]], input_is_latent=True, randomize_noise=False)
    return to_uint8(image)[0]


def test_script_projects_photos_writes_grids_and_codes_and_skips_unreadable_files(files, monkeypatch, capsys, tmp_path):
    root, out = files["root"], tmp_path / "out"
    monkeypatch.setenv("IPL_LPIPS_VGG_WEIGHTS", str(root / "vgg16-397923af.pth"))
    code, stdout, stderr = run_script("translate.py", [
        "--ckpt", root / "adapted.pt", "--source", root / "source.pt", "--images", root / "photo.png",
        root / "broken.jpg", root / "missing.png", "--outdir", out, "--invert", "project", "--steps", "3",
        "--aligned", "--device", "cpu", "--no-progress",
    ], monkeypatch, capsys)  # fmt: skip
    assert code == 0, stderr
    assert "1 photo(s) translated" in stdout and "broken.jpg" in stdout and "missing.png" in stdout

    codes = torch.load(out / "photo.pt", weights_only=True)
    assert codes["kind"] == "stylegan2" and codes["settings"]["inversion"] == "project"
    assert codes["wplus"].shape == (8, DECODER["style_dim"]) and codes["space"] == "w"
    shown, reconstruction, translated = columns(out / "photo.png")
    # The codes are reusable: rendered again, they give the grid's columns.
    assert np.abs(reconstruction.astype(int) - render(files["source"], codes["wplus"])).max() <= 1
    assert np.abs(translated.astype(int) - render(files["adapted"], codes["wplus"])).max() <= 1
    assert np.abs(reconstruction.astype(int) - translated).mean() > 2  # the adapted weights changed the image
    # --aligned uses the photo's centred square as it is.
    face = center_square(Image.open(root / "photo.png").convert("RGB"))
    assert np.array_equal(read_png(out / "aligned" / "photo.png"), np.asarray(face))
    shown_expected = np.asarray(face.resize((RES, RES), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(shown.astype(int) - shown_expected).max() <= 1  # the input column, at the generator's size
    assert read_png(out / "grid.png").shape == read_png(out / "photo.png").shape  # one photo, one row

    report = json.loads((out / "translate.json").read_text())
    assert [d["name"] for d in report["done"]] == ["photo"]
    reasons = {s["image"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {str(root / "broken.jpg"), str(root / "missing.png")}
    assert "not a readable image" in reasons[str(root / "broken.jpg")] and "no such file" in reasons[str(root / "missing.png")]
    assert report["settings"]["steps"] == 3 and report["settings"]["aligned"] is True


def test_script_with_a_restyle_encoder_writes_its_codes_and_blends_the_weights(files, monkeypatch, capsys, tmp_path):
    root, out = files["root"], tmp_path / "out"
    code, _, stderr = run_script("translate.py", [
        "--ckpt", root / "adapted.pt", "--source", root / "source.pt", "--images", root / "photo.png",
        "--outdir", out, "--encoder", root / "restyle.pt", "--iterations", "2", "--alpha", "0.5", "--aligned",
        "--device", "cpu", "--no-progress",
    ], monkeypatch, capsys)  # fmt: skip
    assert code == 0, stderr
    face = center_square(Image.open(root / "photo.png").convert("RGB"))
    expected = load_encoder(root / "restyle.pt").invert(encoder_input(face), iterations=2)[0]
    codes = torch.load(out / "photo.pt", weights_only=True)
    torch.testing.assert_close(codes["wplus"], expected, rtol=1e-5, atol=1e-5)
    assert codes["settings"]["iterations"] == 2 and codes["settings"]["alpha"] == 0.5
    half = blend_generators(files["source"], files["adapted"], 0.5)
    assert np.abs(columns(out / "photo.png")[2].astype(int) - render(half, codes["wplus"])).max() <= 1


def test_an_encoder_of_the_wrong_kind_is_refused(files):
    root = files["root"]
    with pytest.raises(CheckpointError, match="e4e encoder.*restyle"):
        build_translator(root / "adapted.pt", source=str(root / "source.pt"), inversion="restyle", encoder=root / "e4e.pt")


def translator(files, **kw):
    return StyleGAN2Translator(files["source"], files["adapted"], inversion="project", steps=2, distance=mse, progress=False, **kw)


def face_landmarks(dx=0.0):
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = [40 + dx, 50], [60 + dx, 50]
    landmarks[48], landmarks[54] = [43 + dx, 80], [57 + dx, 80]
    return landmarks


class StubDetector:
    """``detect`` returns the given faces per photo file name (synthetic detections)."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return self.faces[image.info["name"]]


def save_photo(path, seed=1):
    photo = Image.fromarray(np.uint8(np.random.default_rng(seed).integers(0, 256, (120, 100, 3))))
    photo.save(path, pnginfo=_name(path.stem))
    return load_photo(path)


def _name(stem):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("name", stem)
    return info


def test_photos_are_aligned_with_the_detector_and_faceless_ones_are_skipped(files, tmp_path):
    photo = save_photo(tmp_path / "face.png")
    save_photo(tmp_path / "empty.png")
    landmarks = face_landmarks()
    detector = StubDetector({"face": [DetectedFace(landmarks, 1.2, 0)], "empty": []})
    summary = translate_photos([tmp_path / "face.png", tmp_path / "empty.png"], tmp_path / "out", translator(files), detector=detector)
    assert [d["name"] for d in summary.done] == ["face"]
    assert summary.skipped == [{"image": str(tmp_path / "empty.png"), "reason": f"{tmp_path / 'empty.png'}: no face found by dlib's frontal face detector"}]
    # The face was aligned by the FFHQ recipe, at 256 px (the encoders' size; the generator is smaller).
    expected = np.asarray(align_face(photo, landmarks, output_size=256))
    assert np.array_equal(read_png(tmp_path / "out" / "aligned" / "face.png"), expected)


def test_the_best_scoring_face_is_translated_and_translate_json_says_which(files, tmp_path):
    photo = save_photo(tmp_path / "group.png")
    faces = [DetectedFace(face_landmarks(-15), 0.4, 0), DetectedFace(face_landmarks(0), 1.9, 1), DetectedFace(face_landmarks(15), 0.1, 2)]
    summary = translate_photos([tmp_path / "group.png"], tmp_path / "out", translator(files), detector=StubDetector({"group": faces}))
    assert [d["name"] for d in summary.done] == ["group"]
    aligned = read_png(tmp_path / "out" / "aligned" / "group.png")
    assert np.array_equal(aligned, np.asarray(align_face(photo, faces[1].landmarks, output_size=256)))
    assert not np.array_equal(aligned, np.asarray(align_face(photo, faces[2].landmarks, output_size=256)))  # the recipe's last
    report = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert report["settings"]["faces"] == "best" and report["settings"]["min_face_score"] == 0.0
    assert {k: report["done"][0][k] for k in ("faces_found", "face", "score")} == {"faces_found": 3, "face": 1, "score": 1.9}


def test_all_faces_gives_each_face_above_the_threshold_its_own_row(files, tmp_path):
    photo = save_photo(tmp_path / "group.png")
    save_photo(tmp_path / "weak.png", seed=2)
    faces = [DetectedFace(face_landmarks(-15), 0.4, 0), DetectedFace(face_landmarks(0), 1.9, 1), DetectedFace(face_landmarks(15), 0.1, 2)]
    detector = StubDetector({"group": faces, "weak": [DetectedFace(face_landmarks(), 0.2, 0)]})
    summary = translate_photos(
        [tmp_path / "group.png", tmp_path / "weak.png"], tmp_path / "out", translator(files), detector=detector,
        all_faces=True, min_face_score=0.3,
    )  # fmt: skip
    assert [(d["name"], d["face"], d["faces_found"]) for d in summary.done] == [("group_face0", 0, 3), ("group_face1", 1, 3)]
    for k in (0, 1):
        expected = np.asarray(align_face(photo, faces[k].landmarks, output_size=256))
        assert np.array_equal(read_png(tmp_path / "out" / "aligned" / f"group_face{k}.png"), expected)
    assert not (tmp_path / "out" / "group_face2.png").exists()
    assert len(summary.skipped) == 1 and "none scoring at least 0.3 (best 0.200)" in summary.skipped[0]["reason"]
    cell = 32 + 2  # the tiny generator's 32 px cells and the grid's padding
    assert read_png(summary.grid).shape[0] == 2 * cell + 2  # one row per face


def test_without_dlib_alignment_fails_once_with_the_way_out(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependencyError, match="pip install dlib"):
        translate_photos([files["root"] / "photo.png"], tmp_path / "out", translator(files))
    code, _, stderr = run_script("translate.py", [
        "--ckpt", files["root"] / "adapted.pt", "--source", files["root"] / "source.pt", "--images",
        files["root"] / "photo.png", "--outdir", tmp_path / "out2", "--invert", "project", "--device", "cpu",
    ], monkeypatch, capsys)  # fmt: skip
    assert code == getattr(cli, "USAGE_EXIT", 1) and "pip install dlib" in stderr and "--aligned" in stderr


def test_photo_names_stay_unique(files, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        Image.new("RGB", (40, 40), (90, 120, 200)).save(tmp_path / folder / "me.png")
    summary = translate_photos([tmp_path / "a" / "me.png", tmp_path / "b" / "me.png"], tmp_path / "out", translator(files), aligned=True)
    assert [d["name"] for d in summary.done] == ["me", "me-1"]
    assert (tmp_path / "out" / "me-1.pt").is_file() and read_png(summary.grid).shape[0] == 2 * (RES + 2) + 2


@pytest.fixture(scope="module")
def diffae_run(tmp_path_factory):
    """A Diff-IPL run's autoencoder.pt: the tiny random source (recorded in the run config) with moved UNet weights."""
    from helpers import save_tiny_diffae_run

    root = tmp_path_factory.mktemp("diffae_run")
    _, config, source, adapted = save_tiny_diffae_run(root)
    photo = Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8))
    photo.save(root / "face.png")
    return root, config, source, adapted


def test_a_diffae_run_translates_photos_with_its_own_encoder_and_inversion(diffae_run):
    root, config, source, adapted = diffae_run
    dc = config.diffusionclip
    translator = build_translator(root / "autoencoder.pt", device="cpu", progress=False)
    summary = translate_photos([root / "face.png", root / "missing.png"], root / "out", translator, aligned=True)
    assert len(summary.done) == 1 and len(summary.skipped) == 1
    codes = torch.load(root / "out" / "face.pt", weights_only=True)
    assert codes["kind"] == "diffae" and codes["settings"]["t_0"] == dc.t_0
    # The codes are the source model's z_sem and DiffusionCLIP inversion of the photo's centred square.
    x0 = encoder_input(center_square(Image.open(root / "face.png").convert("RGB")), source.img_size)
    with torch.no_grad():
        z = source.encode(x0)
        x_t = source.invert(x0, z, dc.t_0, dc.n_inv_step)
        expected = [source.generate(x_t, z, dc.t_0, dc.n_test_step), adapted.generate(x_t, z, dc.t_0, dc.n_test_step)]
    torch.testing.assert_close(codes["z_sem"], z[0])
    torch.testing.assert_close(codes["x_t"], x_t[0])
    # The grid: input | source reconstruction | adapted render of the same latents.
    grid = read_png(root / "out" / "face.png").astype(int)
    size, pad = source.img_size, 2
    for column, image in zip((1, 2), expected):
        x = pad + column * (size + pad)
        assert np.abs(grid[pad : pad + size, x : x + size] - to_uint8(image)[0].astype(int)).max() <= 1


def test_a_diffae_run_at_alpha_zero_renders_the_source(diffae_run):
    root, _, _, _ = diffae_run
    translator = build_translator(root / "autoencoder.pt", alpha=0.0, device="cpu", progress=False)
    codes = translator.invert(center_square(Image.open(root / "face.png").convert("RGB")))
    torch.testing.assert_close(translator.translate(codes), translator.reconstruct(codes))


def test_diffae_and_stylegan2_inversions_are_not_mixed(diffae_run, files):
    root, _, _, _ = diffae_run
    with pytest.raises(CheckpointError, match="a Diff-IPL run: it inverts photos with its own semantic encoder"):
        build_translator(root / "autoencoder.pt", inversion="restyle")
    with pytest.raises(CheckpointError, match="a StyleGAN2 run: invert its photos with --invert restyle"):
        build_translator(files["root"] / "adapted.pt", inversion="diffae")
    torch.save({"state_dict": {"ema_model.conv.weight": torch.zeros(1)}, "hyper_parameters": {}}, root / "bare.ckpt")
    with pytest.raises(CheckpointError, match="no run config inside"):
        build_translator(root / "bare.ckpt")


# -- DDPM runs (DiffusionCLIP's Diff-CLIP): the code is x_{t_0} alone ----------


def diffusionclip_walk(net, x, pairs, alphas_cumprod):
    """DiffusionCLIP's ``denoising_step`` (eta 0) over ``(t, t_next)`` pairs, written out; alpha-bar at -1 is 1."""
    for t, t_next in pairs:
        a = float(alphas_cumprod[t])
        a_next = 1.0 if t_next < 0 else float(alphas_cumprod[t_next])
        eps = net(x, torch.full((x.shape[0],), t)).sample
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return x


def diffusionclip_by_hand(source, adapted, x0, t_0, n_inv_step, n_test_step):
    """``(x_{t_0}, source render, adapted render)`` of images x0, from DiffusionCLIP's walks and Ho et al.'s linear betas."""
    alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    inv = [int(s) for s in np.linspace(0, 1, n_inv_step) * t_0]
    gen = [int(s) for s in np.linspace(0, 1, n_test_step) * t_0]
    with torch.no_grad():
        x_t = diffusionclip_walk(source.net, x0, list(zip(inv[:-1], inv[1:])), alphas_cumprod)
        back = list(zip(reversed(gen), reversed([-1] + gen[:-1])))
        return x_t, diffusionclip_walk(source.net, x_t, back, alphas_cumprod), diffusionclip_walk(adapted.net, x_t, back, alphas_cumprod)


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """A DDPM run's ddpm.pt: the tiny random source (recorded in the run config) with moved weights."""
    from helpers import save_tiny_ddpm_run

    root = tmp_path_factory.mktemp("ddpm_run")
    _, config, source, adapted = save_tiny_ddpm_run(root)
    return root, config, source, adapted


def test_script_translates_aligned_photos_with_a_ddpm_runs_own_inversion(ddpm_run, monkeypatch, capsys):
    from helpers import REPO

    root, config, source, adapted = ddpm_run
    dc = config.diffusionclip
    photos = [REPO / "assets" / "demo_images" / f"face0{i}.png" for i in (0, 1)]
    code, _, err = run_script("translate.py", ["--ckpt", root / "ddpm.pt", "--images", *photos, "--aligned", "--outdir", root / "out",
                                                 "--device", "cpu", "--no-progress"], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    settings = json.loads((root / "out" / "translate.json").read_text())["settings"]
    assert settings["kind"] == settings["inversion"] == "ddpm" and settings["alpha"] == 1.0 and settings["t_0"] == dc.t_0
    size, pad = source.img_size, 2
    for photo in photos:
        codes = torch.load(root / "out" / f"{photo.stem}.pt", weights_only=True)
        assert codes["kind"] == "ddpm" and "z_sem" not in codes  # a DDPM has no semantic code
        x0 = encoder_input(center_square(Image.open(photo).convert("RGB")), size)
        x_t, reconstruction, edit = diffusionclip_by_hand(source, adapted, x0, dc.t_0, dc.n_inv_step, dc.n_test_step)
        torch.testing.assert_close(codes["x_t"], x_t[0], rtol=1e-3, atol=1e-3)  # channels-last convolutions round differently
        # The grid: input | source reconstruction | adapted render of the same x_{t_0}.
        grid = read_png(root / "out" / f"{photo.stem}.png").astype(int)
        for column, image in zip((1, 2), (reconstruction, edit)):
            x = pad + column * (size + pad)
            assert np.abs(grid[pad : pad + size, x : x + size] - to_uint8(image)[0].astype(int)).max() <= 1
        assert not np.array_equal(to_uint8(reconstruction), to_uint8(edit))


def test_a_ddpm_run_at_alpha_zero_renders_the_source_and_between_mixes_the_noise(ddpm_run):
    from helpers import REPO

    root, config, source, adapted = ddpm_run
    face = Image.open(REPO / "assets" / "demo_images" / "face02.png").convert("RGB")
    translator = build_translator(root / "ddpm.pt", alpha=0.0, device="cpu", progress=False)
    codes = translator.invert(face)
    torch.testing.assert_close(translator.translate(codes), translator.reconstruct(codes))
    # alpha 0.5: DiffusionCLIP's model_ratio, 0.5 eps_adapted + 0.5 eps_source at every step.
    half = build_translator(root / "ddpm.pt", alpha=0.5, device="cpu", progress=False)
    dc = config.diffusionclip
    gen = [int(s) for s in np.linspace(0, 1, dc.n_test_step) * dc.t_0]
    alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))

    class Mixed(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": 0.5 * adapted.net(x, t).sample + 0.5 * source.net(x, t).sample})

    with torch.no_grad():
        expected = diffusionclip_walk(Mixed(), codes["x_t"][None], list(zip(reversed(gen), reversed([-1] + gen[:-1]))), alphas_cumprod)
    torch.testing.assert_close(half.translate(codes), expected, rtol=1e-3, atol=1e-3)


def test_a_wrong_inversion_for_a_ddpm_run_is_one_clear_error(ddpm_run, monkeypatch, capsys):
    from helpers import REPO

    root, _, _, _ = ddpm_run
    for inversion in ("diffae", "restyle"):
        with pytest.raises(CheckpointError, match="is a DDPM run: it inverts photos with its own DDIM inversion \\(--invert ddpm"):
            build_translator(root / "ddpm.pt", inversion=inversion)
    code, _, err = run_script("translate.py", ["--ckpt", root / "ddpm.pt", "--images", REPO / "assets" / "demo_images" / "face00.png",
                                                 "--aligned", "--invert", "project", "--outdir", root / "wrong", "--device", "cpu"], monkeypatch, capsys)  # fmt: skip
    assert code != 0 and "--invert ddpm" in err and len(err.strip().splitlines()) == 1
