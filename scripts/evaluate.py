"""Evaluate an adapted model: IS, SIFID, SCS, ID, diversity and CLIP score, in one rendering pass.

    python scripts/evaluate.py --adapted runs/ffhq_elf/generator.pt --refs refs/ffhq_elf
    python scripts/evaluate.py --adapted G.pt --source ffhq --metrics is,scs,id --num-images 1000 --out eval/elf
    python scripts/evaluate.py --adapted runs/diffae_elf/autoencoder.pt --images celeba_hq_test/ --num-images 100
    python scripts/evaluate.py --adapted runs/ddpm_elf/ddpm.pt --images celeba_hq_test/ --num-images 100

A StyleGAN2 generator is scored on the images of seeds; a diffusion run's
model (a Diff-IPL autoencoder or a DDPM) on held-out real images (--images,
default the run's data.test_images): source = the source model's
reconstruction, adapted = the fine-tuned model's render of the same
inverted latents.

Several GPUs: torchrun --nproc_per_node N scripts/evaluate.py ... (the
batches of seeds or images are shared out; metrics.json is the same as one
process's and records world_size).

Writes OUT/metrics.json and OUT/metrics.md (a row in the layout of the
paper's Table 1). Metric weights are looked up as docs/EVALUATION.md says;
only the networks of the requested metrics are loaded.
"""

import argparse
from pathlib import Path

from ipl import cli, distributed
from ipl.evaluation import (
    METRICS,
    EvalSettings,
    EvaluationError,
    evaluate_checkpoint,
    load_metric_networks,
    load_references,
    parse_metrics,
    record_markdown,
    required_networks,
    write_record,
)
from ipl.outputs import OutputError, OutputFolder
from ipl.sampling import RECORDED_SOURCE


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--adapted", required=True, help="adapted model (RUN/generator.pt, a Diff-IPL run's RUN/autoencoder.pt or a DDPM run's RUN/ddpm.pt)")
    p.add_argument(
        "--source",
        default=RECORDED_SOURCE,
        help=f"source generator: pretrained name, checkpoint path, or '{RECORDED_SOURCE}' (default: the one in the adapted file's run config)",
    )
    p.add_argument("--metrics", help=f"comma-separated, from {','.join(METRICS)} (default: all; sifid only with --refs)")
    p.add_argument("--refs", help="folder of SIFID reference images of the target domain (R1, R2, R3 in file-name order)")
    p.add_argument("--num-images", "--n", dest="n", type=cli.int_at_least(2), default=1000, help="images per model (default 1000)")
    p.add_argument("--images", help="diffusion runs: folder of held-out images to score (default: the run's data.test_images)")
    p.add_argument("--seed-start", type=cli.int_at_least(0), default=0, help="first seed (default 0)")
    p.add_argument("--batch", type=cli.int_at_least(1), default=4, help="images per batch; lower it if GPU memory runs out (default 4)")
    p.add_argument("--truncation", type=cli.float_in(0, 1, low_open=True), default=0.7, help="truncation psi of source and adapted images (default 0.7)")
    p.add_argument("--target-text", help="CLIP-score text (default: the adapted file's meta.target_class)")
    p.add_argument("--id-net", choices=["arcface", "clip"], default="arcface", help="ID features: ArcFace (faces) or CLIP (e.g. dogs)")
    p.add_argument("--clip-model", default="ViT-B/32")
    p.add_argument("--clip-dtype", choices=["auto", "float32", "float16"], default="auto")
    p.add_argument("--is-splits", type=cli.int_at_least(1), default=10)
    p.add_argument("--sifid-size", type=cli.int_at_least(1), help="resize generated and reference images to this square size for SIFID")
    p.add_argument("--no-quantize", action="store_true", help="evaluate float images instead of 8-bit ones")
    p.add_argument("--weights-dir", help="folder of the metric weight files (default: $IPL_PRETRAINED_DIR or pretrained/)")
    p.add_argument("--download", action="store_true", help="download metric weights that have a direct URL")
    p.add_argument("--out", help="output folder (default: the adapted checkpoint's folder)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    try:
        args.metrics = parse_metrics(args.metrics) if args.metrics is not None else tuple(m for m in METRICS if m != "sifid" or args.refs)
        args.settings = EvalSettings(
            metrics=args.metrics,
            n=args.n,
            seed_start=args.seed_start,
            batch=args.batch,
            truncation=args.truncation,
            quantize=not args.no_quantize,
            is_splits=args.is_splits,
            sifid_size=args.sifid_size,
            id_net=args.id_net,
            clip_model=args.clip_model,
        )
    except EvaluationError as e:
        p.error(str(e))
    if "sifid" in args.metrics and not args.refs:
        p.error("sifid needs --refs DIR (reference images of the target domain); or leave it out of --metrics")
    # metrics.json and metrics.md may replace neither an input nor a file evaluate.py did not write.
    reads = [f for f in (args.adapted, args.refs, args.images, args.source) if f and Path(f).exists()]
    try:
        args.out = OutputFolder(args.out or Path(args.adapted).parent, "--out", "evaluate.py", reads=reads)
        args.out.check("metrics.json", "metrics.md")
    except OutputError as e:
        p.error(str(e))
    return args


def main():
    args = parse_args()
    # Under torchrun every rank renders and scores its share of the batches
    # on its own device; rank 0 reduces them and writes the record.
    world, device = distributed.init(args.device)
    references = load_references(args.refs) if "sifid" in args.metrics else None
    # Weights first: a missing file stops the run before any image is rendered.
    networks = load_metric_networks(
        required_networks(args.settings),
        device,
        weights_dir=args.weights_dir,
        download=args.download,
        clip_model=args.clip_model,
        clip_dtype=args.clip_dtype,
    )
    record = evaluate_checkpoint(
        args.adapted,
        networks,
        args.settings,
        device=device,
        source=args.source,
        references=references,
        target_text=args.target_text,
        images=args.images,
        world=world,
        progress=not args.no_progress,
    )
    if world.is_main:
        path = write_record(record, args.out)
        print(record_markdown(record))
        print(f"written: {path} and {path.with_suffix('.md')}")
    distributed.close(world)


if __name__ == "__main__":
    cli.run(main, weight_flags=dict(download="--download", weights_dir="--weights-dir"))
