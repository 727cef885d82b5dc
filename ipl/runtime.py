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
    """Appends one JSON object per logging tick to ``stats.jsonl``.

    ``stats.jsonl`` is the record of a run; ``curves`` (a
    :class:`TrainingCurves`, optional) shows the same values, and the sample
    grids given to :meth:`image`, in TensorBoard or Weights & Biases.
    """

    def __init__(self, path, resume=False, curves=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self.curves = curves
        if not resume:
            self.path.write_text("")

    def write(self, step, **values):
        record = {"step": step, "time": round(time.time() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.curves is not None:
            self.curves.scalars(step, values)

    def image(self, step, name, array):
        """Show a sample grid (``(H, W, 3)`` uint8, already saved as a PNG) beside the curves."""
        if self.curves is not None:
            self.curves.image(step, name, array)

    def close(self):
        if self.curves is not None:
            self.curves.close()

    def truncate_after(self, step):
        """Drop records past ``step`` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in lines))


def check_curves(output):
    """Refuse, before a run starts, training curves whose package is missing (``config.output``)."""
    from .config import ConfigError

    if output.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise ConfigError(
                "output.tensorboard: true needs the tensorboard package: pip install tensorboard "
                "(or pip install -e \".[demo]\"), or set output.tensorboard=false"
            ) from None
    if output.wandb:
        try:
            import wandb
        except ImportError:
            raise ConfigError("output.wandb: true needs the wandb package: pip install wandb, then wandb login (or set output.wandb=false)") from None
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
        if not offline and not os.environ.get("WANDB_API_KEY") and not getattr(getattr(wandb, "api", None), "api_key", None):
            raise ConfigError("output.wandb: true, but wandb is not logged in: run wandb login (or set WANDB_MODE=offline, or output.wandb=false)")


class TrainingCurves:
    """One stage's losses, learning rate, seconds per step and sample grids in TensorBoard and/or W&B.

    TensorBoard events go to ``RUN/tb/<stage>/`` (one TensorBoard run per
    stage, as each counts its own steps); tags are the ``stats.jsonl`` names
    (``contrastive``, ``loss``, ``lr``, ``sec_per_iter``, ...) and
    ``samples`` for the grids. A resumed stage starts with a purge at the
    step after its checkpoint, so TensorBoard drops what the interrupted
    process logged past it, as :meth:`StatsLog.truncate_after` does.
    W&B gets one run per stage, grouped under the run's name.

    Args:
        run_dir: The run directory.
        stage: ``"stage1"`` or ``"stage2"``.
        output: ``config.output`` (which of the two to write).
        config: The run config as plain data (recorded by W&B).
        start: The step the stage starts (or resumes) from.
    """

    def __init__(self, run_dir, stage, output, config=None, start=0):
        self.writer = self.wandb = None
        if output.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb" / stage), purge_step=start + 1 if start > 0 else None)
        if output.wandb:
            import hashlib

            import wandb

            where = Path(run_dir).resolve()
            # The same W&B run again when this stage of this run directory resumes.
            run_id = f"ipl-{stage}-{hashlib.sha1(str(where).encode()).hexdigest()[:12]}"
            self.wandb = wandb.init(
                project="ipl", group=where.name, name=f"{where.name}-{stage}", job_type=stage, dir=str(run_dir),
                config=config, resume="allow", id=run_id,
            )  # fmt: skip

    def scalars(self, step, values):
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for name, value in numbers.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()  # once per logging tick: a crash loses nothing that stats.jsonl has
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def image(self, step, name, array):
        if self.writer is not None:
            self.writer.add_image(name, array, step, dataformats="HWC")
            self.writer.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(array)}, step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def open_stats(config, run_dir, stage, start=0):
    """The :class:`StatsLog` of one stage (``RUN/stats_<stage>.jsonl``), with the curves ``config.output`` asks for.

    A stage resumed at ``start`` keeps the records up to ``start`` and
    writes the later ones again.
    """
    from .config import to_dict

    output = config.output
    curves = TrainingCurves(run_dir, stage, output, to_dict(config), start) if output.tensorboard or output.wandb else None
    log = StatsLog(Path(run_dir) / f"stats_{stage}.jsonl", resume=start > 0, curves=curves)
    log.truncate_after(start)
    return log


def learning_rate(optimizer):
    """The learning rate of an optimiser's first parameter group (for the logs)."""
    return float(optimizer.param_groups[0]["lr"])


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
    "TrainingCurves",
    "TrainingDiverged",
    "atomic_save",
    "check_curves",
    "check_finite",
    "choose_device",
    "describe_contents",
    "ema_update",
    "folder_problem",
    "keep_freed_memory",
    "learning_rate",
    "LatentSampler",
    "load_checkpoint",
    "open_stats",
    "progress_bar",
    "rng_state",
    "set_rng_state",
]
