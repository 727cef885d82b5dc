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
import os

from ipl import cli
from stylegan2.checkpoint import CheckpointError
from stylegan2.pretrained import ENV_URL, REGISTRY, fetch, pretrained_dir

URL_SCHEMES = ("http://", "https://", "file://")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models to fetch: {', '.join(REGISTRY)}")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--dir", default=None, help="pretrained folder (default: $IPL_PRETRAINED_DIR or pretrained/)")
    parser.add_argument("--base-url", default=None, help="server or mirror holding <name>.pkl (default: NVIDIA's)")
    parser.add_argument("--force", action="store_true", help="convert again even if <name>.pt exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()

    folder = pretrained_dir(args.dir)
    cli.check_output_folder(parser, folder, "--dir" if args.dir else "the pretrained folder")
    if args.list:
        for model in REGISTRY.values():
            state = "installed" if (folder / f"{model.name}.pt").is_file() else "not installed"
            print(f"{model.name:<9} {model.resolution:>4}  {model.description:<48} {state}")
        return
    if not args.names:
        parser.error(f"name the models to fetch ({', '.join(REGISTRY)}), or --list to see which are installed")
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(REGISTRY)}")
    base_url = args.base_url or os.environ.get(ENV_URL)
    if base_url is not None and not base_url.startswith(URL_SCHEMES):
        source = "--base-url" if args.base_url else f"${ENV_URL}"
        parser.error(f"{source} {base_url!r} is not a URL: it must start with {', '.join(URL_SCHEMES)}")

    failed = []
    for name in dict.fromkeys(args.names):  # each name once, in order
        try:
            path = fetch(name, root=args.dir, base_url=args.base_url, progress=not args.no_progress, force=args.force)
            print(f"{name}: ready at {path}")
        except CheckpointError as e:  # the others may still succeed
            failed.append(f"{name}: {e}")
    if failed:
        raise CheckpointError("\n\n".join(failed))


if __name__ == "__main__":
    cli.run(main, resume_hint="run the same command again to continue")
