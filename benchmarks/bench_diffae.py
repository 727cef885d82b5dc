"""Diff-IPL at full size with random weights: caching one image, and one fine-tuning image-step, ours and DiffusionCLIP's.

    python benchmarks/bench_diffae.py                       # Diff-AE FFHQ-256 + CLIP ViT-B/32 (random weights)
    python benchmarks/bench_diffae.py --arch tiny --clip tiny --iters 1   # a quick look at every code path

Each row runs in a fresh subprocess, so its peak resident memory (ru_maxrss)
is its own (weights included). Rows:

* ``cache_image``: encoding one image and inverting it to x_{t_0} in
  ``n_inv_step`` DDIM steps (``InversionCache``), seconds per image;
* ``finetune``: one Stage-2 step of the training loop on one image (batch 1:
  ``n_train_step`` DDIM steps with gradients, DiffusionCLIP's loss, Adam),
  as ``train_generator`` logs it, with gradient checkpointing (the default);
  ``finetune_no_ckpt`` without it; ``finetune_per_step`` the per-step
  variant (a backward and an optimiser step at every DDIM step);
* ``diffusionclip_cache`` / ``diffusionclip`` / ``diffusionclip_per_step``:
  DiffusionCLIP's inversion, ``clip_finetune`` and ``clip_finetune_eff``
  step written here from its code: its float32 ``denoising_step``
  (coefficients rebuilt every call), NCHW, one model trained in place, the
  directional CLIP loss on x0 and x, Adam over every parameter, no
  checkpointing, glibc's default allocator.

The cached latents of the fine-tuning rows are random tensors of the right
shape: their values do not change the cost of a step.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import measurements  # benchmarks/measurements.py: the definitions gpu_check.py shares

MEASUREMENTS = ["cache_image", "finetune", "finetune_no_ckpt", "finetune_per_step", "diffusionclip_cache", "diffusionclip", "diffusionclip_per_step"]
OURS = {"cache_image": "diffusionclip_cache", "finetune": "diffusionclip", "finetune_per_step": "diffusionclip_per_step", "finetune_no_ckpt": "diffusionclip"}


def child(name, args):
    cpu = torch.device("cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-diffae-"))
    spec = dict(arch=args.arch, clip=args.clip, n_inv_step=args.n_inv_step, n_train_step=args.n_train_step)
    if name == "cache_image":
        return measurements.diffae_cache_times(cpu, tmp, **spec), "s/image"
    if name.startswith("finetune"):
        return measurements.diffae_finetune_times(cpu, tmp, args.warmup, args.iters, overrides=OVERRIDES.get(name, ()), **spec), "s/image-step"
    from ipl.backends.diffae.backend import DiffAEBackend
    from ipl.build import build_clip

    config = measurements.diffae_config(cpu, tmp, **spec)
    backend = DiffAEBackend(config, cpu, progress=False)
    if name == "diffusionclip_cache":
        return diffusionclip_inversion(backend.model, config), "s/image"
    clip_model = build_clip(config.clip, cpu)
    return diffusionclip_steps(backend.model, clip_model, config, per_step=name.endswith("per_step"), warmup=args.warmup, iters=args.iters), "s/image-step"


OVERRIDES = {
    "finetune_no_ckpt": ["diffusionclip.grad_checkpoint=false"],
    "finetune_per_step": ["diffusionclip.per_step=true"],
}


# ---------------------------------------------------------------------------
# DiffusionCLIP's formulation (clip_finetune / clip_finetune_eff), for comparison


def _extract(a, t, shape):
    """DiffusionCLIP's ``extract``: a float32 tensor rebuilt from ``a`` at every call, gathered at t."""
    out = torch.gather(torch.tensor(a, dtype=torch.float, device=t.device), 0, t.long())
    return out.reshape((t.shape[0],) + (1,) * (len(shape) - 1))


def _denoising_step(model, z_sem, xt, t, t_next, b):
    """DiffusionCLIP's ``denoising_step`` with eta 0 (DDIM), returning (x_next, x0_t)."""
    et = model.eps(xt, t.long(), z_sem)
    at = _extract((1.0 - b).cumprod(dim=0), t, xt.shape)
    at_next = torch.ones_like(at) if (t_next < 0).all() else _extract((1.0 - b).cumprod(dim=0), t_next, xt.shape)
    x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
    return at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et, x0_t


@torch.no_grad()
def diffusionclip_inversion(source, config):
    """Seconds of DiffusionCLIP's deterministic inversion of one image to x_{t_0} (with Diff-AE's encoder first)."""
    import numpy as np

    from ipl import diffusion

    dc = config.diffusionclip
    model = source.use_channels_last(False).eval()
    betas = torch.from_numpy(diffusion.linear_betas(source.T)).float()
    seq = [int(s) for s in np.linspace(0, 1, dc.n_inv_step) * dc.t_0]
    x = torch.rand(1, 3, source.img_size, source.img_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    start = time.perf_counter()
    z_sem = model.encode(x)
    for i, j in zip(([-1] + seq[:-1])[1:], seq[1:]):
        x, _ = _denoising_step(model, z_sem, x, torch.full((1,), float(i)), torch.full((1,), float(j)), betas)
    return [time.perf_counter() - start]


def diffusionclip_steps(source, clip_model, config, *, per_step, warmup, iters):
    """Seconds of DiffusionCLIP's fine-tuning step on one image, ``warmup + iters`` times."""
    import numpy as np

    from ipl import diffusion

    dc = config.diffusionclip
    # One model in memory, trained in place, NCHW: as DiffusionCLIP runs.
    model = source.use_channels_last(False).train(True)
    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), weight_decay=0, lr=dc.lr)
    betas = torch.from_numpy(diffusion.linear_betas(source.T)).float()
    seq = [int(s) for s in np.linspace(0, 1, dc.n_train_step) * dc.t_0]
    pairs = list(zip(reversed(seq), reversed([-1] + seq[:-1])))
    s = source.img_size
    g = torch.Generator().manual_seed(1)
    x0, x_lat, z_sem = torch.rand(1, 3, s, s, generator=g) * 2 - 1, torch.randn(1, 3, s, s, generator=g), torch.randn(1, source.style_ch, generator=g)
    # Its CLIPLoss computes the text direction once, and encodes both images at every call.
    text_direction = torch.nn.functional.normalize(torch.randn(clip_model.embed_dim, generator=g), dim=0)

    def clip_loss(image):
        src = clip_model.encode_images(x0)
        tgt = clip_model.encode_images(image)
        edit = tgt / tgt.norm(dim=-1, keepdim=True) - src / src.norm(dim=-1, keepdim=True)
        edit = edit / edit.norm(dim=-1, keepdim=True)
        direction = (1 - (edit * text_direction).sum(-1)).mean()
        return -torch.log((2 - direction) / 2)

    times = []
    for _ in range(warmup + iters):
        start = time.perf_counter()
        optimizer.zero_grad()
        x = x_lat.clone()
        for i, j in pairs:
            t, t_next = torch.full((1,), float(i)), torch.full((1,), float(j))
            x, x0_t = _denoising_step(model, z_sem, x, t, t_next, betas)
            if per_step:
                x = x.detach().clone()
                (dc.clip_loss_w * clip_loss(x0_t)).backward()
                optimizer.step()
                for p in model.parameters():
                    p.grad = None
        if not per_step:
            (dc.clip_loss_w * clip_loss(x)).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ffhq256", help="Diff-AE architecture (ffhq256, ffhq128, tiny)")
    parser.add_argument("--clip", default="random:ViT-B/32", help="random:ViT-B/32 or tiny")
    parser.add_argument("--n-inv-step", type=int, default=40)
    parser.add_argument("--n-train-step", type=int, default=6)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", default=",".join(MEASUREMENTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        from ipl.runtime import keep_freed_memory

        if not args.child.startswith("diffusionclip"):  # theirs runs with glibc's defaults
            keep_freed_memory(default=False)  # as the training scripts run a Diff-IPL run on a CPU
        times, unit = child(args.child, args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(json.dumps({"name": args.child, "times": times, "unit": unit, "peak_gib": peak}))
        return

    print(f"# Diff-AE {args.arch}, CLIP {args.clip}, n_inv_step={args.n_inv_step}, n_train_step={args.n_train_step}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, warmup={args.warmup} iters={args.iters}")  # fmt: skip
    results, failed = {}, {}
    for name in [n for n in args.only.split(",") if n]:
        argv = [sys.executable, __file__, "--child", name, "--arch", args.arch, "--clip", args.clip, "--iters", str(args.iters),
                "--warmup", str(args.warmup), "--n-inv-step", str(args.n_inv_step), "--n-train-step", str(args.n_train_step)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            failed[name] = (done.stderr.strip().splitlines() or ["?"])[-1]
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    # Ours beside DiffusionCLIP's formulation of the same step, once both are measured.
    print("| measurement | min | median | unit | peak RSS (GiB) | DiffusionCLIP's median | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in [n for n in args.only.split(",") if n]:
        if name in failed:
            print(f"| {name} | failed: {failed[name]} |")
            continue
        r, ref = results[name], results.get(OURS.get(name, ""))
        med = statistics.median(r["times"])
        ref_cols = f"{statistics.median(ref['times']):.2f} | {statistics.median(ref['times']) / med:.2f}x" if ref else "- | -"
        print(f"| {name} | {min(r['times']):.2f} | {med:.2f} | {r['unit']} | {r['peak_gib']:.2f} | {ref_cols} |")


if __name__ == "__main__":
    main()
