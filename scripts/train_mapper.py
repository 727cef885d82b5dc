"""Stage 1: train the latent mapper (image-specific prompts).

    python scripts/train_mapper.py --config configs/ffhq_elf.yaml
    python scripts/train_mapper.py --config configs/tiny.yaml --set stage1.lambda_domain=10

Writes RUN/mapper.pt, RUN/stats_stage1.jsonl and RUN/config.yaml, where RUN is
runs/<config name> unless run_dir is set. A run that has trained already is
continued with --resume or trained again with --restart, never replaced
without one of them.
"""

from ipl import cli
from ipl.pipeline import Session, check_run_dir


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from RUN/mapper.pt")
    again.add_argument("--restart", action="store_true", help="train Stage 1 again, replacing RUN/mapper.pt")
    args = parser.parse_args()
    config = cli.load(args)
    check_run_dir(config, "stage1", resume=args.resume, restart=args.restart)  # before any model is loaded
    session = Session(config, progress=not args.no_progress)
    path = session.stage1(resume=args.resume, restart=args.restart)
    print(f"mapper: {path}")


if __name__ == "__main__":
    cli.run(main, resume_hint="add --resume to the same command to continue")
