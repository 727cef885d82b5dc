"""Generative-model backends: what the IPL stages need from a generator, per model family."""

import torch

from stylegan2.checkpoint import CheckpointError

KINDS = ("stylegan2", "diffae", "ddpm")


# How to make the right file, for the messages about a wrong --ckpt / --adapted.
ADAPTED_REMEDY = (
    "An adapted model is a finished run's RUN/generator.pt (StyleGAN2), RUN/autoencoder.pt (Diff-IPL) or RUN/ddpm.pt (DDPM), "
    "written by python scripts/adapt.py --config CONFIG (or scripts/train_generator.py)"
)


def checkpoint_kind(path):
    """``"stylegan2"``, ``"diffae"`` or ``"ddpm"``: the model family of an adapted checkpoint.

    Read from the recorded run config (``config.generator.kind``) when there
    is one, else from the layout: ``g_ema`` (StyleGAN2), a ``state_dict``
    with ``ema_model.*`` tensors (a diffusion autoencoder), or ``kind:
    "ddpm"`` (a DDPM written by :func:`ipl.backends.ddpm.save_ddpm`).

    Raises:
        CheckpointError: missing or unreadable, or another kind of file (a
            Stage-1 checkpoint, ...); the message names what the file is.
    """
    from stylegan2.checkpoint import read_checkpoint, require_file

    from ..runtime import describe_contents

    what = "adapted model checkpoint"
    path = require_file(path, what, ADAPTED_REMEDY)
    try:
        # Memory-mapped: only the keys are looked at, not the tensors.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        checkpoint = read_checkpoint(path, what, ADAPTED_REMEDY)  # its errors say what is wrong with the file
    if isinstance(checkpoint, dict):
        if "mapper" in checkpoint and "prompt" in checkpoint:
            raise CheckpointError(f"{path} is {describe_contents(checkpoint)}, the learned prompts, not an adapted model. {ADAPTED_REMEDY}")
        config = checkpoint.get("config")
        kind = config.get("generator", {}).get("kind") if isinstance(config, dict) and isinstance(config.get("generator"), dict) else None
        if isinstance(kind, str):
            return kind
        if "g_ema" in checkpoint or "g" in checkpoint:
            return "stylegan2"
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and any(str(k).startswith("ema_model.") for k in state):
            return "diffae"
        if checkpoint.get("kind") == "ddpm":
            return "ddpm"
    raise CheckpointError(f"{path} is {describe_contents(checkpoint)}, not an adapted model checkpoint. {ADAPTED_REMEDY}")
