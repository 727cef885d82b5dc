"""Diff-IPL at full size with random weights: caching one image, and one fine-tuning image-step, ours and DiffusionCLIP's.

    python benchmarks/bench_diffae.py                       # Diff-AE FFHQ-256 + CLIP ViT-B/32 (random weights)
    python benchmarks/bench_diffae.py --arch tiny --clip tiny --iters 1   # a quick look at every code path

``benchmarks/bench_ddpm.py`` runs the same rows on the plain DDPM backend.

Each row runs in a fresh subprocess, so its peak resident memory (ru_maxrss)
is its own (weights included). Rows:

* ``cache_image``: encoding one image and inverting it to x_{t_0} in
  ``n_inv_step`` DDIM steps (``InversionCache``), seconds per image;
* ``finetune``: one Stage-2 step of the training loop on one image (batch 1:
  ``n_train_step`` DDIM steps with gradients, DiffusionCLIP's loss, Adam),
  as ``train_generator`` logs it, with ``diffusionclip.checkpoint: auto``
  (the default; the row says what it chose); ``finetune_ckpt`` with
  gradient checkpointing, ``finetune_no_ckpt`` without;
  ``finetune_per_step`` the per-step variant (a backward and an optimiser
  step at every DDIM step);
* ``auto_decision``: what ``auto`` chooses at this size on this machine
  (one measured network call), without a step;
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
from pathlib import Path

import torch

import measurements  # benchmarks/measurements.py: the definitions gpu_check.py shares

MEASUREMENTS = [
    "cache_image", "finetune", "finetune_ckpt", "finetune_no_ckpt", "finetune_per_step", "auto_decision",
    "diffusionclip_cache", "diffusionclip", "diffusionclip_per_step",
]  # fmt: skip
OURS = {
    "cache_image": "diffusionclip_cache", "finetune": "diffusionclip", "finetune_ckpt": "diffusionclip",
    "finetune_no_ckpt": "diffusionclip", "finetune_per_step": "diffusionclip_per_step",
}  # fmt: skip


def child(name, args):
    cpu = torch.device("cpu")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{args.family}-"))
    arch = measurements.ddpm_architecture(args.arch, args.size) if args.family == "ddpm" else args.arch
    spec = dict(arch=arch, clip=args.clip, n_inv_step=args.n_inv_step, n_train_step=args.n_train_step, kind=args.family)
    if name == "cache_image":
        return measurements.diffae_cache_times(cpu, tmp, **spec), "s/image"
    if name.startswith("finetune") or name == "auto_decision":
        decided = []
        if name == "auto_decision":
            return auto_decision(cpu, tmp, spec), "decision"
        overrides = [*OVERRIDES.get(name, ()), f"prompt.scheme={args.scheme}"]
        times = measurements.diffae_finetune_times(cpu, tmp, args.warmup, args.iters, overrides=overrides, decided=decided, **spec)
        return times, "s/image-step" + (" (checkpointing)" if decided and decided[0] else " (no checkpointing)")
    from ipl.build import build_clip

    config = measurements.diffae_config(cpu, tmp, **spec)
    backend = measurements.diffusion_backend(config, cpu)
    if name == "diffusionclip_cache":
        return diffusionclip_inversion(backend.model, config), "s/image"
    clip_model = build_clip(config.clip, cpu)
    return diffusionclip_steps(backend.model, clip_model, config, per_step=name.endswith("per_step"), warmup=args.warmup, iters=args.iters), "s/image-step"


OVERRIDES = {
    "finetune_ckpt": ["diffusionclip.checkpoint=true"],
    "finetune_no_ckpt": ["diffusionclip.checkpoint=false"],
    "finetune_per_step": ["diffusionclip.per_step=true"],
}


def auto_decision(device, tmp, spec):
    """``[step GiB, chain GiB, state GiB, free GiB, checkpoints (0/1)]`` of ``diffusionclip.checkpoint: auto`` here."""
    import ipl.backends.diffusionclip as shared
    from ipl.build import build_clip

    config = measurements.diffae_config(device, tmp, images=1, **spec)
    backend = measurements.diffusion_backend(config, device)
    backend.cache = lambda cache_dir: measurements.RandomLatents(backend.model)
    seen = {}
    real = shared.needs_checkpointing

    def spy(step_bytes, n_steps, state_bytes, free_bytes, **kw):
        seen.update(step=step_bytes, n=n_steps, state=state_bytes, free=free_bytes)
        return real(step_bytes, n_steps, state_bytes, free_bytes, **kw)

    shared.needs_checkpointing = spy
    adaptation = backend.adaptation(config, build_clip(config.clip, device), None)
    gib = 2.0**30
    return [seen["step"] / gib, seen["n"] * seen["step"] / gib, seen["state"] / gib, (seen["free"] or 0) / gib, float(adaptation.checkpoint)]


# ---------------------------------------------------------------------------
# DiffusionCLIP's formulation (clip_finetune / clip_finetune_eff), for comparison


def _extract(a, t, shape):
    """DiffusionCLIP's ``extract``: a float32 tensor rebuilt from ``a`` at every call, gathered at t."""
    out = torch.gather(torch.tensor(a, dtype=torch.float, device=t.device), 0, t.long())
    return out.reshape((t.shape[0],) + (1,) * (len(shape) - 1))


def _denoising_step(model, z_sem, xt, t, t_next, b):
    """DiffusionCLIP's ``denoising_step`` with eta 0 (DDIM), returning (x_next, x0_t); ``z_sem`` None for a DDPM."""
    et = model.eps(xt, t.long(), z_sem)
    at = _extract((1.0 - b).cumprod(dim=0), t, xt.shape)
    at_next = torch.ones_like(at) if (t_next < 0).all() else _extract((1.0 - b).cumprod(dim=0), t_next, xt.shape)
    x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
    return at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et, x0_t


@torch.no_grad()
def diffusionclip_inversion(source, config):
    """Seconds of DiffusionCLIP's deterministic inversion of one image to x_{t_0} (with Diff-AE's encoder first; none for a DDPM)."""
    import numpy as np

    from ipl import diffusion

    dc = config.diffusionclip
    model = source.use_channels_last(False).eval()
    betas = torch.from_numpy(diffusion.linear_betas(source.T)).float()
    seq = [int(s) for s in np.linspace(0, 1, dc.n_inv_step) * dc.t_0]
    x = torch.rand(1, 3, source.img_size, source.img_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    start = measurements.clock()
    z_sem = model.condition(x)
    for i, j in zip(([-1] + seq[:-1])[1:], seq[1:]):
        x, _ = _denoising_step(model, z_sem, x, torch.full((1,), float(i)), torch.full((1,), float(j)), betas)
    return [measurements.clock() - start]


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
    x0, x_lat = torch.rand(1, 3, s, s, generator=g) * 2 - 1, torch.randn(1, 3, s, s, generator=g)
    z_sem = torch.randn(1, source.style_ch, generator=g) if hasattr(source, "style_ch") else None
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
        start = measurements.clock()
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
        times.append(measurements.clock() - start)
    return times[warmup:]


def main(family="diffae", doc=__doc__, default_arch="ffhq256", arch_help="Diff-AE architecture (ffhq256, ffhq128, tiny)"):
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--arch", default=default_arch, help=arch_help)
    parser.add_argument("--size", type=int, help="DDPM only: the architecture at this image size (default: its own)")
    parser.add_argument("--clip", default="random:ViT-B/32", help="random:ViT-B/32 or tiny")
    parser.add_argument("--n-inv-step", type=int, default=40)
    parser.add_argument("--n-train-step", type=int, default=6)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument(
        "--scheme", default="random", choices=["random", "manual"],
        help="our rows' prompt scheme: random (IPL's cost: a direction per image through CLIP's text encoder, each step) "
        "or manual (one fixed direction, as DiffusionCLIP's rows)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", default=",".join(MEASUREMENTS))
    parser.add_argument("--cpu-clock", action="store_true", help="CPU seconds of each row's process (all threads) instead of wall seconds: for a shared machine")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--family", default=family, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is not None and args.family != "ddpm":
        parser.error("--size is for the DDPM benchmark: Diff-AE's sizes are architectures (--arch ffhq128)")

    if args.child:
        from ipl.runtime import keep_freed_memory

        if args.cpu_clock:
            measurements.use_cpu_clock()
        if not args.child.startswith("diffusionclip"):  # theirs runs with glibc's defaults
            keep_freed_memory(default=False)  # as the training scripts run a Diff-IPL run on a CPU
        times, unit = child(args.child, args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(json.dumps({"name": args.child, "times": times, "unit": unit, "peak_gib": peak}))
        return

    size = f" at {args.size} px" if args.size else ""
    print(f"# {'Diff-AE' if args.family == 'diffae' else 'DDPM'} {args.arch}{size}, CLIP {args.clip}, n_inv_step={args.n_inv_step}, n_train_step={args.n_train_step}, "
          f"our scheme {args.scheme}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, warmup={args.warmup} iters={args.iters}, "
          f"{'CPU seconds of each process (all threads)' if args.cpu_clock else 'wall seconds'}")  # fmt: skip
    results, failed = {}, {}
    for name in [n for n in args.only.split(",") if n]:
        argv = [sys.executable, __file__, "--child", name, "--family", args.family, "--arch", args.arch, "--clip", args.clip, "--iters", str(args.iters),
                "--warmup", str(args.warmup), "--n-inv-step", str(args.n_inv_step), "--n-train-step", str(args.n_train_step)]  # fmt: skip
        argv += ["--size", str(args.size)] if args.size else []
        argv += ["--cpu-clock"] if args.cpu_clock else []
        argv += ["--scheme", args.scheme]
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
        if r["unit"] == "decision":
            step, chain, state, free, checkpoints = r["times"]
            print(f"| {name} | {'checkpointing' if checkpoints else 'no checkpointing'}: {chain:.2f} GiB of activations "
                  f"({step:.2f} GiB a step) + {state:.2f} GiB of optimiser state, {free:.1f} GiB free | | | {r['peak_gib']:.2f} | |")  # fmt: skip
            continue
        med = statistics.median(r["times"])
        ref_cols = f"{statistics.median(ref['times']):.2f} | {statistics.median(ref['times']) / med:.2f}x" if ref else "- | -"
        print(f"| {name} | {min(r['times']):.2f} | {med:.2f} | {r['unit']} | {r['peak_gib']:.2f} | {ref_cols} |")


if __name__ == "__main__":
    main()
