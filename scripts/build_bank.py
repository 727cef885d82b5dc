"""Build the Stage-1 source-feature bank of a config ahead of training, on one process or sharded over GPUs.

    python scripts/build_bank.py --config configs/ffhq_elf.yaml
    torchrun --standalone --nproc_per_node 8 scripts/build_bank.py --config configs/ffhq_elf.yaml

The bank holds the (w, CLIP feature of G_s(w)) pairs every Stage-1 run of
the same source generator and CLIP draws (see README, Stage 1); training
finds it in the cache and skips rendering. Under torchrun the steps go
round-robin to the ranks and rank 0 writes the file, which is the same as
one process writes.
"""

from ipl import cli, distributed
from ipl.backends.stylegan2 import StyleGAN2Backend
from ipl.backends.stylegan2.bank import build_stage1_bank
from ipl.build import build_clip
from ipl.config import ConfigError, resolve
from ipl.pipeline import check_run_inputs


def main():
    parser = cli.config_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    config = cli.load(args)
    if config.generator.kind != "stylegan2":
        raise ConfigError(
            f"generator.kind={config.generator.kind}: the source-feature bank is StyleGAN2's; a Diff-IPL run "
            "encodes its own images once (scripts/train_mapper.py does it)"
        )
    check_run_inputs(config)  # a cache_dir that is a file, an unknown CLIP: before anything is built
    world, device = distributed.init(args.device or config.device)
    backend = StyleGAN2Backend(config, device)
    clip_model = build_clip(config.clip, device)
    cache_dir = resolve(config).cache_dir
    bank = build_stage1_bank(config, cache_dir, backend.generator, backend.info, clip_model, backend.truncation_latent,
                             progress=not args.no_progress, world=world)  # fmt: skip
    if world.is_main:
        print(f"source-feature bank: {len(bank)} pairs in {cache_dir / 'banks'} (world size {world.size})")
    distributed.close(world)


if __name__ == "__main__":
    cli.run(main, resume_hint="run the same command again to continue")
