"""Argument parsing shared by the scripts (the namespace never enters the library)."""

import argparse
import logging
import sys

from stylegan2.checkpoint import CheckpointError

from .clip import ClipWeightsError
from .config import ConfigError, load_config
from .runtime import TrainingDiverged

# Errors whose message says what is wrong and what to do: shown without a traceback.
USER_ERRORS = (ConfigError, CheckpointError, ClipWeightsError, TrainingDiverged)


def config_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.lambda_domain=10 (repeatable)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def load(args):
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(args.config, overrides)


def run(main, extra_errors=()):
    """Run a script's ``main``; the project's own errors exit with their message."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except USER_ERRORS + tuple(extra_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
