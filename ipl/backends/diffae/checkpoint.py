"""Diff-AE checkpoints: diffae's released Lightning files and our own, read without running code.

diffae's ``last.ckpt`` files are PyTorch-Lightning (1.4) checkpoints:
``state_dict`` holds ``model.*`` (the trained network), ``ema_model.*``
(its exponential moving average, the one diffae encodes and renders with)
and ``x_T``; ``hyper_parameters`` holds ``TrainConfig.as_dict_jsonable()``,
saved by ``LitModel.__init__``. Besides, the pickle names Lightning classes
(callback states are keyed by callback class), which
``torch.load(weights_only=True)`` refuses; :func:`ipl.safe_load.load_untrusted`
reads such files without importing or running anything.

``as_dict_jsonable`` drops every field whose value JSON cannot encode, that
is every enum: ``model_name`` (``beatgans_autoenc``), ``model_type``,
``train_mode``, ``beatgans_gen_type`` (``ddim``), ``beatgans_model_mean_type``
(``eps``), ``beatgans_model_var_type``, ``beatgans_loss_type``,
``net_beatgans_resnet_scale_at``, the ``net_latent_*`` enums, ``optimizer``.
They are taken as diffae's autoencoder templates set them, and the
autoencoder is confirmed by the encoder's tensors. ``model_conf`` is stored
too, but from the template's last ``make_model_conf`` call (``LitModel``
saves the hyper-parameters before building its network), so the network is
rebuilt from the top-level ``net_*`` fields, as ``make_model_conf`` does.

Our own files (:func:`save_autoencoder`) keep that layout, as plain data
that loads with ``torch.load(weights_only=True)``::

    {"format": 1, "hyper_parameters": {diffae's field names...},
     "state_dict": {"ema_model.<key>": tensor, ...}, ...extra}
"""

from pathlib import Path

import torch

from ipl.safe_load import SafeLoadError, is_placeholder, load_untrusted
from stylegan2.utils import atomic_save, check_extra, unwrap_module

from . import pretrained
from .autoencoder import DEFAULT_BETA_SCHEDULE, DEFAULT_T, DEFAULT_T_EVAL, DiffusionAutoencoder
from .model import Architecture, get_architecture
from .pretrained import DiffAECheckpointError

FORMAT = 1
EMA_PREFIX = "ema_model."
LATENT_NET_PREFIX = "latent_net."  # the latent DPM of diffae's *_latent checkpoints; not part of the autoencoder
RESERVED_KEYS = ("format", "hyper_parameters", "state_dict")


_HOW_TO_GET = (
    "Diff-AE checkpoints are diffae's released 'last.ckpt' files (see ipl.backends.diffae.pretrained.REGISTRY; "
    "e.g. load_autoencoder('ffhq256_autoenc')) or files written by save_autoencoder."
)


# ----------------------------------------------------------------------------
# Hyper-parameters -> constructor arguments

# diffae's TrainConfig defaults for the fields that shape the network, where
# a file lacks one (all released files hold them all). net_ch_mult and
# net_attn default to None there, which cannot build a network, so they are
# required; net_beatgans_resnet_two_cond defaults to False there, but the
# autoencoder implements only True (its templates set it).
_DEFAULTS = {
    "net_enc_channel_mult": None,
    "net_enc_attn": None,
    "net_num_res_blocks": 2,
    "net_num_input_res_blocks": None,
    "net_enc_num_res_blocks": 2,
    "style_ch": 512,
    "net_beatgans_embed_channels": 512,
    "net_beatgans_attn_head": 1,
    "net_beatgans_resnet_two_cond": True,
    "net_beatgans_resnet_cond_channels": None,
    "net_resblock_updown": True,
    "net_enc_pool": "adaptivenonzero",
    "dropout": 0.1,
}
_REQUIRED = ("img_size", "net_ch", "net_ch_mult", "net_attn")
_INT_TUPLES = ("net_ch_mult", "net_enc_channel_mult", "net_attn", "net_enc_attn")
_OPTIONAL_INTS = ("net_num_input_res_blocks", "net_beatgans_resnet_cond_channels")
_BOOLS = ("net_beatgans_resnet_two_cond", "net_resblock_updown")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _field(hp, name, source):
    if name in hp:
        return hp[name]
    if name in _DEFAULTS:
        return _DEFAULTS[name]
    raise DiffAECheckpointError(f"{source}: the hyper-parameters have no '{name}', which the network's shape needs. {_HOW_TO_GET}")


def _bad(source, name, value, expected):
    return DiffAECheckpointError(f"{source}: hyper-parameter '{name}' is {value!r}, expected {expected}. {_HOW_TO_GET}")


def architecture_from_hparams(hp, source="<hyper-parameters>"):
    """The :class:`~.model.Architecture` that diffae's ``make_model_conf`` builds from ``hyper_parameters``.

    Raises:
        DiffAECheckpointError: a field is missing or of the wrong type, or
            the combination is not a network diffae can build.
    """
    values = {}
    for name in Architecture.field_names():
        value = _field(hp, name, source)
        if name in _INT_TUPLES:
            optional = name not in _REQUIRED
            if value is not None or not optional:
                if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) for v in value):
                    raise _bad(source, name, value, "a list of integers" + (" or None" if optional else ""))
                value = tuple(value)
        elif name in _OPTIONAL_INTS:
            if value is not None and not _is_int(value):
                raise _bad(source, name, value, "an integer or None")
        elif name in _BOOLS:
            if not isinstance(value, bool):
                raise _bad(source, name, value, "True or False")
        elif name == "net_enc_pool":
            if not isinstance(value, str):
                raise _bad(source, name, value, "a string")
        elif name == "dropout":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise _bad(source, name, value, "a probability")
            value = float(value)
        elif not _is_int(value) or value <= 0:
            raise _bad(source, name, value, "a positive integer")
        values[name] = value
    try:
        return Architecture(**values)
    except ValueError as e:
        raise DiffAECheckpointError(f"{source}: not a network diffae's autoencoder builds: {e}") from None


def diffusion_from_hparams(hp, source="<hyper-parameters>"):
    """``T``, ``T_eval``, ``beta_scheduler`` and ``rescale_timesteps`` of ``hyper_parameters``, checked."""
    if hp.get("diffusion_type", "beatgans") != "beatgans":
        raise DiffAECheckpointError(f"{source}: diffusion_type {hp['diffusion_type']!r}; only diffae's 'beatgans' diffusion exists")
    T, T_eval = hp.get("T", DEFAULT_T), hp.get("T_eval", DEFAULT_T_EVAL)
    for name, value in (("T", T), ("T_eval", T_eval)):
        if not _is_int(value) or value <= 0:
            raise _bad(source, name, value, "a positive integer")
    schedule = hp.get("beta_scheduler", DEFAULT_BETA_SCHEDULE)
    if schedule != "linear":
        raise _bad(source, "beta_scheduler", schedule, "'linear' (the only schedule implemented here, that of every released model)")
    rescale = hp.get("beatgans_rescale_timesteps", False)
    if not isinstance(rescale, bool):
        raise _bad(source, "beatgans_rescale_timesteps", rescale, "True or False")
    return dict(T=T, T_eval=T_eval, beta_scheduler=schedule, rescale_timesteps=rescale)


def _autoencoder(hp, source):
    return DiffusionAutoencoder(architecture_from_hparams(hp, source), **diffusion_from_hparams(hp, source))


# ----------------------------------------------------------------------------
# Building and saving


def build_autoencoder(arch_name_or_hparams="tiny", seed=0, device="cpu"):
    """A randomly initialised :class:`DiffusionAutoencoder`, in eval mode.

    Args:
        arch_name_or_hparams: A name in :data:`~.model.ARCHITECTURES`
            (``"tiny"``, ``"ffhq256"``, ...), a released checkpoint's name
            (``"ffhq256_autoenc"``: its architecture), an
            :class:`~.model.Architecture`, or a dict of diffae hyper-parameters
            (architecture fields plus optionally ``T``, ``T_eval``,
            ``beta_scheduler``, ``beatgans_rescale_timesteps``).
        seed: Seed of the initialisation (the global RNG is left untouched).
        device: Where to put the model.
    """
    if isinstance(arch_name_or_hparams, str) and arch_name_or_hparams in pretrained.REGISTRY:
        arch_name_or_hparams = pretrained.REGISTRY[arch_name_or_hparams].architecture
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(arch_name_or_hparams, dict) and set(arch_name_or_hparams) - set(Architecture.field_names()):
            model = _autoencoder(arch_name_or_hparams, "build_autoencoder")
        else:
            model = DiffusionAutoencoder(get_architecture(arch_name_or_hparams))
    return model.to(device).eval()


def save_autoencoder(path, model, **extra):
    """Write ``model`` atomically as a plain-data Diff-AE checkpoint (see the module docstring).

    Args:
        path: Destination; its folder is created if needed.
        model: A :class:`DiffusionAutoencoder` (DDP / compile wrappers are unwrapped).
        **extra: More plain-data top-level entries (e.g. ``step``, a training config).

    Returns:
        The path written, as a :class:`pathlib.Path`.
    """
    model = unwrap_module(model)
    if not isinstance(model, DiffusionAutoencoder):
        raise TypeError(f"save_autoencoder: expected a DiffusionAutoencoder, got {type(model).__name__}")
    check_extra(extra, RESERVED_KEYS, "save_autoencoder")
    checkpoint = {
        "format": FORMAT,
        "hyper_parameters": model.hyper_parameters,
        "state_dict": {EMA_PREFIX + k: v.detach().to("cpu") for k, v in model.net.state_dict().items()},
        **extra,
    }
    atomic_save(checkpoint, path)
    return Path(path)


# ----------------------------------------------------------------------------
# Loading


def _resolve(path_or_name, download, pretrained_dir, progress):
    path = Path(path_or_name)
    if path.is_file():
        return path, None
    if path.is_dir():
        raise DiffAECheckpointError(f"{path} is a folder, not a Diff-AE checkpoint file (diffae's last.ckpt). {_HOW_TO_GET}")
    name = str(path_or_name)
    if name in pretrained.REGISTRY:
        return pretrained.checkpoint_path(name, pretrained_dir, download=download, progress=progress), name
    hint = ""
    for candidate in (path.parent.name, path.stem):
        if candidate in pretrained.REGISTRY:
            hint = ". " + pretrained.manual_instructions(candidate, pretrained_dir)
            break
    if not hint:
        hint = f" (it is neither a file nor a released checkpoint name: {', '.join(pretrained.REGISTRY)})"
    raise DiffAECheckpointError(f"Diff-AE checkpoint not found: {path}{hint}")


def _as_dict(value):
    """A dict, or the items of a placeholder for a dict subclass (Lightning's AttributeDict), else None."""
    if isinstance(value, dict):
        return dict(value)
    if is_placeholder(value) and not isinstance(value, type) and value.items and not value.args:
        return dict(value.items)
    return None


def _ema_state(state_dict, path):
    tensors = {k: v for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        if any(k.startswith("model.") for k in tensors):
            found = "only the trained weights ('model.*') and no EMA weights ('ema_model.*')"
        else:
            found = f"no 'ema_model.*' tensors (keys such as {sorted(tensors)[:3]})"
        raise DiffAECheckpointError(
            f"{path}: the state dict has {found}; diffae encodes and renders with the EMA network, which every "
            f"released checkpoint holds. {_HOW_TO_GET}"
        )
    ema = {k: v for k, v in ema.items() if not k.startswith(LATENT_NET_PREFIX)}
    if not any(k.startswith("encoder.") for k in ema):
        raise DiffAECheckpointError(
            f"{path}: the EMA network has no semantic encoder ('encoder.*'): it is a diffae DDIM (beatgans_ddpm) "
            f"checkpoint, not an autoencoder. Use one from 'DiffAE (autoencoding only)'. {_HOW_TO_GET}"
        )
    return ema


_LIGHTNING_INFO = ("epoch", "global_step", "pytorch-lightning_version")


def read_autoencoder_file(path):
    """The parts of a Diff-AE checkpoint, read without running code.

    Returns:
        A dict: ``hyper_parameters`` (dict), ``ema`` (the EMA network's state
        dict, prefix removed), ``format`` (:data:`FORMAT` for our files,
        ``"lightning"`` for diffae's) and ``extra`` (our files' other entries;
        for diffae's, ``epoch``, ``global_step`` and the Lightning version).

    Raises:
        DiffAECheckpointError: unreadable, or not a Diff-AE checkpoint.
    """
    try:
        checkpoint = load_untrusted(path)
    except SafeLoadError as e:
        raise DiffAECheckpointError(f"{e}. {_HOW_TO_GET}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DiffAECheckpointError(
            f"{path}: not a Diff-AE checkpoint: expected a dict with 'state_dict' and 'hyper_parameters', found {found}. {_HOW_TO_GET}"
        )
    file_format = checkpoint.get("format")
    if file_format is not None and (not _is_int(file_format) or file_format > FORMAT):
        raise DiffAECheckpointError(f"{path}: checkpoint format {file_format!r} is not one this code understands ({FORMAT}); update the code")
    state_dict = _as_dict(checkpoint["state_dict"])
    if state_dict is None:
        raise DiffAECheckpointError(f"{path}: 'state_dict' is a {type(checkpoint['state_dict']).__name__}, not a dict of tensors. {_HOW_TO_GET}")
    hp = _as_dict(checkpoint.get("hyper_parameters"))
    if hp is None:
        raise DiffAECheckpointError(
            f"{path}: no 'hyper_parameters' dict (diffae's LitModel stores its TrainConfig there), so the network's "
            f"architecture is unknown. {_HOW_TO_GET}"
        )
    if file_format == FORMAT:
        extra = {k: v for k, v in checkpoint.items() if k not in RESERVED_KEYS}
    else:
        # Optimizer, scheduler and callback states are training state; they are left behind.
        extra = {k: checkpoint[k] for k in _LIGHTNING_INFO if k in checkpoint and not is_placeholder(checkpoint[k])}
    return dict(
        hyper_parameters=hp,
        ema=_ema_state(state_dict, path),
        format=FORMAT if file_format == FORMAT else "lightning",
        extra=extra,
    )


def _shape(tensor):
    return "(" + ", ".join(map(str, tensor.shape)) + ")"


def first_mismatch(expected, found):
    """The first key where the file's tensors and the network's differ, described; None if they agree."""
    for key, value in expected.items():
        if key not in found:
            return f"the network has '{key}' {_shape(value)}, the file has no such tensor"
        if found[key].shape != value.shape:
            return f"'{key}' is {_shape(value)} in the network, {_shape(found[key])} in the file"
    for key, value in found.items():
        if key not in expected:
            return f"the file's '{key}' {_shape(value)} is not part of the network"
    return None


def _describe(arch):
    return f"img_size={arch.img_size}, net_ch={arch.net_ch}, net_ch_mult={list(arch.net_ch_mult)}, style_ch={arch.style_ch}"


def load_autoencoder(path_or_name, device="cpu", *, download=False, pretrained_dir=None, progress=True):
    """Load a Diff-AE autoencoder (its EMA network) from a checkpoint file or a released name.

    Args:
        path_or_name: diffae's ``last.ckpt`` (or a file of :func:`save_autoencoder`),
            or a name in :data:`~.pretrained.REGISTRY` (``"ffhq256_autoenc"``, ...).
        device: Where to put the model.
        download: For a released name that is not installed, download it
            (otherwise the error says how).
        pretrained_dir: The pretrained folder (default ``$IPL_PRETRAINED_DIR``
            or the repository's ``pretrained/``).
        progress: Show download progress.

    Returns:
        A :class:`DiffusionAutoencoder` in eval mode on ``device``, float32,
        with a ``checkpoint_info`` dict: ``path``, ``name`` (the training
        config's name), ``format`` (1, or ``"lightning"`` for diffae's files)
        and ``extra`` (see :func:`read_autoencoder_file`).

    Raises:
        DiffAECheckpointError: missing, unreadable or foreign file, missing
            EMA weights, or weights that do not fit the architecture.
    """
    path, _ = _resolve(path_or_name, download, pretrained_dir, progress)
    parts = read_autoencoder_file(path)
    hp, ema = parts["hyper_parameters"], parts["ema"]
    arch = architecture_from_hparams(hp, path)
    with torch.device("meta"):  # shapes only: the weights come from the file
        model = DiffusionAutoencoder(arch, **diffusion_from_hparams(hp, path))
    mismatch = first_mismatch(model.net.state_dict(), ema)
    if mismatch:
        raise DiffAECheckpointError(
            f"{path}: the EMA weights do not fit the network of its hyper-parameters ({_describe(arch)}): {mismatch}. "
            f"The file is damaged or was written by other code. {_HOW_TO_GET}"
        )
    # Copies, so that the model owns its memory rather than a mapping of the file.
    weights = {k: v.to(device=device, dtype=torch.float32 if v.is_floating_point() else v.dtype, copy=True) for k, v in ema.items()}
    model.net.load_state_dict(weights, strict=True, assign=True)
    model.checkpoint_info = dict(path=str(path), name=hp.get("name"), format=parts["format"], extra=parts["extra"])
    return model.eval()
