"""Generator checkpoints: safe loading and atomic saving.

Files are read with ``torch.load(..., weights_only=True)``: nothing in a
checkpoint can run code. Two layouts are understood:

* ours, written by :func:`save_generator`: the reference port's layout
  (``g_ema``, ``latent_avg``) plus ``format``, ``generator`` (constructor
  kwargs) and ``meta``, so tools that only read ``ckpt["g_ema"]`` still work;
* the reference port's own ``.pt`` files (``{"g_ema": state_dict,
  "latent_avg": ..., possibly "g", "d", "g_optim", "d_optim", "args"}``),
  whose generator architecture is inferred from the tensor shapes.

Every problem is raised as :class:`CheckpointError` with a message that names
the file, the problem and the fix.
"""

import argparse
import inspect
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from .model import Generator, reference_channels
from .utils import atomic_save, check_extra, check_plain, refused_global, safe_globals, torch_file_problem, unwrap_module

CHECKPOINT_FORMAT = 1
RESERVED_KEYS = ("format", "generator", "g_ema", "latent_avg", "meta")
CONVERT_COMMAND = "python scripts/convert_nvidia_pkl.py IN.pkl OUT.pt"

# Channel multipliers tried, in order, when the tensors do not pin one down
# (below 64x64 every layer has min(512, channel_max) channels whatever the
# multiplier). 2 comes first: config-f, the value of every public checkpoint.
_MULTIPLIER_CANDIDATES = (2, 1, 4, 8)


class CheckpointError(Exception):
    """A generator checkpoint that cannot be used; the message says why and what to do."""


# ----------------------------------------------------------------------------
# Saving


def save_generator(path, generator, latent_avg=None, meta=None, **extra):
    """Write a generator checkpoint atomically.

    The file holds ``g_ema`` (the state dict, on the CPU), ``latent_avg``,
    ``format`` (:data:`CHECKPOINT_FORMAT`), ``generator`` (``generator.config``,
    enough to rebuild the network) and ``meta``, plus every ``extra`` key
    (e.g. a training config and step). Everything is plain data, so the file
    loads with ``torch.load(path, weights_only=True)``.

    Args:
        path: Destination; its folder is created if needed.
        generator: A :class:`~stylegan2.model.Generator` (wrappers such as DDP
            are unwrapped).
        latent_avg: Mean W latent ``(style_dim,)`` or ``(1, style_dim)``, or None.
        meta: Dict of plain metadata (source, sha256, resolution, ...).
        **extra: More plain-data top-level keys; may not reuse a reserved key.

    Returns:
        The path written, as a :class:`pathlib.Path`.
    """
    generator = unwrap_module(generator)
    if not isinstance(generator, Generator):
        raise TypeError(f"save_generator: expected a stylegan2 Generator, got {type(generator).__name__}")
    if latent_avg is not None:
        latent_avg = latent_avg.detach().to("cpu", torch.float32)
    meta = dict(meta or {})
    check_plain(meta, "meta", "save_generator")
    check_extra(extra, RESERVED_KEYS, "save_generator", "; pass them through the named arguments")

    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "generator": generator.config,
        "g_ema": {k: v.detach().to("cpu") for k, v in generator.state_dict().items()},
        "latent_avg": latent_avg,
        "meta": meta,
        **extra,
    }
    atomic_save(checkpoint, path)
    return Path(path)


# ----------------------------------------------------------------------------
# Reading a file safely


def _pickle_globals(path, limit=64):
    """Globals a plain pickle file references, found without unpickling it."""
    names, strings = [], []
    with open(path, "rb") as f:
        try:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings = (strings + [arg])[-2:]
                elif opcode.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    names.append(".".join(strings))
                elif opcode.name == "STOP":
                    break
                if len(names) >= limit:
                    break
        except Exception:  # a damaged stream: report what was seen before the damage
            pass
    return names


def article(noun):
    """``"an"`` before a vowel, else ``"a"`` (for messages that name a kind of file)."""
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _needs_code_error(path, global_name, what, remedy):
    nvidia = global_name.startswith(("torch_utils.", "dnnlib."))
    kind = "an NVIDIA network pickle (stylegan2-ada-pytorch)" if nvidia else "a pickle of Python objects"
    fix = f"Convert NVIDIA pickles safely with: {CONVERT_COMMAND}" if nvidia else remedy
    return CheckpointError(
        f"{path} is not {article(what)} {what}: it is {kind}, and loading it would need to run code from the file "
        f"(it references {global_name}), which this loader never does. {fix}"
    )


GENERATOR_REMEDY = (
    "An adapted generator is RUN/generator.pt (written by scripts/train_generator.py or scripts/adapt.py); "
    "a pretrained one is fetched with python scripts/download_pretrained.py NAME; "
    f"an NVIDIA pickle converts safely with: {CONVERT_COMMAND}"
)


def require_file(path, what="checkpoint", remedy=""):
    """``path`` as a :class:`~pathlib.Path` if it is a non-empty file, else a :class:`CheckpointError`.

    Args:
        path: The file given by the user.
        what: What the file should be, for the message ("Stage-1 checkpoint").
        remedy: The sentence that says how to make or fetch the right file.
    """
    path = Path(path)
    fix = f". {remedy}" if remedy else ""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not {article(what)} {what} file{fix}")
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}{fix}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or copy?), not {article(what)} {what}{fix}")
    return path


def read_checkpoint(path, what="generator checkpoint", remedy=GENERATOR_REMEDY):
    """``torch.load`` a checkpoint with ``weights_only=True`` and clear errors.

    ``argparse.Namespace`` (the ``args`` entry of the reference port's
    training checkpoints) is allowed: it is a plain attribute bag.

    Args:
        path: The file.
        what: What the file should be, for the messages.
        remedy: How to make or fetch the right file, for the messages.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, or a
            pickle that would need code execution. The message names the
            file, what is wrong and ``remedy``; it never passes on torch's
            advice to load with ``weights_only=False``.
    """
    path = require_file(path, what, remedy)
    try:
        with safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # torch notes the protocol of plain pickles before refusing them; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the loader raises many types for damaged files
        unsafe = _unsafe_global(path, e) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe:
            raise _needs_code_error(path, unsafe, what, remedy) from None
        raise CheckpointError(f"{path} is not a readable {what} ({torch_file_problem(path, e)}). {remedy}") from None


def _unsafe_global(path, error):
    """The global that made torch's tensors-only loader refuse ``path`` (``error``), or None."""
    refused = refused_global(error)
    if refused or zipfile.is_zipfile(path):
        return refused
    # A plain pickle: torch's safe loader stops at the first opcode it does
    # not know, so find the global that makes it unsafe ourselves.
    unsafe = [g for g in _pickle_globals(path) if not g.startswith(("torch.", "collections.OrderedDict"))]
    return unsafe[0] if unsafe else None


# ----------------------------------------------------------------------------
# Finding the generator weights in a checkpoint


def _is_tensor_dict(value):
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _generator_state(checkpoint, path):
    """The generator state dict of a loaded checkpoint, and the key it was under."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found a {type(checkpoint).__name__}. {GENERATOR_REMEDY}")
    for key in ("g_ema", "g"):
        if key in checkpoint:
            state = checkpoint[key]
            if not _is_tensor_dict(state):
                raise CheckpointError(f"{path}: '{key}' is not a state dict of tensors (found {type(state).__name__})")
            if key == "g":
                warnings.warn(f"{path}: no 'g_ema' in the checkpoint; loading the non-averaged generator 'g'", stacklevel=3)
            return state, key
    keys = sorted(map(str, checkpoint))
    if "d" in checkpoint:
        raise CheckpointError(
            f"{path}: holds a discriminator ('d') but no generator ('g_ema' or 'g'); "
            f"top-level keys: {keys}. Use the checkpoint that contains the generator."
        )
    if {"state", "param_groups"} <= set(checkpoint) or any(k.endswith("optim") for k in keys):
        raise CheckpointError(
            f"{path}: holds optimizer state only (keys: {keys}), no generator weights. Use the model checkpoint instead."
        )
    if _is_tensor_dict(checkpoint):
        if any(str(k).startswith(("final_linear.", "final_conv.")) for k in checkpoint):
            raise CheckpointError(
                f"{path}: is a discriminator state dict (it has 'final_conv' / 'final_linear'), not a generator's"
            )
        return checkpoint, None  # a bare generator state dict
    raise CheckpointError(f"{path}: no generator weights found ('g_ema' missing; top-level keys: {keys}). {GENERATOR_REMEDY}")


# ----------------------------------------------------------------------------
# Architecture: inference and checks


def _count(state_dict, pattern):
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.fullmatch(k))})


def _shape(state_dict, key):
    value = state_dict.get(key)
    return tuple(value.shape) if value is not None else None


def infer_generator_config(state_dict, hints=None):
    """Generator constructor kwargs that fit a reference-port state dict.

    Read from the tensors: ``size`` (number of ToRGB layers), ``style_dim``,
    ``n_mlp`` (mapping layers), ``channel_max`` (channels at 4x4) and
    ``channel_multiplier`` (channels from 64x64 up). Not observable, so taken
    from ``hints`` (e.g. the reference port's training ``args``) or the
    defaults: ``lr_mlp=0.01`` and ``blur_kernel=(1, 3, 3, 1)``; and, when no
    layer of 64x64 or more exists (or all are capped by ``channel_max``),
    ``channel_multiplier=2`` (config-f), which builds the same tensors as any
    other multiplier there.

    Keys that are missing fall back to the defaults, so a state dict of
    another architecture gets a config whose check names the first key that
    differs.
    """
    hints = dict(hints or {})
    style = _shape(state_dict, "style.1.weight") or _shape(state_dict, "conv1.conv.modulation.weight")
    style_dim = style[1] if style and len(style) == 2 else hints.get("style_dim", 512)
    n_mlp = _count(state_dict, r"style\.(\d+)\.weight") or hints.get("n_mlp", 8)
    n_rgb = _count(state_dict, r"to_rgbs\.(\d+)\.conv\.weight")
    size = 2 ** (n_rgb + 2) if n_rgb else hints.get("size", 1024)
    const = _shape(state_dict, "input.input")
    channel_max = const[1] if const and len(const) == 4 else hints.get("channel_max", 512)
    if channel_max >= 512:
        channel_max = 512  # every cap from 512 up builds the same network

    # Output channels per resolution, read from the upsampling convs.
    observed = {}
    for res in (2**i for i in range(3, int(math.log2(size)) + 1)):
        shape = _shape(state_dict, f"convs.{2 * (int(math.log2(res)) - 3)}.conv.weight")
        if shape and len(shape) == 5:
            observed[res] = shape[1]
    candidates = list(_MULTIPLIER_CANDIDATES)
    if "channel_multiplier" in hints:
        candidates.insert(0, hints["channel_multiplier"])
    channel_multiplier = candidates[0]
    for cm in candidates:
        channels = reference_channels(cm, channel_max)
        if all(channels.get(res) == c for res, c in observed.items()):
            channel_multiplier = cm
            break

    return dict(
        size=size,
        style_dim=style_dim,
        n_mlp=n_mlp,
        channel_multiplier=channel_multiplier,
        blur_kernel=list(hints.get("blur_kernel", (1, 3, 3, 1))),
        lr_mlp=hints.get("lr_mlp", 0.01),
        channel_max=channel_max,
    )


def _shape_str(shape):
    return "(" + ", ".join(map(str, shape)) + ")"


def first_mismatch(expected, found):
    """Describe the first key where two state dicts disagree, or return None.

    Keys are visited in the order of ``expected`` (the generator's), then the
    keys only ``found`` has.
    """
    for key, value in expected.items():
        if key not in found:
            return f"key '{key}': our generator has shape {_shape_str(value.shape)}, the file has no such key"
        if tuple(found[key].shape) != tuple(value.shape):
            return (
                f"key '{key}': our generator has shape {_shape_str(value.shape)}, "
                f"the file has shape {_shape_str(found[key].shape)}"
            )
    for key, value in found.items():
        if key not in expected:
            return f"key '{key}' (shape {_shape_str(value.shape)}) in the file is not part of our generator"
    return None


def _check_config(config, path):
    allowed = set(inspect.signature(Generator.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"{path}: generator config has unknown keys {unknown}; known keys: {sorted(allowed)}")


def build_generator(state_dict, config, path="<state dict>"):
    """A Generator(**config) holding ``state_dict``, loaded with ``strict=True``.

    Raises:
        CheckpointError: the architecture differs (first differing key and
            both shapes), or the file's blur-kernel buffers differ from the
            ones the generator builds.
    """
    _check_config(config, path)
    try:
        generator = Generator(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build a generator with {config}: {e}") from None
    expected = generator.state_dict()
    mismatch = first_mismatch(expected, state_dict)
    if mismatch:
        raise CheckpointError(
            f"{path}: the weights do not fit a StyleGAN2 Generator({_config_str(config)}): {mismatch}. "
            "The file holds another architecture or another configuration."
        )
    for key, kernel in expected.items():
        if key.endswith((".blur.kernel", ".upsample.kernel")) and not torch.allclose(
            state_dict[key].float(), kernel, rtol=1e-6, atol=1e-8
        ):
            raise CheckpointError(
                f"{path}: the FIR kernel buffer '{key}' differs from the one our generator builds with "
                f"blur_kernel={list(config.get('blur_kernel', (1, 3, 3, 1)))} "
                f"(file {state_dict[key].flatten()[:4].tolist()}..., ours {kernel.flatten()[:4].tolist()}...); "
                "the network was built with another filter"
            )
    generator.load_state_dict(state_dict, strict=True)
    return generator


def _config_str(config):
    return ", ".join(f"{k}={v}" for k, v in config.items())


# ----------------------------------------------------------------------------
# The public entry point


def _resolve(path_or_name, download, pretrained_dir, base_url, progress):
    """``(path, registry name or None)`` of a file path or a pretrained model name."""
    path = Path(path_or_name)
    if path.is_file():
        return path, None
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a generator checkpoint file. {GENERATOR_REMEDY}")
    from . import pretrained  # late: pretrained imports this module

    name = str(path_or_name)
    if name in pretrained.REGISTRY:
        path = pretrained.checkpoint_path(name, root=pretrained_dir, download=download, base_url=base_url, progress=progress)
        return path, name
    if path.stem in pretrained.REGISTRY:
        raise CheckpointError(
            f"checkpoint not found: {path}. To get the pretrained '{path.stem}' model run: "
            f"{pretrained.download_command(path.stem, path.parent)}"
        )
    names = ", ".join(pretrained.REGISTRY)
    raise CheckpointError(f"checkpoint not found: {path} (neither a file nor a pretrained model name: {names})")


def load_generator(path_or_name, device="cpu", *, download=False, pretrained_dir=None, base_url=None, progress=True):
    """Load a generator from a checkpoint file or a pretrained model name.

    Args:
        path_or_name: A ``.pt`` file (ours or the reference port's), or a
            name from :data:`stylegan2.pretrained.REGISTRY` (``"ffhq"``, ...).
        device: Where to put the generator.
        download: For a registry name whose converted file is missing,
            download and convert it (otherwise the error says the command).
        pretrained_dir: Folder of the pretrained files (default:
            ``$IPL_PRETRAINED_DIR`` or the repository's ``pretrained/``).
        base_url: Where to download pretrained pickles from (default:
            ``$IPL_PRETRAINED_URL`` or NVIDIA's server).
        progress: Show a progress bar while downloading.

    Returns:
        ``(generator, info)``: the generator in eval mode on ``device``, and a
        dict with ``latent_avg`` (tensor or None, on ``device``), ``config``
        (the constructor kwargs), ``meta`` (the file's metadata), ``path``,
        ``format`` (:data:`CHECKPOINT_FORMAT`, or ``"reference"`` for the
        reference port's files) and ``extra`` (other plain top-level entries,
        e.g. a training step).
    """
    path, registry_name = _resolve(path_or_name, download, pretrained_dir, base_url, progress)
    checkpoint = read_checkpoint(path)
    state_dict, _ = _generator_state(checkpoint, path)

    file_format = checkpoint.get("format", "reference") if "g_ema" in checkpoint or "g" in checkpoint else "state_dict"
    if isinstance(file_format, int) and file_format > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {file_format} is newer than this code understands ({CHECKPOINT_FORMAT}); update the code"
        )
    config = checkpoint.get("generator") if file_format == CHECKPOINT_FORMAT else None
    if config is not None:
        config = dict(config)
        if not isinstance(config.get("size"), int):
            raise CheckpointError(f"{path}: the 'generator' config has no integer 'size': {config}")
    else:
        hints = {}
        args = checkpoint.get("args")
        if isinstance(args, argparse.Namespace):
            args = vars(args)
        if isinstance(args, dict):
            hints = {k: args[k] for k in ("channel_multiplier", "n_mlp", "size") if isinstance(args.get(k), int)}
            if isinstance(args.get("latent"), int):
                hints["style_dim"] = args["latent"]
        config = infer_generator_config(state_dict, hints)
    generator = build_generator(state_dict, config, path).to(device).eval()

    latent_avg = checkpoint.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path}: 'latent_avg' should be a tensor, found {type(latent_avg).__name__}")
    if latent_avg is not None:
        if latent_avg.numel() != generator.style_dim:
            raise CheckpointError(
                f"{path}: 'latent_avg' has shape {_shape_str(latent_avg.shape)}, expected ({generator.style_dim},)"
            )
        latent_avg = latent_avg.to(device, torch.float32)

    meta = checkpoint.get("meta")
    if registry_name is not None:
        from . import pretrained

        pretrained.check_provenance(registry_name, path, meta if isinstance(meta, dict) else {}, pretrained_dir)
    skip = set(RESERVED_KEYS) | {"g", "d", "g_optim", "d_optim"}
    extra = {k: v for k, v in checkpoint.items() if k not in skip} if file_format != "state_dict" else {}
    if isinstance(extra.get("args"), argparse.Namespace):
        extra["args"] = vars(extra["args"])
    info = dict(
        latent_avg=latent_avg,
        config=generator.config,
        meta=dict(meta) if isinstance(meta, dict) else {},
        path=str(path),
        format=file_format,
        extra=extra,
    )
    return generator, info
