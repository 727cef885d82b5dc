"""Typed, frozen run configuration: defaults -> YAML file -> ``--set a.b=c``.

Every YAML key is a dataclass field name. Unknown keys and wrong types are
errors that name the dotted path and suggest the closest valid key. Values
that follow from others (the number of prompt vectors, the number of layers
Stage 2 trains, the effective learning rate) are computed once, in
:func:`resolve`, never stored twice.

The defaults reproduce the authors' code; the paper's equations and the other
deviations are named options.
"""

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


@dataclass(frozen=True)
class GeneratorConfig:
    # The model family: "stylegan2" (the paper's GAN-IPL), "diffae" (Diff-IPL:
    # a diffusion autoencoder fine-tuned as DiffusionCLIP does; see the
    # diffae and diffusionclip sections) or "ddpm" (a plain DDPM fine-tuned
    # the same way: DiffusionCLIP itself, the paper's Diff-CLIP column).
    kind: Literal["stylegan2", "diffae", "ddpm"] = "stylegan2"
    # Registry name (ffhq, metfaces, afhqdog, afhqcat, afhqwild; for diffae:
    # ffhq256_autoenc, ...; for ddpm: celeba_hq, google/ddpm-celebahq-256,
    # ...), a checkpoint path or diffusers folder, or "random" for a randomly
    # initialised model (tests, demo).
    checkpoint: str = "ffhq"
    # Architecture of a "random" generator (ignored for checkpoints, which
    # carry or imply their own).
    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_max: int = 512
    seed: int = 0  # initialisation seed of a "random" generator
    # Render this many images at a time when only CLIP features are needed
    # (bounds peak memory; does not change results). 4 keeps Stage 1 at
    # 1024 px, batch 32, near 2 GiB on a CPU (benchmarks/RESULTS.md).
    render_chunk: int = 4


@dataclass(frozen=True)
class ClipConfig:
    # OpenAI CLIP name for clip.load ("ViT-B/32" in the paper), "tiny" for a
    # small randomly initialised CLIP of the same class (tests, demo), or
    # "random:ViT-B/32" (full size, random weights: benchmarks).
    model: str = "ViT-B/32"
    # "auto": fp16 on CUDA (what clip.load returns there and what the authors
    # ran), fp32 on the CPU.
    dtype: Literal["auto", "float32", "float16"] = "auto"
    # The authors' torchvision 0.9 resized tensors without antialiasing.
    antialias: bool = False
    download_root: str = ""  # "" = the clip package's cache (~/.cache/clip)
    seed: int = 0  # initialisation seed of a random CLIP


@dataclass(frozen=True)
class PromptConfig:
    # Where Stage 2's text directions come from (the paper's Fig. 6 set):
    # "adaptive": per-image prompts from the latent mapper (IPL);
    # "manual": one direction from the 79 ImageNet templates (NADA);
    # "learned_fixed": one learned prompt set shared by every image (CoOp style);
    # "random": an untrained, seeded mapper.
    # Stage 1 trains the mapper (adaptive) or the shared prompts (learned_fixed)
    # and is skipped for the other two.
    scheme: Literal["adaptive", "manual", "learned_fixed", "random"] = "adaptive"
    source_class: str = "photo"
    target_class: str = "disney"
    # Its word count sets the number m of learned prompt vectors, and it forms
    # the hand-written prompts; it does not initialise the adaptive prompts.
    ctx_init: str = "a photo of a"
    # A folder of a few pictures of the target style (PNG/JPEG, any size; at
    # least 3) instead of, or besides, the target text. "manual" (NADA) then
    # uses its image direction (the mean CLIP feature of the pictures minus
    # that of img2img_batch source images); the IPL schemes first learn a
    # pseudo-word from them (textual inversion in CLIP's text encoder,
    # RUN/target_word.pt) that stands wherever the target label does.
    target_images: str = ""
    # NADA's img2img_batch: source images whose mean feature the image
    # direction starts from (StyleGAN2: seeds 0..n-1; diffusion: the first
    # n training photos).
    img2img_batch: int = 16
    # The learned word: "replace" = the word alone is the target label;
    # "append" = target_class followed by the word ("wall painting S*").
    word_mode: Literal["replace", "append"] = "replace"
    # Text whose token embeddings the word starts from ("" = target_class);
    # with more or fewer tokens than word_tokens, every row starts from their mean.
    word_init: str = ""
    word_tokens: int = 1  # token embeddings of the word (textual inversion's 1)
    # Adam steps and learning rate: measured on a full-size random ViT-B/32,
    # 100 steps at 0.03 reach 96% of what 200 reach (README, target images).
    word_steps: int = 100
    word_lr: float = 0.03


@dataclass(frozen=True)
class MapperConfig:
    # Official F: PixelNorm, n_hidden x EqualLinear(w_dim -> hidden), then
    # EqualLinear(hidden -> m * k); all with lr_mul and a leaky ReLU (the last
    # layer included).
    n_hidden: int = 3
    hidden_dim: int = 512
    lr_mul: float = 0.01


@dataclass(frozen=True)
class Stage1Config:
    iterations: int = 300
    batch: int = 32
    lr: float = 0.05
    seed: int = 3
    lambda_domain: float = 1.0  # lambda (lambda_l) of Eq. 6
    lambda_src: float = 0.0  # official extra domain term on the source prompts
    # Official text features are Norm(E_T(learned prompt) + E_T(h)) with the
    # hand-written h = ctx_init + " {label}."; "none" = the paper's
    # Norm(E_T(learned prompt)).
    handwritten: Literal["template", "none"] = "template"
    contrastive_loss: Literal["official", "paper"] = "official"
    domain_loss: Literal["official", "paper"] = "official"
    # "bank": draw (w, CLIP feature) pairs from a cached source-feature bank
    # (same distribution of pairs, built once per generator and CLIP).
    # "fresh": render new images every step, as the authors' code does.
    images: Literal["bank", "fresh"] = "bank"
    truncation: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 10


@dataclass(frozen=True)
class Stage2Config:
    # Hand-written text added to the learned prompt features in Stage 2.
    # "ctx_init": the official code's, ctx_init alone with no label, identical
    # for source and target. "template": ctx_init + " {label}." as in Stage 1.
    # "none": the paper's Eq. 8, learned prompt features alone.
    handwritten: Literal["ctx_init", "template", "none"] = "ctx_init"
    iterations: int = 300
    batch: int = 2
    lr: float = 0.002
    lr_ratio: float = 0.8  # g_reg_ratio of StyleGAN2: lr * r, betas (0**r, 0.99**r)
    seed: int = 2
    truncation: float = 1.0
    ema_decay: float = 0.99
    # Adaptive layer selection (NADA). k = 0 means the official
    # int(2 * n_latent / 3).
    auto_layer_k: int = 0
    auto_layer_batch: int = 8
    auto_layer_iters: int = 1
    auto_layer_lr: float = 0.01
    layer_selection_every: int = 1  # 1 = every step, as the authors
    # Which layer a W+ slot selects: "official" ([conv1, to_rgb1] + convs,
    # index j, off by one from the conv that reads slot j) or "exact".
    layer_mapping: Literal["official", "exact"] = "official"
    # Images per forward/backward chunk (0 = whole batch), in layer selection
    # and in the training step. The losses are per-image means, so chunking
    # changes memory, not results; 2 keeps Stage 2 at 1024 px near 4 GiB on
    # a CPU (benchmarks/RESULTS.md). On a large GPU, 0 may be faster.
    chunk: int = 2
    # Sample grids and checkpoints.
    n_sample: int = 8
    sample_truncation: float = 0.7
    sample_seed: int = 0
    output_interval: int = 50
    checkpoint_every: int = 50
    log_every: int = 10


@dataclass(frozen=True)
class DiffAEConfig:
    # Architecture of a "random" diffusion autoencoder (generator.checkpoint:
    # random): a named architecture of ipl.backends.diffae ("tiny" for tests
    # and the demo; "ffhq256", "ffhq128_130M", ... as the released models).
    arch: str = "ffhq256"


@dataclass(frozen=True)
class DDPMConfig:
    # Architecture of a "random" DDPM (generator.checkpoint: random): a named
    # architecture of ipl.backends.ddpm ("tiny" for tests and the demo;
    # "celeba_hq", "bedroom", "church_outdoor" as DiffusionCLIP's models).
    arch: str = "celeba_hq"


@dataclass(frozen=True)
class DataConfig:
    # The diffusion runs (diffae, ddpm) train on real images: a folder of them (e.g. aligned
    # CelebA-HQ faces), resized and centre-cropped to the model's resolution.
    images: str = ""
    # Optional held-out folder for the sample grids (default: the first
    # n_test training images) and scripts/evaluate.py.
    test_images: str = ""
    # DiffusionCLIP's n_precomp_img: images read, encoded (z_sem) and inverted
    # to t_0 once; Stage 1 draws its pairs from all of them.
    n_images: int = 100
    # DiffusionCLIP's n_train_img: a pass of Stage 2 is n_train batches of
    # diffusionclip.batch images (the first n_train * batch images; its loader
    # drops a partial batch).
    n_train: int = 50
    # DiffusionCLIP's n_test_img: images in the sample grids.
    n_test: int = 10


@dataclass(frozen=True)
class DiffusionCLIPConfig:
    # Stage 2 of the diffusion runs = DiffusionCLIP's clip_finetune on the
    # diffusion model; defaults from DiffusionCLIP's main.py; the Fig. 5
    # configs take its README's recipe for faces (docs/REPRODUCTION.md).
    t_0: int = 400  # return step in [1, T); README examples use 500
    n_inv_step: int = 40  # DDIM steps of the deterministic inversion x0 -> x_t0
    n_train_step: int = 6  # DDIM steps x_t0 -> x0 with gradients during fine-tuning
    n_test_step: int = 40  # DDIM steps x_t0 -> x0 for samples and evaluation
    eta: float = 0.0  # DDIM eta of the generative steps (0: deterministic)
    lr: float = 2e-6  # lr_clip_finetune (README examples 8e-6)
    lr_gamma: float = 1.3  # sch_gamma: StepLR(step_size=1) after every epoch
    epochs: int = 1  # n_iter: passes over the n_train batches
    batch: int = 1  # bs_train
    clip_loss_w: float = 3.0  # weight of -log((2 - L_direction) / 2)
    l1_loss_w: float = 0.0  # weight of |x0 - x|
    id_loss_w: float = 0.0  # weight of 1 - cos(ArcFace(x0), ArcFace(x)) (needs model_ir_se50.pth)
    # DiffusionCLIP's clip_finetune_eff ("GPU-efficient"): a loss and an
    # optimiser step at every DDIM step on that step's predicted x0, x
    # detached in between; false = one backward through the whole chain.
    per_step: bool = False
    # Recompute each DDIM step's activations in the backward instead of
    # keeping them (same gradients; memory of one step instead of n_train_step,
    # one more network forward per step). "auto": only where the whole
    # chain's activations would not fit the device's free memory
    # (ipl.backends.diffusionclip.needs_checkpointing). The key was
    # grad_checkpoint (true/false), still read as this one.
    checkpoint: Literal["auto", "true", "false"] = "auto"
    # DiffusionCLIP calls model.train(), but every model it fine-tunes has
    # dropout 0: its chain is deterministic. true switches the network's own
    # dropout on while fine-tuning (Diff-AE's UNet has 0.1).
    dropout: bool = False


@dataclass(frozen=True)
class OutputConfig:
    # Training curves besides stats_stage*.jsonl, which stays the record:
    # every stage's losses, learning rate, seconds per step and sample grids.
    # They never change results (a run may resume with them switched).
    tensorboard: bool = False  # event files in RUN/tb/stage1, RUN/tb/stage2 (pip install tensorboard)
    wandb: bool = False  # Weights & Biases, project "ipl" (pip install wandb; wandb login)


@dataclass(frozen=True)
class Config:
    name: str = "run"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    run_dir: str = ""  # "" = runs/<name>
    cache_dir: str = ""  # "" = ~/.cache/ipl (source-feature banks)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    diffae: DiffAEConfig = field(default_factory=DiffAEConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusionclip: DiffusionCLIPConfig = field(default_factory=DiffusionCLIPConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------
# Building a config from plain data


def _type_name(tp):
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(value, tp, path):
    """Return ``value`` converted to ``tp`` or raise a ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, args[0], path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-5 (no dot before the exponent) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")


def _build(cls, data, path):
    if not isinstance(data, dict):
        where = path or "the top level"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{path + '.' if path else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint} (valid keys here: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted)
        else:
            kwargs[key] = _check_value(value, tp, dotted)
    return cls(**kwargs)


def to_dict(config):
    """Plain nested dict of a config (for YAML and checkpoints)."""
    return dataclasses.asdict(config)


def _read_checkpoint_setting(data):
    """``diffusionclip.checkpoint`` as one of its strings: YAML reads true/false as booleans, and
    the former key ``grad_checkpoint`` (true/false, in the run files written before) means the same."""
    dc = data.get("diffusionclip") if isinstance(data, dict) else None
    if not isinstance(dc, dict) or not ({"checkpoint", "grad_checkpoint"} & set(dc)):
        return data
    dc = dict(dc)
    if "grad_checkpoint" in dc:
        if "checkpoint" in dc:
            raise ConfigError("diffusionclip.grad_checkpoint is the former name of diffusionclip.checkpoint: give only diffusionclip.checkpoint (auto, true or false)")
        dc["checkpoint"] = dc.pop("grad_checkpoint")
    if isinstance(dc["checkpoint"], bool):
        dc["checkpoint"] = "true" if dc["checkpoint"] else "false"
    return {**data, "diffusionclip": dc}


def from_dict(data):
    """Config from a plain nested dict, validated field by field (types and ranges)."""
    config = _build(Config, _read_checkpoint_setting(data or {}), "")
    validate(config)
    return config


# ---------------------------------------------------------------------------
# Ranges and choices: every field has a rule (a test checks that none is missed)


def _at_least(low, why=""):
    def check(value):
        if value < low:
            return f"must be >= {low}{why}"

    return check


def _positive(why=""):
    def check(value):
        if not value > 0 or not math.isfinite(value):
            return f"must be a finite number > 0{why}"

    return check


def _non_negative(why=""):
    def check(value):
        if not value >= 0 or not math.isfinite(value):
            return f"must be a finite number >= 0{why}"

    return check


def _fraction(what):
    def check(value):
        if not 0 < value <= 1:
            return f"must be in (0, 1] ({what})"

    return check


def _non_empty(what):
    def check(value):
        if not value.strip():
            return f"must not be empty ({what})"

    return check


def _between(low, high, what):
    def check(value):
        if not low <= value <= high:
            return f"must be from {low} to {high} ({what})"

    return check


def _power_of_two(low, high):
    def check(value):
        if value < low or value > high or value & (value - 1):
            return f"must be a power of two from {low} to {high} (a StyleGAN2 resolution)"

    return check


def _steps_or_zero(value):
    if value == 1 or value < 0:
        return "must be 0 (every step from t_0, DiffusionCLIP's 'no skip') or >= 2 (a schedule from t_0 to 0)"


def _any(value):
    return None


_SEED = _at_least(0)
_EVERY = _at_least(1, " (a number of steps)")
_RULES = {
    "name": _non_empty("it names the run directory runs/<name>"),
    "device": _any,
    "run_dir": _any,
    "cache_dir": _any,
    "generator.kind": _any,
    "generator.checkpoint": _non_empty("a pretrained name, a checkpoint path or 'random'"),
    "generator.size": _power_of_two(4, 2048),
    "generator.style_dim": _at_least(1),
    "generator.n_mlp": _at_least(1),
    "generator.channel_multiplier": _at_least(1),
    "generator.channel_max": _at_least(1),
    "generator.seed": _SEED,
    "generator.render_chunk": _at_least(1, " (images rendered at a time)"),
    "clip.model": _non_empty("an OpenAI CLIP name such as ViT-B/32, a checkpoint path, 'tiny' or 'random:ViT-B/32'"),
    "clip.dtype": _any,
    "clip.antialias": _any,
    "clip.download_root": _any,
    "clip.seed": _SEED,
    "prompt.scheme": _any,
    "prompt.source_class": _non_empty("the source domain's label, e.g. 'photo'"),
    "prompt.target_class": _non_empty("the target domain's label, e.g. 'disney'"),
    "prompt.ctx_init": _non_empty("its words set the number of prompt vectors, e.g. 'a photo of a'"),
    "prompt.target_images": _any,
    "prompt.img2img_batch": _at_least(1, " (source images of NADA's image direction)"),
    "prompt.word_mode": _any,
    "prompt.word_init": _any,
    "prompt.word_tokens": _between(1, 16, "token embeddings of the learned word; every template must fit CLIP's 77 tokens"),
    "prompt.word_steps": _at_least(0, " (0 = the initial word, unlearned)"),
    "prompt.word_lr": _positive(" (Adam's learning rate of the word)"),
    "mapper.n_hidden": _at_least(0),
    "mapper.hidden_dim": _at_least(1),
    "mapper.lr_mul": _positive(),
    "stage1.iterations": _at_least(1),
    "stage1.batch": _at_least(2, " (the contrastive loss compares the images of a batch)"),
    "stage1.lr": _positive(" (Adam's learning rate)"),
    "stage1.seed": _SEED,
    "stage1.lambda_domain": _non_negative(" (the weight of the domain loss)"),
    "stage1.lambda_src": _non_negative(" (the weight of the source domain term)"),
    "stage1.handwritten": _any,
    "stage1.contrastive_loss": _any,
    "stage1.domain_loss": _any,
    "stage1.images": _any,
    "stage1.truncation": _fraction("1 = no truncation"),
    "stage1.checkpoint_every": _EVERY,
    "stage1.log_every": _EVERY,
    "stage2.handwritten": _any,
    "stage2.iterations": _at_least(1),
    "stage2.batch": _at_least(1),
    "stage2.lr": _positive(" (Adam's learning rate)"),
    "stage2.lr_ratio": _fraction("StyleGAN2's g_reg_ratio, 0.8"),
    "stage2.seed": _SEED,
    "stage2.truncation": _fraction("1 = no truncation"),
    "stage2.ema_decay": _fraction("the EMA keeps decay of the old weights each step"),
    "stage2.auto_layer_k": _at_least(0, " (0 = the official int(2 * n_latent / 3))"),
    "stage2.auto_layer_batch": _at_least(1),
    "stage2.auto_layer_iters": _at_least(1),
    "stage2.auto_layer_lr": _positive(),
    "stage2.layer_selection_every": _at_least(1),
    "stage2.layer_mapping": _any,
    "stage2.chunk": _at_least(0, " (0 = the whole batch at once)"),
    "stage2.n_sample": _at_least(1),
    "stage2.sample_truncation": _fraction("1 = no truncation"),
    "stage2.sample_seed": _SEED,
    "stage2.output_interval": _EVERY,
    "stage2.checkpoint_every": _EVERY,
    "stage2.log_every": _EVERY,
    "diffae.arch": _non_empty("a named architecture such as 'ffhq256' or 'tiny'"),
    "ddpm.arch": _non_empty("a named architecture such as 'celeba_hq' or 'tiny'"),
    "data.images": _any,
    "data.test_images": _any,
    "data.n_images": _at_least(1),
    "data.n_train": _at_least(1),
    "data.n_test": _at_least(1),
    "diffusionclip.t_0": _at_least(1, " (the return step, in [1, T))"),
    "diffusionclip.n_inv_step": _at_least(2, " (a DDIM schedule from 0 to t_0)"),
    "diffusionclip.n_train_step": _steps_or_zero,
    "diffusionclip.n_test_step": _steps_or_zero,
    "diffusionclip.eta": _non_negative(" (0 = deterministic DDIM)"),
    "diffusionclip.lr": _positive(" (Adam's learning rate)"),
    "diffusionclip.lr_gamma": _positive(" (StepLR's factor per epoch)"),
    "diffusionclip.epochs": _at_least(1),
    "diffusionclip.batch": _at_least(1),
    "diffusionclip.clip_loss_w": _non_negative(),
    "diffusionclip.l1_loss_w": _non_negative(),
    "diffusionclip.id_loss_w": _non_negative(),
    "diffusionclip.per_step": _any,
    "diffusionclip.checkpoint": _any,
    "diffusionclip.dropout": _any,
    "output.tensorboard": _any,
    "output.wandb": _any,
}

# Sections only one generator kind reads; setting them for the other is an error.
_STYLEGAN2_ONLY = (
    "generator.size",
    "generator.style_dim",
    "generator.n_mlp",
    "generator.channel_multiplier",
    "generator.channel_max",
    "stage1.images",
    "stage1.truncation",
    "stage2.iterations",
    "stage2.batch",
    "stage2.lr",
    "stage2.lr_ratio",
    "stage2.truncation",
    "stage2.ema_decay",
    "stage2.auto_layer_k",
    "stage2.auto_layer_batch",
    "stage2.auto_layer_iters",
    "stage2.auto_layer_lr",
    "stage2.layer_selection_every",
    "stage2.layer_mapping",
    "stage2.chunk",
    "stage2.n_sample",
    "stage2.sample_truncation",
    "stage2.sample_seed",
)
KIND_SECTIONS = {
    "stylegan2": ("diffae", "ddpm", "data", "diffusionclip"),
    "diffae": ("ddpm",) + _STYLEGAN2_ONLY,
    "ddpm": ("diffae",) + _STYLEGAN2_ONLY,
}
DIFFUSION_KINDS = ("diffae", "ddpm")
# Where a Diff-IPL run takes what a StyleGAN2 key would set.
_DIFFAE_INSTEAD = {
    "stage2.iterations": "diffusionclip.epochs and data.n_train",
    "stage2.batch": "diffusionclip.batch",
    "stage2.lr": "diffusionclip.lr",
    "generator.size": "the checkpoint's own resolution (or diffae.arch for a random model)",
    "stage2.n_sample": "data.n_test",
    "stage2.chunk": "diffusionclip.batch (DiffusionCLIP's loss is one per batch, not a mean over images)",
    "ddpm": "diffae (the diffusion autoencoder's section)",
    "diffae": "ddpm (the DDPM's section)",
}


def _fields(config, prefix=""):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _fields(value, dotted + ".")
        else:
            yield dotted, value


def _fail(key, value, problem):
    raise ConfigError(f"{key}: {value!r} {problem}")


def check_ctx_init(ctx_init):
    """The number of words of ``ctx_init``, each of which must be one CLIP token."""
    from .clip import clip

    words = ctx_init.split(" ")
    if any(not w for w in words):
        _fail("prompt.ctx_init", ctx_init, "has an empty word (a leading, trailing or double space): separate the words by single spaces")
    counts = [int(clip.tokenize([w])[0].argmax()) - 1 for w in words]  # tokens between [SOS] and [EOS]
    long = [f"'{w}' is {n} tokens" for w, n in zip(words, counts) if n != 1]
    if long:
        _fail(
            "prompt.ctx_init",
            ctx_init,
            f"has words that are not single CLIP tokens ({', '.join(long)}); each learned vector replaces one "
            "token per word: use words that are single tokens (e.g. 'a photo of a')",
        )
    return len(words)


def validate(config):
    """Raise a ConfigError naming the first field whose value cannot be used, and the fix."""
    for key, value in _fields(config):
        problem = _RULES[key](value)
        if problem:
            _fail(key, value, problem)
    p = config.prompt
    if p.source_class.strip().lower() == p.target_class.strip().lower():
        _fail("prompt.target_class", p.target_class, "is the source label too: the direction from a label to itself is zero; choose two different labels")
    if p.ctx_init != PromptConfig.ctx_init:
        check_ctx_init(p.ctx_init)
    if p.word_init and not p.word_init.strip():
        _fail("prompt.word_init", p.word_init, "has no words: give the word(s) the learned word starts from, or '' for prompt.target_class")
    if config.clip.model.startswith("random:"):
        from .clip import RANDOM_ARCHS

        if config.clip.model.removeprefix("random:") not in RANDOM_ARCHS:
            _fail("clip.model", config.clip.model, f"names no random CLIP architecture: use {' or '.join('random:' + a for a in RANDOM_ARCHS)}, or 'tiny'")
    if "/" in config.name or config.name in (".", ".."):
        _fail("name", config.name, "is not a folder name: use letters, digits, '-' and '_' (or set run_dir)")
    if config.generator.kind == "diffae":
        from stylegan2.pretrained import REGISTRY

        if config.generator.checkpoint in REGISTRY:
            _fail(
                "generator.checkpoint",
                config.generator.checkpoint,
                "is a StyleGAN2 model, not a diffusion autoencoder: for generator.kind=diffae use a released "
                "autoencoder (e.g. ffhq256_autoenc), a checkpoint path or 'random'",
            )
        from .backends.diffae.model import ARCHITECTURES
        from .backends.diffae.pretrained import REGISTRY as RELEASED

        if config.diffae.arch not in ARCHITECTURES and config.diffae.arch not in RELEASED:
            close = difflib.get_close_matches(config.diffae.arch, list(ARCHITECTURES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail("diffae.arch", config.diffae.arch, f"is not a named architecture{hint}: use one of {', '.join(ARCHITECTURES)}")
    if config.generator.kind == "ddpm":
        from stylegan2.pretrained import REGISTRY

        if config.generator.checkpoint in REGISTRY:
            _fail(
                "generator.checkpoint",
                config.generator.checkpoint,
                "is a StyleGAN2 model, not a DDPM: for generator.kind=ddpm use celeba_hq, a google/ddpm-* model, "
                "a checkpoint path, a diffusers folder or 'random'",
            )
        from .backends.ddpm.model import ARCHITECTURES

        if config.ddpm.arch not in ARCHITECTURES:
            close = difflib.get_close_matches(config.ddpm.arch, list(ARCHITECTURES), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail("ddpm.arch", config.ddpm.arch, f"is not a named architecture{hint}: use one of {', '.join(ARCHITECTURES)}")
    if config.generator.kind in DIFFUSION_KINDS:
        d, dc = config.data, config.diffusionclip
        if d.n_train * dc.batch > d.n_images:
            _fail(
                "data.n_train",
                d.n_train,
                f"exceeds data.n_images ({d.n_images}) in batches of diffusionclip.batch={dc.batch} ({d.n_train * dc.batch} images): "
                "a pass of Stage 2 is n_train full batches of the first images (DiffusionCLIP's n_train_img); lower data.n_train or raise data.n_images",
            )
        if config.stage1.batch > d.n_images:
            _fail("stage1.batch", config.stage1.batch, f"exceeds data.n_images ({d.n_images}): each Stage-1 batch holds distinct images; lower stage1.batch or use more images")
        p = config.prompt
        if p.target_images and p.scheme == "manual" and p.img2img_batch > d.n_images:
            _fail(
                "prompt.img2img_batch",
                p.img2img_batch,
                f"exceeds data.n_images ({d.n_images}): NADA's image direction starts from the first img2img_batch training photos; lower it or use more images",
            )
        if dc.clip_loss_w == dc.l1_loss_w == dc.id_loss_w == 0:
            _fail("diffusionclip.clip_loss_w", dc.clip_loss_w, "and the other loss weights are all 0: nothing would be trained")


def check_kind_keys(config, kind):
    """Refuse values, other than the defaults, of keys that the generator ``kind`` never reads."""
    default = Config()
    for item in KIND_SECTIONS.get(kind, ()):
        section, _, key = item.partition(".")
        given, unset = getattr(config, section), getattr(default, section)
        if key:
            given, unset = getattr(given, key), getattr(unset, key)
        if given == unset:
            continue
        instead = f"; set {_DIFFAE_INSTEAD[item]} instead" if item in _DIFFAE_INSTEAD and kind != "stylegan2" else ""
        raise ConfigError(f"{item} is set, but a generator.kind={kind} run never reads it{instead}")


def _merge(base, update):
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_problem(e):
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    hint = "; YAML indents with spaces, never tabs" if "'\\t'" in what else ""
    return f"{where}: {what}{hint}"


def parse_override(text):
    """``"a.b=c"`` -> ``{"a": {"b": c}}`` with ``c`` parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: empty key in '{dotted}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML{_yaml_problem(e)} (quote it: key='...')") from None
    for key in reversed(keys):
        value = {key: value}
    return value


def read_config_file(path):
    """The nested dict of one YAML config file, with its ``name`` defaulting to the file's stem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file: give a YAML file (e.g. configs/tiny.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (generator:, stage1:, ...)")
    data = loaded or {}
    data.setdefault("name", path.stem)
    return data


def load_config(paths=None, overrides=()):
    """Defaults, then each YAML file of ``paths`` in order (later files win), then ``overrides`` (``a.b=c``).

    Args:
        paths: None, one path, or a list of paths. A run takes its name from
            the last file that gives one (each file's name defaults to its stem).
        overrides: ``"section.key=value"`` strings, applied last.
    """
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    data = {}
    for path in paths:
        data = _merge(data, read_config_file(path))
    from_files = data
    for text in overrides:
        data = _merge(data, parse_override(text))
    try:
        config = from_dict(data)
        check_kind_keys(config, config.generator.kind)
    except ConfigError as e:
        raise ConfigError(f"{e}{_origin(from_files, paths, overrides)}") from None
    return config


def _origin(from_files, paths, overrides):
    """Where a value that fails validation came from: the first --set override that makes the
    config fail, else the files."""

    def fails(data):
        try:
            config = from_dict(data)
            check_kind_keys(config, config.generator.kind)
        except ConfigError:
            return True
        return False

    data = from_files
    if overrides and not fails(from_files):
        for text in overrides:
            data = _merge(data, parse_override(text))
            if fails(data):
                return f" (from --set {text})"
    return f" (in {', '.join(map(str, paths))})" if paths else ""


def save_config(config, path):
    """Write the config as YAML (keys in field order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)


# ---------------------------------------------------------------------------
# Derived values


@dataclass(frozen=True)
class Derived:
    """Values that follow from the config (and, for StyleGAN2, the generator size)."""

    n_ctx: int  # m, the number of prompt vectors
    run_dir: Path
    cache_dir: Path
    # StyleGAN2 only (None without a generator size):
    n_latent: Optional[int] = None  # W+ slots of the generator
    auto_layer_k: Optional[int] = None  # layers Stage 2 trains per step
    stage2_lr: Optional[float] = None
    stage2_betas: Optional[tuple] = None


def resolve(config, generator_size=None):
    """Compute the derived values once, from the config and (StyleGAN2) the generator size."""
    n_ctx = len(config.prompt.ctx_init.split(" "))
    run_dir = Path(config.run_dir) if config.run_dir else Path("runs") / config.name
    cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else Path.home() / ".cache" / "ipl"
    if generator_size is None:
        return Derived(n_ctx=n_ctx, run_dir=run_dir, cache_dir=cache_dir)
    n_latent = 2 * int(math.log2(generator_size)) - 2
    k = config.stage2.auto_layer_k or int(2 * n_latent / 3)
    if not 1 <= k <= n_latent:
        raise ConfigError(f"stage2.auto_layer_k: must be between 1 and {n_latent} (W+ slots), got {k}")
    ratio = config.stage2.lr_ratio
    return Derived(
        n_ctx=n_ctx,
        run_dir=run_dir,
        cache_dir=cache_dir,
        n_latent=n_latent,
        auto_layer_k=k,
        stage2_lr=config.stage2.lr * ratio,
        stage2_betas=(0.0**ratio, 0.99**ratio),
    )
