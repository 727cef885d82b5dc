"""Stage 2: adapt the generator with the trained mapper's per-image directions.

    python scripts/train_generator.py --config configs/ffhq_elf.yaml --mapper runs/ffhq_elf/mapper.pt
    python scripts/train_generator.py --config configs/ffhq_elf.yaml --set prompt.scheme=manual   # NADA

Writes RUN/generator.pt (EMA generator, reference-port format), RUN/stage2.pt
(resumable state), RUN/samples/*.png and RUN/stats_stage2.jsonl.
"""

from ipl import cli
from ipl.pipeline import Session


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    parser.add_argument("--mapper", help="Stage-1 checkpoint (default: RUN/mapper.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/stage2.pt")
    args = parser.parse_args()
    session = Session(cli.load(args), progress=not args.no_progress)
    path = session.stage2(args.mapper, resume=args.resume)
    print(f"adapted generator: {path}")


if __name__ == "__main__":
    cli.run(main)
