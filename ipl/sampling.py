"""Per-seed sampling, image conversion and grids; source/adapted pairs, blends and interpolations.

Every image depends only on its seed (and the weights): each seed draws its
own Z code from its own generator, and noise comes from the generator's fixed
buffers, so an image is the same whatever batch it is rendered in (up to the
float rounding of batched kernels, which can differ between batch sizes: at
most one 8-bit level in a few pixels).
"""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MAX_SEEDS = 1_000_000  # seeds in one --seeds value: far above any evaluation (FID takes 50k)


def parse_seeds(text, max_count=MAX_SEEDS):
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (at most ``max_count`` seeds, counted before any list is built)."""
    ranges = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"cannot read seeds {text!r}: use e.g. 0-99 or 1,5,9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"seed range {part!r} is empty")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > max_count:
        raise ValueError(f"{text!r} names {count:,} seeds, more than the {max_count:,} one run takes: split the range over several runs")
    seeds = [seed for lo, hi in ranges for seed in range(lo, hi + 1)]
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def z_from_seeds(seeds, dim):
    """One Z code per seed, ``(len(seeds), dim)``, each from its own CPU generator."""
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def render(generator, z, truncation=1.0, truncation_latent=None, chunk=8):
    """Images ``(N, 3, H, W)`` on the CPU from Z codes, with the fixed noise buffers."""
    device = next(generator.parameters()).device
    w = torch.cat([generator.style(part.to(device)) for part in z.split(max(1, chunk))])
    return render_w(generator, w, truncation, truncation_latent, chunk)


def to_uint8(images):
    """``(N, 3, H, W)`` in [-1, 1] -> ``(N, H, W, 3)`` uint8 (rounded as torchvision saves)."""
    x = ((images.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(rows, pad=2):
    """An image grid (H, W, 3) uint8 from rows of images, each ``(N, 3, H, W)``."""
    rows = [to_uint8(r) for r in rows]
    n, h, w, _ = rows[0].shape
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_png(array, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------
# Source and adapted generators side by side: architecture check, weight
# blending, W-space rendering, strips and GIFs.


def architecture_differences(source_config, adapted_config):
    """``["size: 1024 in the source, 512 in the adapted generator", ...]`` (empty if equal)."""
    diffs = []
    for key in sorted(set(source_config) | set(adapted_config)):
        a, b = source_config.get(key), adapted_config.get(key)
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            diffs.append(f"{key}: {a!r} in the source, {b!r} in the adapted generator")
    return diffs


def check_same_architecture(source, adapted):
    """Raise ``CheckpointError`` unless both generators have the same architecture."""
    from stylegan2 import CheckpointError

    diffs = architecture_differences(source.config, adapted.config)
    if diffs:
        raise CheckpointError(
            "the source and adapted generators have different architectures ("
            + "; ".join(diffs)
            + "): pass the source generator the adapted one was trained from"
        )


def mapping_difference(source, adapted):
    """Largest difference between the two mapping networks, relative to the weights' scale.

    Stage 2 never trains the mapping network, so an adapted generator and the
    source it came from share it up to the rounding of the EMA update
    (``decay * a + (1 - decay) * a`` is not exactly ``a``): below 1e-6 after
    300 steps. Another source differs by order 1.
    """
    a, b = source.style.state_dict(), adapted.style.state_dict()
    return max(
        ((a[k].float() - b[k].to(a[k].device).float()).abs().max() / a[k].float().abs().max().clamp_min(1e-12)).item()
        for k in a
    )


@torch.no_grad()
def blend_generators(source, adapted, alpha):
    """A new generator with weights ``(1 - alpha) * source + alpha * adapted``.

    Every floating-point parameter and buffer is blended (the mapping network
    and the noise buffers too; Stage 2 leaves them equal). The formula is
    exact at the ends: ``alpha=0`` gives the source's weights bit for bit and
    ``alpha=1`` the adapted ones.
    """
    import copy

    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = source, 1 = adapted), got {alpha}")
    check_same_architecture(source, adapted)
    blended = copy.deepcopy(adapted)
    a, b = source.state_dict(), adapted.state_dict()
    state = {}
    for key, t in b.items():
        s = a[key].to(t.device)
        state[key] = (1 - alpha) * s + alpha * t if t.is_floating_point() else t
    blended.load_state_dict(state)
    return blended.eval().requires_grad_(False)


@torch.no_grad()
def w_from_seeds(generator, seeds):
    """W codes ``(len(seeds), style_dim)`` of the seeds' Z codes, on the generator's device."""
    device = next(generator.parameters()).device
    return generator.style(z_from_seeds(seeds, generator.style_dim).to(device))


@torch.no_grad()
def render_w(generator, w, truncation=1.0, truncation_latent=None, chunk=8):
    """Like :func:`render`, from W codes ``(N, style_dim)`` instead of Z codes."""
    device = next(generator.parameters()).device
    out = []
    for part in w.split(max(1, chunk)):
        image, _ = generator(
            [part.to(device)],
            input_is_latent=True,
            truncation=truncation,
            truncation_latent=truncation_latent,
            randomize_noise=False,
        )
        out.append(image.float().cpu())
    return torch.cat(out)


def lerp_path(w_a, w_b, steps):
    """``steps`` codes from ``w_a`` to ``w_b`` (both ends included), linear: ``(steps, D)``."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    t = torch.linspace(0, 1, steps, dtype=w_a.dtype, device=w_a.device)[:, None]  # (steps, 1)
    return (1 - t) * w_a[None] + t * w_b[None]


def tile(rows, pad=2):
    """Like :func:`grid`, from rows of uint8 images ``(N, H, W, 3)`` (rows may differ in N)."""
    h, w = rows[0].shape[1:3]
    n = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def save_gif(frames, path, duration_ms=120):
    """Write uint8 ``(H, W, 3)`` frames as a looping GIF."""
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


# ---------------------------------------------------------------------------
# Loading an adapted generator with its source, and writing samples.

RECORDED_SOURCE = "recorded"  # the source named in the adapted checkpoint's run config


def load_adapted(path, device):
    """An adapted generator checkpoint: ``(generator, info)`` as :func:`stylegan2.load_generator`."""
    from stylegan2 import CheckpointError, load_generator

    from .backends import checkpoint_kind

    kind = checkpoint_kind(path)  # also the errors for a missing, unreadable or wrong file
    if kind in ("diffae", "ddpm"):
        # DiffusionCLIP fine-tunes the generation from x_{t_0} of real images; from pure noise
        # (t = T) the fine-tuned model was never trained, so seeds are refused.
        what = "a Diff-IPL run's autoencoder" if kind == "diffae" else "a DDPM run's fine-tuned DDPM"
        raise CheckpointError(
            f"{path} is {what}: it edits real images rather than sampling seeds; "
            "use scripts/translate.py --ckpt ... --images ... (or scripts/evaluate.py --adapted ... --images ...)"
        )
    generator, info = load_generator(path, device)
    return generator.eval().requires_grad_(False), info


def load_source(spec, adapted, adapted_info, device):
    """The source generator that ``adapted`` was trained from, checked against it.

    Args:
        spec: A pretrained name (``ffhq``, ...), a checkpoint path, or
            ``"recorded"``: the ``generator`` section of the run config stored
            in the adapted checkpoint (how Stage 2 writes ``generator.pt``),
            which also rebuilds the seeded random source of the tiny config.
        adapted, adapted_info: From :func:`load_adapted`.

    Returns:
        ``(generator, info)``; the generator is frozen, in eval mode.

    Raises:
        CheckpointError: no recorded source, or the architectures differ.
    """
    import logging

    from stylegan2 import CheckpointError, load_generator

    if spec == RECORDED_SOURCE:
        from .backends.stylegan2.source import build_source_generator
        from .config import ConfigError, from_dict

        run_config = adapted_info.get("extra", {}).get("config")
        if not isinstance(run_config, dict) or not isinstance(run_config.get("generator"), dict):
            raise CheckpointError(
                f"{adapted_info.get('path')} does not record the source generator it was adapted from; "
                "pass the source explicitly (a pretrained name such as ffhq, or a checkpoint path)"
            )
        try:
            gcfg = from_dict({"generator": run_config["generator"]}).generator
        except ConfigError as e:
            raise CheckpointError(f"{adapted_info.get('path')}: cannot read its recorded source generator ({e})") from None
        source, info = build_source_generator(gcfg, device)
    else:
        source, info = load_generator(spec, device, download=True)
    source = source.eval().requires_grad_(False)
    check_same_architecture(source, adapted)
    gap = mapping_difference(source, adapted)
    if gap > 1e-3:
        logging.getLogger(__name__).warning(
            "the mapping networks of the source (%s) and the adapted generator differ (relative difference %.3g); "
            "Stage 2 never trains it, so this source is probably not the one the generator was adapted from",
            spec,
            gap,
        )
    return source, info


def truncation_centre(adapted_info, source_info=None, generator=None):
    """The W that truncation pulls towards, ``(1, style_dim)``, and where it came from.

    The adapted checkpoint's ``latent_avg`` when it has one (Stage 2 carries
    the source's over), else the source checkpoint's, else
    :func:`ipl.backends.stylegan2.mean_latent` of ``generator`` (pass the source; its
    mapping network is the adapted one's). Source and adapted images always
    share one centre, so paired images differ only by the synthesis weights.
    """
    for who, info in (("adapted", adapted_info), ("source", source_info)):
        if info is not None and info.get("latent_avg") is not None:
            return info["latent_avg"].reshape(1, -1), f"latent_avg of the {who} checkpoint"
    if generator is None:
        raise ValueError("no latent_avg in the checkpoints: pass the generator to compute mean_latent of")
    from .backends.stylegan2.source import mean_latent

    return mean_latent(generator), "mean_latent: mean W of 4096 Z codes drawn from seed 0"


def _alphas(steps):
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    return [i / (steps - 1) for i in range(steps)]  # exact 0.0 and 1.0 at the ends


def alpha_strip(source, adapted, seeds, steps, truncation=1.0, truncation_latent=None, chunk=8):
    """Images of ``seeds`` as the weights go from source (alpha 0) to adapted (1).

    Returns:
        ``(strip, frames)``: one row per seed and one column per alpha
        (uint8 ``(H', W', 3)``), and one frame per alpha holding every seed.
    """
    z = z_from_seeds(seeds, adapted.style_dim)
    columns = []
    for alpha in _alphas(steps):
        g = blend_generators(source, adapted, alpha)
        columns.append(to_uint8(render(g, z, truncation, truncation_latent, chunk)))  # (S, H, W, 3)
        del g
    strip = tile([np.stack([col[i] for col in columns]) for i in range(len(seeds))])
    return strip, [tile([col]) for col in columns]


def seed_strip(generator, seeds, steps, truncation=1.0, truncation_latent=None, chunk=8):
    """Linear paths in W between consecutive seeds.

    Returns:
        ``(strip, frames)``: one row per pair of consecutive seeds with
        ``steps`` images each (uint8), and the frames of the whole path
        seed 0 -> seed 1 -> ... (shared ends once).
    """
    if len(seeds) < 2:
        raise ValueError("interpolating between seeds needs at least 2 seeds")
    w = w_from_seeds(generator, seeds)  # (S, D)
    rows, frames = [], []
    for i in range(len(seeds) - 1):
        row = to_uint8(render_w(generator, lerp_path(w[i], w[i + 1], steps), truncation, truncation_latent, chunk))
        rows.append(row)
        frames.extend(row if i == 0 else row[1:])
    return tile(rows), list(frames)


def seed_filename(seed):
    return f"seed{seed:04d}.png"


def write_samples(
    adapted,
    outdir,
    seeds,
    *,
    source=None,
    alpha=1.0,
    truncation=1.0,
    truncation_latent=None,
    batch=8,
    grid_seeds=8,
    interpolate=None,
    steps=8,
    gif=False,
    progress=True,
    record=None,
):
    """Write one PNG per seed, a comparison grid, optional interpolations, and the settings.

    Args:
        adapted: The adapted generator.
        outdir: Output folder: ``seedNNNN.png`` per seed (from the adapted
            generator, or the source/adapted blend at ``alpha``), ``grid.png``
            (source row over adapted row for the first ``grid_seeds`` seeds;
            the adapted row alone without a source), ``interp_<mode>.png``
            (and ``.gif``), ``generate.json``.
        seeds: List of ints; each image depends only on its seed.
        source: The source generator (needed for ``alpha < 1``, the grid's
            source row and ``interpolate="alpha"``).
        alpha: Weight blend, 1 = adapted, 0 = source.
        batch: Images rendered at a time (never changes an image).
        interpolate: None, ``"alpha"`` (source -> adapted weights, one row per
            seed) or ``"seeds"`` (linear in W between consecutive seeds); both
            over the first ``grid_seeds`` seeds, ``steps`` images per row.
        record: More plain data for ``generate.json`` (e.g. the checkpoint paths).

    Returns:
        Dict of the files written, by kind.
    """
    import json

    from .runtime import progress_bar

    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds repeat: each seed names one image file")
    if alpha != 1 and source is None:
        raise ValueError("alpha < 1 blends source and adapted weights: a source generator is needed")
    if interpolate == "alpha" and source is None:
        raise ValueError("interpolate='alpha' goes from the source to the adapted weights: a source generator is needed")
    if interpolate not in (None, "alpha", "seeds"):
        raise ValueError(f"interpolate must be None, 'alpha' or 'seeds', got {interpolate!r}")
    from .outputs import OutputFolder

    out = outdir if isinstance(outdir, OutputFolder) else OutputFolder(outdir, "outdir", "write_samples")
    outdir = out.folder
    generator = adapted if alpha == 1 else blend_generators(source, adapted, alpha)
    kw = dict(truncation=truncation, truncation_latent=truncation_latent, chunk=batch)
    written = {"images": []}

    shown = seeds[:grid_seeds]
    grid_rows = []
    for start in progress_bar(range(0, len(seeds), batch), desc="generate", unit="batch", disable=not progress):
        part = seeds[start : start + batch]
        images = to_uint8(render(generator, z_from_seeds(part, generator.style_dim), **kw))  # (B, H, W, 3)
        for seed, image in zip(part, images):
            save_png(image, out.path(seed_filename(seed)))
            written["images"].append(str(outdir / seed_filename(seed)))
        grid_rows.extend(image for seed, image in zip(part, images) if seed in shown)
    if shown:
        rows = [np.stack(grid_rows)]
        if source is not None:
            rows.insert(0, to_uint8(render(source, z_from_seeds(shown, source.style_dim), **kw)))
        save_png(tile(rows), out.path("grid.png"))
        written["grid"] = str(outdir / "grid.png")

    if interpolate is not None:
        if interpolate == "alpha":
            strip, frames = alpha_strip(source, adapted, shown, steps, **kw)
        else:
            strip, frames = seed_strip(generator, shown, steps, **kw)
        save_png(strip, out.path(f"interp_{interpolate}.png"))
        written["strip"] = str(outdir / f"interp_{interpolate}.png")
        if gif:
            save_gif(frames, out.path(f"interp_{interpolate}.gif"))
            written["gif"] = str(outdir / f"interp_{interpolate}.gif")

    settings = {
        **(record or {}),
        "seeds": seeds,
        "alpha": alpha,
        "truncation": truncation,
        "batch": batch,
        "grid_seeds": shown,
        "interpolate": interpolate,
        "steps": steps if interpolate else None,
    }
    out.path("generate.json").write_text(json.dumps(settings, indent=2) + "\n")
    written["settings"] = str(outdir / "generate.json")
    return written
