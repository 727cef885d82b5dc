"""Stage 2: adapt the generator with the trained mapper's per-image directions.

    python scripts/train_generator.py --config configs/ffhq_elf.yaml --mapper runs/ffhq_elf/mapper.pt
    python scripts/train_generator.py --config configs/ffhq_elf.yaml --set prompt.scheme=manual   # NADA

Writes RUN/generator.pt (EMA generator, reference-port format), RUN/stage2.pt
(resumable state), RUN/samples/*.png and RUN/stats_stage2.jsonl.
"""

from ipl import cli
from ipl.pipeline import STAGE1_SCHEMES, Session, check_run_dir, finished_mapper


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    parser.add_argument("--mapper", help="Stage-1 checkpoint (default: RUN/mapper.pt)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN/stage2.pt")
    again.add_argument("--restart", action="store_true", help="train Stage 2 again, replacing RUN/stage2.pt and the adapted model")
    args = parser.parse_args()
    config = cli.load(args)
    # Before the source model is loaded: the run directory, then the mapper.
    check_run_dir(config, "stage2", resume=args.resume, restart=args.restart)
    if config.prompt.scheme in STAGE1_SCHEMES:
        finished_mapper(config, args.mapper)
    elif args.mapper:
        parser.error(f"--mapper: prompt.scheme={config.prompt.scheme} learns no prompts and reads no Stage-1 checkpoint; leave --mapper out")
    session = Session(config, progress=not args.no_progress)
    path = session.stage2(args.mapper, resume=args.resume, restart=args.restart)
    print(f"adapted model: {path}")


if __name__ == "__main__":
    cli.run(main, resume_hint="add --resume to the same command to continue")
