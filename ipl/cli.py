"""What every script shares: config arguments and one error boundary (the namespace never enters the library).

Known errors (the project's own, whose message names the problem and the
fix) print one ``error: ...`` line and exit 2, as argparse does for bad
arguments. Anything else prints one line naming the exception and how to
see its traceback (``IPL_DEBUG=1``) and exits 1.
"""

import argparse
import logging
import os
import sys

from stylegan2.checkpoint import CheckpointError

from .clip import ClipWeightsError
from .config import ConfigError, load_config
from .evaluation.settings import EvaluationError
from .images import UnreadableImageError
from .inversion.align import MissingDependencyError
from .metrics.weights import MissingWeightsError, WeightsMismatchError
from .runtime import TrainingDiverged
from .safe_load import SafeLoadError

# Errors whose message says what is wrong and what to do: shown without a traceback.
USER_ERRORS = (
    ConfigError,
    CheckpointError,
    ClipWeightsError,
    TrainingDiverged,
    EvaluationError,
    MissingWeightsError,
    WeightsMismatchError,
    MissingDependencyError,
    UnreadableImageError,
    SafeLoadError,
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


def run(main, extra_errors=()):
    """Run a script's ``main`` inside the error boundary; returns only if ``main`` succeeds."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; checkpoints on disk are complete (run the same command with --resume to continue)", file=sys.stderr)
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
        print(
            f"error: unexpected {type(e).__name__}: {one_line(e)[:300]} (run again with {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        sys.exit(BUG_EXIT)
