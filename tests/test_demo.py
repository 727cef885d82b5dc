"""The demo app: its functions through gradio_client on tiny runs, and one page in a real headless browser."""

import copy
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_OVERRIDES, save_tiny_diffae_run

from ipl import config as config_lib
from ipl.backends.stylegan2.source import build_source_generator
from ipl.demo.runs import find_runs
from ipl.inversion.align import FaceNotFoundError
from ipl.inversion.projection import mean_squared_error
from ipl.inversion.translate import build_translator, translate_photos
from ipl.sampling import (
    RECORDED_SOURCE,
    load_adapted,
    load_source,
    read_png,
    truncation_centre,
    write_samples,
)
from stylegan2 import save_generator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("IPL_REQUIRE_DEMO", "") not in ("", "0"):
    import gradio  # CI installs the demo: its absence is a failure there, not a skip
else:
    gradio = pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')
from gradio_client import Client, handle_file

FACE = REPO / "assets" / "demo_images" / "face00.png"
NO_FACE = REPO / "assets" / "demo_images" / "face01.png"  # the stub detector finds no face in this one


def save_tiny_stylegan2_run(run_dir, scheme, seed, config):
    """A finished StyleGAN2 run without training: the tiny recorded source with its synthesis weights moved."""
    source, _ = build_source_generator(config.generator, "cpu")
    adapted = copy.deepcopy(source)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("style."):  # Stage 2 never trains the mapping network
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    config = config_lib.load_config(None, TINY_OVERRIDES + [f"prompt.scheme={scheme}"])
    run_dir.mkdir(parents=True)
    config_lib.save_config(config, run_dir / "config.yaml")
    return save_generator(run_dir / "generator.pt", adapted, config=config_lib.to_dict(config), step=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "runs"
    config = config_lib.load_config(None, TINY_OVERRIDES)
    save_tiny_stylegan2_run(root / "elf_ipl", "adaptive", 1, config)
    save_tiny_stylegan2_run(root / "elf_nada", "manual", 2, config)
    _, diffae_config, _, _ = save_tiny_diffae_run(root / "wall_diffae")
    config_lib.save_config(diffae_config, root / "wall_diffae" / "config.yaml")
    (root / "broken").mkdir()
    (root / "broken" / "generator.pt").write_bytes(b"not a checkpoint")
    return root


NO_FACE_PIXELS = read_png(NO_FACE)


def stub_detector(image):
    """dlib's part: landmarks of a face filling the picture, and none in one of the photos."""
    if np.array_equal(np.asarray(image.convert("RGB")), NO_FACE_PIXELS):
        raise FaceNotFoundError("no face found by dlib's frontal face detector")
    w, h = image.size
    points = np.zeros((68, 2))
    points[36:42], points[42:48] = (0.38 * w, 0.45 * h), (0.62 * w, 0.45 * h)  # eyes
    points[48], points[54] = (0.42 * w, 0.72 * h), (0.58 * w, 0.72 * h)  # mouth corners
    return points


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(runs, tmp_path_factory):
    from ipl.demo.app import build_app

    cache = tmp_path_factory.mktemp("demo_cache")
    demo = build_app(runs, "cpu", detector=stub_detector, train_overrides=TINY_OVERRIDES + [f"cache_dir={cache}"])
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    demo.url = f"http://127.0.0.1:{port}/"
    yield demo
    demo.trainer.stop_all()
    demo.close()


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    return Client(app.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def shown(path, height):
    """A picture the page showed, at its own size (the page repeats each pixel k times)."""
    image = read_png(path)
    k = image.shape[0] // height
    assert image.shape[0] == k * height and np.array_equal(image, np.repeat(np.repeat(image[::k, ::k], k, 0), k, 1))
    return image[::k, ::k]


def label(runs, name):
    return next(run.label for run in find_runs(runs) if run.name == name)


def test_find_runs_lists_each_finished_run_with_its_kind_and_labels(runs):
    found = {run.name: run for run in find_runs(runs)}
    assert sorted(found) == ["elf_ipl", "elf_nada", "wall_diffae"]  # the unreadable file is left out
    assert (found["elf_ipl"].kind, found["elf_nada"].kind, found["wall_diffae"].kind) == ("stylegan2", "stylegan2", "diffae")
    assert found["elf_ipl"].label == "elf_ipl (stylegan2, IPL: human -> tolkien elf)"
    assert found["elf_nada"].label == "elf_nada (stylegan2, NADA: human -> tolkien elf)"
    assert found["wall_diffae"].target_class == "wall painting"


def test_translate_shows_each_model_beside_the_aligned_photo_as_translate_py_renders_it(client, runs, tmp_path):
    # The same photo through the library path of scripts/translate.py, model by model.
    alone = {}
    project = {"inversion": "project", "steps": 3, "distance": mean_squared_error}
    for name, file, kw in (("elf_ipl", "generator.pt", project), ("elf_nada", "generator.pt", project),
                           ("wall_diffae", "autoencoder.pt", {})):  # fmt: skip
        translator = build_translator(runs / name / file, progress=False, **kw)
        alone[name] = read_png(translate_photos([FACE], tmp_path / name, translator, aligned=True).done[0]["grid"])
    pad = 2

    def cell(image, i, size):
        return image[pad : pad + size, pad + i * (size + pad) : pad + i * (size + pad) + size]

    # Two StyleGAN2 models (16 px): aligned input, then reconstruction | adapted of each.
    labels = [label(runs, "elf_ipl"), label(runs, "elf_nada")]
    gallery, notes = client.predict([handle_file(str(FACE))], labels, True, 1.0, "project", 3, "mse", api_name="/translate")
    assert len(gallery) == 1 and gallery[0]["caption"] == "face00" and "Columns:" in notes
    row = shown(gallery[0]["image"], 16 + 2 * pad)
    assert row.shape == (16 + 2 * pad, 5 * (16 + pad) + pad, 3)
    for i, (name, j) in enumerate([("elf_ipl", 0), ("elf_ipl", 1), ("elf_ipl", 2), ("elf_nada", 1), ("elf_nada", 2)]):
        assert np.array_equal(cell(row, i, 16), cell(alone[name], j, 16)), (i, name)
    assert not np.array_equal(cell(row, 2, 16), cell(row, 4, 16))  # two models, two translations
    # With the 32 px Diff-IPL model, every cell is 32 px; the diffusion model's own are unchanged.
    labels = [label(runs, "elf_ipl"), label(runs, "wall_diffae")]
    gallery, _ = client.predict([handle_file(str(FACE))], labels, True, 1.0, "project", 3, "mse", api_name="/translate")
    row = shown(gallery[0]["image"], 32 + 2 * pad)
    assert row.shape == (32 + 2 * pad, 5 * (32 + pad) + pad, 3)
    for i, j in ((0, 0), (3, 1), (4, 2)):
        assert np.array_equal(cell(row, i, 32), cell(alone["wall_diffae"], j, 32)), i


def test_a_photo_without_a_face_is_named_in_a_message_and_the_others_go_on(client, runs):
    labels = [label(runs, "wall_diffae")]
    gallery, notes = client.predict([handle_file(str(NO_FACE)), handle_file(str(FACE))], labels, False, 1.0, "restyle", 1000, "lpips", api_name="/translate")
    assert [item["caption"] for item in gallery] == ["face00"]
    assert "face01.png: left out, no face found by dlib's frontal face detector" in notes and "Traceback" not in notes
    gallery, notes = client.predict([handle_file(str(NO_FACE))], labels, False, 1.0, "restyle", 1000, "lpips", api_name="/translate")
    assert gallery == [] and "No photo was translated" in notes


def test_bad_translate_input_is_one_message_on_the_page(client, runs):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="choose one or more models"):
        client.predict([handle_file(str(FACE))], [], True, 1.0, "restyle", 1000, "lpips", api_name="/translate")
    with pytest.raises(AppError, match="projection steps: must be a whole number from 1 to 5000, got 0"):
        client.predict([handle_file(str(FACE))], [label(runs, "elf_ipl")], True, 1.0, "project", 0, "mse", api_name="/translate")


def test_sample_renders_the_same_seeds_through_each_model_as_generate_py_does(client, runs, tmp_path):
    labels = [label(runs, "elf_ipl"), label(runs, "elf_nada")]
    grid, rows, strips, gifs = client.predict(labels, "3,5,8", 0.7, 1.0, "alpha", 3, api_name="/sample")
    grid = shown(grid, 3 * 18 + 2)  # the source row and two models' rows of 16 px images
    assert rows.startswith("Rows, top to bottom: source of elf_ipl; elf_ipl") and len(strips) == len(gifs) == 2
    # scripts/generate.py's library path, model by model: one PNG per seed and the source row of grid.png.
    size, pad = 16, 2
    cell = lambda r, c: grid[pad + r * (size + pad) : pad + r * (size + pad) + size, pad + c * (size + pad) : pad + c * (size + pad) + size]
    for r, name in ((1, "elf_ipl"), (2, "elf_nada")):
        adapted, info = load_adapted(runs / name / "generator.pt", "cpu")
        source, source_info = load_source(RECORDED_SOURCE, adapted, info, "cpu")
        centre, _ = truncation_centre(info, source_info, source)
        written = write_samples(adapted, tmp_path / name, [3, 5, 8], source=source, truncation=0.7, truncation_latent=centre, progress=False)
        for c, seed_png in enumerate(written["images"]):
            assert np.array_equal(cell(r, c), read_png(seed_png)), (name, c)
        if r == 1:
            assert np.array_equal(grid[: size + 2 * pad], read_png(written["grid"])[: size + 2 * pad])  # the source row
    strip = shown(strips[0]["image"], 3 * (size + pad) + pad)
    assert strip.shape == (3 * (size + pad) + pad, 3 * (size + pad) + pad, 3)  # a row per seed, a column per alpha
    assert Path(gifs[0]).read_bytes()[:6] == b"GIF89a"


def test_sample_refuses_diffusion_runs_and_bad_seeds_with_a_message(client, runs):
    from gradio_client.exceptions import AppError

    from ipl.cli import InputError
    from ipl.demo.tasks import sample_side_by_side

    wall = next(run for run in find_runs(runs) if run.name == "wall_diffae")
    with pytest.raises(InputError, match="sampling seeds is for StyleGAN2 runs"):
        sample_side_by_side([wall], "0-3")
    with pytest.raises(AppError, match="is not in the list of choices"):  # the page lists StyleGAN2 runs only
        client.predict([wall.label], "0-3", 0.7, 1.0, "none", 8, api_name="/sample")
    with pytest.raises(AppError, match="seeds: cannot read seeds"):
        client.predict([label(runs, "elf_ipl")], "zero", 0.7, 1.0, "none", 8, api_name="/sample")


def wait_for(client, run_dir, states, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text, sample, log, fraction, *_ = client.predict(run_dir, api_name="/train_status")
        if any(text.startswith(f"{Path(run_dir).name} {s}") for s in states):
            return text, sample, log, fraction
        time.sleep(0.5)
    raise AssertionError(f"no {states} within {timeout} s: {text} {log}")


def test_train_runs_a_tiny_run_to_the_end_stops_resumes_and_lists_it(client, runs):
    from gradio_client.exceptions import AppError

    preset = next(iter(__import__("ipl.demo.training", fromlist=["PRESETS"]).PRESETS))
    run_dir, text = client.predict(preset, "trained", "human", "werewolf", "adaptive", False, api_name="/train")
    assert Path(run_dir) == (runs / "trained").resolve() and text.startswith("started trained")
    with pytest.raises(AppError, match="is being trained already"):
        client.predict(preset, "trained", "human", "werewolf", "adaptive", False, api_name="/train")
    assert client.predict(run_dir, api_name="/stop").startswith("stopped trained")
    text, *_ = wait_for(client, run_dir, ["stopped"])
    # Started again it resumes, and finishes.
    client.predict(preset, "trained", "human", "werewolf", "adaptive", False, api_name="/train")
    text, sample, log, fraction = wait_for(client, run_dir, ["finished", "failed"])
    assert text.startswith("trained finished"), log
    last = read_png(Path(run_dir) / "samples" / "step_000004.png")  # TINY_OVERRIDES: 4 Stage-2 steps
    assert fraction == 1.0 and np.array_equal(shown(sample, last.shape[0]), last)
    # It is offered in the other tabs: the page's lists now hold it, and it samples.
    new = "trained (stylegan2, IPL: human -> werewolf)"
    assert new in [run.label for run in find_runs(runs)]
    client.predict(api_name="/runs")
    grid, rows, _, _ = client.predict([new], "0,1", 0.7, 1.0, "none", 8, api_name="/sample")
    assert shown(grid, 2 * 18 + 2).shape == (2 * 18 + 2, 2 * 18 + 2, 3) and new in rows


def test_train_refuses_what_the_config_refuses_with_its_message(client):
    from gradio_client.exceptions import AppError

    preset = next(iter(__import__("ipl.demo.training", fromlist=["PRESETS"]).PRESETS))
    with pytest.raises(AppError, match="prompt.target_class: 'human' is the source label too"):
        client.predict(preset, "same", "human", "human", "adaptive", False, api_name="/train")
    with pytest.raises(AppError, match="name: '' must not be empty"):
        client.predict(preset, "", "human", "elf", "adaptive", False, api_name="/train")


# ---------------------------------------------------------------------------
# A real browser: the distribution's Chromium, headless, through Selenium.

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRE_BROWSER = os.environ.get("IPL_REQUIRE_DEMO", "") not in ("", "0")


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if REQUIRE_BROWSER:
            pytest.fail(reason + " and IPL_REQUIRE_DEMO is set")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_the_page_translates_an_uploaded_photo_in_a_browser(app, runs, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    shots = os.environ.get("IPL_DEMO_SCREENSHOTS")
    wait = WebDriverWait(browser, 60)
    browser.get(app.url)
    wait.until(EC.presence_of_element_located((By.ID, "translate-button")))
    browser.find_element(By.CSS_SELECTOR, "#translate-photos input[type=file]").send_keys(str(FACE))
    wait.until(EC.text_to_be_present_in_element((By.ID, "translate-photos"), FACE.stem))  # the page breaks the name at its dot
    diffae = label(runs, "wall_diffae")
    browser.find_element(By.XPATH, f"//*[@id='translate-models']//label[contains(., '{diffae}')]").click()
    browser.find_element(By.XPATH, "//*[@id='translate-aligned']//input[@type='checkbox']").click()
    browser.find_element(By.ID, "translate-button").click()
    image = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#translate-result img")))
    assert image.get_attribute("src")
    notes = browser.find_element(By.ID, "translate-notes").text
    assert "Columns:" in notes and "error" not in notes.lower()
    if shots:
        save_screenshots(browser, wait, runs, Path(shots))


def save_screenshots(browser, wait, runs, folder):
    """The three tabs on the tiny models, for the README (IPL_DEMO_SCREENSHOTS=assets/demo)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    folder.mkdir(parents=True, exist_ok=True)
    time.sleep(1)
    browser.save_screenshot(str(folder / "translate.png"))
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Sample')]").click()
    for name in ("elf_ipl", "elf_nada"):
        browser.find_element(By.XPATH, f"//*[@id='sample-models']//label[contains(., '{label(runs, name)}')]").click()
    browser.find_element(By.ID, "sample-button").click()
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sample-grid img")))
    time.sleep(1)
    browser.save_screenshot(str(folder / "sample.png"))
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Train')]").click()
    name = browser.find_element(By.CSS_SELECTOR, "#train-name textarea, #train-name input")
    name.clear()
    name.send_keys("screenshot_run")
    browser.find_element(By.ID, "train-button").click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "screenshot_run finished"))
    time.sleep(3)  # the timer shows the last sample grid
    browser.save_screenshot(str(folder / "train.png"))
    shutil.rmtree(runs / "screenshot_run", ignore_errors=True)


def test_the_server_address_is_the_arguments_else_gradios_variables_else_the_default(monkeypatch):
    from ipl.demo.app import server_address

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert server_address() == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    assert server_address() == ("0.0.0.0", 8123)
    assert server_address("localhost", 9000) == ("localhost", 9000)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT"):
        server_address()
