"""Stage 1: train the latent mapper (image-specific prompts).

    python scripts/train_mapper.py --config configs/ffhq_elf.yaml
    python scripts/train_mapper.py --config configs/tiny.yaml --set stage1.lambda_domain=10

Writes RUN/mapper.pt, RUN/stats_stage1.jsonl and RUN/config.yaml, where RUN is
runs/<config name> unless run_dir is set.
"""

from ipl import cli
from ipl.pipeline import Session


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from RUN/mapper.pt")
    args = parser.parse_args()
    session = Session(cli.load(args), progress=not args.no_progress)
    path = session.stage1(resume=args.resume)
    print(f"mapper: {path}")


if __name__ == "__main__":
    cli.run(main)
