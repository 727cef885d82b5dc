"""DDPM checkpoints: DiffusionCLIP's raw state dicts, diffusers folders and Hub ids, and our own files.

DiffusionCLIP's ``DDPM`` (``models/ddpm/diffusion.py``, Ho et al.'s layout)
names its tensors::

    temb.dense.{0,1}                         time embedding MLP
    conv_in, norm_out, conv_out
    down.{level}.block.{i}.{norm1,conv1,temb_proj,norm2,conv2,nin_shortcut}
    down.{level}.attn.{i}.{norm,q,k,v,proj_out}     (1x1 convolutions)
    down.{level}.downsample.conv
    mid.{block_1,attn_1,block_2}
    up.{level}.block.{i}, up.{level}.attn.{i}, up.{level}.upsample.conv

with ``up`` indexed by level (0 = full resolution), while ``UNet2DModel``'s
``up_blocks`` run from the coarsest level. :func:`convert_ddpm_state_dict`
renames every tensor to ``UNet2DModel``'s names (1x1 attention convolutions
become linear weights) and infers the architecture from the shapes: ch from
``conv_in``, the level widths from each level's first block, the blocks per
level from the ``down.0.block.*`` keys, attention from the ``attn`` keys.
The image size is not in the file: it is the registry's, else 256 (every
checkpoint DiffusionCLIP uses).

Our own files (:func:`save_ddpm`) are plain data::

    {"format": 1, "kind": "ddpm", "hyper_parameters": {"unet": {...}, "T": 1000, ...},
     "state_dict": {UNet2DModel keys: tensors}, ...extra}
"""

import re
from pathlib import Path

import torch

from stylegan2.checkpoint import CheckpointError, read_checkpoint
from stylegan2.utils import atomic_save, check_extra, unwrap_module

from . import pretrained
from .model import DEFAULT_T, DDPM, Architecture, get_architecture
from .pretrained import DDPMCheckpointError

FORMAT = 1
RESERVED_KEYS = ("format", "kind", "hyper_parameters", "state_dict")

_HOW_TO_GET = (
    "A DDPM is DiffusionCLIP's raw checkpoint (celeba_hq.ckpt, bedroom.ckpt, church_outdoor.ckpt: "
    "load_ddpm('celeba_hq')), a diffusers UNet2DModel folder or Hub id (google/ddpm-celebahq-256), "
    "or a file written by save_ddpm (a DDPM run's RUN/ddpm.pt)."
)


# ----------------------------------------------------------------------------
# DiffusionCLIP's layout -> UNet2DModel


def _levels(state):
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(r"down\.(\d+)\.", k)))


def architecture_from_state_dict(state, img_size=256):
    """The :class:`~.model.Architecture` of a state dict in DiffusionCLIP's ``DDPM`` layout, from its shapes."""
    ch = state["conv_in.weight"].shape[0]
    n_levels = _levels(state)
    widths = [state[f"down.{level}.block.0.conv1.weight"].shape[0] for level in range(n_levels)]
    if any(w % ch for w in widths):
        raise DDPMCheckpointError(f"level widths {widths} are not multiples of ch={ch}: not Ho et al.'s UNet")
    num_res_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"down\.0\.block\.(\d+)\.", k)))
    attn = tuple(img_size >> level for level in range(n_levels) if f"down.{level}.attn.0.q.weight" in state)
    return Architecture(
        img_size=img_size,
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=num_res_blocks,
        attn_resolutions=attn,
        in_channels=state["conv_in.weight"].shape[1],
        out_channels=state["conv_out.weight"].shape[0],
    )


_RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename(key, n_levels):
    """UNet2DModel's name of one DiffusionCLIP tensor name (``None`` for a name the layout does not have)."""
    fixed = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2", "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    module, _, param = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{param}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)", module)
    if m:
        side, level, kind, i, layer = m.groups()
        block = f"down_blocks.{level}" if side == "down" else f"up_blocks.{n_levels - 1 - int(level)}"
        table, group = (_RESNET, "resnets") if kind == "block" else (_ATTENTION, "attentions")
        return f"{block}.{group}.{i}.{table[layer]}.{param}" if layer in table else None
    m = re.fullmatch(r"down\.(\d+)\.downsample\.conv", module)
    if m:
        return f"down_blocks.{m.group(1)}.downsamplers.0.conv.{param}"
    m = re.fullmatch(r"up\.(\d+)\.upsample\.conv", module)
    if m:
        return f"up_blocks.{n_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{param}"
    m = re.fullmatch(r"mid\.(block_1|block_2|attn_1)\.(\w+)", module)
    if m:
        part, layer = m.groups()
        if part == "attn_1":
            return f"mid_block.attentions.0.{_ATTENTION[layer]}.{param}" if layer in _ATTENTION else None
        table_key = _RESNET.get(layer)
        return f"mid_block.resnets.{0 if part == 'block_1' else 1}.{table_key}.{param}" if table_key else None
    return None


def convert_ddpm_state_dict(state, img_size=256):
    """DiffusionCLIP's ``DDPM`` state dict -> ``(Architecture, UNet2DModel state dict)``.

    Raises:
        DDPMCheckpointError: a tensor the layout does not have, or a missing one.
    """
    if "conv_in.weight" not in state or not any(k.startswith("down.") for k in state):
        raise DDPMCheckpointError(f"not DiffusionCLIP's DDPM layout (keys such as {sorted(state)[:3]}). {_HOW_TO_GET}")
    n_levels = _levels(state)
    out = {}
    for key, value in state.items():
        new = _rename(key, n_levels)
        if new is None:
            raise DDPMCheckpointError(f"tensor '{key}' is not part of Ho et al.'s UNet as DiffusionCLIP writes it. {_HOW_TO_GET}")
        if ".attentions." in new and value.ndim == 4:
            value = value[:, :, 0, 0]  # a 1x1 convolution is a linear layer
        out[new] = value
    try:
        arch = architecture_from_state_dict(state, img_size)
    except KeyError as e:
        raise DDPMCheckpointError(f"the state dict has no {e.args[0]!r}, which Ho et al.'s UNet has. {_HOW_TO_GET}") from None
    return arch, out


# ----------------------------------------------------------------------------
# Building, saving, loading


def build_ddpm(arch="tiny", seed=0, device="cpu"):
    """A randomly initialised :class:`~.model.DDPM` of a named :class:`~.model.Architecture`, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DDPM(get_architecture(arch).unet_config())
    return model.to(device).eval()


def save_ddpm(path, model, **extra):
    """Write ``model`` atomically as a plain-data DDPM checkpoint (see the module docstring); returns the path."""
    model = unwrap_module(model)
    if not isinstance(model, DDPM):
        raise TypeError(f"save_ddpm: expected a DDPM, got {type(model).__name__}")
    check_extra(extra, RESERVED_KEYS, "save_ddpm")
    checkpoint = {
        "format": FORMAT,
        "kind": "ddpm",
        "hyper_parameters": model.hyper_parameters,
        "state_dict": {k: v.detach().to("cpu") for k, v in model.net.state_dict().items()},
        **extra,
    }
    atomic_save(checkpoint, path)
    return Path(path)


def _strict_load(model, state, source):
    expected = model.net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        what = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected else f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, the network {tuple(expected[wrong[0]].shape)}"
        raise DDPMCheckpointError(f"{source}: the weights do not fit the network they describe ({what}). {_HOW_TO_GET}")
    model.net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}, strict=True)


def _from_state_dict(checkpoint, path, img_size):
    if isinstance(checkpoint, dict) and checkpoint.get("kind") == "ddpm" and "state_dict" in checkpoint:
        if checkpoint.get("format") != FORMAT:
            raise DDPMCheckpointError(f"{path}: DDPM checkpoint format {checkpoint.get('format')!r} is not one this code understands ({FORMAT}); update the code")
        hp = checkpoint.get("hyper_parameters") or {}
        model = DDPM(hp["unet"], T=hp.get("T", DEFAULT_T))
        _strict_load(model, checkpoint["state_dict"], path)
        return model, {k: v for k, v in checkpoint.items() if k not in RESERVED_KEYS}
    if not isinstance(checkpoint, dict) or not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DDPMCheckpointError(f"{path}: not a DDPM checkpoint (found {found}). {_HOW_TO_GET}")
    state = dict(checkpoint)
    if all(k.startswith("module.") for k in state):  # DiffusionCLIP saves its fine-tuned models from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    arch, converted = convert_ddpm_state_dict(state, img_size)
    with torch.random.fork_rng(devices=[]):
        model = DDPM(arch.unet_config())
    _strict_load(model, converted, path)
    return model, {}


def _from_folder(folder, source):
    from diffusers import UNet2DModel

    folder = Path(folder)
    sub = folder / "unet" if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file() else folder
    if not (sub / "config.json").is_file():
        raise DDPMCheckpointError(f"{folder} is a folder without config.json: not a diffusers UNet2DModel folder. {_HOW_TO_GET}")
    try:
        unet = UNet2DModel.from_pretrained(sub)
    except Exception as e:  # diffusers raises many types for foreign folders
        raise DDPMCheckpointError(f"{source}: diffusers cannot read {sub} as a UNet2DModel ({type(e).__name__}: {str(e).splitlines()[0][:200]}). {_HOW_TO_GET}") from None
    return _wrap(unet)


def _wrap(unet):
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items() if not k.startswith("_")}
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise DDPMCheckpointError("a class-conditional UNet2DModel: only unconditional DDPMs are supported")
    with torch.device("meta"):
        model = DDPM(config)
    model.net = unet.to(torch.float32)
    return model


def _from_hub(model_id, download):
    from diffusers import UNet2DModel

    subfolders = (None, "unet")
    for local_only in (True, False) if download else (True,):
        for sub in subfolders:
            try:
                return _wrap(UNet2DModel.from_pretrained(model_id, subfolder=sub, local_files_only=local_only))
            except Exception:  # offline, unknown id, or the weights under another subfolder
                continue
    return None


def load_ddpm(path_or_name, device="cpu", *, download=False, pretrained_dir=None, progress=True, img_size=None):
    """Load a DDPM from DiffusionCLIP's raw checkpoint, a diffusers folder or Hub id, or our file.

    Args:
        path_or_name: A file (DiffusionCLIP's ``celeba_hq.ckpt``-style state
            dict, or :func:`save_ddpm`'s), a diffusers ``UNet2DModel`` folder,
            a name in :data:`~.pretrained.REGISTRY` (``"celeba_hq"``, ...), or
            a Hub id (``"google/ddpm-celebahq-256"``): looked for under
            ``<pretrained folder>/ddpm/<id>/``, then in the Hugging Face
            cache, then downloaded when ``download`` is set.
        device: Where to put the model.
        download: Fetch a missing registry file or Hub model.
        pretrained_dir: The pretrained folder (default ``$IPL_PRETRAINED_DIR``
            or the repository's ``pretrained/``).
        img_size: Image size of a raw state dict (which does not record it);
            default the registry's, else 256.

    Returns:
        A :class:`~.model.DDPM` in eval mode on ``device``, float32, with
        ``checkpoint_info``: ``path`` (a file or folder), ``name`` and ``extra``.

    Raises:
        DDPMCheckpointError: missing, unreadable or foreign, or a Hub id that
            is neither installed nor downloadable (the message names the folder).
    """
    name = str(path_or_name)
    path = Path(path_or_name)
    extra = {}
    if name in pretrained.REGISTRY:
        path = pretrained.checkpoint_path(name, pretrained_dir, download=download, progress=progress)
        img_size = img_size or get_architecture(pretrained.REGISTRY[name].architecture).img_size
    if path.is_file():
        try:
            checkpoint = read_checkpoint(path, "DDPM checkpoint", _HOW_TO_GET)  # weights_only, with clear errors
        except DDPMCheckpointError:
            raise
        except CheckpointError as e:
            raise DDPMCheckpointError(str(e)) from None
        model, extra = _from_state_dict(checkpoint, path, img_size or 256)
    elif path.is_dir():
        model = _from_folder(path, path)
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        folder = pretrained.hub_folder(name, pretrained_dir)
        model = _from_folder(folder, name) if folder.is_dir() else _from_hub(name, download)
        if model is None:
            raise DDPMCheckpointError(
                f"DDPM '{name}': not installed and not in the Hugging Face cache"
                f"{' (the download failed: offline, or no such model)' if download else ''}; "
                f"put its diffusers folder (config.json and weights) at {folder}"
            )
        path = folder if folder.is_dir() else Path(name)
    else:
        raise DDPMCheckpointError(
            f"DDPM checkpoint not found: {name} (neither a file, a folder, a registry name ({', '.join(pretrained.REGISTRY)}) "
            f"nor a Hub id such as {pretrained.HUB_MODELS[0]})"
        )
    model.checkpoint_info = dict(path=str(path), name=name, extra=extra)
    return model.to(device).eval()
