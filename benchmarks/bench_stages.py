"""Seconds per iteration and peak memory of both stages, at full size by default.

    python benchmarks/bench_stages.py                       # StyleGAN2 1024 + CLIP ViT-B/32, random weights
    python benchmarks/bench_stages.py --size 256 --iters 2  # quicker
    python benchmarks/bench_stages.py --only stage1_bank,text_ours,text_naive

Random weights cost the same time as trained ones. Each measurement runs in
a fresh subprocess, so its peak resident memory (ru_maxrss) is its own; it
includes the models' weights. Stage timings come from the training loops
themselves (their per-step log), after --warmup steps. The "naive" rows are
the authors' formulations written here for comparison: the per-sample
77-token text loop, and layer selection that back-propagates into every
generator weight (same chunking as ours, so that only the weight gradients
differ).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import measurements  # benchmarks/measurements.py: the definitions gpu_check.py shares
from ipl.config import GeneratorConfig, Stage2Config

# Authors' code on a 2-core machine of this kind (patched only to run on a
# CPU), median seconds per iteration at 1024 px with ViT-B/32.
# Stage 1 from the bank is compared with the authors' Stage 1 (fresh images):
# it replaces that step.
AUTHORS = {"stage1_fresh": 109.5, "stage1_bank": 109.5, "stage2": 89.7}

MEASUREMENTS = ["stage1_fresh", "stage1_bank", "bank_build", "stage2", "text_ours", "text_naive", "select_ours", "select_naive"]


def spec(args):
    """The model settings of every measurement (:func:`measurements.build`'s arguments)."""
    return dict(size=args.size, clip=args.clip, render_chunk=args.render_chunk, stage2_chunk=args.stage2_chunk)


def child(name, args):
    from ipl.backends.stylegan2 import select_layers
    from ipl.method.prompts import PromptTextEncoder

    cpu = torch.device("cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    if name in ("stage1_fresh", "stage1_bank"):
        images = "fresh" if name == "stage1_fresh" else "bank"
        return measurements.stage1_times(cpu, spec(args), images, args.warmup, args.iters, tmp), "s/iter"
    if name == "bank_build":
        return measurements.bank_build_times(cpu, spec(args), args.bank_images, tmp), "s/image"
    if name == "stage2":
        return measurements.stage2_times(cpu, spec(args), args.warmup, args.iters, tmp), "s/iter"
    if name in ("text_ours", "text_naive"):
        config, _, clip_model = measurements.build(cpu, **spec(args))
        encoder = PromptTextEncoder(clip_model, "a photo of a", ["human", "tolkien elf"])
        ctx = torch.randn(32, encoder.n_ctx, clip_model.token_dim, requires_grad=True)
        if name == "text_ours":
            fn = lambda: encoder(ctx).sum().backward()  # noqa: E731
        else:
            fn = lambda: naive_text(clip_model, encoder, ctx).sum().backward()  # noqa: E731
        return measurements.timed(fn, args.warmup, args.iters), "s/step (64 prompts, fwd+bwd)"
    if name in ("select_ours", "select_naive"):
        config, backend, clip_model = measurements.build(cpu, **spec(args))
        G = backend.generator
        text = clip_model.encode_text(["tolkien elf"])[0]
        k = int(2 * G.n_latent / 3)
        w = G.style(torch.randn(config.stage2.auto_layer_batch, G.style_dim)).detach()
        if name == "select_ours":
            fn = lambda: select_layers(G, clip_model, w, text, k, chunk=config.stage2.chunk)  # noqa: E731
        else:
            fn = lambda: naive_select(G, clip_model, w, text, k, config.stage2.chunk)  # noqa: E731
        return measurements.timed(fn, args.warmup, args.iters), "s/selection (batch 8)"
    raise ValueError(name)


def naive_text(clip_model, encoder, ctx):
    """The authors' text encoder: one 77-token transformer call per sample and label."""
    m = clip_model.model
    out = []
    for label in range(2):
        tokens = clip_model.tokenize([f"a photo of a {encoder.labels[label]}"])
        full = clip_model.embed_tokens(tokens)[0]  # (77, k)
        for i in range(ctx.shape[0]):
            x = torch.cat([full[:1], ctx[i], full[1 + encoder.n_ctx :]]) + m.positional_embedding
            x = m.transformer(x[:, None])[:, 0]
            out.append(m.ln_final(x)[tokens[0].argmax()] @ m.text_projection)
    return torch.stack(out)


def naive_select(G, clip_model, w, text, k, chunk):
    """Layer selection as the authors run it: every weight requires a gradient."""
    from ipl.method.losses import global_clip_loss

    G.requires_grad_(True)
    codes = w.unsqueeze(1).repeat(1, G.n_latent, 1).requires_grad_(True)
    for idx in torch.arange(w.shape[0]).split(chunk or w.shape[0]):
        image = G([codes[idx]], input_is_latent=True)[0]
        loss = global_clip_loss(clip_model.encode_images(image), text, clip_model.logit_scale) * (len(idx) / w.shape[0])
        loss.backward()
    G.zero_grad(set_to_none=True)
    return torch.topk(codes.grad.abs().mean(-1).mean(0), k).indices


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--clip", default="random:ViT-B/32", help="random:ViT-B/32 or tiny")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--render-chunk", type=int, default=GeneratorConfig().render_chunk)
    parser.add_argument("--stage2-chunk", type=int, default=Stage2Config().chunk)
    parser.add_argument("--bank-images", type=int, default=16)
    parser.add_argument("--malloc", choices=["keep", "system"], default="keep",
                        help="keep: glibc keeps freed memory for reuse, as the training scripts do (ipl.runtime.keep_freed_memory); system: glibc's defaults")
    parser.add_argument("--only", default=",".join(MEASUREMENTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.malloc == "keep":
            from ipl.runtime import keep_freed_memory

            keep_freed_memory()
        times, unit = child(args.child, args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(json.dumps({"name": args.child, "times": times, "unit": unit, "peak_gib": peak}))
        return

    names = [n for n in args.only.split(",") if n]
    print(f"# {args.size}px StyleGAN2, CLIP {args.clip}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"# render_chunk={args.render_chunk} stage2.chunk={args.stage2_chunk} malloc={args.malloc} warmup={args.warmup} iters={args.iters}")
    print("| measurement | min | median | unit | peak RSS (GiB) | authors' median | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        argv = [sys.executable, __file__, "--child", name, "--size", str(args.size), "--clip", args.clip,
                "--iters", str(args.iters), "--warmup", str(args.warmup), "--render-chunk", str(args.render_chunk),
                "--stage2-chunk", str(args.stage2_chunk), "--bank-images", str(args.bank_images), "--malloc", args.malloc]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        med = statistics.median(r["times"])
        ref = AUTHORS.get(name) if args.size == 1024 and args.clip == "random:ViT-B/32" else None
        ref_cols = f"{ref:.1f} | {ref / med:.1f}x" if ref else "- | -"
        print(f"| {name} | {min(r['times']):.3f} | {med:.3f} | {r['unit']} | {r['peak_gib']:.2f} | {ref_cols} |", flush=True)


if __name__ == "__main__":
    main()
