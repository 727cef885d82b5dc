"""Translate real face photos with an adapted model: aligned input | source reconstruction | adapted.

    python scripts/translate.py --ckpt runs/ffhq_elf/generator.pt --images photos/*.jpg --outdir out/elf
    python scripts/translate.py --ckpt G.pt --images a.png b.png --outdir out --invert project --steps 500
    python scripts/translate.py --ckpt G.pt --images aligned/*.png --aligned --alpha 0.5 --outdir out/half
    python scripts/translate.py --ckpt runs/diffae_elf/autoencoder.pt --images photos/*.jpg --outdir out/diff_elf
    python scripts/translate.py --ckpt runs/ddpm_elf/ddpm.pt --images aligned/*.png --aligned --outdir out/ddpm_elf

Faces are aligned as FFHQ was (dlib landmarks; pip install -e ".[photos]")
unless --aligned: the face dlib scores highest, or every face with
--all-faces. StyleGAN2 runs invert with ReStyle-e4e (default, 5 iterations),
e4e, or NVIDIA's projection (from w_avg in W, or from --encoder's code in
W+); the encoder files come from Google Drive (pip install gdown to fetch
them, or see the message for the page). A Diff-IPL run inverts with its
own semantic encoder and DDIM inversion to t_0, a DDPM run with its DDIM
inversion to t_0 alone (its code is x_{t_0}). Unreadable files and photos
without a face are reported and skipped. Codes are written as <name>.pt
beside the grids.
"""

import argparse
import math
from pathlib import Path

from ipl import cli
from ipl.config import ConfigError
from ipl.images import UnreadableImageError, check_image, expand_image_paths
from ipl.inversion.projection import mean_squared_error
from ipl.inversion.translate import (
    INVERSIONS,
    build_translator,
    translate_photos,
    unique_names,
)
from ipl.outputs import OutputError, OutputFolder
from ipl.runtime import choose_device
from ipl.sampling import RECORDED_SOURCE


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="adapted model (RUN/generator.pt, RUN/autoencoder.pt of a Diff-IPL run, or RUN/ddpm.pt of a DDPM run)")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="photos to translate (a folder stands for its images)")
    p.add_argument("--outdir", required=True)
    p.add_argument("--invert", choices=INVERSIONS, help="how photos become codes (default: restyle for StyleGAN2, diffae for a Diff-IPL run, ddpm for a DDPM run)")
    p.add_argument("--aligned", action="store_true", help="the photos are FFHQ-aligned already (no landmark detection)")
    p.add_argument("--all-faces", action="store_true", help="translate every face of a photo, each in its own row <photo>_face<k> (default: the face dlib scores highest)")
    p.add_argument("--min-face-score", type=float, default=0.0, metavar="S", help="ignore faces dlib scores below S (default 0: every face it reports; raise it to drop weak detections)")
    p.add_argument("--alpha", type=float, default=1.0, help="blend, A in [0, 1] (default 1): StyleGAN2 weights (1-A) source + A adapted; diffusion runs' noise predictions likewise (DiffusionCLIP's model_ratio)")
    p.add_argument("--encoder", help="e4e / ReStyle checkpoint (default: the FFHQ file of --invert); with project: start from its code")
    p.add_argument(
        "--source",
        default=RECORDED_SOURCE,
        help=f"source generator: pretrained name (ffhq, ...), checkpoint path, or '{RECORDED_SOURCE}' (default: "
        "the one named in the adapted checkpoint's run config)",
    )
    p.add_argument("--iterations", type=cli.int_at_least(1), help="ReStyle iterations (default 5)")
    p.add_argument("--steps", type=cli.int_at_least(1), help="projection steps (default 1000, as NVIDIA)")
    p.add_argument("--space", choices=["w", "w+"], help="projection space (default w, or w+ from an encoder's code)")
    p.add_argument("--seed", type=cli.int_at_least(0), help="projection seed (default 0)")
    p.add_argument("--distance", choices=["lpips", "mse"], help="projection distance: LPIPS-VGG16 (NVIDIA's, the default) or pixel MSE (needs no weight file)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1] (0 = source, 1 = adapted), got {args.alpha}")
    if args.aligned and (args.all_faces or args.min_face_score != 0.0):
        p.error("--all-faces and --min-face-score choose among detected faces; --aligned photos are not searched for faces")
    if not math.isfinite(args.min_face_score):
        p.error(f"--min-face-score must be a finite number, got {args.min_face_score}")
    if args.iterations is not None and args.invert in ("e4e", "diffae", "ddpm"):
        p.error(f"--iterations is for ReStyle; {args.invert} has no iterations to set")
    for flag, value in (("--steps", args.steps), ("--space", args.space), ("--seed", args.seed), ("--distance", args.distance)):
        if value is not None and args.invert != "project":
            p.error(f"{flag} is a setting of the projection: give --invert project too")
    args.steps = 1000 if args.steps is None else args.steps
    args.seed = 0 if args.seed is None else args.seed
    given = list(args.images)
    try:
        args.images = expand_image_paths(args.images)
    except ConfigError as e:  # a folder without images
        p.error(f"--images: {e}")
    readable, problems = [], []
    for path in args.images:
        try:
            readable.append(check_image(path))
        except UnreadableImageError as e:
            problems.append(str(e))  # reported and skipped with the others, after the models are loaded
    if not readable:
        missing = all(not Path(path).exists() for path in args.images)
        hint = "; a pattern that matched nothing?" if missing else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        p.error(f"--images: no readable image among the {len(args.images)} path(s): {problems[0]}{more}{hint}")
    # The outputs may replace neither an input nor a file translate.py did not write (a run's checkpoint).
    reads = [*given, *args.images, args.ckpt, *[f for f in (args.encoder, args.source) if f and Path(f).exists()]]
    try:
        args.out = OutputFolder(args.outdir, "--outdir", "translate.py", reads=reads)
        if not args.all_faces:
            args.out.check(*(f"{n}{ext}" for n in unique_names(args.images) for ext in (".png", ".pt")), "grid.png", "translate.json")
    except OutputError as e:
        p.error(str(e))
    return args


def main():
    args = parse_args()
    translator = build_translator(
        args.ckpt,
        source=args.source,
        inversion=args.invert,
        encoder=args.encoder,
        alpha=args.alpha,
        iterations=args.iterations,
        space=args.space,
        steps=args.steps,
        seed=args.seed,
        distance=mean_squared_error if args.distance == "mse" else None,
        device=choose_device(args.device),
        progress=not args.no_progress,
    )
    summary = translate_photos(
        args.images, args.out, translator, aligned=args.aligned, all_faces=args.all_faces, min_face_score=args.min_face_score
    )
    print(f"{len(summary.done)} photo(s) translated into {args.outdir}" + (f"; grid: {summary.grid}" if summary.grid else ""))
    for item in summary.skipped:
        print(f"skipped: {item['reason']}")
    if not summary.done:
        raise cli.InputError(f"no photo was translated ({len(summary.skipped)} skipped, reasons above and in {args.outdir}/translate.json)")


if __name__ == "__main__":
    cli.run(main, weight_flags=dict(paths={"restyle_e4e_ffhq": "--encoder", "e4e_ffhq": "--encoder"}))
