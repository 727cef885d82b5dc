"""The runs behind the scripts: Stage 1, Stage 2, and both in one run directory.

Scripts parse arguments and call these; everything here takes a validated
:class:`ipl.config.Config`.
"""

import logging
from pathlib import Path

import yaml

from . import config as config_lib
from .build import build_clip, build_source_generator, build_stage1_bank
from .runtime import CheckpointError, choose_device, keep_freed_memory, load_checkpoint
from .sampling import truncation_centre
from .stage1 import STAGE1_SCHEMES, load_prompt_model, train_mapper
from .stage2 import train_generator

log = logging.getLogger(__name__)

# Config sections a trained mapper depends on: a run may reuse (or resume) a
# Stage-1 checkpoint only if these agree.
STAGE1_KEYS = ("generator.checkpoint", "generator.size", "generator.style_dim", "generator.seed", "clip.model", "clip.antialias", "prompt", "mapper", "stage1")
STAGE2_KEYS = STAGE1_KEYS + ("stage2",)
# Settings that change speed or memory, never results; they may differ on resume.
NEUTRAL_KEYS = ("generator.render_chunk", "stage1.images", "stage1.log_every", "stage1.checkpoint_every", "stage2.chunk", "stage2.log_every", "stage2.checkpoint_every", "stage2.output_interval")


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
    """Dotted keys (under ``keys``) whose values differ, ignoring neutral ones."""
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


def write_run_config(config, derived, run_dir):
    """The resolved config (every field) to ``run_dir/config.yaml``, derived values as a header."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = (
        "# Resolved configuration of this run (loadable with --config).\n"
        f"# Derived: n_ctx={derived.n_ctx}, n_latent={derived.n_latent}, auto_layer_k={derived.auto_layer_k}, "
        f"stage2 lr={derived.stage2_lr:.6g}, stage2 betas=({derived.stage2_betas[0]:.6g}, {derived.stage2_betas[1]:.6g})\n"
    )
    (run_dir / "config.yaml").write_text(header + yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))


class Session:
    """What both stages share: device, source generator, CLIP, derived values."""

    def __init__(self, config, device=None, progress=True):
        self.config = config
        self.device = choose_device(device or config.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # ~1.3x per step on a CPU, see its docstring
        self.progress = progress
        self.generator, self.generator_info = build_source_generator(config.generator, self.device)
        self.clip = build_clip(config.clip, self.device)
        self.derived = config_lib.resolve(config, self.generator.size)
        # The checkpoint's latent_avg when it has one (as generate.py uses),
        # else the mean W of 4096 seeded codes.
        centre, _ = truncation_centre(self.generator_info, generator=self.generator)
        self.truncation_latent = centre.to(self.device)
        write_run_config(config, self.derived, self.derived.run_dir)

    @property
    def run_dir(self):
        return self.derived.run_dir

    def stage1(self, resume=False):
        """Train (or resume) Stage 1; returns the path of ``mapper.pt``."""
        config = self.config
        path = self.run_dir / "mapper.pt"
        if resume and path.exists():
            check_compatible(path, load_checkpoint(path, "mapper"), config, STAGE1_KEYS, "trained")
        bank = None
        if config.stage1.images == "bank":
            bank = build_stage1_bank(config, self.derived, self.generator, self.generator_info, self.clip, self.truncation_latent, progress=self.progress)
        return train_mapper(
            config,
            self.generator,
            self.clip,
            self.run_dir,
            self.device,
            bank=bank,
            truncation_latent=self.truncation_latent,
            resume=resume,
            progress=self.progress,
        )

    def stage2(self, mapper_path=None, resume=False):
        """Train (or resume) Stage 2; returns the path of ``generator.pt``."""
        config = self.config
        prompt_model = None
        if config.prompt.scheme in STAGE1_SCHEMES:
            mapper_path = Path(mapper_path or self.run_dir / "mapper.pt")
            prompt_model, ckpt = load_prompt_model(mapper_path, self.device)
            if ckpt["prompt"]["scheme"] != config.prompt.scheme:
                raise CheckpointError(
                    f"{mapper_path} holds {ckpt['prompt']['scheme']!r} prompts but prompt.scheme is {config.prompt.scheme!r}"
                )
            if ckpt["step"] < ckpt["config"]["stage1"]["iterations"]:
                raise CheckpointError(
                    f"{mapper_path} stopped at step {ckpt['step']} of {ckpt['config']['stage1']['iterations']}; "
                    "finish Stage 1 first (train_mapper.py --resume)"
                )
        path = self.run_dir / "stage2.pt"
        if resume and path.exists():
            check_compatible(path, load_checkpoint(path, "g"), config, STAGE2_KEYS, "trained")
        return train_generator(
            config,
            self.generator,
            self.clip,
            self.run_dir,
            self.device,
            prompt_model=prompt_model,
            truncation_latent=self.truncation_latent,
            latent_avg=self.generator_info.get("latent_avg"),
            resume=resume,
            progress=self.progress,
        )

    def adapt(self, resume=True):
        """Stage 1 (reused when complete, resumed when not), then Stage 2."""
        config = self.config
        mapper = self.run_dir / "mapper.pt"
        if config.prompt.scheme in STAGE1_SCHEMES:
            done = False
            if resume and mapper.exists():
                ckpt = load_checkpoint(mapper, "mapper")
                check_compatible(mapper, ckpt, config, STAGE1_KEYS, "trained")
                done = ckpt["step"] >= config.stage1.iterations
            if done:
                log.info("reusing the complete Stage-1 checkpoint %s", mapper)
            else:
                self.stage1(resume=resume)
        return self.stage2(mapper, resume=resume)
