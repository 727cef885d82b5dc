"""Adapt a pretrained model (StyleGAN2, Diff-AE or DDPM) to a target domain: Stage 1 then Stage 2, one run directory.

    python scripts/adapt.py --config configs/ffhq_elf.yaml
    python scripts/adapt.py --config configs/tiny.yaml          # offline demo, ~1 min on a CPU

Downloads and converts the source generator and CLIP on first use. A complete
Stage-1 checkpoint in the run directory is reused; interrupted stages resume
(pass --restart to start both stages over).
"""

from ipl import cli
from ipl.pipeline import Session, check_run_dir


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    parser.add_argument("--restart", action="store_true", help="ignore checkpoints already in the run directory")
    args = parser.parse_args()
    config = cli.load(args)
    check_run_dir(config, "adapt", resume=not args.restart, restart=args.restart)  # before any model is loaded
    session = Session(config, progress=not args.no_progress)
    path = session.adapt(resume=not args.restart)
    print(f"adapted model: {path}")
    print(f"samples: {session.run_dir / 'samples'}")


if __name__ == "__main__":
    cli.run(main, resume_hint="run the same command again (without --restart) to continue")
