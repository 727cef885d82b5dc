"""Reproduce the paper's Table 1: NADA and IPL on the ten domains, evaluated, beside the paper's numbers.

    python scripts/reproduce_table1.py --dry-run                      # the plan; loads nothing
    python scripts/reproduce_table1.py --refs-root refs                # all ten (GPU: hours)
    python scripts/reproduce_table1.py --configs ffhq_elf,afhqdog_cartoon --n 500

Per config: NADA (prompt.scheme=manual) and IPL (adaptive) for each lambda
of --lambdas (the paper keeps the one with the better IS), each in
RUNS_ROOT/<config>_<method>[_lambda<L>]/. Finished runs and evaluations are
reused, so an interrupted reproduction continues with the same command.
Writes RUNS_ROOT/table1.md and table1.json.
"""

import argparse

from ipl import cli
from ipl.evaluation import EvalSettings, EvaluationError, load_metric_networks, parse_metrics
from ipl.table1 import PAPER_TABLE1, describe_plan, plan_table1, run_table1
from ipl.runtime import choose_device


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(PAPER_TABLE1), help="config names or YAML paths, comma-separated (default: the ten of Table 1)")
    p.add_argument("--runs-root", default="runs/table1")
    p.add_argument("--lambdas", default="1,10", help="IPL's lambda sweep (default 1,10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)")
    p.add_argument("--metrics", default="is,scs,id,diversity,clip", help="metrics of every run (sifid is added with --refs-root)")
    p.add_argument("--refs-root", help="SIFID references: REFS_ROOT/<config>/ holds each domain's reference images")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--batch", type=int, default=4, help="images per evaluation batch (default 4)")
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--dog-id", choices=["clip", "none"], default="clip", help="ID of non-face sources (TransFG has no released weights)")
    p.add_argument("--weights-dir", help="folder of the metric weight files")
    p.add_argument("--download", action="store_true", help="download metric weights that have a direct URL")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="print every run, command and metric, then stop (loads nothing)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    try:
        args.lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
        args.settings = EvalSettings(
            metrics=parse_metrics(args.metrics), n=args.n, seed_start=args.seed_start, batch=args.batch, truncation=args.truncation
        )
    except (ValueError, EvaluationError) as e:
        p.error(str(e))
    return args


def main():
    args = parse_args()
    runs = plan_table1(
        [c.strip() for c in args.configs.split(",") if c.strip()],
        args.settings,
        runs_root=args.runs_root,
        lambdas=args.lambdas,
        overrides=args.overrides,
        refs_root=args.refs_root,
        dog_id=args.dog_id,
    )
    print(describe_plan(runs, args.device, args.runs_root))
    if args.dry_run:
        return
    device = choose_device(args.device)
    summary = run_table1(
        runs,
        device=device,
        load_networks=lambda names: load_metric_networks(
            names, device, weights_dir=args.weights_dir, download=args.download, clip_model=args.settings.clip_model
        ),
        runs_root=args.runs_root,
        progress=not args.no_progress,
    )
    print(f"{len(summary)} rows written to {args.runs_root}/table1.md and table1.json")


if __name__ == "__main__":
    cli.run(main)
