"""Reproduce the paper's Fig. 5: held-out photos through NADA, GAN-IPL, Diff-CLIP, Diff-CLIP+ and Diff-IPL, with a table.

    python scripts/reproduce_fig5.py --tiny                            # offline, tiny random models, minutes on a CPU
    python scripts/reproduce_fig5.py --images celeba_hq_test --dry-run # the plan; loads nothing
    python scripts/reproduce_fig5.py --images celeba_hq_test --out fig5
    python scripts/reproduce_fig5.py --images train_faces --test-images test_faces --out fig5
    torchrun --standalone --nproc_per_node 4 scripts/reproduce_fig5.py --images celeba_hq_test --out fig5

--images is a folder of aligned face photos (e.g. CelebA-HQ at 256 px).
The diffusion runs train on its first images; the last --n-test are held
out for the figure rows and the table (or every image of --test-images).
Per domain (--domains, default the paper's two) five runs go into
RUNS_ROOT/<domain>_<column>/: NADA and GAN-IPL on the FFHQ StyleGAN2
(configs/ffhq_<domain>.yaml), Diff-CLIP on the CelebA-HQ DDPM
(ddpm_<domain>.yaml), Diff-CLIP+ and Diff-IPL on the FFHQ-256 diffusion
autoencoder (diffae_<domain>.yaml). Finished runs and cached inversions are
reused: an interrupted reproduction continues with the same command.

Writes into --out: fig5_<domain>.png (the nine columns Input | Recon1 |
NADA | GAN-IPL | Recon2 | Diff-CLIP | Recon3 | Diff-CLIP+ | Diff-IPL, rows =
the first --rows held-out photos), fig5.md and fig5.json (each adapted
column scored on every held-out photo against its source model's
reconstruction; time per column), inversions/ (each photo's codes per source
model). Under torchrun the runs and the inversions go round-robin to the
ranks; rank 0 renders and writes.

--tiny: configs/tiny*.yaml (tiny random models, the tiny CLIP) with the
domains' prompts and a few steps, the images of assets/demo_images (the
last 4 held out), StyleGAN2 inversion by projection with a pixel distance,
and the metrics that need no weight file (CLIP score; ID on CLIP image
features with the tiny CLIP).
"""

import argparse
from pathlib import Path

from ipl import cli, distributed
from ipl.evaluation import EvalSettings, EvaluationError, load_metric_networks, parse_metrics
from ipl.orchestration.fig5 import DOMAINS, Fig5Error, InversionSettings, describe_plan, plan_fig5, run_fig5, split_photos
from ipl.outputs import OutputError, OutputFolder

TINY = {"images": "assets/demo_images", "n_test": 4, "runs_root": "runs/fig5_tiny", "metrics": "id,clip", "id_net": "clip",
        "clip_model": "tiny", "invert_gan": "project", "steps": 8, "distance": "mse", "cell": 64}  # fmt: skip
FULL = {"n_test": 50, "runs_root": "runs/fig5", "metrics": "is,scs,id,clip", "id_net": "arcface", "clip_model": "ViT-B/32",
        "invert_gan": "restyle", "steps": 1000, "distance": "lpips", "cell": 256}  # fmt: skip


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--images", help="folder of aligned face photos (training photos of the diffusion runs; the last --n-test are held out)")
    p.add_argument("--test-images", help="folder of held-out photos for the figure and the table (default: the last --n-test of --images)")
    p.add_argument("--n-test", type=cli.int_at_least(2), help="held-out photos taken from the end of --images (default 50; --tiny 4)")
    p.add_argument("--rows", type=cli.int_at_least(1), default=4, help="photos shown in each figure (default 4)")
    p.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated, among {', '.join(DOMAINS)} (default both)")
    p.add_argument("--runs-root", help="where the runs go (default runs/fig5; --tiny runs/fig5_tiny)")
    p.add_argument("--out", help="folder of the figures and tables (default RUNS_ROOT/figure)")
    p.add_argument("--cache-dir", help="cache of every run (source-feature banks, training inversions); default the config's (--tiny: RUNS_ROOT/cache)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)")
    p.add_argument("--metrics", help="metrics of the table (default is,scs,id,clip; --tiny id,clip); among is,scs,id,diversity,clip")
    p.add_argument("--id-net", choices=["arcface", "clip"], help="ID features (default arcface; --tiny clip)")
    p.add_argument("--batch", type=cli.int_at_least(1), default=4, help="photos per rendering batch of the table (default 4)")
    p.add_argument("--invert-gan", choices=["restyle", "e4e", "project"], help="StyleGAN2 inversion (default restyle, the paper's; --tiny project)")
    p.add_argument("--encoder", help="ReStyle-e4e / e4e checkpoint (default: the registry's FFHQ file, fetched when missing)")
    p.add_argument("--steps", type=cli.int_at_least(1), help="projection steps with --invert-gan project (default 1000; --tiny 8)")
    p.add_argument("--distance", choices=["lpips", "mse"], help="projection distance (default lpips; --tiny mse: no weight file)")
    p.add_argument("--cell", type=cli.int_at_least(16), help="figure cell side in pixels (default 256; --tiny 64)")
    p.add_argument("--weights-dir", help="folder of the metric weight files")
    p.add_argument("--download", action="store_true", help="download metric weights that have a direct URL")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny random models, offline, a few minutes on a CPU (CI)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, then stop (loads nothing)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    defaults = TINY if args.tiny else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.images is None:
        p.error("--images DIR is required (a folder of aligned face photos, e.g. CelebA-HQ), or --tiny for the offline demo")
    if args.out is None:
        args.out = str(Path(args.runs_root) / "figure")
    if args.cache_dir is None and args.tiny:
        args.cache_dir = str(Path(args.runs_root) / "cache")
    if args.cache_dir:
        args.overrides = [*args.overrides, f"cache_dir={args.cache_dir}"]
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    try:
        metrics = parse_metrics(args.metrics)
        if "sifid" in metrics:
            raise EvaluationError("--metrics sifid needs reference images per domain, which Fig. 5 has none of: leave it out")
        args.photos = split_photos(args.images, args.test_images, args.n_test)
        n = len(args.photos.held_out)
        try:
            args.settings = EvalSettings(metrics=metrics, n=n, batch=args.batch, id_net=args.id_net, clip_model=args.clip_model)
        except EvaluationError as e:
            raise EvaluationError(f"{e} (n = the {n} held-out photos): hold out more photos (--n-test, --test-images) or choose other --metrics") from None
        args.inversion = InversionSettings(gan=args.invert_gan, encoder=args.encoder, steps=args.steps, distance=args.distance)
        args.out = OutputFolder(args.out, "--out", "reproduce_fig5.py", reads=[args.images, *([args.test_images] if args.test_images else [])])
    except (EvaluationError, Fig5Error, OutputError) as e:
        p.error(str(e))
    return args


def main():
    args = parse_args()
    runs = plan_fig5(args.photos, domains=args.domains, runs_root=args.runs_root, tiny=args.tiny, overrides=args.overrides)
    world, device = (distributed.SINGLE, None) if args.dry_run else distributed.init(args.device)
    if world.is_main:
        print(describe_plan(runs, args.photos, args.out.folder))
    if args.dry_run:
        return
    summary = run_fig5(
        runs, args.photos, args.out, device=device, inversion=args.inversion, settings=args.settings,
        load_networks=lambda names: load_metric_networks(names, device, weights_dir=args.weights_dir, download=args.download,
                                                         clip_model=args.settings.clip_model),
        rows=args.rows, cell=args.cell, world=world, progress=not args.no_progress,
    )  # fmt: skip
    if summary is not None:
        figures = ", ".join(str(args.out.folder / d["figure"]) for d in summary["domains"].values())
        print(f"figures: {figures}; table: {args.out.folder / 'fig5.md'} and fig5.json")
    distributed.close(world)


if __name__ == "__main__":
    cli.run(main, resume_hint="run the same command again to continue")
