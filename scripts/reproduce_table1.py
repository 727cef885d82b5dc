"""Reproduce the paper's Table 1: NADA and IPL on the ten domains, evaluated, beside the paper's numbers.

    python scripts/reproduce_table1.py --dry-run                      # the plan; loads nothing
    python scripts/reproduce_table1.py --refs-root refs                # all ten (GPU: hours)
    python scripts/reproduce_table1.py --configs ffhq_elf,afhqdog_cartoon --num-images 500
    torchrun --standalone --nproc_per_node 8 scripts/reproduce_table1.py --refs-root refs   # one node, 8 GPUs
    python scripts/reproduce_table1.py --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   # a job array

Per config: NADA (prompt.scheme=manual) and IPL (adaptive) for each lambda
of --lambdas (the paper keeps the one with the better IS), each in
RUNS_ROOT/<config>_<method>[_lambda<L>]/. Finished runs and evaluations are
reused, so an interrupted reproduction continues with the same command.
Writes RUNS_ROOT/table1.md and table1.json.

Under torchrun, run i belongs to rank i % N (each on its own GPU); the ranks
first build the shared source-feature banks together, and rank 0 writes the
tables when every run is done. --shard i/n gives independent jobs the same
assignment; the job that finds every run finished writes the tables.
"""

import argparse

from ipl import cli, distributed
from ipl.config import ConfigError
from ipl.evaluation import (
    EvalSettings,
    EvaluationError,
    load_metric_networks,
    parse_metrics,
)
from ipl.runtime import choose_device
from ipl.table1 import PAPER_TABLE1, assign_runs, describe_plan, plan_table1, run_table1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--configs", default=",".join(PAPER_TABLE1), help="config names or YAML paths, comma-separated (default: the ten of Table 1)")
    p.add_argument("--runs-root", default="runs/table1")
    p.add_argument("--lambdas", default="1,10", help="IPL's lambda sweep (default 1,10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)")
    p.add_argument("--metrics", default="is,scs,id,diversity,clip", help="metrics of every run (sifid is added with --refs-root)")
    p.add_argument("--refs-root", help="SIFID references: REFS_ROOT/<config>/ holds each domain's reference images")
    p.add_argument("--num-images", "--n", dest="n", type=cli.int_at_least(2), default=1000, help="images per evaluation (default 1000)")
    p.add_argument("--shard", help="i/n: run only the runs of job i of n independent jobs (e.g. a Slurm array); default all, or torchrun's ranks")
    p.add_argument("--seed-start", type=cli.int_at_least(0), default=0)
    p.add_argument("--batch", type=cli.int_at_least(1), default=4, help="images per evaluation batch (default 4)")
    p.add_argument("--truncation", type=cli.float_in(0, 1, low_open=True), default=0.7)
    p.add_argument("--dog-id", choices=["clip", "none"], default="clip", help="ID of non-face sources (TransFG has no released weights)")
    p.add_argument("--weights-dir", help="folder of the metric weight files")
    p.add_argument("--download", action="store_true", help="download metric weights that have a direct URL")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="print every run, command and metric, then stop (loads nothing)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    try:
        text, args.lambdas = args.lambdas, [float(x) for x in args.lambdas.split(",") if x.strip()]
        if not args.lambdas or any(not lam >= 0 for lam in args.lambdas):
            raise ValueError(f"--lambdas {text!r}: give one or more numbers >= 0, e.g. 1,10 (the paper's sweep)")
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
    if args.shard and distributed.launched():
        raise ConfigError("--shard is for independent jobs; under torchrun the ranks share the runs already: drop --shard")
    if args.shard:
        world, device = distributed.parse_shard(args.shard), None
    elif args.dry_run:
        world, device = distributed.SINGLE, None
    else:
        world, device = distributed.init(args.device)
    if world.is_main or not world.joined:
        print(describe_plan(runs, args.device, args.runs_root))
        if world.size > 1:
            names = ", ".join(run.name for run in assign_runs(runs, world))
            print(f"this {'job' if not world.joined else 'rank'} ({world.rank} of {world.size}) owns: {names or 'none'}")
    if args.dry_run:
        return
    device = device or choose_device(args.device)
    summary = run_table1(
        runs,
        device=device,
        load_networks=lambda names: load_metric_networks(
            names, device, weights_dir=args.weights_dir, download=args.download, clip_model=args.settings.clip_model
        ),
        runs_root=args.runs_root,
        progress=not args.no_progress,
        world=world,
    )
    if summary is not None:
        print(f"{len(summary)} rows written to {args.runs_root}/table1.md and table1.json")
    elif not world.joined:
        print(f"job {world.rank} of {world.size} done; the tables are written by the job that finds every run finished")
    distributed.close(world)


if __name__ == "__main__":
    cli.run(main, resume_hint="run the same command again to continue", weight_flags=dict(download="--download", weights_dir="--weights-dir"))
