"""Convert an NVIDIA stylegan2-ada-pytorch pickle into a generator checkpoint, safely.

    python scripts/convert_nvidia_pkl.py ffhq.pkl pretrained/ffhq.pt

No code from the pickle runs: it is read with an allow-list unpickler (see
stylegan2/nvidia.py). The output holds the reference port's ``g_ema`` and
``latent_avg`` plus the generator config and the source file's SHA-256; load
it with ``stylegan2.load_generator``.
"""

import argparse
import warnings
from pathlib import Path

from ipl import cli
from stylegan2.nvidia import convert_nvidia_pickle


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("input", help="NVIDIA network pickle (.pkl)")
    parser.add_argument("output", help="checkpoint to write (.pt)")
    parser.add_argument("--network", default="G_ema", help="entry of the pickle to convert (default: G_ema)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args()
    cli.check_output_file(parser, args.output, "output")
    if Path(args.output).resolve() == Path(args.input).resolve():
        parser.error("the output would overwrite the input pickle; give another file name (e.g. ffhq.pt)")
    if Path(args.output).exists() and not args.force:
        parser.error(f"output {args.output} exists (a checkpoint, perhaps a run's); give another file name, or --force to replace it")
    if not args.network.strip():
        parser.error("--network must name an entry of the pickle (G_ema, G)")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _, latent_avg, meta = convert_nvidia_pickle(args.input, args.output, network=args.network)
    res = meta["resolution"]
    print(
        f"wrote {args.output}: {res}x{res} generator, channel multiplier {meta['channel_multiplier']}, "
        f"latent_avg {'present' if latent_avg is not None else 'absent'}, source sha256 {meta['source_sha256']}"
    )


if __name__ == "__main__":
    cli.run(main)
