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


def folder_problem(path):
    """Why ``path`` cannot be used as an output folder (a file is in the way), or None.

    A folder that does not exist yet is fine when it can be created: the
    first existing path on the way up must be a folder.
    """
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            return "is a file, not a folder" if candidate == path else f"cannot be created: {candidate} is a file"
    return None


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


# The training checkpoints of this project: what each is called in messages,
# the entry every file of the kind holds, and how to make the right one.
CHECKPOINT_KINDS = {
    "mapper": (
        "Stage-1 checkpoint",
        "mapper",
        "Train Stage 1 (again) with python scripts/train_mapper.py --config CONFIG (it writes RUN/mapper.pt), "
        "or point --mapper at a finished run's RUN/mapper.pt",
    ),
    "stage2": (
        "Stage-2 training state",
        "format",
        "Delete it to start Stage 2 over, or leave out --resume (scripts/adapt.py: --restart)",
    ),
}


_STATE_KEYS = ("mapper", "g", "g_ema", "model", "state_dict")


def describe_contents(ckpt):
    """What a loaded file holds, in words, for the messages about a wrong file ("a Stage-1 checkpoint (mapper.pt)")."""
    if not isinstance(ckpt, dict):
        return f"a {type(ckpt).__name__}, not a dict"
    keys = set(map(str, ckpt))
    known = (
        ({"mapper", "prompt"}, "a Stage-1 checkpoint (mapper.pt)"),
        ({"g", "g_optim"}, "a StyleGAN2 Stage-2 training state (stage2.pt)"),
        ({"model", "optimizer", "scheduler"}, "a Diff-IPL Stage-2 training state (stage2.pt)"),
        ({"g_ema"}, "a StyleGAN2 generator checkpoint (e.g. RUN/generator.pt)"),
        ({"state_dict", "hyper_parameters"}, "a Diff-AE autoencoder checkpoint (e.g. RUN/autoencoder.pt)"),
        ({"fields", "w", "features"}, "a source-feature bank (a cache entry)"),
        ({"opts", "state_dict"}, "an e4e / ReStyle encoder checkpoint"),
        ({"wplus"}, "the codes of a translated photo (scripts/translate.py)"),
        ({"z_sem", "x_t"}, "the codes of a translated photo (scripts/translate.py)"),
    )
    for needed, description in known:
        # An entry such as g_ema or mapper must hold a state dict, not some other object.
        if needed <= keys and all(isinstance(ckpt[k], (dict, torch.Tensor)) for k in needed if k in _STATE_KEYS):
            return description
    if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return f"a bare state dict of {len(ckpt)} tensors"
    shown = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
    return f"a dict with the keys {shown or '(none)'}"


def load_checkpoint(path, kind, key=None):
    """Load one of our training checkpoints (plain data, read without running code).

    Args:
        path: The file.
        kind: ``"mapper"`` (Stage 1's ``mapper.pt``) or ``"stage2"``
            (Stage 2's ``stage2.pt``), see :data:`CHECKPOINT_KINDS`.
        key: An entry the file must hold besides ``format`` (default: the
            kind's own, e.g. ``"mapper"``).

    Raises:
        CheckpointError: missing, unreadable or another kind of file; the
            message names the file, what it is and how to make the right one.
    """
    from stylegan2.checkpoint import article, read_checkpoint

    what, default_key, remedy = CHECKPOINT_KINDS[kind]
    ckpt = read_checkpoint(path, what=what, remedy=remedy)
    key = key or default_key
    if not isinstance(ckpt, dict) or key not in ckpt or "format" not in ckpt:
        raise CheckpointError(f"{path} is {describe_contents(ckpt)}, not {article(what)} {what} of this project. {remedy}")
    if not isinstance(ckpt["format"], int) or ckpt["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {ckpt['format']!r}, newer than this code ({CHECKPOINT_FORMAT}); update ipl")
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


def keep_freed_memory(default=True):
    """Make glibc keep freed memory on its heap for reuse (Linux CPU runs).

    By default glibc serves every large block (an activation) with a fresh
    ``mmap`` and returns it to the system when freed, so the next tensor of
    that size pays for the kernel faulting in and zeroing its pages again.
    With ``mmap`` off and trimming of the heap top above 2 GiB only, freed
    activations are reused: per step at 1024 px on a 2-core CPU, Stage 1
    (fresh images) 29 s against 38 s and Stage 2 29 s against 40 s, for a
    peak 0.1-0.5 GiB higher (benchmarks/RESULTS.md). Freed memory then
    mostly stays with the process until it exits. A Diff-AE fine-tuning
    step at 256 px is 1.3x faster with it too, but its peak grows from 6.9
    to 9.6 GiB (the heap fragments between activations of many sizes), so
    Diff-IPL runs without it by default.

    Args:
        default: Whether to apply it when ``IPL_KEEP_FREED_MEMORY`` is not
            set; ``IPL_KEEP_FREED_MEMORY=0`` / ``1`` decides otherwise.

    Returns:
        Whether the setting was applied (not on other systems or C libraries).
    """
    wanted = os.environ.get("IPL_KEEP_FREED_MEMORY", "1" if default else "0") != "0"
    if not wanted or not sys.platform.startswith("linux"):
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
    "describe_contents",
    "ema_update",
    "folder_problem",
    "keep_freed_memory",
    "LatentSampler",
    "load_checkpoint",
    "progress_bar",
    "rng_state",
    "set_rng_state",
]
