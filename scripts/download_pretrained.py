"""Download NVIDIA's pretrained StyleGAN2 generators and convert them safely.

    python scripts/download_pretrained.py ffhq afhqdog
    python scripts/download_pretrained.py --list

Each pickle is downloaded into the pretrained folder (resuming an interrupted
transfer), checked against its recorded size and SHA-256, and converted into
``<name>.pt`` without running any code from it. ``--dir`` (or
``$IPL_PRETRAINED_DIR``) chooses the folder, ``--base-url`` (or
``$IPL_PRETRAINED_URL``) a mirror serving ``<url>/<name>.pkl``.
"""

import argparse
import sys

from stylegan2.checkpoint import CheckpointError
from stylegan2.pretrained import REGISTRY, fetch, pretrained_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to fetch: {', '.join(REGISTRY)}")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--dir", default=None, help="pretrained folder (default: $IPL_PRETRAINED_DIR or pretrained/)")
    parser.add_argument("--base-url", default=None, help="server or mirror holding <name>.pkl (default: NVIDIA's)")
    parser.add_argument("--force", action="store_true", help="convert again even if <name>.pt exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.list or not args.names:
        folder = pretrained_dir(args.dir)
        for model in REGISTRY.values():
            state = "installed" if (folder / f"{model.name}.pt").is_file() else "not installed"
            print(f"{model.name:<9} {model.resolution:>4}  {model.description:<48} {state}")
        return 0 if args.list else 2
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(REGISTRY)}")

    failed = 0
    for name in args.names:
        try:
            path = fetch(name, root=args.dir, base_url=args.base_url, progress=not args.no_progress, force=args.force)
            print(f"{name}: ready at {path}")
        except CheckpointError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
