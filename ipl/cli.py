"""What every script shares: config arguments and one error boundary (the namespace never enters the library).

Known errors (the project's own, whose message names the problem and the
fix) print one ``error: ...`` line and exit 2, as argparse does for bad
arguments. Anything else prints one line naming the exception and how to
see its traceback (``IPL_DEBUG=1``) and exits 1.
"""

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from stylegan2.checkpoint import CheckpointError
from stylegan2.utils import without_torch_advice

from .clip import ClipWeightsError
from .config import ConfigError, load_config
from .evaluation.settings import EvaluationError
from .images import UnreadableImageError
from .inversion.align import MissingDependencyError
from .metrics.weights import MissingWeightsError, WeightsFileError, WeightsMismatchError
from .outputs import OutputError
from .runtime import TrainingDiverged, folder_problem
from .safe_load import SafeLoadError


class InputError(ValueError):
    """A script's inputs that cannot give a result (e.g. no photo could be read); the message says which and why."""


# Errors whose message says what is wrong and what to do: shown without a traceback.
USER_ERRORS = (
    InputError,
    ConfigError,
    CheckpointError,
    ClipWeightsError,
    TrainingDiverged,
    EvaluationError,
    MissingWeightsError,
    WeightsMismatchError,
    WeightsFileError,
    MissingDependencyError,
    UnreadableImageError,
    SafeLoadError,
    OutputError,
)
USAGE_EXIT, BUG_EXIT, INTERRUPTED_EXIT = 2, 1, 130
DEBUG_ENV = "IPL_DEBUG"


def config_parser(description):
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="YAML",
        help="config file (see configs/); repeat to layer several, later files win",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.lambda_domain=10 (repeatable, applied after the files)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# ---------------------------------------------------------------------------
# Argument values: argparse types that refuse nonsense with the flag's name


def int_at_least(low):
    """An argparse ``type``: an integer ``>= low`` ("argument --batch: must be an integer >= 1, got 0")."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def float_in(low, high, low_open=False, why=""):
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be in {interval}{why}, got {text}")
        return value

    return parse


def check_output_folder(parser, path, flag):
    """``parser.error`` unless ``path`` is a folder or can be created (no file in the way)."""
    problem = folder_problem(path)
    if problem:
        parser.error(f"{flag} {path} {problem}; give a folder")


def check_output_file(parser, path, flag):
    """``parser.error`` unless ``path`` can be written as a file (not a folder, its folder creatable)."""
    path = Path(path)
    if path.is_dir():
        parser.error(f"{flag} {path} is a folder; give the file to write (e.g. {path / 'out.pt'})")
    problem = folder_problem(path.parent)
    if problem:
        parser.error(f"{flag} {path}: its folder {path.parent} {problem}")


def load(args):
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(args.config, overrides)


def one_line(message):
    """``message`` on a single line (a multi-part message keeps its parts, separated by ' | ')."""
    parts = [" ".join(part.split()) for part in str(message).split("\n\n")]
    return " | ".join(p for p in parts if p)


def _memory_hint(e):
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return (
            "out of memory: render fewer images at a time (e.g. --set generator.render_chunk=1, --set stage2.chunk=1, "
            "or a smaller --batch), or run on a device with more memory"
        )
    return None


def run(main, extra_errors=(), resume_hint=None, weight_flags=None):
    """Run a script's ``main`` inside the error boundary; returns only if ``main`` succeeds.

    Args:
        resume_hint: What continues an interrupted run of this script, in its
            own flags (said after Ctrl-C); None for scripts that do not resume.
        weight_flags: The script's flags for weight files (keyword arguments of
            :func:`ipl.metrics.weights.script_flags`), which messages about a
            missing file then name.
    """
    from .metrics.weights import script_flags

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with script_flags(**(weight_flags or {})):
            main()
    except KeyboardInterrupt:
        then = f" ({resume_hint})" if resume_hint else ""
        print(f"interrupted; the files written so far are complete{then}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except USER_ERRORS + tuple(extra_errors) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    except Exception as e:  # the boundary: anything else is reported in one line too
        if debug:
            raise
        hint = _memory_hint(e)
        if hint:
            print(f"error: {hint}", file=sys.stderr)
            sys.exit(USAGE_EXIT)
        # A torch loader error that no loader turned into a message of ours must
        # still not advise loading with weights_only=False.
        print(
            f"error: unexpected {type(e).__name__}: {one_line(without_torch_advice(e))[:300]} "
            f"(run again with {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(BUG_EXIT)
