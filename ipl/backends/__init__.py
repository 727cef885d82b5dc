"""Generative-model backends: what the IPL stages need from a generator, per model family."""

import torch

from stylegan2.checkpoint import CheckpointError

KINDS = ("stylegan2", "diffae")


def checkpoint_kind(path):
    """``"stylegan2"`` or ``"diffae"``: the model family of an adapted checkpoint.

    Read from the recorded run config (``config.generator.kind``) when there
    is one, else from the layout: ``g_ema`` (StyleGAN2), or a ``state_dict``
    with ``ema_model.*`` tensors (a diffusion autoencoder).

    Raises:
        CheckpointError: unreadable, or neither layout.
    """
    from stylegan2.checkpoint import read_checkpoint

    try:
        # Memory-mapped: only the keys are looked at, not the tensors.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        checkpoint = read_checkpoint(path)  # its errors say what is wrong with the file
    if isinstance(checkpoint, dict):
        config = checkpoint.get("config")
        kind = config.get("generator", {}).get("kind") if isinstance(config, dict) and isinstance(config.get("generator"), dict) else None
        if isinstance(kind, str):
            return kind
        if "g_ema" in checkpoint or "g" in checkpoint:
            return "stylegan2"
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and any(str(k).startswith("ema_model.") for k in state):
            return "diffae"
    keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"{path}: not an adapted generator checkpoint (top level: {keys})")
