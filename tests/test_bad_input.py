"""Bad input to every script: one clear ``error:`` line and exit 2, never a traceback, a nonsense run, or advice to unpickle unsafely.

Each case runs a script in this process (``runpy``, as ``python scripts/X.py``
would) with one thing wrong: a config value or file, a file argument (missing,
a folder, truncated, random bytes, a file of another kind, a pickle that would
run code), or a flag value that parses but means nothing. The checks are the
same for all: exit 2, exactly one line with ``error:`` on stderr, no
traceback, nothing about ``weights_only``, and the phrase that names the
problem. Inputs that can be checked before a model is built or downloaded are
refused before (the cases run in seconds because of it).
"""

import hashlib
import os
import pickle
import runpy
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import REPO, TINY_DIFFAE_OVERRIDES, TINY_OVERRIDES, save_tiny_diffae_run
from ipl import config as config_lib
from ipl.backends.stylegan2 import build_bank, build_source_generator, load_bank
from ipl.method.mapper import build_prompt_model
from ipl.runtime import CHECKPOINT_FORMAT
from stylegan2 import save_generator

CONFIGS = REPO / "configs"
NO_GPU = not torch.cuda.is_available()


class RunsCommand:
    """Pickles as a call of ``os.system``: what a malicious checkpoint holds."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def write_png(path, seed=0, size=32):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Every file the cases point at, made once: good ones, damaged ones and wrong ones."""
    root = tmp_path_factory.mktemp("bad_input")
    sentinel = root / "the_pickle_ran"
    config = config_lib.load_config(None, TINY_OVERRIDES)
    files = SimpleNamespace(root=root, sentinel=sentinel)

    # A tiny adapted generator (the source is recorded in it) and a finished Stage-1 checkpoint.
    generator, _ = build_source_generator(config.generator, "cpu")
    files.gen = save_generator(root / "generator.pt", generator, config=config_lib.to_dict(config), step=4)
    model = build_prompt_model("adaptive", 16, 4, 32, config.mapper, torch.zeros(4, 32))
    mapper = {
        "format": CHECKPOINT_FORMAT,
        "config": config_lib.to_dict(config),
        "step": config.stage1.iterations,
        "prompt": {"scheme": "adaptive", "w_dim": 16, "n_ctx": 4, "token_dim": 32, "ctx_init": "a photo of a"},
        "mapper": model.state_dict(),
        "optimizer": {},
        "rng": {},
    }
    torch.save(mapper, root / "mapper.pt")
    files.mapper = root / "mapper.pt"
    torch.save({**mapper, "step": 2}, root / "unfinished_mapper.pt")
    files.unfinished_mapper = root / "unfinished_mapper.pt"
    torch.save({**mapper, "prompt": {**mapper["prompt"], "scheme": "learned_fixed"}}, root / "fixed_mapper.pt")
    files.fixed_mapper = root / "fixed_mapper.pt"
    torch.save({**mapper, "mapper": {"net.0.weight": torch.zeros(2, 2)}}, root / "foreign_mapper.pt")
    files.foreign_mapper = root / "foreign_mapper.pt"
    diffae_config = config_lib.load_config(None, TINY_DIFFAE_OVERRIDES)
    torch.save({**mapper, "config": config_lib.to_dict(diffae_config)}, root / "diffae_mapper.pt")
    files.diffae_mapper = root / "diffae_mapper.pt"
    files.autoencoder, _, _, _ = save_tiny_diffae_run(root / "diffae")

    # Damaged and wrong files.
    data = files.gen.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "empty.pt").write_bytes(b"")
    (root / "folder.pt").mkdir()
    torch.save({"g_ema": RunsCommand(f"touch {sentinel}")}, root / "evil.pt")  # torch's zip format
    with open(root / "evil.pkl", "wb") as fh:
        pickle.dump({"G_ema": RunsCommand(f"touch {sentinel}")}, fh)  # a plain pickle
    (root / "cut.pkl").write_bytes(pickle.dumps({"G_ema": list(range(1000))})[:200])
    with open(root / "plain.pkl", "wb") as fh:
        pickle.dump({"D": 1}, fh)
    for name in ("truncated", "random", "empty", "folder", "evil"):
        setattr(files, name, root / f"{name}.pt")
    files.evil_pkl, files.cut_pkl, files.plain_pkl = root / "evil.pkl", root / "cut.pkl", root / "plain.pkl"
    files.a_file = root / "a_file.txt"
    files.a_file.write_text("not a folder\n")

    # Images: good ones, a broken one, an empty folder, a Diff-IPL folder with one broken image.
    files.good_png = write_png(root / "good.png")
    files.broken_png = root / "broken.png"
    files.broken_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    files.no_images = root / "no_images"
    files.no_images.mkdir()
    (files.no_images / "notes.txt").write_text("no images here\n")
    files.bad_images = root / "bad_images"
    files.bad_images.mkdir()
    for i in range(5):
        write_png(files.bad_images / f"face{i}.png", seed=i)
    (files.bad_images / "face5.png").write_bytes(b"not an image at all")

    # YAML files.
    def yaml_file(name, text):
        (root / name).write_text(text)
        return root / name

    files.yaml_syntax = yaml_file("syntax.yaml", "stage1:\n  lr: [0.1\n")
    files.yaml_tab = yaml_file("tab.yaml", "stage1:\n\tlr: 0.1\n")
    files.yaml_list = yaml_file("list.yaml", "- stage1\n- stage2\n")
    files.yaml_typo = yaml_file("typo.yaml", "stage1:\n  lamda_domain: 10\n")
    files.yaml_batch0 = yaml_file("batch0.yaml", "stage1:\n  batch: 0\n")
    files.yaml_lr = yaml_file("lr.yaml", "stage1:\n  lr: 1e-5\n")
    files.yaml_fix = yaml_file("fix.yaml", "stage1:\n  batch: 4\n")

    # Run folders: a damaged mapper.pt; a finished mapper.pt with a damaged stage2.pt.
    for name in ("run_bad_mapper", "run_bad_stage2"):
        (root / name).mkdir()
    (root / "run_bad_mapper" / "mapper.pt").write_bytes(data[:100])
    torch.save(mapper, root / "run_bad_stage2" / "mapper.pt")
    (root / "run_bad_stage2" / "stage2.pt").write_bytes(data[: len(data) // 3])

    # A finished StyleGAN2 run (its config recorded), photos named like its files, images too small or cut.
    finished = root / "finished"
    finished.mkdir()
    save_generator(finished / "generator.pt", generator, config=config_lib.to_dict(config), step=4)
    torch.save({**mapper, "config": config_lib.to_dict(config)}, finished / "mapper.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "config": config_lib.to_dict(config), "step": 4, "g": {}, "g_ema": {}, "g_optim": {}}, finished / "stage2.pt")
    (finished / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(config)))
    files.finished = finished
    files.photos = root / "photos"
    files.photos.mkdir()
    files.photo_named_generator = write_png(files.photos / "generator.png", size=40)
    files.tiny_png = write_png(root / "tiny.png", size=1)
    files.cut_png = root / "cut.png"
    write_png(root / "whole.png", size=64)
    files.cut_png.write_bytes((root / "whole.png").read_bytes()[:300])
    files.user_outdir = root / "user_outdir"
    files.user_outdir.mkdir()
    for name in ("grid.png", "metrics.json", "seed0000.png"):
        (files.user_outdir / name).write_text("the user's own file\n")
    other = config_lib.load_config(None, [*TINY_OVERRIDES, "prompt.target_class=werewolf"])
    torch.save({**mapper, "config": config_lib.to_dict(other)}, root / "werewolf_mapper.pt")
    files.werewolf_mapper = root / "werewolf_mapper.pt"
    other = config_lib.load_config(None, [*TINY_OVERRIDES, "generator.seed=5"])
    torch.save({**mapper, "config": config_lib.to_dict(other)}, root / "other_generator_mapper.pt")
    files.other_generator_mapper = root / "other_generator_mapper.pt"

    files.sg = ["--config", CONFIGS / "tiny.yaml", *sets(*TINY_OVERRIDES, f"run_dir={root / 'run'}", f"cache_dir={root / 'cache'}")]
    files.sg_finished = ["--config", CONFIGS / "tiny.yaml", *sets(*TINY_OVERRIDES, f"run_dir={finished}", f"cache_dir={root / 'cache'}")]
    files.dae = ["--config", CONFIGS / "tiny_diffae.yaml", *sets(*TINY_DIFFAE_OVERRIDES, f"run_dir={root / 'run_dae'}", f"cache_dir={root / 'cache'}")]
    return files


def run(path, args, monkeypatch, capsys):
    """Run a script file in this process as ``__main__``; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
    monkeypatch.delenv("IPL_DEBUG", raising=False)
    code = 0
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_clear_line(code, err, expected, exit_code=2):
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert code == exit_code, err
    assert len(error_lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for phrase in [expected] if isinstance(expected, str) else expected:
        assert phrase in error_lines[0], f"{phrase!r} not in: {error_lines[0]}"


S = "scripts/"
# (script, arguments given the files, phrase(s) of the error line)
CASES = {
    # --- configs: files and --set overrides ---------------------------------
    "yaml-syntax": (S + "adapt.py", lambda f: ["--config", f.yaml_syntax], "not valid YAML at line 3"),
    "yaml-tab": (S + "train_mapper.py", lambda f: ["--config", f.yaml_tab], "YAML indents with spaces, never tabs"),
    "yaml-not-a-mapping": (S + "adapt.py", lambda f: ["--config", f.yaml_list], "the top level must be a mapping"),
    "yaml-unknown-key": (S + "adapt.py", lambda f: ["--config", f.yaml_typo], "did you mean 'stage1.lambda_domain'"),
    "config-missing": (S + "adapt.py", lambda f: ["--config", f.root / "nope.yaml"], "config file not found"),
    "config-is-a-folder": (S + "adapt.py", lambda f: ["--config", f.root], "is a folder, not a config file"),
    "config-layer-bad-last": (S + "adapt.py", lambda f: ["--config", f.yaml_fix, "--config", f.yaml_batch0], "stage1.batch: 0 must be >= 2"),
    "set-no-equals": (S + "adapt.py", lambda f: [*f.sg, "--set", "stage1.batch"], "must look like section.key=value"),
    "set-bad-yaml": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.target_class=[elf"], "the value is not valid YAML"),
    "set-wrong-type": (S + "adapt.py", lambda f: [*f.sg, "--set", "stage1.batch=four"], "stage1.batch: expected an integer"),
    "set-unknown-section": (S + "adapt.py", lambda f: [*f.sg, "--set", "stag1.lr=0.1"], "did you mean 'stage1'"),
    "set-bad-choice": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.scheme=nada"], "prompt.scheme: 'nada' is not one of"),
    "set-bad-device": (S + "adapt.py", lambda f: [*f.sg, "--set", "device=gpu"], "device: 'gpu' is not one of"),
    "log_every=0": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "stage1.log_every=0"], "stage1.log_every: 0 must be >= 1"),
    "n_hidden=-1": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "mapper.n_hidden=-1"], "mapper.n_hidden: -1 must be >= 0"),
    "stage2.chunk=-1": (S + "train_generator.py", lambda f: [*f.sg, "--set", "stage2.chunk=-1"], "stage2.chunk: -1 must be >= 0"),
    "stage1.batch=0": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "stage1.batch=0"], "stage1.batch: 0 must be >= 2"),
    "stage2.batch=0": (S + "train_generator.py", lambda f: [*f.sg, "--set", "stage2.batch=0"], "stage2.batch: 0 must be >= 1"),
    "stage1.iterations=-5": (S + "adapt.py", lambda f: [*f.sg, "--set", "stage1.iterations=-5"], "stage1.iterations: -5 must be >= 1"),
    "render_chunk=-1": (S + "adapt.py", lambda f: [*f.sg, "--set", "generator.render_chunk=-1"], "generator.render_chunk: -1"),
    "empty-target-class": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.target_class="], "prompt.target_class: '' must not be empty"),
    "same-labels": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.target_class=Human"], "is the source label too"),
    "ema_decay=1.5": (S + "train_generator.py", lambda f: [*f.sg, "--set", "stage2.ema_decay=1.5"], "stage2.ema_decay: 1.5 must be in (0, 1]"),
    "negative-lambda": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "stage1.lambda_domain=-1"], "stage1.lambda_domain: -1.0 must be a finite number >= 0"),
    "negative-lr": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "stage1.lr=-0.05"], "stage1.lr: -0.05 must be a finite number > 0"),
    "negative-stage2-lr": (S + "train_generator.py", lambda f: [*f.sg, "--set", "stage2.lr=-1e-3"], "stage2.lr: -0.001 must be a finite number > 0"),
    "nan-truncation": (S + "adapt.py", lambda f: [*f.sg, "--set", "stage1.truncation=.nan"], "stage1.truncation: nan must be in (0, 1]"),
    "multi-token-ctx": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.ctx_init=a photograph of a zxqvbn"], "'zxqvbn' is 5 tokens"),
    "ctx-double-space": (S + "adapt.py", lambda f: [*f.sg, "--set", "prompt.ctx_init=a  photo"], "has an empty word"),
    "size-not-power-of-two": (S + "adapt.py", lambda f: [*f.sg, "--set", "generator.size=100"], "generator.size: 100 must be a power of two"),
    "auto-layer-k-too-large": (S + "adapt.py", lambda f: [*f.sg, "--set", "stage2.auto_layer_k=99"], "stage2.auto_layer_k: must be between 1 and 6"),
    "name-with-slash": (S + "adapt.py", lambda f: [*f.sg, "--set", "name=a/b"], "is not a folder name"),
    "run-dir-is-a-file": (S + "adapt.py", lambda f: [*f.sg, "--set", f"run_dir={f.a_file}"], "run_dir:"),
    "run-dir-below-a-file": (S + "train_mapper.py", lambda f: [*f.sg, "--set", f"run_dir={f.a_file / 'run'}"], "cannot be created"),
    "cache-dir-is-a-file": (S + "adapt.py", lambda f: [*f.sg, "--set", f"cache_dir={f.a_file}"], "cache_dir:"),
    "clip-download-root-is-a-file": (S + "adapt.py", lambda f: [*f.sg, "--set", "clip.model=ViT-B/32", "--set", f"clip.download_root={f.a_file}"], "clip.download_root:"),
    "clip-unknown-name": (S + "adapt.py", lambda f: [*f.sg, "--set", "clip.model=ViT-B/33"], "did you mean 'ViT-B/32'"),
    "clip-random-unknown": (S + "adapt.py", lambda f: [*f.sg, "--set", "clip.model=random:ViT-Z"], "names no random CLIP architecture"),
    "clip-folder": (S + "adapt.py", lambda f: [*f.sg, "--set", f"clip.model={f.root}"], "is a folder"),
    "clip-truncated-file": (S + "adapt.py", lambda f: [*f.sg, "--set", f"clip.model={f.truncated}"], "is not a readable CLIP checkpoint"),
    "generator-missing": (S + "adapt.py", lambda f: [*f.sg, "--set", "generator.checkpoint=nosuch.pt"], "neither a file nor a pretrained model name"),
    "generator-folder": (S + "adapt.py", lambda f: [*f.sg, "--set", f"generator.checkpoint={f.folder}"], "is a folder, not a generator checkpoint"),
    "generator-truncated": (S + "train_mapper.py", lambda f: [*f.sg, "--set", f"generator.checkpoint={f.truncated}"], ["not a readable generator checkpoint", "truncated", "download_pretrained.py"]),
    "generator-is-a-mapper": (S + "adapt.py", lambda f: [*f.sg, "--set", f"generator.checkpoint={f.mapper}"], "no generator weights found"),
    "generator-pickle-runs-code": (S + "adapt.py", lambda f: [*f.sg, "--set", f"generator.checkpoint={f.evil}"], ["posix.system", "never does"]),
    "device-cuda": (S + "adapt.py", lambda f: [*f.sg, "--device", "cuda"], "torch sees no CUDA GPU"),
    "device-cuda-set": (S + "train_mapper.py", lambda f: [*f.sg, "--set", "device=cuda"], "torch sees no CUDA GPU"),
    "stylegan2-run-sets-diffae-key": (S + "adapt.py", lambda f: [*f.sg, "--set", "diffusionclip.t_0=500"], "generator.kind=stylegan2 run never reads it"),
    # --- Diff-IPL configs: diffae, data, diffusionclip ----------------------
    "diffae-stylegan2-checkpoint": (S + "adapt.py", lambda f: [*f.dae, "--set", "generator.checkpoint=ffhq"], "is a StyleGAN2 model"),
    "diffae-unknown-arch": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffae.arch=ffhq257"], "diffae.arch: 'ffhq257' is not a named architecture"),
    "diffae-checkpoint-missing": (S + "adapt.py", lambda f: [*f.dae, "--set", f"generator.checkpoint={f.root / 'nope.ckpt'}"], "Diff-AE checkpoint not found"),
    "diffae-checkpoint-folder": (S + "adapt.py", lambda f: [*f.dae, "--set", f"generator.checkpoint={f.folder}"], "is a folder, not a Diff-AE checkpoint file"),
    "diffae-checkpoint-truncated": (S + "adapt.py", lambda f: [*f.dae, "--set", f"generator.checkpoint={f.truncated}"], ["truncated", "last.ckpt"]),
    "diffae-checkpoint-is-a-generator": (S + "adapt.py", lambda f: [*f.dae, "--set", f"generator.checkpoint={f.gen}"], "not a Diff-AE checkpoint"),
    "diffae-checkpoint-pickle-runs-code": (S + "adapt.py", lambda f: [*f.dae, "--set", f"generator.checkpoint={f.evil}"], "not a Diff-AE checkpoint"),
    "diffae-sets-stylegan2-key": (S + "adapt.py", lambda f: [*f.dae, "--set", "stage2.lr=0.1"], "set diffusionclip.lr instead"),
    "data-images-unset": (S + "adapt.py", lambda f: [*f.dae, "--set", "data.images="], "data.images is empty"),
    "data-images-missing": (S + "adapt.py", lambda f: [*f.dae, "--set", f"data.images={f.root / 'nowhere'}"], "is not a folder"),
    "data-images-a-file": (S + "train_mapper.py", lambda f: [*f.dae, "--set", f"data.images={f.good_png}"], "is not a folder"),
    "data-images-empty-folder": (S + "adapt.py", lambda f: [*f.dae, "--set", f"data.images={f.no_images}"], "holds no images"),
    "data-images-unreadable": (S + "adapt.py", lambda f: [*f.dae, "--set", f"data.images={f.bad_images}"], ["face5.png: not a readable image", "remove or replace"]),
    "data-images-too-few": (S + "adapt.py", lambda f: [*f.dae, "--set", "data.n_images=60", "--set", "data.n_train=3"], "fewer than the 60"),
    "data-test-images-empty": (S + "adapt.py", lambda f: [*f.dae, "--set", f"data.test_images={f.no_images}"], "data.test_images"),
    "data-n_train>n_images": (S + "adapt.py", lambda f: [*f.dae, "--set", "data.n_train=7"], "data.n_train: 7 exceeds data.n_images"),
    "data-n_images=0": (S + "adapt.py", lambda f: [*f.dae, "--set", "data.n_images=0"], "data.n_images: 0 must be >= 1"),
    "diffae-stage1-batch>images": (S + "train_mapper.py", lambda f: [*f.dae, "--set", "stage1.batch=8"], "stage1.batch: 8 exceeds data.n_images"),
    "diffusionclip-t0=0": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.t_0=0"], "diffusionclip.t_0: 0 must be >= 1"),
    "diffusionclip-t0>=T": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.t_0=5000"], "must be below the model's T"),
    "diffusionclip-n_train_step=1": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.n_train_step=1"], "n_train_step: 1 must be 0"),
    "diffusionclip-n_inv_step=1": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.n_inv_step=1"], "n_inv_step: 1 must be >= 2"),
    "diffusionclip-lr=0": (S + "train_generator.py", lambda f: [*f.dae, "--set", "diffusionclip.lr=0"], "diffusionclip.lr: 0.0 must be a finite number > 0"),
    "diffusionclip-eta<0": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.eta=-0.5"], "diffusionclip.eta: -0.5"),
    "diffusionclip-batch=0": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.batch=0"], "diffusionclip.batch: 0 must be >= 1"),
    "diffusionclip-no-loss": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.clip_loss_w=0"], "nothing would be trained"),
    "diffusionclip-epochs=0": (S + "adapt.py", lambda f: [*f.dae, "--set", "diffusionclip.epochs=0"], "diffusionclip.epochs: 0 must be >= 1"),
    # --- Stage-1 and Stage-2 checkpoint files -------------------------------
    "mapper-missing": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.root / "nope.pt"], ["Stage-1 checkpoint not found", "train_mapper.py"]),
    "mapper-default-missing": (S + "train_generator.py", lambda f: f.sg, ["Stage-1 checkpoint not found", "run/mapper.pt", "train_mapper.py"]),
    "mapper-folder": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.folder], "is a folder, not a Stage-1 checkpoint file"),
    "mapper-truncated": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.truncated], ["not a readable Stage-1 checkpoint", "truncated", "train_mapper.py"]),
    "mapper-random-bytes": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.random], ["not a readable Stage-1 checkpoint", "not a PyTorch file"]),
    "mapper-empty": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.empty], "the file is empty"),
    "mapper-is-a-generator": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.gen], ["is a StyleGAN2 generator checkpoint", "not a Stage-1 checkpoint", "--mapper"]),
    "mapper-is-an-autoencoder": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.autoencoder], "is a Diff-AE autoencoder checkpoint"),
    "mapper-pickle-runs-code": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.evil], ["posix.system", "train_mapper.py"]),
    "mapper-plain-pickle": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.evil_pkl], "posix.system"),
    "mapper-unfinished": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.unfinished_mapper], "stopped at step 2 of 6"),
    "mapper-other-scheme": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.fixed_mapper], "holds 'learned_fixed' prompts"),
    "mapper-for-nada": (S + "train_generator.py", lambda f: [*f.sg, "--set", "prompt.scheme=manual", "--mapper", f.mapper], "learns no prompts"),
    "mapper-in-run-damaged-resume": (S + "train_mapper.py", lambda f: [*f.sg, "--set", f"run_dir={f.root / 'run_bad_mapper'}", "--resume"], "not a readable Stage-1 checkpoint"),
    "mapper-in-run-damaged-adapt": (S + "adapt.py", lambda f: [*f.sg, "--set", f"run_dir={f.root / 'run_bad_mapper'}"], "not a readable Stage-1 checkpoint"),
    "stage2-state-damaged": (S + "train_generator.py", lambda f: [*f.sg, "--set", f"run_dir={f.root / 'run_bad_stage2'}", "--resume"], ["not a readable Stage-2 training state", "--resume"]),
    # --- inspect_prompts.py ------------------------------------------------
    "inspect-mapper-missing": (S + "inspect_prompts.py", lambda f: ["--mapper", f.root / "nope.pt"], "Stage-1 checkpoint not found"),
    "inspect-mapper-folder": (S + "inspect_prompts.py", lambda f: ["--mapper", f.folder], "is a folder"),
    "inspect-mapper-truncated": (S + "inspect_prompts.py", lambda f: ["--mapper", f.truncated], "not a readable Stage-1 checkpoint"),
    "inspect-mapper-is-a-generator": (S + "inspect_prompts.py", lambda f: ["--mapper", f.gen], "not a Stage-1 checkpoint"),
    "inspect-mapper-pickle-runs-code": (S + "inspect_prompts.py", lambda f: ["--mapper", f.evil], "posix.system"),
    "inspect-mapper-foreign-weights": (S + "inspect_prompts.py", lambda f: ["--mapper", f.foreign_mapper, "--device", "cpu"], "its weights do not fit the LatentMapper"),
    "inspect-mapper-of-a-diffae-run": (S + "inspect_prompts.py", lambda f: ["--mapper", f.diffae_mapper, "--device", "cpu"], "is the Stage-1 checkpoint of a diffae run"),
    "inspect-seeds-empty": (S + "inspect_prompts.py", lambda f: ["--mapper", f.mapper, "--seeds", ""], "--seeds: no seeds"),
    "inspect-seeds-garbage": (S + "inspect_prompts.py", lambda f: ["--mapper", f.mapper, "--seeds", "a-b"], "--seeds: cannot read seeds"),
    "inspect-topk-0": (S + "inspect_prompts.py", lambda f: ["--mapper", f.mapper, "--topk", "0"], "argument --topk: must be an integer >= 1"),
    "inspect-device-cuda": (S + "inspect_prompts.py", lambda f: ["--mapper", f.mapper, "--device", "cuda"], "torch sees no CUDA GPU"),
    # --- generate.py -------------------------------------------------------
    "generate-ckpt-missing": (S + "generate.py", lambda f: ["--ckpt", f.root / "nope.pt", "--outdir", f.root / "o"], ["adapted model checkpoint not found", "adapt.py"]),
    "generate-ckpt-folder": (S + "generate.py", lambda f: ["--ckpt", f.folder, "--outdir", f.root / "o"], "is a folder, not an adapted model checkpoint"),
    "generate-ckpt-truncated": (S + "generate.py", lambda f: ["--ckpt", f.truncated, "--outdir", f.root / "o"], ["not a readable adapted model checkpoint", "truncated"]),
    "generate-ckpt-random-bytes": (S + "generate.py", lambda f: ["--ckpt", f.random, "--outdir", f.root / "o"], "not a PyTorch file"),
    "generate-ckpt-empty": (S + "generate.py", lambda f: ["--ckpt", f.empty, "--outdir", f.root / "o"], "the file is empty"),
    "generate-ckpt-pickle-runs-code": (S + "generate.py", lambda f: ["--ckpt", f.evil, "--outdir", f.root / "o"], "posix.system"),
    "generate-ckpt-is-a-mapper": (S + "generate.py", lambda f: ["--ckpt", f.mapper, "--outdir", f.root / "o"], ["is a Stage-1 checkpoint (mapper.pt)", "RUN/generator.pt"]),
    "generate-ckpt-is-an-autoencoder": (S + "generate.py", lambda f: ["--ckpt", f.autoencoder, "--outdir", f.root / "o"], "use scripts/translate.py"),
    "generate-source-missing": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--source", f.root / "nope.pt", "--outdir", f.root / "o", "--device", "cpu"], "checkpoint not found"),
    "generate-source-folder": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--source", f.folder, "--outdir", f.root / "o", "--device", "cpu"], "is a folder"),
    "generate-source-truncated": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--source", f.truncated, "--outdir", f.root / "o", "--device", "cpu"], "not a readable generator checkpoint"),
    "generate-seeds-empty": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds", "", "--outdir", f.root / "o"], "--seeds: no seeds"),
    "generate-seeds-reversed": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds", "5-1", "--outdir", f.root / "o"], "is empty"),
    "generate-seeds-negative": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds=-3", "--outdir", f.root / "o"], "cannot read seeds"),
    "generate-batch-0": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--batch", "0", "--outdir", f.root / "o"], "argument --batch: must be an integer >= 1"),
    "generate-steps-1": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--interpolate", "seeds", "--steps", "1", "--outdir", f.root / "o"], "argument --steps: must be an integer >= 2"),
    "generate-steps-alone": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--steps", "4", "--outdir", f.root / "o"], "give --interpolate"),
    "generate-gif-alone": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--gif", "--outdir", f.root / "o"], "give --interpolate"),
    "generate-grid-negative": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--grid=-1", "--outdir", f.root / "o"], "argument --grid: must be an integer >= 0"),
    "generate-alpha-outside": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--alpha", "1.5", "--source", "recorded", "--outdir", f.root / "o"], "--alpha must be in [0, 1]"),
    "generate-alpha-nan": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--alpha", "nan", "--source", "recorded", "--outdir", f.root / "o"], "--alpha must be in [0, 1]"),
    "generate-truncation-0": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--truncation", "0", "--outdir", f.root / "o"], "argument --truncation: must be in (0, 1]"),
    "generate-truncation-2": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--truncation", "2", "--outdir", f.root / "o"], "argument --truncation: must be in (0, 1]"),
    "generate-outdir-is-a-file": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--outdir", f.a_file], "--outdir"),
    "generate-outdir-below-a-file": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--outdir", f.a_file / "out"], "cannot be created"),
    # --- translate.py ------------------------------------------------------
    "translate-ckpt-missing": (S + "translate.py", lambda f: ["--ckpt", f.root / "nope.pt", "--images", f.good_png, "--outdir", f.root / "t", "--aligned"], "adapted model checkpoint not found"),
    "translate-ckpt-folder": (S + "translate.py", lambda f: ["--ckpt", f.folder, "--images", f.good_png, "--outdir", f.root / "t", "--aligned"], "is a folder"),
    "translate-ckpt-truncated": (S + "translate.py", lambda f: ["--ckpt", f.truncated, "--images", f.good_png, "--outdir", f.root / "t", "--aligned"], "not a readable adapted model checkpoint"),
    "translate-ckpt-is-a-mapper": (S + "translate.py", lambda f: ["--ckpt", f.mapper, "--images", f.good_png, "--outdir", f.root / "t", "--aligned"], "is a Stage-1 checkpoint"),
    "translate-images-match-nothing": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.root / "photos" / "*.jpg", "--outdir", f.root / "t"], "a pattern that matched nothing?"),
    "translate-images-empty-folder": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.no_images, "--outdir", f.root / "t"], "holds no images"),
    "translate-images-unreadable": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.broken_png, "--outdir", f.root / "t"], ["no readable image among", "broken.png"]),
    "translate-outdir-is-a-file": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.a_file], "--outdir"),
    "translate-alpha-outside": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--alpha", "-0.1"], "--alpha must be in [0, 1]"),
    "translate-steps-0": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--invert", "project", "--steps", "0"], "argument --steps: must be an integer >= 1"),
    "translate-steps-without-project": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--steps", "50"], "give --invert project"),
    "translate-space-without-project": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--space", "w+"], "give --invert project"),
    "translate-seed-negative": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--invert", "project", "--seed=-1"], "argument --seed: must be an integer >= 0"),
    "translate-iterations-0": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--iterations", "0"], "argument --iterations: must be an integer >= 1"),
    "translate-iterations-e4e": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--invert", "e4e", "--iterations", "3"], "--iterations is for ReStyle"),
    "translate-encoder-folder": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--encoder", f.folder, "--device", "cpu"], "is a folder, not an e4e / ReStyle encoder checkpoint"),
    "translate-encoder-truncated": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--encoder", f.truncated, "--device", "cpu"], ["not a readable e4e / ReStyle encoder checkpoint", "Google Drive"]),
    "translate-encoder-is-a-generator": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--encoder", f.gen, "--device", "cpu"], ["not an e4e / ReStyle checkpoint", "it holds a StyleGAN2 generator checkpoint"]),
    "translate-encoder-pickle-runs-code": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--encoder", f.evil, "--device", "cpu"], ["not an e4e / ReStyle checkpoint", "posix.system (read as inert placeholders: nothing from the file ran)"]),
    "translate-diffae-with-restyle": (S + "translate.py", lambda f: ["--ckpt", f.autoencoder, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--invert", "restyle"], "is a Diff-IPL run"),
    "translate-stylegan2-with-diffae": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned", "--invert", "diffae"], "is a StyleGAN2 run"),
    # --- evaluate.py --------------------------------------------------------
    "evaluate-adapted-missing": (S + "evaluate.py", lambda f: ["--adapted", f.root / "nope.pt", "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--device", "cpu"], "not found"),
    "evaluate-adapted-folder": (S + "evaluate.py", lambda f: ["--adapted", f.folder, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--device", "cpu"], "is a folder"),
    "evaluate-adapted-truncated": (S + "evaluate.py", lambda f: ["--adapted", f.truncated, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--device", "cpu"], "truncated"),
    "evaluate-adapted-is-a-mapper": (S + "evaluate.py", lambda f: ["--adapted", f.mapper, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--device", "cpu"], "is a Stage-1 checkpoint"),
    "evaluate-n-0": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--n", "0"], "argument --num-images/--n: must be an integer >= 2, got 0"),
    "evaluate-num-images-1": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--num-images", "1"], "must be an integer >= 2, got 1"),
    "evaluate-batch-0": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--batch", "0"], "argument --batch: must be an integer >= 1"),
    "evaluate-seed-start-negative": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--seed-start", "-1"], "argument --seed-start: must be an integer >= 0"),
    "evaluate-is-splits-0": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--is-splits", "0"], "argument --is-splits: must be an integer >= 1"),
    "evaluate-sifid-size-0": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--sifid-size", "0"], "argument --sifid-size: must be an integer >= 1"),
    "evaluate-refs-unreadable-image": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "sifid", "--refs", f.bad_images, "--n", "2", "--device", "cpu"], "not a readable image"),
    "evaluate-unknown-metric": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "fid"], "unknown metrics"),
    "evaluate-truncation-2": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--truncation", "2"], "argument --truncation: must be in (0, 1]"),
    "evaluate-sifid-without-refs": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "sifid"], "--refs"),
    "evaluate-refs-empty-folder": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "sifid", "--refs", f.no_images, "--n", "2"], "no reference images"),
    "evaluate-images-empty-folder": (S + "evaluate.py", lambda f: ["--adapted", f.autoencoder, "--images", f.no_images, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--device", "cpu"], "holds no images"),
    "evaluate-device-cuda": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--device", "cuda"], "torch sees no CUDA GPU"),
    # --- reproduce_table1.py ------------------------------------------------
    "table1-lambdas-garbage": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--lambdas", "one,ten"], "could not convert"),
    "table1-n-0": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--n", "0"], "argument --num-images/--n: must be an integer >= 2"),
    "table1-no-lambda": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--lambdas", ","], "--lambdas ',': give one or more numbers >= 0"),
    "table1-negative-lambda": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--lambdas", "1,-10"], "give one or more numbers >= 0"),
    "table1-bad-shard": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--shard", "2/2"], "--shard '2/2': i must be in 0..n-1"),
    "table1-unknown-metric": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--metrics", "is,fid"], "unknown metrics"),
    "table1-bad-override": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--configs", "ffhq_elf", "--runs-root", f.root / "t1", "--set", "stage1.batch=0"], "stage1.batch: 0 must be >= 2"),
    "table1-unknown-config": (S + "reproduce_table1.py", lambda f: ["--dry-run", "--configs", "ffhq_elff", "--runs-root", f.root / "t1"], "ffhq_elff"),
    # --- download_pretrained.py and convert_nvidia_pkl.py -------------------
    "download-no-names": (S + "download_pretrained.py", lambda f: ["--dir", f.root / "pre"], "name the models to fetch"),
    "download-unknown-name": (S + "download_pretrained.py", lambda f: ["ffhqq", "--dir", f.root / "pre"], "unknown model(s) ['ffhqq']"),
    "download-dir-is-a-file": (S + "download_pretrained.py", lambda f: ["ffhq", "--dir", f.a_file], "--dir"),
    "download-base-url-not-a-url": (S + "download_pretrained.py", lambda f: ["ffhq", "--dir", f.root / "pre", "--base-url", "nvlabs.example/models"], "is not a URL"),
    "download-unreachable-mirror": (S + "download_pretrained.py", lambda f: ["afhqcat", "--dir", f.root / "pre", "--base-url", f"file://{f.root / 'mirror'}", "--no-progress"], ["afhqcat:", "download of"]),
    "convert-input-missing": (S + "convert_nvidia_pkl.py", lambda f: [f.root / "nope.pkl", f.root / "out.pt"], ["pickle not found", "download_pretrained.py"]),
    "convert-input-folder": (S + "convert_nvidia_pkl.py", lambda f: [f.folder, f.root / "out.pt"], "is a folder, not an NVIDIA network pickle"),
    "convert-input-empty": (S + "convert_nvidia_pkl.py", lambda f: [f.empty, f.root / "out.pt"], "the file is empty"),
    "convert-input-truncated": (S + "convert_nvidia_pkl.py", lambda f: [f.cut_pkl, f.root / "out.pt"], "truncated or corrupt"),
    "convert-input-random-bytes": (S + "convert_nvidia_pkl.py", lambda f: [f.random, f.root / "out.pt"], "not a readable pickle"),
    "convert-input-is-a-checkpoint": (S + "convert_nvidia_pkl.py", lambda f: [f.gen, f.root / "out.pt"], "needs no conversion"),
    "convert-pickle-runs-code": (S + "convert_nvidia_pkl.py", lambda f: [f.evil_pkl, f.root / "out.pt"], ["posix.system", "Nothing from the file was executed"]),
    "convert-network-missing": (S + "convert_nvidia_pkl.py", lambda f: [f.plain_pkl, f.root / "out.pt"], "no 'G_ema' network"),
    "convert-output-is-a-folder": (S + "convert_nvidia_pkl.py", lambda f: [f.plain_pkl, f.folder], "output"),
    "convert-output-is-the-input": (S + "convert_nvidia_pkl.py", lambda f: [f.plain_pkl, f.plain_pkl], "would overwrite the input"),
    "convert-output-is-a-run-checkpoint": (S + "convert_nvidia_pkl.py", lambda f: [f.plain_pkl, f.finished / "generator.pt"], ["exists", "--force"]),
    # --- benchmarks/gpu_check.py --------------------------------------------
    "gpu-check-unknown-section": ("benchmarks/gpu_check.py", lambda f: ["--only", "opz", "--out", f.root / "g"], "unknown section(s)"),
    "gpu-check-device-cuda": ("benchmarks/gpu_check.py", lambda f: ["--device", "cuda", "--out", f.root / "g"], "torch sees no CUDA device"),
    "gpu-check-iters-0": ("benchmarks/gpu_check.py", lambda f: ["--iters", "0", "--out", f.root / "g"], "argument --iters: must be an integer >= 1"),
    "gpu-check-warmup-negative": ("benchmarks/gpu_check.py", lambda f: ["--warmup", "-1", "--out", f.root / "g"], "argument --warmup: must be an integer >= 0"),
    # --- build_bank.py ---------------------------------------------------------
    "build-bank-diffae": (S + "build_bank.py", lambda f: ["--config", CONFIGS / "tiny_diffae.yaml"], "the source-feature bank is StyleGAN2's"),
    "build-bank-bad-override": (S + "build_bank.py", lambda f: ["--config", CONFIGS / "tiny.yaml", "--set", "stage1.batch=1"], "stage1.batch: 1 must be >= 2"),
    "build-bank-cache-dir-is-a-file": (S + "build_bank.py", lambda f: [*f.sg, "--set", f"cache_dir={f.a_file}"], ["cache_dir:", "is a file"]),
    # --- never lose work: outputs that would replace what a script did not write --------
    "translate-outdir-is-the-run": (S + "translate.py", lambda f: ["--ckpt", f.finished / "generator.pt", "--images", f.photo_named_generator, "--outdir", f.finished, "--aligned"], ["writing generator.pt would replace", "which translate.py reads"]),
    "translate-outdir-is-another-run": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.photo_named_generator, "--outdir", f.finished, "--aligned"], ["already holds generator.pt", "translate.py did not write"]),
    "translate-outdir-is-the-images-folder": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.photos, "--outdir", f.photos, "--aligned"], ["--outdir", "is the input folder"]),
    "translate-outdir-inside-the-images-folder": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.photos, "--outdir", f.photos / "out", "--aligned"], "lies inside the input folder"),
    "translate-outdir-holds-the-users-grid": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.user_outdir, "--aligned"], "already holds grid.png"),
    "generate-outdir-holds-the-users-files": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds", "0-1", "--outdir", f.user_outdir], ["already holds seed0000.png", "generate.py did not write"]),
    "evaluate-out-holds-the-users-metrics": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--out", f.user_outdir], "already holds metrics.json"),
    "evaluate-out-is-the-images-folder": (S + "evaluate.py", lambda f: ["--adapted", f.autoencoder, "--images", f.photos, "--metrics", "clip", "--clip-model", "tiny", "--n", "2", "--out", f.photos], "is the input folder"),
    # --- never replace a finished run silently -------------------------------
    "train-generator-over-a-finished-run": (S + "train_generator.py", lambda f: f.sg_finished, ["stage2.pt exists", "--resume continues it", "--restart"]),
    "train-generator-over-a-finished-run-other-label": (S + "train_generator.py", lambda f: [*f.sg_finished, "--set", "prompt.target_class=werewolf"], "stage2.pt exists"),
    "train-generator-resume-other-label": (S + "train_generator.py", lambda f: [*f.sg_finished, "--set", "prompt.target_class=werewolf", "--resume"], ["different configuration (prompt.target_class", "--set name=NEW"]),
    "train-mapper-over-a-finished-run": (S + "train_mapper.py", lambda f: f.sg_finished, ["mapper.pt exists", "--resume continues it", "--restart"]),
    "train-mapper-restart-under-a-generator": (S + "train_mapper.py", lambda f: [*f.sg_finished, "--restart"], ["was adapted with the Stage-1 prompts", "adapt.py ... --restart"]),
    "train-mapper-resume-and-restart": (S + "train_mapper.py", lambda f: [*f.sg_finished, "--resume", "--restart"], "not allowed with argument"),
    "adapt-over-a-run-of-other-labels": (S + "adapt.py", lambda f: [*f.sg_finished, "--set", "prompt.target_class=werewolf"], ["different configuration (prompt.target_class", "adapt.py ... --restart"]),
    "mapper-of-other-labels": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.werewolf_mapper], ["different configuration (prompt.target_class: 'werewolf' in the checkpoint", "--mapper"]),
    "mapper-of-another-generator": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.other_generator_mapper], "generator.seed: 5 in the checkpoint, 0 now"),
    "mapper-of-another-family": (S + "train_generator.py", lambda f: [*f.sg, "--mapper", f.diffae_mapper], ["generator.kind=diffae", "this model family"]),
    # --- images read as what they are ------------------------------------------
    "translate-image-1x1": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.tiny_png, "--outdir", f.root / "t", "--aligned"], ["1x1 pixels", "smaller than the 32 px"]),
    "translate-image-truncated": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.cut_png, "--outdir", f.root / "t", "--aligned"], "truncated", ["a pattern that matched nothing"]),
    "translate-image-decompression-bomb": (S + "translate.py", lambda f: ["--ckpt", f.gen, "--images", f.good_png, "--outdir", f.root / "t", "--aligned"], "decompression-bomb guard", ["a pattern that matched nothing"]),
    "data-test-images-too-few": (S + "adapt.py", lambda f: [*f.dae, "--set", f"data.test_images={f.photos}", "--set", "data.n_test=2"], ["fewer than the 2", "lower data.n_test"], ["data.n_images"]),
    # --- every message in the flags the user types ------------------------------
    "set-value-blamed-on-the-set": (S + "adapt.py", lambda f: ["--config", CONFIGS / "tiny.yaml", "--set", "stage1.batch=0"], "(from --set stage1.batch=0)", ["(in "]),
    "config-value-blamed-on-the-file": (S + "adapt.py", lambda f: ["--config", f.yaml_batch0, "--set", "stage1.lr=0.1"], "batch0.yaml)", ["(from --set"]),
    "evaluate-metrics-empty": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", ""], "names no metric"),
    "evaluate-weights-missing-names-flags": (S + "evaluate.py", lambda f: ["--adapted", f.gen, "--metrics", "scs", "--n", "2", "--device", "cpu"], ["--download", "--weights-dir"], ["download=True", "path="]),
    "generate-interpolate-seeds-one-seed": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds", "5", "--interpolate", "seeds", "--outdir", f.root / "o"], "at least two seeds"),
    "generate-a-billion-seeds": (S + "generate.py", lambda f: ["--ckpt", f.gen, "--seeds", "0-999999999", "--outdir", f.root / "o"], ["1,000,000,000 seeds", "split the range"], ["memory"]),
}
NEEDS_NO_GPU = {"device-cuda", "device-cuda-set", "inspect-device-cuda", "evaluate-device-cuda", "gpu-check-device-cuda"}


def snapshot(root):
    """SHA-256 of every file under ``root``."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# Cases that need more than arguments: (monkeypatch, files) -> None, run before the script.
SETUP = {
    "translate-image-decompression-bomb": lambda mp, f: mp.setattr("PIL.Image.MAX_IMAGE_PIXELS", 100),
    "evaluate-weights-missing-names-flags": lambda mp, f: mp.setenv("TORCH_HOME", str(f.root / "torch_home")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(case, f, monkeypatch, capsys):
    if case in NEEDS_NO_GPU and not NO_GPU:
        pytest.skip("a CUDA GPU is visible: --device cuda is valid here")
    script, args, expected = CASES[case][:3]
    monkeypatch.setenv("IPL_PRETRAINED_DIR", str(f.root / "pretrained"))  # nothing is installed: no download starts
    if case in SETUP:
        SETUP[case](monkeypatch, f)
    before = snapshot(f.root)
    code, _, err = run(REPO / script, args(f), monkeypatch, capsys)
    assert_one_clear_line(code, err, expected)
    for phrase in CASES[case][3] if len(CASES[case]) > 3 else ():
        assert phrase not in err, f"{phrase!r} in: {err}"
    assert not f.sentinel.exists(), "code from a pickle ran"
    # Nothing that existed before the command changed: no run file, checkpoint, input or user file.
    after = snapshot(f.root)
    changed = [str(p) for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"{case} changed or removed {changed}"


# ---------------------------------------------------------------------------
# What is accepted, and what the library does without a script


def test_yaml_exponent_without_a_dot_is_a_float_and_config_files_layer(f):
    assert config_lib.load_config(f.yaml_lr).stage1.lr == 1e-5  # YAML 1.1 reads 1e-5 as a string
    layered = config_lib.load_config([f.yaml_batch0, f.yaml_fix])
    assert layered.stage1.batch == 4 and layered.name == "fix"  # the later file wins, also over a bad value


def test_a_damaged_bank_is_rebuilt_with_one_warning(f, tmp_path, caplog):
    from ipl.clip import load_clip

    assert load_bank(f.mapper, {"any": "fields"}) is None  # a readable file that is not a bank
    generator, _ = build_source_generator(config_lib.load_config(None, TINY_OVERRIDES).generator, "cpu")
    clip_model = load_clip("tiny")
    path, fields = tmp_path / "bank.pt", {"k": 1}
    expected = build_bank(tmp_path / "fresh.pt", fields, generator, clip_model, steps=1, batch=2, seed=0, progress=False)
    path.write_bytes(f.truncated.read_bytes())  # an interrupted copy of a bank
    caplog.clear()
    bank = build_bank(path, fields, generator, clip_model, steps=1, batch=2, seed=0, progress=False)
    assert torch.equal(bank.w, expected.w) and torch.equal(load_bank(path, fields).features, expected.features)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "building it again" in warnings[0]
    assert len(warnings[0].splitlines()) == 1


# ---------------------------------------------------------------------------
# Unexpected errors: one line naming the exception and IPL_DEBUG=1, or the traceback with it


# torch's own words when its tensors-only loader refuses a file (PyTorch 2.6 and later).
TORCH_REFUSAL = (
    "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
    "`torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely "
    "succeed, but it can result in arbitrary code execution. Do it only if you got the file from a trusted source.\n"
    "Please file an issue with the following so that we can make `weights_only=True` compatible with your use "
    "case: WeightsUnpickler error: \n\nUnsupported operand 183\n\nCheck the documentation of torch.load to learn "
    "more about types accepted by default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html."
)


@pytest.mark.parametrize(
    "error, expected",
    [
        (RuntimeError("something the code did not foresee"), "unexpected RuntimeError: something the code did not foresee"),
        (pickle.UnpicklingError(TORCH_REFUSAL), "unexpected UnpicklingError: Unsupported operand 183"),
    ],
    ids=["runtime-error", "torch-refusal-without-its-advice"],
)
def test_an_unexpected_error_is_one_line_that_names_ipl_debug(f, monkeypatch, capsys, error, expected):
    import ipl.sampling

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(ipl.sampling, "load_adapted", broken)
    code, _, err = run(REPO / "scripts" / "generate.py", ["--ckpt", f.gen, "--outdir", f.root / "o"], monkeypatch, capsys)
    assert_one_clear_line(code, err, [expected, "IPL_DEBUG=1"], exit_code=1)


def test_ipl_debug_shows_the_traceback(f, tmp_path):
    program = (
        "import runpy, sys, ipl.sampling\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('something the code did not foresee')\n"
        "ipl.sampling.load_adapted = broken\n"
        f"sys.argv = ['generate.py', '--ckpt', {str(f.gen)!r}, '--outdir', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(REPO / 'scripts' / 'generate.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "IPL_DEBUG": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: something the code did not foresee" in result.stderr
    assert "error: unexpected" not in result.stderr
