"""The runs behind the scripts: Stage 1, Stage 2, and both in one run directory.

Scripts parse arguments and call these; everything here takes a validated
:class:`ipl.config.Config`.
"""

import logging
from pathlib import Path

import yaml

from . import config as config_lib
from .build import build_backend, build_clip
from .runtime import CheckpointError, check_curves, choose_device, folder_problem, keep_freed_memory, load_checkpoint
from .stages.stage1 import STAGE1_SCHEMES, load_prompt_model, train_mapper
from .stages.stage2 import train_generator
from .stages.target import check_same_target, prepare_target, target_image_files

log = logging.getLogger(__name__)

# Config sections a trained mapper depends on: a run may reuse (or resume) a
# Stage-1 checkpoint only if these agree. Per generator kind: the source
# model's own settings, then what every kind shares.
_MODEL_KEYS = {
    "stylegan2": ("generator.checkpoint", "generator.size", "generator.style_dim", "generator.seed"),
    "diffae": ("generator.checkpoint", "generator.seed", "diffae", "data"),
    "ddpm": ("generator.checkpoint", "generator.seed", "ddpm", "data"),
}
_SHARED_STAGE1_KEYS = ("clip.model", "clip.antialias", "prompt", "mapper", "stage1")
_STAGE2_SECTIONS = {"stylegan2": ("stage2",), "diffae": ("stage2", "diffusionclip"), "ddpm": ("stage2", "diffusionclip")}


def stage1_keys(kind="stylegan2"):
    """Dotted config keys a Stage-1 checkpoint of a ``kind`` run depends on."""
    return ("generator.kind",) + _MODEL_KEYS[kind] + _SHARED_STAGE1_KEYS


def stage2_keys(kind="stylegan2"):
    """Dotted config keys a Stage-2 checkpoint of a ``kind`` run depends on."""
    return stage1_keys(kind) + _STAGE2_SECTIONS[kind]


STAGE1_KEYS = stage1_keys()
STAGE2_KEYS = stage2_keys()
# Settings that change speed or memory, never results; they may differ on resume.
NEUTRAL_KEYS = ("generator.render_chunk", "stage1.images", "stage1.log_every", "stage1.checkpoint_every", "stage2.chunk", "stage2.log_every", "stage2.checkpoint_every", "stage2.output_interval", "output.tensorboard", "output.wandb")


def _get(data, dotted):
    for key in dotted.split("."):
        data = data[key]
    return data


def _flatten(data, prefix=""):
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def config_differences(saved, current, keys):
    """Dotted keys (under ``keys``) whose values differ, ignoring neutral ones.

    ``saved`` is read as a config first, so that a checkpoint written before
    a field existed compares as that field's default.
    """
    saved = config_lib.to_dict(config_lib.from_dict(saved))
    diffs = []
    for key in keys:
        a, b = _flatten(_get(saved, key), key), _flatten(_get(current, key), key)
        for k in sorted(set(a) | set(b)):
            if k not in NEUTRAL_KEYS and a.get(k) != b.get(k):
                diffs.append(f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now")
    return diffs


def check_compatible(path, ckpt, config, keys, what):
    diffs = config_differences(ckpt["config"], config_lib.to_dict(config), keys)
    if diffs:
        raise CheckpointError(
            f"{path} was {what} with a different configuration ({'; '.join(diffs[:5])}). "
            "Use another run name (name=... or run_dir=...) or delete the file to start over."
        )


def write_run_config(config, derived, backend, run_dir):
    """The resolved config (every field) to ``run_dir/config.yaml``, derived values as a header."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = (
        "# Resolved configuration of this run (loadable with --config).\n"
        f"# Derived: n_ctx={derived.n_ctx}, {backend.describe()}\n"
    )
    (run_dir / "config.yaml").write_text(header + yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))


def check_run_inputs(config):
    """Refuse, before anything is downloaded or built, the inputs of a run that cannot work.

    The output folders (``run_dir``, ``cache_dir``) must be folders or
    creatable, and the CLIP name must be one :func:`ipl.clip.load_clip`
    knows, and ``prompt.target_images`` must hold enough readable images.
    The source model's checkpoint and the training image folders are
    checked by the backends, before their first download.
    """
    from .clip import check_clip_name

    derived = config_lib.resolve(config)
    folders = [("run_dir", derived.run_dir, config.run_dir), ("cache_dir", derived.cache_dir, config.cache_dir)]
    if config.clip.download_root:
        folders.append(("clip.download_root", config.clip.download_root, config.clip.download_root))
    for key, folder, given in folders:
        problem = folder_problem(folder)
        if problem:
            origin = "" if given else f" (the default, from {'name' if key == 'run_dir' else 'your home folder'})"
            raise config_lib.ConfigError(f"{key}: {folder}{origin} {problem}; choose another folder with --set {key}=DIR")
    check_clip_name(config.clip.model)
    check_curves(config.output)
    if config.prompt.target_images:
        target_image_files(config.prompt.target_images)


def finished_mapper(config, mapper_path=None):
    """The finished Stage-1 checkpoint that Stage 2 of ``config`` reads, checked; returns ``(path, checkpoint)``.

    Cheap (no model is built), so scripts call it before the source model is
    loaded. ``mapper_path`` defaults to ``RUN/mapper.pt``.
    """
    path = Path(mapper_path or config_lib.resolve(config).run_dir / "mapper.pt")
    ckpt = load_checkpoint(path, "mapper")
    scheme = ckpt.get("prompt", {}).get("scheme") if isinstance(ckpt.get("prompt"), dict) else None
    if scheme != config.prompt.scheme:
        raise CheckpointError(
            f"{path} holds {scheme!r} prompts but prompt.scheme is {config.prompt.scheme!r}: "
            f"train Stage 1 with this config (python scripts/train_mapper.py --config ...), or set prompt.scheme={scheme}"
        )
    iterations = ckpt.get("config", {}).get("stage1", {}).get("iterations")
    if not isinstance(ckpt.get("step"), int) or not isinstance(iterations, int) or ckpt["step"] < iterations:
        raise CheckpointError(
            f"{path} stopped at step {ckpt.get('step')} of {iterations}; "
            "finish Stage 1 first (python scripts/train_mapper.py --config ... --resume)"
        )
    return path, ckpt


class Session:
    """What both stages share: device, the backend with its source model, CLIP, derived values."""

    def __init__(self, config, device=None, progress=True):
        self.config = config
        self.device = choose_device(device or config.device)
        check_run_inputs(config)
        if self.device.type == "cpu":
            # ~1.3x per step on a CPU; Diff-IPL only when asked, for its memory (see the docstring).
            keep_freed_memory(default=config.generator.kind == "stylegan2")
        self.progress = progress
        self.backend = build_backend(config, self.device, progress)
        self.clip = build_clip(config.clip, self.device)
        self.derived = config_lib.resolve(config)
        self.stage1_keys, self.stage2_keys = stage1_keys(config.generator.kind), stage2_keys(config.generator.kind)
        write_run_config(config, self.derived, self.backend, self.derived.run_dir)
        self._target = None

    @property
    def run_dir(self):
        return self.derived.run_dir

    @property
    def target(self):
        """The run's target (text, or images and the word learned from them), prepared once."""
        if self._target is None:
            self._target = prepare_target(self.config, self.clip, self.run_dir, progress=self.progress)
        return self._target

    def stage1(self, resume=False):
        """Train (or resume) Stage 1; returns the path of ``mapper.pt``."""
        config = self.config
        path = self.run_dir / "mapper.pt"
        if resume and path.exists():
            check_compatible(path, load_checkpoint(path, "mapper"), config, self.stage1_keys, "trained")
        return train_mapper(config, self.backend, self.clip, self.run_dir, self.device, resume=resume, progress=self.progress, run_target=self.target)

    def stage2(self, mapper_path=None, resume=False):
        """Train (or resume) Stage 2; returns the path of ``generator.pt``."""
        config = self.config
        prompt_model = None
        if config.prompt.scheme in STAGE1_SCHEMES:
            mapper_path, _ = finished_mapper(config, mapper_path or self.run_dir / "mapper.pt")
            prompt_model, ckpt = load_prompt_model(mapper_path, self.device)
            check_same_target(mapper_path, ckpt["prompt"].get("target", {}), self.target)
        path = self.run_dir / "stage2.pt"
        if resume and path.exists():
            check_compatible(path, load_checkpoint(path, "stage2"), config, self.stage2_keys, "trained")
        return train_generator(
            config, self.backend, self.clip, self.run_dir, self.device, prompt_model=prompt_model, resume=resume, progress=self.progress, run_target=self.target
        )

    def adapt(self, resume=True):
        """Stage 1 (reused when complete, resumed when not), then Stage 2."""
        config = self.config
        mapper = self.run_dir / "mapper.pt"
        if config.prompt.scheme in STAGE1_SCHEMES:
            done = False
            if resume and mapper.exists():
                ckpt = load_checkpoint(mapper, "mapper")
                check_compatible(mapper, ckpt, config, self.stage1_keys, "trained")
                done = ckpt["step"] >= config.stage1.iterations
            if done:
                log.info("reusing the complete Stage-1 checkpoint %s", mapper)
            else:
                self.stage1(resume=resume)
        return self.stage2(mapper, resume=resume)
