"""What the demo's Translate and Sample tabs compute: several adapted models side by side.

Both take :class:`ipl.demo.runs.AdaptedRun` entries and return uint8 images;
models are loaded once and kept (:class:`ModelCache`). A ``report(fraction,
text)`` callback, when given, hears of the progress of long work.
"""

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cli import InputError
from ..images import UnreadableImageError, center_square, load_photo, to_tensor
from ..inversion.align import FaceNotFoundError, LandmarkDetector, align_photo
from ..inversion.encoders import ENCODER_SIZE
from ..inversion.translate import build_translator
from ..sampling import (
    RECORDED_SOURCE,
    blend_generators,
    load_adapted,
    load_source,
    parse_seeds,
    render,
    tile,
    to_uint8,
    truncation_centre,
    write_samples,
    z_from_seeds,
)

STYLEGAN2_INVERSIONS = ("restyle", "e4e", "project")
DISTANCES = ("lpips", "mse")
MAX_PHOTOS = 16
MAX_SEEDS = 64
MAX_PROJECTION_STEPS = 5000


def _silent(fraction, text):
    pass


def check_fraction(name, value, low_open=False):
    """``value`` as a float in [0, 1] (``(0, 1]`` with ``low_open``), else an InputError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(value) or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise InputError(f"{name}: must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return value


def check_count(name, value, low, high):
    """``value`` as an int in [low, high], else an InputError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a whole number, got {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        raise InputError(f"{name}: must be a whole number from {low} to {high}, got {value}")
    return int(number)


def _selected(runs, kinds=None, what="models"):
    if not runs:
        raise InputError(f"choose one or more {what} (finished runs under the runs folder)")
    if kinds is not None:
        other = [run.label for run in runs if run.kind not in kinds]
        if other:
            raise InputError(f"{', '.join(other)}: not a {' or '.join(kinds)} run; sampling seeds is for StyleGAN2 runs (translate photos with the others)")
    return list(runs)


class ModelCache:
    """Loaded models by key, the least recently used dropped beyond ``size``."""

    def __init__(self, size=4):
        self.size, self.items = size, OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def _file_key(path):
    path = Path(path)
    return (str(path.resolve()), path.stat().st_mtime_ns)  # a retrained run is loaded again


def _cells(images, size):
    """``(N, 3, s, s)`` in [-1, 1] resized to ``size`` (models of several resolutions share one grid)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------
# Translate: photo -> aligned | (reconstruction | adapted) per model


def translate_side_by_side(photos, runs, *, aligned=False, alpha=1.0, inversion="restyle", steps=1000, distance="lpips",
                           device="cpu", cache=None, detector=None, report=None):  # fmt: skip
    """Translate photos with several adapted models, one row per photo.

    Args:
        photos: Image files.
        runs: :class:`ipl.demo.runs.AdaptedRun` entries; StyleGAN2 runs
            invert with ``inversion`` (``restyle``, ``e4e`` or ``project``),
            the diffusion runs with their own encoder and DDIM inversion.
        aligned: The photos are FFHQ-aligned faces already (no landmarks).
        alpha: Blend of source and adapted model, in [0, 1].
        steps, distance: The projection's steps and distance (``lpips``,
            NVIDIA's; ``mse``, needing no weight file).
        cache: A :class:`ModelCache` that keeps translators between calls.
        detector: ``PIL.Image -> (68, 2)`` landmarks; default dlib's, made
            when the first photo needs it.

    Returns:
        ``(rows, messages)``: per translated photo ``(name, image)`` with
        image ``(R, (1 + 2 * len(runs)) * R, 3)`` uint8 (columns: the aligned
        input, then per model its source reconstruction and the adapted
        render), and one line per photo left out (unreadable, no face).

    Raises:
        InputError: nothing to translate, or a setting out of range.
        ipl.inversion.align.MissingDependencyError: photos need aligning and dlib is missing.
    """
    from ..inversion.projection import mean_squared_error

    report = report or _silent
    photos = [Path(p) for p in (photos or [])]
    if not photos:
        raise InputError("upload one or more photos")
    if len(photos) > MAX_PHOTOS:
        raise InputError(f"at most {MAX_PHOTOS} photos at a time, got {len(photos)}")
    runs = _selected(runs)
    alpha = check_fraction("alpha", alpha)
    if inversion not in STYLEGAN2_INVERSIONS:
        raise InputError(f"inversion: {inversion!r} is not one of {', '.join(STYLEGAN2_INVERSIONS)}")
    if distance not in DISTANCES:
        raise InputError(f"distance: {distance!r} is not one of {', '.join(DISTANCES)}")
    steps = check_count("projection steps", steps, 1, MAX_PROJECTION_STEPS)
    cache = cache or ModelCache()

    translators = []
    for i, run in enumerate(runs):
        report(i / (len(runs) + len(photos)), f"loading {run.name}")
        settings = {"inversion": inversion if run.kind == "stylegan2" else None, "alpha": alpha}
        if run.kind == "stylegan2" and inversion == "project":
            settings.update(steps=steps, distance=mean_squared_error if distance == "mse" else None)
        key = ("translator", _file_key(run.path), tuple(sorted((k, str(v)) for k, v in settings.items())), str(device))
        translators.append(cache.get(key, lambda path=run.path, kw=settings: build_translator(path, source=RECORDED_SOURCE, device=device, progress=False, **kw)))
    size = max(t.resolution for t in translators)

    rows, messages = [], []
    for j, path in enumerate(photos):
        report((len(runs) + j) / (len(runs) + len(photos)), f"photo {j + 1} of {len(photos)}")
        try:
            photo = load_photo(path)
            if aligned:
                face = center_square(photo)
            else:
                if detector is None:
                    detector = LandmarkDetector()
                face = align_photo(photo, detector, output_size=max(size, ENCODER_SIZE))
        except UnreadableImageError as error:
            messages.append(f"{path.name}: left out, {error}")
            continue
        except FaceNotFoundError as error:
            messages.append(f"{path.name}: left out, {error} (for a photo that is a face already, tick 'already aligned')")
            continue
        columns = [to_tensor(face, size)]  # (1, 3, size, size)
        for translator in translators:
            codes = translator.invert(face)
            columns += [_cells(translator.reconstruct(codes), size), _cells(translator.translate(codes), size)]
        rows.append((path.stem, tile([to_uint8(torch.cat(columns))])))
    report(1.0, "done")
    return rows, messages


# ---------------------------------------------------------------------------
# Sample: the same seeds through several adapted StyleGAN2 models


def _generators(run, device, cache):
    def load():
        adapted, adapted_info = load_adapted(run.path, device)
        source, source_info = load_source(RECORDED_SOURCE, adapted, adapted_info, device)
        centre, _ = truncation_centre(adapted_info, source_info, source)
        return source, adapted, centre.to(device)

    return cache.get(("generators", _file_key(run.path), str(device)), load)


def sample_side_by_side(runs, seeds, *, truncation=0.7, alpha=1.0, interpolate=None, steps=8, outdir=None,
                        device="cpu", cache=None, report=None):  # fmt: skip
    """Render the same seeds with several adapted StyleGAN2 models (the paper's Fig. 1 layout).

    Args:
        runs: StyleGAN2 :class:`ipl.demo.runs.AdaptedRun` entries.
        seeds: ``"0-7"`` or ``"1,5,9"`` (at most :data:`MAX_SEEDS`).
        truncation: psi in (0, 1].
        alpha: Blend of each model with its source, in [0, 1].
        interpolate: None, ``"alpha"`` or ``"seeds"``: also write each model's
            strip and GIF as ``scripts/generate.py`` does, into
            ``outdir/<n>_<run>/``.
        steps: Images per interpolation row.

    Returns:
        Dict: ``grid`` (uint8: the first model's source row, then one row
        per model), ``labels`` (one per grid row), and with ``interpolate``
        ``strips`` and ``gifs`` (file paths, one per model).
    """
    report = report or _silent
    runs = _selected(runs, kinds=("stylegan2",), what="StyleGAN2 models")
    try:
        seeds = parse_seeds(seeds)
    except ValueError as e:
        raise InputError(f"seeds: {e}") from None
    if len(set(seeds)) != len(seeds):
        raise InputError("seeds: a seed is listed twice")
    if len(seeds) > MAX_SEEDS:
        raise InputError(f"seeds: at most {MAX_SEEDS} at a time, got {len(seeds)}")
    truncation = check_fraction("truncation", truncation, low_open=True)
    alpha = check_fraction("alpha", alpha)
    if interpolate not in (None, "alpha", "seeds"):
        raise InputError(f"interpolate: {interpolate!r} is not one of none, alpha, seeds")
    if interpolate == "seeds" and len(seeds) < 2:
        raise InputError("interpolating between seeds needs at least 2 seeds")
    steps = check_count("interpolation steps", steps, 2, 32)
    if interpolate and outdir is None:
        raise ValueError("an interpolation is written to files: pass outdir")
    cache = cache or ModelCache()

    rows, labels, strips, gifs = [], [], [], []
    size = None
    for i, run in enumerate(runs):
        report(i / len(runs), f"rendering {run.name}")
        source, adapted, centre = _generators(run, device, cache)
        size = size or adapted.size
        kw = {"truncation": truncation, "truncation_latent": centre}
        z = z_from_seeds(seeds, adapted.style_dim)
        if i == 0:
            rows.append(_cells(render(source, z, **kw), size))
            labels.append(f"source of {run.name}")
        generator = adapted if alpha == 1 else blend_generators(source, adapted, alpha)
        rows.append(_cells(render(generator, z, **kw), size))
        labels.append(run.label + ("" if alpha == 1 else f", alpha {alpha:g}"))
        if interpolate:
            written = write_samples(adapted, Path(outdir) / f"{i}_{Path(run.name).name}", seeds, source=source, alpha=alpha,
                                    grid_seeds=len(seeds), interpolate=interpolate, steps=steps, gif=True, progress=False,
                                    record={"ckpt": str(run.path), "source": RECORDED_SOURCE}, **kw)  # fmt: skip
            strips.append(written["strip"])
            gifs.append(written["gif"])
    report(1.0, "done")
    result = {"grid": tile([to_uint8(r) for r in rows]), "labels": labels}
    if interpolate:
        result.update(strips=strips, gifs=gifs)
    return result

