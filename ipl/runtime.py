"""Run-time plumbing shared by both stages: devices, seeds, logs, checkpoints."""

import ctypes
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from stylegan2.checkpoint import CheckpointError
from stylegan2.utils import atomic_save, progress_bar

CHECKPOINT_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint was kept."""


def choose_device(name="auto"):
    """``auto`` = CUDA when available, else the CPU. Called once, by scripts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("device: 'cuda' was requested but torch sees no CUDA GPU here; use --device cpu (or auto)")
    return device


class LatentSampler:
    """Z codes ``(batch, dim)`` per step from a CPU generator seeded once.

    Drawn on the CPU so that a run sees the same latents on any device, and
    batch by batch so that the stream does not depend on how it is consumed
    (the source-feature bank and a fresh run draw the same codes).
    """

    def __init__(self, seed, batch, dim):
        self.batch = batch
        self.dim = dim
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        return torch.randn(self.batch, self.dim, generator=self.generator)


def rng_state(sampler=None):
    """Every random state a run draws from, as plain tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if sampler is not None:
        state["latents"] = sampler.generator.get_state()
    return state


def set_rng_state(state, sampler=None):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler is not None and "latents" in state:
        sampler.generator.set_state(state["latents"])


def check_finite(step, terms, checkpoint):
    """Stop a run on a NaN/inf loss, naming the terms and the checkpoint kept."""
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
    if bad:
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint and Path(checkpoint).exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"non-finite loss at step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
            f"training stopped and {kept}. Lower the learning rate or check the inputs "
            "(e.g. identical source and target labels), then resume with --resume."
        )


def load_checkpoint(path, kind):
    """Load one of our training checkpoints (plain data, ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {path} as a {kind} checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or kind not in ckpt or "format" not in ckpt:
        keys = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a {kind} checkpoint of this project (it holds: {keys})")
    if ckpt["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {ckpt['format']}, newer than this code ({CHECKPOINT_FORMAT}); update ipl")
    return ckpt


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, over every parameter and buffer."""
    ema_t = [t.data for t in ema.state_dict(keep_vars=True).values()]
    model_t = [t.data for t in model.state_dict(keep_vars=True).values()]
    torch._foreach_mul_(ema_t, decay)
    torch._foreach_add_(ema_t, model_t, alpha=1 - decay)


class StatsLog:
    """Appends one JSON object per logging tick to ``stats.jsonl``."""

    def __init__(self, path, resume=False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        if not resume:
            self.path.write_text("")

    def write(self, step, **values):
        record = {"step": step, "time": round(time.time() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step):
        """Drop records past ``step`` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in lines))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory():
    """Make glibc keep freed memory on its heap for reuse (Linux CPU runs).

    By default glibc serves every large block (an activation) with a fresh
    ``mmap`` and returns it to the system when freed, so the next tensor of
    that size pays for the kernel faulting in and zeroing its pages again.
    With ``mmap`` off and trimming of the heap top above 2 GiB only, freed
    activations are reused: per step at 1024 px on a 2-core CPU, Stage 1
    (fresh images) 29 s against 38 s and Stage 2 29 s against 40 s, for a
    peak 0.1-0.5 GiB higher (benchmarks/RESULTS.md). Freed memory then
    mostly stays with the process until it exits.
    ``IPL_KEEP_FREED_MEMORY=0`` turns this off.

    Returns:
        Whether the setting was applied (not on other systems or C libraries).
    """
    if os.environ.get("IPL_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "StatsLog",
    "TrainingDiverged",
    "atomic_save",
    "check_finite",
    "choose_device",
    "ema_update",
    "keep_freed_memory",
    "LatentSampler",
    "load_checkpoint",
    "progress_bar",
    "rng_state",
    "set_rng_state",
]
