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
    # The model family: "stylegan2" (the paper's GAN-IPL) or "diffae" (Diff-IPL:
    # a diffusion autoencoder fine-tuned as DiffusionCLIP does; see the
    # diffae and diffusionclip sections).
    kind: Literal["stylegan2", "diffae"] = "stylegan2"
    # Registry name (ffhq, metfaces, afhqdog, afhqcat, afhqwild; for diffae:
    # ffhq256_autoenc, ...), a checkpoint path, or "random" for a randomly
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


def from_dict(data):
    """Config from a plain nested dict, validated field by field."""
    return _build(Config, data or {}, "")


def _merge(base, update):
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text):
    """``"a.b=c"`` -> ``{"a": {"b": c}}`` with ``c`` parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: empty key in '{dotted}'")
    value = yaml.safe_load(raw) if raw.strip() else ""
    for key in reversed(keys):
        value = {key: value}
    return value


def load_config(path=None, overrides=()):
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``a.b=c``)."""
    data = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
        data.setdefault("name", path.stem)
    for text in overrides:
        data = _merge(data, parse_override(text))
    try:
        return from_dict(data)
    except ConfigError as e:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None


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
