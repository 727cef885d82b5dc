"""Show what a trained mapper learned: nearest tokens of each image's prompts.

    python scripts/inspect_prompts.py --mapper runs/ffhq_elf/mapper.pt --seeds 0-7

For every seed (latent z -> w), prints the nearest CLIP vocabulary tokens of
each learned prompt vector, then how similar the prompts of different images
are (mean pairwise cosine; 1 = the same prompts for every image).
"""

import argparse

import torch

from ipl import cli
from ipl import config as config_lib
from ipl.backends.stylegan2 import build_source_generator
from ipl.build import build_clip
from ipl.inspect import decode_token, mean_pairwise_cosine, nearest_tokens, per_position_cosine
from ipl.runtime import CheckpointError, choose_device
from ipl.sampling import parse_seeds, z_from_seeds
from ipl.stages.stage1 import load_prompt_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapper", required=True, help="Stage-1 checkpoint (RUN/mapper.pt)")
    parser.add_argument("--seeds", default="0-7", help="latent seeds, e.g. 0-7 or 1,5,9")
    parser.add_argument("--topk", type=cli.int_at_least(1), default=3, help="neighbours per prompt vector")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        parser.error(f"--seeds: {e}")

    device = choose_device(args.device)
    model, ckpt = load_prompt_model(args.mapper, device)
    config = config_lib.from_dict(ckpt["config"])
    if config.generator.kind != "stylegan2":
        raise CheckpointError(
            f"{args.mapper} is the Stage-1 checkpoint of a {config.generator.kind} run, whose codes come from real "
            "images, not seeds; this script inspects StyleGAN2 runs"
        )
    generator, _ = build_source_generator(config.generator, device)
    clip_model = build_clip(config.clip, device)
    vocabulary = clip_model.model.token_embedding.weight.shape[0]
    if args.topk > vocabulary:
        parser.error(f"--topk {args.topk} exceeds the CLIP vocabulary ({vocabulary} tokens)")
    with torch.no_grad():
        w = generator.style(z_from_seeds(seeds, generator.style_dim).to(device))
        ctx = model(w)  # (B, m, k)
    sims, ids = nearest_tokens(ctx, clip_model.model.token_embedding.weight, args.topk)

    print(f"{ckpt['prompt']['scheme']} prompts, {config.prompt.source_class!r} -> {config.prompt.target_class!r}")
    for i, seed in enumerate(seeds):
        cells = []
        for j in range(ctx.shape[1]):
            near = ", ".join(f"{decode_token(t)}({s:.2f})" for s, t in zip(sims[i, j].tolist(), ids[i, j].tolist()))
            cells.append(f"V{j + 1}: {near}")
        print(f"seed {seed:>5}  " + " | ".join(cells))
    if len(seeds) > 1:
        per_pos = ", ".join(f"V{j + 1} {c:.3f}" for j, c in enumerate(per_position_cosine(ctx).tolist()))
        print(f"mean pairwise cosine between images' prompts: {mean_pairwise_cosine(ctx):.4f} (per position: {per_pos})")


if __name__ == "__main__":
    cli.run(main)
