"""The Fig. 5 reproduction: its plan, the photo split, the inversions shared over ranks, the figure, the table, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipl.config import ConfigError
from ipl.distributed import World
from ipl.orchestration import fig5
from ipl.outputs import OutputError, OutputFolder

REPO = Path(__file__).resolve().parents[1]

# What the paper's caption and Sec. 4.3 say each adapted column is, written
# out here rather than read from the module: (config file, prompt scheme, generator kind).
PAPER_COLUMNS = {
    "NADA": ("ffhq_{}.yaml", "manual", "stylegan2"),
    "GAN-IPL": ("ffhq_{}.yaml", "adaptive", "stylegan2"),
    "Diff-CLIP": ("ddpm_{}.yaml", "manual", "ddpm"),
    "Diff-CLIP+": ("diffae_{}.yaml", "manual", "diffae"),
    "Diff-IPL": ("diffae_{}.yaml", "adaptive", "diffae"),
}


def photo_folder(folder, n, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), (10 * i) % 256, np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def test_columns_are_the_papers_nine_in_order():
    assert fig5.COLUMNS == ("Input", "Recon1", "NADA", "GAN-IPL", "Recon2", "Diff-CLIP", "Recon3", "Diff-CLIP+", "Diff-IPL")


def test_split_holds_out_the_last_photos_and_refuses_to_leave_none_for_training(tmp_path):
    folder = photo_folder(tmp_path / "photos", 6)
    split = fig5.split_photos(folder, n_test=2)
    assert [p.name for p in split.held_out] == ["p04.png", "p05.png"]
    assert split.n_train == 4 and "last 2" in split.how
    with pytest.raises(fig5.Fig5Error, match="--n-test"):
        fig5.split_photos(folder, n_test=6)
    test = photo_folder(tmp_path / "test", 3)
    split = fig5.split_photos(folder, test_images=test)
    assert split.n_train == 6 and [p.name for p in split.held_out] == ["p00.png", "p01.png", "p02.png"]
    with pytest.raises(fig5.Fig5Error, match="--test-images"):
        fig5.split_photos(folder, test_images=folder)


def test_plan_trains_the_five_columns_per_domain_from_the_papers_configs(tmp_path):
    folder = photo_folder(tmp_path / "photos", 60, size=32)
    split = fig5.split_photos(folder, n_test=3)
    runs = fig5.plan_fig5(split, runs_root=tmp_path / "runs")
    assert [(r.domain, r.column) for r in runs] == [(d, c) for d in ("wall_painting", "elf") for c in PAPER_COLUMNS]
    assert len({r.run_dir for r in runs}) == 10
    for run in runs:
        config_name, scheme, kind = PAPER_COLUMNS[run.column]
        config = run.config()
        assert Path(run.config_path).name == config_name.format(run.domain)
        assert (config.prompt.scheme, config.generator.kind) == (scheme, kind)
        assert config.prompt.target_class == {"wall_painting": "wall painting", "elf": "tolkien elf"}[run.domain]
        assert Path(config.run_dir) == run.run_dir
        if kind != "stylegan2":
            # The recipe's 50 of the first 57 photos: the 3 held out are never read.
            assert Path(config.data.images) == folder and config.data.n_images == 57 and config.data.n_train == 50
    few = fig5.split_photos(photo_folder(tmp_path / "few", 7, size=32), n_test=3)
    with pytest.raises(ConfigError, match="4 training photos"):
        fig5.plan_fig5(few, runs_root=tmp_path / "runs")


def test_tiny_plan_uses_the_tiny_models_with_the_domains_prompts(tmp_path):
    split = fig5.split_photos(REPO / "assets" / "demo_images", n_test=4)
    runs = fig5.plan_fig5(split, domains=("elf",), runs_root=tmp_path, tiny=True)
    for run in runs:
        config = run.config()
        assert config.generator.checkpoint == "random" and config.clip.model == "tiny"
        assert (config.prompt.source_class, config.prompt.target_class) == ("human", "tolkien elf")
        assert config.prompt.scheme == PAPER_COLUMNS[run.column][1]
    with pytest.raises(fig5.Fig5Error, match="wall_painting, elf"):
        fig5.plan_fig5(split, domains=("pixar",), runs_root=tmp_path, tiny=True)


class FakeTranslator:
    """Codes = the photo's mean colour; renders = the codes as a flat image; counts inversions."""

    inverted = []

    def __init__(self, family, shift=0.0):
        self.family, self.shift = family, shift

    def invert(self, face):
        FakeTranslator.inverted.append(self.family)
        return {"mean": torch.tensor(np.asarray(face), dtype=torch.float32).mean() / 127.5 - 1}

    def reconstruct(self, codes):
        return torch.full((1, 3, 8, 8), float(codes["mean"]))

    def translate(self, codes):
        return torch.full((1, 3, 8, 8), float(codes["mean"]) + self.shift).clamp(-1, 1)


def test_inversions_are_shared_round_robin_over_ranks_and_reused(tmp_path, monkeypatch):
    split = fig5.split_photos(REPO / "assets" / "demo_images", n_test=4)
    runs = fig5.plan_fig5(split, runs_root=tmp_path / "runs", tiny=True)
    calls = []

    def fake_build(run, device, inversion, *, invert=False, progress=False):
        calls.append((run.family, invert))
        return FakeTranslator(run.family)

    monkeypatch.setattr(fig5, "build_column_translator", fake_build)
    FakeTranslator.inverted = []
    inversion = fig5.InversionSettings(gan="project", steps=2, distance="mse")
    # Two independent shares of the items (no process group): 3 families x 4 photos = 12 items.
    done = [fig5.cache_inversions(runs, split, tmp_path / "out", device="cpu", inversion=inversion, world=World(r, 2, joined=False)) for r in (0, 1)]
    assert FakeTranslator.inverted.count("gan") == FakeTranslator.inverted.count("ddpm") == FakeTranslator.inverted.count("diffae") == 4
    assert all(set(d) == {"gan", "ddpm", "diffae"} for d in done)
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.pt"))
    assert files == sorted(f"inversions/{f}/face{i:02d}.pt" for f in ("gan", "ddpm", "diffae") for i in range(8, 12))
    # Only the first run of each family inverts (both domains share its codes).
    assert all(invert for _, invert in calls) and len(calls) == 6  # each rank builds one per family
    FakeTranslator.inverted = []
    again = fig5.cache_inversions(runs, split, tmp_path / "out", device="cpu", inversion=inversion)
    assert FakeTranslator.inverted == [] and again == {}
    # Other inversion settings are another key: recomputed, not reused.
    fig5.cache_inversions(runs, split, tmp_path / "out", device="cpu", inversion=fig5.InversionSettings(gan="project", steps=3, distance="mse"))
    assert FakeTranslator.inverted == ["gan"] * 4


def test_figure_puts_every_cell_under_its_label():
    cell, pad, labels = 64, 2, ("Input", "NADA", "Diff-IPL")
    colours = [[-1.0, 0.0, 1.0], [0.5, -0.5, 0.25]]
    rows = [[torch.full((1, 3, 8 if j else 12, 8 if j else 12), c) for j, c in enumerate(row)] for row in colours]
    image = fig5.figure_image(rows, labels, cell=cell, pad=pad)
    header = fig5.HEADER
    assert image.shape == (header + 2 * (cell + pad) + pad, 3 * (cell + pad) + pad, 3)
    for i, row in enumerate(colours):
        for j, c in enumerate(row):
            y, x = header + pad + i * (cell + pad), pad + j * (cell + pad)
            expected = int((c + 1) / 2 * 255 + 0.5)
            assert (image[y : y + cell, x : x + cell] == expected).all()
    for j in range(3):  # some ink in each column's header, none between columns
        x = pad + j * (cell + pad)
        assert image[:header, x : x + cell].min() < 128
    assert image[:header, : pad].min() == 255
    with pytest.raises(ValueError, match="3 cells"):
        fig5.figure_image([rows[0][:2]], labels, cell=cell)


def test_table_lists_each_adapted_column_with_the_requested_metrics():
    summary = {
        "settings": {"metrics": ["id", "clip"], "id_net": "clip", "clip_model": "tiny", "is_splits": 10},
        "photos": {"how": "the last 4 images of X", "count": 4},
        "rows": 4,
        "domains": {
            "elf": {"label": "Human→Tolkien elf", "columns": {
                "NADA": {"recon": "Recon1", "inversion": "projection", "metrics": {"id": 0.5, "clip_score": 0.25}},
                "Diff-IPL": {"recon": "Recon3", "inversion": "diffae", "metrics": {"id": None, "clip_score": 0.125}},
            }},
        },
        "seconds": {"Recon1": {"invert": 3.0}, "NADA": {"train": {"elf": 12.0}, "render": {"elf": 1.0}}},
    }  # fmt: skip
    text = fig5.fig5_markdown(summary)
    lines = text.splitlines()
    assert "| Column | Source model | ID | CLIP score |" in lines
    assert "| NADA | Recon1: projection | 0.500 | 0.250 |" in lines
    assert "| Diff-IPL | Recon3: diffae | – | 0.125 |" in lines
    assert "| NADA | 12 | – | 1 |" in lines and "| Recon1 | – | 3 | – |" in lines
    assert "the last 4 images of X" in text and "CLIP image features" in text and "not public" in text


def test_an_output_folder_of_someone_elses_files_is_refused_before_training(tmp_path):
    split = fig5.split_photos(REPO / "assets" / "demo_images", n_test=4)
    runs = fig5.plan_fig5(split, domains=("elf",), runs_root=tmp_path / "runs", tiny=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fig5.md").write_text("mine")
    out = OutputFolder(tmp_path / "out", "--out", "reproduce_fig5.py")

    def adapt(config):
        raise AssertionError("trained before the output folder was checked")

    with pytest.raises(OutputError, match="fig5.md"):
        fig5.run_fig5(runs, split, out, device="cpu", inversion=fig5.InversionSettings(), settings=None, load_networks=None, adapt=adapt)
    assert (tmp_path / "out" / "fig5.md").read_text() == "mine"


@pytest.mark.slow  # ten tiny runs, the inversions and two figures: minutes on a shared 2-core CPU
def test_tiny_reproduction_writes_both_figures_and_the_table_then_reuses_everything(tmp_path, monkeypatch):
    root, images = tmp_path / "runs", REPO / "assets" / "demo_images"
    command = [sys.executable, str(REPO / "scripts" / "reproduce_fig5.py"), "--tiny", "--images", str(images), "--runs-root", str(root), "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    out = root / "figure"
    summary = json.loads((out / "fig5.json").read_text())
    for domain in ("wall_painting", "elf"):
        image = np.asarray(Image.open(out / f"fig5_{domain}.png"))
        assert image.shape == (fig5.HEADER + 4 * 66 + 2, 9 * 66 + 2, 3)  # 4 held-out rows, 9 columns of 64 px
        columns = summary["domains"][domain]["columns"]
        assert list(columns) == ["NADA", "GAN-IPL", "Diff-CLIP", "Diff-CLIP+", "Diff-IPL"]
        for entry in columns.values():
            assert -1 <= entry["metrics"]["clip_score"] <= 1 and -1 <= entry["metrics"]["id"] <= 1.0001
            assert Path(entry["adapted"]).is_file()
    assert summary["photos"]["count"] == 4 and summary["photos"]["files"][0].endswith("face08.png")
    assert set(summary["seconds"]) == set(fig5.COLUMNS) - {"Input"}

    # The same command again trains nothing and inverts nothing: every run and inversion is found finished.
    split = fig5.split_photos(images, n_test=4)
    runs = fig5.plan_fig5(split, runs_root=root, tiny=True, overrides=[f"cache_dir={root / 'cache'}"])

    def refuse(*args, **kwargs):
        raise AssertionError("finished work done again")

    assert fig5.train_runs(runs, device="cpu", adapt=refuse) == {}
    monkeypatch.setattr(fig5, "build_column_translator", refuse)
    inversion = fig5.InversionSettings(gan="project", steps=8, distance="mse")
    assert fig5.cache_inversions(runs, split, out, device="cpu", inversion=inversion) == {}
