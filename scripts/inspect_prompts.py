"""Show what a trained mapper learned: nearest tokens of each image's prompts (and of a learned target word).

    python scripts/inspect_prompts.py --mapper runs/ffhq_elf/mapper.pt --seeds 0-7
    python scripts/inspect_prompts.py --word runs/drawings/target_word.pt

For every seed (latent z -> w), prints the nearest CLIP vocabulary tokens of
each learned prompt vector, then how similar the prompts of different images
are (mean pairwise cosine; 1 = the same prompts for every image). A run
whose target was given as images (prompt.target_images) has a target word
(RUN/target_word.pt, found beside the mapper); its nearest tokens come first.
"""

from pathlib import Path

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
from ipl.stages.target import WORD_FILE, read_word


def show_word(data, topk, device):
    """The learned target word: its nearest vocabulary tokens per embedding, and how well it fits its images."""
    config = config_lib.from_dict(data["config"])
    clip_model = build_clip(config.clip, device)
    vocabulary = clip_model.model.token_embedding.weight.shape[0]
    if topk > vocabulary:
        raise cli.InputError(f"--topk {topk} exceeds the CLIP vocabulary ({vocabulary} tokens)")
    sims, ids = nearest_tokens(data["word"].to(device), clip_model.model.token_embedding.weight, topk)
    stats = data.get("stats", {})
    print(f"target word learned from {len(data['images'])} images ({config.prompt.target_images}), label {(data['text'] + ' S*').strip()!r}")
    for j in range(ids.shape[0]):
        near = ", ".join(f"{decode_token(t)}({s:.2f})" for s, t in zip(sims[j].tolist(), ids[j].tolist()))
        print(f"S*{j + 1}: {near}")
    if "alignment_after" in stats:
        print(f"cosine of its template mean to the images' mean feature: {stats['alignment_before']:.4f} -> {stats['alignment_after']:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapper", help="Stage-1 checkpoint (RUN/mapper.pt)")
    parser.add_argument("--word", help="a learned target word (default: target_word.pt beside --mapper, when there is one)")
    parser.add_argument("--seeds", default="0-7", help="latent seeds, e.g. 0-7 or 1,5,9")
    parser.add_argument("--topk", type=cli.int_at_least(1), default=3, help="neighbours per prompt vector")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        parser.error(f"--seeds: {e}")

    if not args.mapper and not args.word:
        parser.error("give --mapper RUN/mapper.pt, --word RUN/target_word.pt, or both")
    device = choose_device(args.device)
    word_path = args.word or (Path(args.mapper).parent / WORD_FILE if (Path(args.mapper).parent / WORD_FILE).is_file() else None)
    if word_path:
        show_word(read_word(word_path), args.topk, device)
    if not args.mapper:
        return
    model, ckpt = load_prompt_model(args.mapper, device)
    config = config_lib.from_dict(ckpt["config"])
    if config.generator.kind != "stylegan2" and word_path:
        print(f"(the per-image prompts of a {config.generator.kind} run come from real images, not seeds: only its word is shown)")
        return
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
