"""The one-command pipeline: end to end on the tiny config, reuse, and clean errors."""

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from helpers import assert_matches_recorded_run

from ipl.config import load_config
from stylegan2 import load_generator

REPO = Path(__file__).resolve().parents[1]


def adapt(tmp_path, *overrides):
    args = ["--set", f"run_dir={tmp_path / 'run'}", "--set", f"cache_dir={tmp_path / 'cache'}"]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "adapt.py"), "--config", str(REPO / "configs" / "tiny.yaml"), "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


# The demo config's first 10 + 10 steps: the run recorded in tests/fixtures/stylegan2_runs.pt
# ("demo"). Longer runs amplify each CPU's rounding beyond any tolerance that still means something.
DEMO_STEPS = ("stage1.iterations=10", "stage2.iterations=10")


def test_adapt_runs_the_tiny_config_end_to_end(tmp_path):
    done = adapt(tmp_path, *DEMO_STEPS)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    config = load_config(REPO / "configs" / "tiny.yaml", DEMO_STEPS)
    # Both stages ran to the end, with their outputs.
    mapper = torch.load(run / "mapper.pt", weights_only=True)
    assert mapper["step"] == config.stage1.iterations
    G, info = load_generator(run / "generator.pt")
    assert info["meta"]["target_class"] == "tolkien elf" and G.size == config.generator.size
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == f"step_{config.stage2.iterations:06d}.png"
    stats2 = (run / "stats_stage2.jsonl").read_text().splitlines()
    assert len(stats2) == config.stage2.iterations // config.stage2.log_every
    # The resolved config is written and loads back to the same config.
    resolved = load_config(run / "config.yaml")
    assert resolved.stage1 == config.stage1 and resolved.prompt == config.prompt
    assert "auto_layer_k=" in (run / "config.yaml").read_text().splitlines()[1]
    assert len(list((tmp_path / "cache" / "banks").glob("bank-*.pt"))) == 1
    # The script trains what was recorded, within the tolerance measured across machines.
    assert_matches_recorded_run("demo", torch.load(run / "generator.pt", weights_only=True)["g_ema"], "generator")
    assert_matches_recorded_run("demo", mapper["mapper"], "mapper")

    # A second run reuses the complete Stage-1 checkpoint instead of retraining.
    before = (run / "mapper.pt").stat().st_mtime_ns
    again = adapt(tmp_path, *DEMO_STEPS)
    assert again.returncode == 0, again.stderr
    assert "reusing the complete Stage-1 checkpoint" in again.stderr
    assert (run / "mapper.pt").stat().st_mtime_ns == before

    # A changed Stage-1 setting is not silently mixed with the old checkpoint.
    changed = adapt(tmp_path, *DEMO_STEPS, "stage1.lambda_domain=10")
    assert changed.returncode == 2
    assert "different configuration (stage1.lambda_domain: 1.0 in the checkpoint, 10.0 now)" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_adapt_runs_the_tiny_diffae_config_end_to_end(tmp_path):
    from ipl.backends.diffae import load_autoencoder

    def run():
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "adapt.py"), "--config", str(REPO / "configs" / "tiny_diffae.yaml"), "--no-progress",
             "--set", f"run_dir={tmp_path / 'run'}", "--set", f"cache_dir={tmp_path / 'cache'}"],
            capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip

    done = run()
    assert done.returncode == 0, done.stderr
    run_dir, config = tmp_path / "run", load_config(REPO / "configs" / "tiny_diffae.yaml")
    assert torch.load(run_dir / "mapper.pt", weights_only=True)["step"] == config.stage1.iterations
    model = load_autoencoder(run_dir / "autoencoder.pt")
    assert model.img_size == 32 and torch.load(run_dir / "autoencoder.pt", weights_only=True)["meta"]["target_class"] == "wall painting"
    steps = config.diffusionclip.epochs * config.data.n_train
    assert sorted(p.name for p in (run_dir / "samples").iterdir())[-1] == f"step_{steps:06d}.png"
    assert len((run_dir / "stats_stage2.jsonl").read_text().splitlines()) == steps // config.stage2.log_every
    # Every image was encoded once and the training images inverted once, into the cache.
    cached = list((tmp_path / "cache" / "diffae").rglob("*.pt"))
    assert sum(p.name.endswith("-encoded.pt") for p in cached) == config.data.n_images
    assert sum("-inverted-" in p.name for p in cached) == config.data.n_train

    # A second run reuses both stages' outputs.
    again = run()
    assert again.returncode == 0, again.stderr
    assert "reusing the complete Stage-1 checkpoint" in again.stderr


def test_bad_config_key_exits_with_a_hint_not_a_traceback(tmp_path):
    done = adapt(tmp_path, "stage1.lamda_domain=2")
    assert done.returncode == 2
    assert "unknown config key 'stage1.lamda_domain'; did you mean 'stage1.lambda_domain'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_generator_download_fails_cleanly(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"generator": {"checkpoint": "afhqdog"}, "clip": {"model": "tiny"}, "device": "cpu"}))
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_mapper.py"), "--config", str(cfg), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"IPL_PRETRAINED_DIR": str(tmp_path / "weights"), "IPL_PRETRAINED_URL": "http://127.0.0.1:9/none", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "download of http://127.0.0.1:9/none/afhqdog.pkl failed" in done.stderr
    assert "Run the same command again to resume" in done.stderr
    assert "Traceback" not in done.stderr
