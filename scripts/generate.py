"""Sample an adapted generator: one PNG per seed, a source|adapted grid, weight blends and interpolations.

    python scripts/generate.py --ckpt runs/ffhq_elf/generator.pt --source ffhq --seeds 0-99 --outdir out/elf
    python scripts/generate.py --ckpt G.pt --source recorded --seeds 0-7 --interpolate alpha --steps 9 --gif --outdir out/blend

Each image depends only on its seed (not on --batch or on the other seeds).
Truncation pulls towards the adapted checkpoint's latent_avg, else the
source's, else the mean W of 4096 seeded codes (see ipl.sampling.truncation_centre).
"""

import argparse
from pathlib import Path

from ipl import cli
from ipl.outputs import OutputError, OutputFolder
from ipl.runtime import choose_device
from ipl.sampling import (
    RECORDED_SOURCE,
    load_adapted,
    load_source,
    parse_seeds,
    seed_filename,
    truncation_centre,
    write_samples,
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="adapted generator (RUN/generator.pt)")
    p.add_argument(
        "--source",
        help=f"source generator: pretrained name (ffhq, afhqdog, ...), checkpoint path, or '{RECORDED_SOURCE}' "
        "(the one named in the adapted checkpoint's run config)",
    )
    p.add_argument("--seeds", default="0-7", help="e.g. 0-99 or 1,5,9 (default 0-7)")
    p.add_argument("--truncation", type=cli.float_in(0, 1, low_open=True, why=" (1 = no truncation)"), default=0.7,
                   help="truncation psi in (0, 1] (default 0.7, as the training samples)")
    p.add_argument("--alpha", type=float, default=1.0, help="blend weights: (1-A) source + A adapted, A in [0, 1] (default 1)")
    p.add_argument("--interpolate", choices=["alpha", "seeds"], help="also write a strip over alpha 0..1 or between consecutive seeds (in W)")
    p.add_argument("--steps", type=cli.int_at_least(2), help="images per interpolation row (default 8)")
    p.add_argument("--gif", action="store_true", help="write the interpolation as a GIF too")
    p.add_argument("--grid", type=cli.int_at_least(0), default=8, help="seeds shown in grid.png and in the interpolation (default 8)")
    p.add_argument("--outdir", required=True)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch", type=cli.int_at_least(1), default=8, help="images rendered at a time (default 8)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1] (0 = source, 1 = adapted), got {args.alpha}")
    if args.alpha != 1.0 and not args.source:
        p.error("--alpha blends the source and adapted weights: give the source with --source NAME|PATH|recorded")
    if args.interpolate == "alpha" and not args.source:
        p.error("--interpolate alpha goes from the source to the adapted weights: give --source")
    if args.steps is not None and not args.interpolate:
        p.error("--steps sets the images of an interpolation row: give --interpolate alpha|seeds too")
    args.steps = args.steps or 8
    if args.gif and not args.interpolate:
        p.error("--gif writes the interpolation as a GIF: give --interpolate alpha|seeds too")
    if args.interpolate and args.grid < (2 if args.interpolate == "seeds" else 1):
        p.error("--interpolate needs --grid >= 1 (alpha) or >= 2 (seeds): it uses the first --grid seeds")
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(f"--seeds: {e}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds lists a seed twice (each seed names one file)")
    if args.interpolate == "seeds" and min(len(args.seeds), args.grid) < 2:
        p.error("--interpolate seeds walks between consecutive seeds: give --seeds with at least two seeds")
    # The outputs may replace neither the checkpoints read nor a file generate.py did not write.
    names = [seed_filename(s) for s in args.seeds] + ["grid.png", "generate.json"]
    if args.interpolate:
        names += [f"interp_{args.interpolate}.png", f"interp_{args.interpolate}.gif"]
    reads = [args.ckpt] + ([args.source] if args.source and Path(args.source).exists() else [])
    try:
        args.out = OutputFolder(args.outdir, "--outdir", "generate.py", reads=reads)
        args.out.check(*names)
    except OutputError as e:
        p.error(str(e))
    return args


def main():
    args = parse_args()
    device = choose_device(args.device)
    adapted, adapted_info = load_adapted(args.ckpt, device)
    source, source_info = load_source(args.source, adapted, adapted_info, device) if args.source else (None, None)
    centre, centre_from = truncation_centre(adapted_info, source_info, source if source is not None else adapted)
    written = write_samples(
        adapted,
        args.out,
        args.seeds,
        source=source,
        alpha=args.alpha,
        truncation=args.truncation,
        truncation_latent=centre.to(device),
        batch=args.batch,
        grid_seeds=args.grid,
        interpolate=args.interpolate,
        steps=args.steps,
        gif=args.gif,
        progress=not args.no_progress,
        record={"ckpt": str(args.ckpt), "source": args.source, "truncation_centre": centre_from},
    )
    print(f"{len(written['images'])} images in {args.outdir}")
    for kind in ("grid", "strip", "gif"):
        if kind in written:
            print(f"{kind}: {written[kind]}")


if __name__ == "__main__":
    cli.run(main)
