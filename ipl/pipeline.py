"""The runs behind the scripts: Stage 1, Stage 2, and both in one run directory.

Scripts parse arguments and call these; everything here takes a validated
:class:`ipl.config.Config`.
"""

import logging
from pathlib import Path

import yaml

from . import config as config_lib
from .build import build_backend, build_clip
from .runtime import (
    CheckpointError,
    check_curves,
    choose_device,
    folder_problem,
    keep_freed_memory,
    load_checkpoint,
)
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

# The file each kind's Stage 2 writes the adapted model to (besides stage2.pt).
ADAPTED_FILES = {"stylegan2": "generator.pt", "diffae": "autoencoder.pt", "ddpm": "ddpm.pt"}


def mapper_keys(kind="stylegan2"):
    """Dotted config keys a Stage-1 checkpoint given to Stage 2 must share with the run: the
    family, the source model, the CLIP model whose token space the prompts live in, and every
    prompt setting (labels, scheme, ctx_init, target images)."""
    return ("generator.kind",) + _MODEL_KEYS[kind] + ("clip.model", "prompt")
# Settings that change speed or memory, never results; they may differ on resume.
NEUTRAL_KEYS = ("generator.render_chunk", "stage1.images", "stage1.log_every", "stage1.checkpoint_every", "stage2.chunk", "stage2.log_every", "stage2.checkpoint_every", "stage2.output_interval", "output.tensorboard", "output.wandb", "diffusionclip.checkpoint")


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


def check_compatible(path, ckpt, config, keys, what, remedy=None):
    diffs = config_differences(ckpt["config"], config_lib.to_dict(config), keys)
    if diffs:
        raise CheckpointError(
            f"{path} was {what} with a different configuration ({'; '.join(diffs[:5])}). "
            + (remedy or "Use another run name (--set name=...) or --restart to train it again.")
        )


RESTART = {
    "stage1": "python scripts/train_mapper.py ... --restart",
    "stage2": "python scripts/train_generator.py ... --restart",
    "adapt": "python scripts/adapt.py ... --restart",
}
RESUME = {
    "stage1": "--resume continues it",
    "stage2": "--resume continues it",
    "adapt": "scripts/adapt.py continues it when run again",
}


def check_run_dir(config, stage, resume=False, restart=False):
    """Refuse, before any model is built, to replace a run's work without being told to.

    Args:
        config: The run's config.
        stage: ``"stage1"`` (``train_mapper.py``), ``"stage2"``
            (``train_generator.py``) or ``"adapt"`` (both).
        resume: Continue the stage(s) from the checkpoints in the run directory.
        restart: Train the stage(s) again, replacing their files.

    Raises:
        CheckpointError: the run directory holds that stage's files and
            neither ``resume`` nor ``restart`` was given; the files were trained
            with another configuration; or a Stage-1 restart would leave
            Stage-2 files adapted with the replaced prompts.
    """
    if resume and restart:
        raise ValueError("resume and restart exclude each other")
    run_dir = config_lib.resolve(config).run_dir
    kind = config.generator.kind
    state, adapted = run_dir / "stage2.pt", run_dir / ADAPTED_FILES.get(kind, "generator.pt")
    found1 = [p for p in (run_dir / "mapper.pt",) if p.exists()]
    found2 = [p for p in (state, adapted) if p.exists()]
    if restart:
        if stage == "stage1" and found2:
            raise CheckpointError(
                f"{found2[0]} was adapted with the Stage-1 prompts that --restart would replace: restart both stages "
                f"({RESTART['adapt']}) or train into another run (--set name=NEW)"
            )
        return
    mine = {"stage1": found1, "stage2": found2, "adapt": found1 + found2}[stage]
    if mine and not resume:
        raise CheckpointError(
            f"{mine[0]} exists: this run ({run_dir}) has trained already. {RESUME[stage].capitalize()}, "
            f"--restart trains it again (replacing it), or --set name=NEW starts another run"
        )
    remedy = f"Train into another run (--set name=NEW), or train it again with {RESTART[stage]}."
    if found1 and stage in ("stage1", "adapt"):
        check_compatible(found1[0], load_checkpoint(found1[0], "mapper"), config, stage1_keys(kind), "trained", remedy)
    if stage in ("stage2", "adapt"):
        if state.exists():
            check_compatible(state, load_checkpoint(state, "stage2"), config, stage2_keys(kind), "trained", remedy)
        elif adapted.exists():
            raise CheckpointError(
                f"{adapted} exists but {state}, which Stage 2 resumes from, does not: train it again with {RESTART[stage]}, "
                "or train into another run (--set name=NEW)"
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
    if config.prompt.target_images:
        target_image_files(config.prompt.target_images)
    check_curves(config.output)


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
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    recorded_kind = recorded.get("generator", {}).get("kind", "stylegan2") if isinstance(recorded.get("generator"), dict) else None
    if recorded_kind != config.generator.kind:
        raise CheckpointError(
            f"{path} holds prompts learned on a generator.kind={recorded_kind} model, but this run adapts a "
            f"generator.kind={config.generator.kind} model: give --mapper a Stage-1 checkpoint of this model family"
        )
    check_compatible(
        path, ckpt, config, mapper_keys(config.generator.kind), "trained",
        "Give --mapper the Stage-1 checkpoint of a run with these labels, prompt settings and source model, or train one "
        "(python scripts/train_mapper.py --config ...).",
    )  # fmt: skip
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
        self._target, self._relearn = None, False

    @property
    def run_dir(self):
        return self.derived.run_dir

    @property
    def target(self):
        """The run's target (text, or images and the word learned from them), prepared once."""
        if self._target is None:
            self._target = prepare_target(self.config, self.clip, self.run_dir, progress=self.progress, relearn=self._relearn)
        return self._target

    def _accept(self, stage, resume, restart):
        """Check the run directory (:func:`check_run_dir`), then record the run's config there."""
        check_run_dir(self.config, stage, resume=resume, restart=restart)
        # A restart of the stage that first reads the target word learns it again (replacing target_word.pt).
        self._relearn = restart and (stage != "stage2" or self.config.prompt.scheme not in STAGE1_SCHEMES)
        write_run_config(self.config, self.derived, self.backend, self.run_dir)

    def stage1(self, resume=False, restart=False):
        """Train (or resume) Stage 1; returns the path of ``mapper.pt``.

        A run directory that holds a Stage-1 checkpoint is refused unless
        ``resume`` (continue it) or ``restart`` (replace it) is given.
        """
        config = self.config
        self._accept("stage1", resume, restart)
        return train_mapper(config, self.backend, self.clip, self.run_dir, self.device, resume=resume, progress=self.progress, run_target=self.target)

    def stage2(self, mapper_path=None, resume=False, restart=False):
        """Train (or resume) Stage 2; returns the path of the adapted model.

        A run directory that holds Stage-2 files is refused unless ``resume``
        or ``restart`` is given; ``mapper_path`` must hold prompts learned
        for this run's labels, prompt settings and source model.
        """
        self._accept("stage2", resume, restart)
        return self._train_stage2(mapper_path, resume)

    def _train_stage2(self, mapper_path, resume):
        config = self.config
        prompt_model = None
        if config.prompt.scheme in STAGE1_SCHEMES:
            mapper_path, _ = finished_mapper(config, mapper_path or self.run_dir / "mapper.pt")
            prompt_model, ckpt = load_prompt_model(mapper_path, self.device)
            check_same_target(mapper_path, ckpt["prompt"].get("target", {}), self.target)
        return train_generator(
            config, self.backend, self.clip, self.run_dir, self.device, prompt_model=prompt_model, resume=resume, progress=self.progress, run_target=self.target
        )

    def adapt(self, resume=True):
        """Stage 1 (reused when complete, resumed when not), then Stage 2; ``resume=False`` starts both over."""
        config = self.config
        self._accept("adapt", resume=resume, restart=not resume)
        mapper = self.run_dir / "mapper.pt"
        if config.prompt.scheme in STAGE1_SCHEMES:
            done = resume and mapper.exists() and load_checkpoint(mapper, "mapper")["step"] >= config.stage1.iterations
            if done:
                log.info("reusing the complete Stage-1 checkpoint %s", mapper)
            else:
                train_mapper(config, self.backend, self.clip, self.run_dir, self.device, resume=resume, progress=self.progress, run_target=self.target)
        return self._train_stage2(mapper, resume)


def adapt_run(config, device, progress=True):
    """Stage 1 then Stage 2 of ``config`` on ``device``, resuming a partial run; returns the adapted
    model's path and frees the models (the reproduction runners train many runs in one process)."""
    import torch

    path = Session(config, device=str(device), progress=progress).adapt(resume=True)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return path
