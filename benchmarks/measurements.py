"""What the benchmark scripts measure, and how, in one place.

``bench_stages.py``, ``bench_generator.py`` and ``gpu_check.py`` import these,
so that a number means the same thing in each of them:

* a stage's seconds per iteration are the training loop's own per-step log
  (``sec_per_iter`` in ``stats_stage1.jsonl`` / ``stats_stage2.jsonl``, with
  ``log_every=1``), after ``warmup`` steps; the loops read a loss value back
  every step, so on a GPU each logged time covers finished work;
* building the source-feature bank is the wall time of ``build_bank`` over
  ``images`` images, per image;
* a generator forward is one ``no_grad`` call on random W+ codes, per image
  (``bench_generator.py``'s ``forward`` mode; ``train`` and ``wplus`` add a
  backward pass);
* Diff-IPL and the DDPM backend: caching an image is encoding it (Diff-AE)
  and inverting it to x_{t_0} (``InversionCache``), per image; a
  fine-tuning step is the training loop's own per-step log on one image
  (batch 1), with random cached latents (their values do not change the
  cost).

Weights are random (same cost as trained ones); models are built from a
config as the training scripts build them, on the device given.
"""

import json
import time
from pathlib import Path

import torch

# What the Diff-IPL measurements read: wall time, or with use_cpu_clock() the
# process's CPU seconds (all threads), which a machine shared with other work
# disturbs far less than its wall time.
clock = time.perf_counter


def use_cpu_clock():
    """Time the diffusion rows in CPU seconds of this process: the inversion here, the Stage-2 loop's own log."""
    import types

    from ipl.stages import stage2

    global clock
    clock = time.process_time
    stage2.time = types.SimpleNamespace(time=time.process_time)  # the loop's sec_per_iter


def build(device, size=1024, clip="random:ViT-B/32", render_chunk=None, stage2_chunk=None, overrides=()):
    """A random StyleGAN2 backend and CLIP of the given sizes; returns ``(config, backend, clip_model)``.

    Args:
        device: ``torch.device`` the models run on.
        size: Generator resolution (config-f widths unless ``overrides`` say otherwise).
        clip: ``clip.model``: ``"random:ViT-B/32"`` (full size) or ``"tiny"``.
        render_chunk, stage2_chunk: ``generator.render_chunk`` and
            ``stage2.chunk``; ``None`` keeps the defaults.
        overrides: More ``section.key=value`` settings.
    """
    from ipl import config as config_lib
    from ipl.backends.stylegan2 import StyleGAN2Backend
    from ipl.build import build_clip

    sets = [f"device={device.type}", "generator.checkpoint=random", f"generator.size={size}", f"clip.model={clip}"]
    if render_chunk is not None:
        sets.append(f"generator.render_chunk={render_chunk}")
    if stage2_chunk is not None:
        sets.append(f"stage2.chunk={stage2_chunk}")
    config = config_lib.load_config(None, [*sets, *overrides])
    backend = StyleGAN2Backend(config, device)
    clip_model = build_clip(config.clip, device)
    return config, backend, clip_model


def step_times(stats_path, warmup):
    """Seconds per iteration from a stage's ``stats_*.jsonl``, without the first ``warmup`` records."""
    times = [json.loads(line)["sec_per_iter"] for line in Path(stats_path).read_text().splitlines()]
    return times[warmup:]


def synchronize(device):
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, warmup, iters, device=None):
    """Wall-clock seconds of ``iters`` calls of ``fn`` after ``warmup`` calls (synchronised on CUDA)."""
    device = torch.device("cpu") if device is None else device
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t)
    return out


def stage1_times(device, spec, images, warmup, iters, run_dir):
    """Stage 1 seconds per iteration, ``images`` = ``"bank"`` or ``"fresh"``.

    From the bank, the bank's contents are random: they do not change the
    cost of a step, and building a real one is measured on its own
    (:func:`bank_build_times`).

    Args:
        device: ``torch.device``.
        spec: Keyword arguments of :func:`build` (sizes, chunks, overrides).
        run_dir: Where the loop writes its checkpoint and log.
    """
    from ipl.backends.stylegan2 import BankPairs, SourceBank
    from ipl.stages.stage1 import train_mapper

    n = warmup + iters
    sets = [f"stage1.iterations={n}", "stage1.log_every=1", "stage1.checkpoint_every=100000", f"stage1.images={images}"]
    config, backend, clip_model = build(device, **{**spec, "overrides": [*spec.get("overrides", ()), *sets]})
    G = backend.generator
    if images == "bank":
        m = n * config.stage1.batch
        with torch.no_grad():
            w = G.style(torch.randn(m, G.style_dim, device=device)).cpu()
        bank = SourceBank({}, w, torch.randn(m, clip_model.embed_dim))
        backend.stage1_pairs = lambda *_, **__: BankPairs(bank, config.stage1.batch)
    train_mapper(config, backend, clip_model, run_dir, device, progress=False)
    return step_times(Path(run_dir) / "stats_stage1.jsonl", warmup)


def bank_build_times(device, spec, images, run_dir, warmup_images=0):
    """Seconds per image of building a source-feature bank of ``images`` images.

    ``warmup_images`` > 0 first builds a throwaway bank of that many images
    (a GPU's first calls pay for kernel loading and autotuning).
    """
    from ipl.backends.stylegan2 import build_bank

    config, backend, clip_model = build(device, **spec)
    chunk = config.generator.render_chunk
    if warmup_images:
        build_bank(Path(run_dir) / "warmup_bank.pt", {}, backend.generator, clip_model, steps=1, batch=warmup_images, seed=1, chunk=chunk, progress=False)
    synchronize(device)
    t = time.perf_counter()
    build_bank(Path(run_dir) / "bank.pt", {}, backend.generator, clip_model, steps=1, batch=images, seed=0, chunk=chunk, progress=False)
    return [(time.perf_counter() - t) / images]


def stage2_times(device, spec, warmup, iters, run_dir):
    """Stage 2 seconds per iteration (untrained random prompts: the same cost as learned ones)."""
    from ipl.stages.stage2 import train_generator

    n = warmup + iters
    sets = ["prompt.scheme=random", f"stage2.iterations={n}", "stage2.log_every=1", "stage2.checkpoint_every=100000", "stage2.output_interval=100000"]
    config, backend, clip_model = build(device, **{**spec, "overrides": [*spec.get("overrides", ()), *sets]})
    train_generator(config, backend, clip_model, run_dir, device, progress=False)
    return step_times(Path(run_dir) / "stats_stage2.jsonl", warmup)


def generator_step(g, mode, wplus):
    """One generator call of ``mode``: ``"forward"`` (``no_grad``), ``"train"`` (backward
    into every weight and W+) or ``"wplus"`` (weights frozen, backward into W+).

    The caller sets ``g.requires_grad_(mode == "train")``.
    """

    def step():
        if mode == "forward":
            with torch.no_grad():
                g([wplus], input_is_latent=True)
            return
        x = wplus.clone().requires_grad_()
        image, _ = g([x], input_is_latent=True)
        image.square().mean().backward()
        g.zero_grad(set_to_none=True)

    return step


def generator_forward_times(device, spec, batch, warmup, iters):
    """Seconds per image of a ``no_grad`` forward of the run's source generator at ``batch``.

    The generator is the one a run with ``spec`` builds (random weights, the
    default computation path); CLIP is not built.
    """
    from ipl import config as config_lib
    from ipl.backends.stylegan2 import build_source_generator

    sets = ["generator.checkpoint=random", f"generator.size={spec.get('size', 1024)}", *spec.get("overrides", ())]
    config = config_lib.load_config(None, sets)
    g, _ = build_source_generator(config.generator, device)
    wplus = torch.randn(batch, g.n_latent, g.style_dim, device=device)
    return [t / batch for t in timed(generator_step(g, "forward", wplus), warmup, iters, device)]


# ---------------------------------------------------------------------------
# Diff-IPL


def ddpm_architecture(arch="celeba_hq", size=None):
    """The name of the DDPM architecture ``arch`` at ``size`` px, registered for this process when
    the size is not its own (the same network at a smaller resolution, for a CPU)."""
    import dataclasses

    from ipl.backends.ddpm.model import ARCHITECTURES

    if size is None or size == ARCHITECTURES[arch].img_size:
        return arch
    name = f"{arch}_{size}px"
    ARCHITECTURES[name] = dataclasses.replace(ARCHITECTURES[arch], img_size=size)
    return name


def diffae_config(device, run_dir, *, arch="ffhq256", clip="random:ViT-B/32", images=2, n_inv_step=40, n_train_step=6, overrides=(), kind="diffae"):
    """A random-weights Diff-IPL config (``kind="ddpm"``: a DDPM run, ``arch`` a DDPM architecture)
    on ``images`` noise images written into ``run_dir/images``."""
    from PIL import Image

    from ipl.backends.ddpm.model import ARCHITECTURES as DDPM_ARCHITECTURES
    from ipl.backends.diffae import ARCHITECTURES
    from ipl.config import load_config

    run_dir = Path(run_dir)
    folder = run_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    size = (ARCHITECTURES if kind == "diffae" else DDPM_ARCHITECTURES)[arch].img_size
    for i in range(max(images, 2)):
        Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i:03d}.png")
    return load_config(
        None,
        [
            f"device={device.type}", f"generator.kind={kind}", "generator.checkpoint=random", f"{kind}.arch={arch}",
            f"clip.model={clip}", f"data.images={folder}", f"data.n_images={max(images, 2)}", f"data.n_train={images}",
            "data.n_test=1", "stage1.batch=2", f"diffusionclip.n_inv_step={n_inv_step}", f"diffusionclip.n_train_step={n_train_step}",
            "stage2.log_every=1", "stage2.checkpoint_every=100000", "stage2.output_interval=100000",
            f"run_dir={run_dir / 'run'}", f"cache_dir={run_dir / 'cache'}", "prompt.scheme=random", *overrides,
        ],
    )  # fmt: skip


def diffusion_backend(config, device):
    """The backend of a :func:`diffae_config` config (Diff-AE or DDPM)."""
    from ipl.build import build_backend

    return build_backend(config, device, progress=False)


def diffae_cache_times(device, run_dir, **spec):
    """Seconds to encode one image and invert it to x_{t_0} (``spec``: :func:`diffae_config`'s keywords)."""
    config = diffae_config(device, run_dir, images=1, **spec)
    backend = diffusion_backend(config, device)
    cache = backend.cache(Path(run_dir) / "cache")
    synchronize(device)
    t = clock()
    cache.inverted(backend.files[:1], config.diffusionclip.t_0, config.diffusionclip.n_inv_step, progress=False)
    synchronize(device)
    return [clock() - t]


class RandomLatents:
    """Stands in for the inversion cache: x0, the condition (Diff-AE's z_sem; None for a DDPM) and
    x_{t_0} of the right shapes (values do not change the cost)."""

    def __init__(self, model):
        self.model = model

    def inverted(self, files, t_0, n_inv_step, progress=True):
        n, s = len(files), self.model.img_size
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(n, 3, s, s, generator=g) * 2 - 1
        cond = torch.randn(n, self.model.style_ch, generator=g) if hasattr(self.model, "style_ch") else None
        return x0, cond, torch.randn(n, 3, s, s, generator=g)


class _StepsLogged(Exception):
    """Raised where the loop would render its final sample grid: every step is logged by then."""


def diffae_finetune_times(device, run_dir, warmup, iters, **spec):
    """Seconds per fine-tuning image-step of Diff-IPL's (or the DDPM's) Stage 2 (batch 1), from the loop's log.

    The run stops after its last logged step, before the final sample grid
    (``n_test_step`` DDIM steps per image and model) and checkpoint.
    ``decided`` (a list), when given, receives whether the loop checkpointed.
    """
    from ipl.build import build_clip
    from ipl.stages.stage2 import train_generator

    decided = spec.pop("decided", None)
    config = diffae_config(device, run_dir, images=warmup + iters, **spec)
    backend = diffusion_backend(config, device)
    backend.cache = lambda cache_dir: RandomLatents(backend.model)
    make = backend.adaptation

    def adaptation(*args, **kwargs):
        model = make(*args, **kwargs)
        model.sample_rows = lambda: (_ for _ in ()).throw(_StepsLogged())
        if decided is not None:
            decided.append(model.checkpoint)
        return model

    backend.adaptation = adaptation
    clip_model = build_clip(config.clip, device)
    try:
        train_generator(config, backend, clip_model, Path(run_dir) / "run", device, progress=False)
    except _StepsLogged:
        pass
    return step_times(Path(run_dir) / "run" / "stats_stage2.jsonl", warmup)
