"""Evaluating an adapted model file: load it and its source, stream the metrics, keep a record.

A StyleGAN2 run is scored on images of seeded latents, rendered by the
source and the adapted generator. A diffusion run (Diff-IPL's autoencoder or
a DDPM) is scored on held-out real images: each is inverted by the source
model, and its reconstruction by the source model and its render by the
fine-tuned model are the pair.
"""

import math
import time
from pathlib import Path

from ..backends import checkpoint_kind
from ..distributed import SINGLE
from ..sampling import RECORDED_SOURCE, load_adapted, load_source, truncation_centre
from .settings import PAIRED_METRICS, EvaluationError
from .stream import check_request, edited_image_pairs, evaluate_generators, evaluate_stream

RECORD_FORMAT = 1  # of metrics.json


def evaluate_checkpoint(adapted_path, networks, settings, *, device, source=RECORDED_SOURCE, references=None, target_text=None, images=None, world=SINGLE, progress=True):
    """Evaluate an adapted model file; returns the record written as ``metrics.json``.

    Args:
        adapted_path: The adapted model (``RUN/generator.pt``, a Diff-IPL
            run's ``RUN/autoencoder.pt`` or a DDPM run's ``RUN/ddpm.pt``).
        networks: :class:`MetricNetworks`.
        settings: :class:`EvalSettings` (``n``: images; for StyleGAN2 from
            seeds ``seed_start``.., for a diffusion run the first ``n`` files).
        device: Where the models run.
        source: Pretrained name, checkpoint path, ``"recorded"`` (the source
            in the adapted file's run config) or None (no SCS / ID then).
        references: ``{file name: (1, 3, H, W)}`` (see :func:`load_references`).
        target_text: CLIP-score text; default: the file's ``meta.target_class``.
        images: Diffusion runs only: the folder of held-out images (default:
            the run config's ``data.test_images``).
        world: Ranks sharing the images (:mod:`ipl.distributed`); the record
            is the same as one process's, returned on rank 0 (None elsewhere).
    """
    if checkpoint_kind(adapted_path) in ("diffae", "ddpm"):
        return evaluate_diffusion_checkpoint(
            adapted_path, networks, settings, device=device, source=source, references=references,
            target_text=target_text, images=images, world=world, progress=progress,
        )  # fmt: skip
    if images is not None:
        raise EvaluationError(f"{adapted_path} is a StyleGAN2 generator: it is evaluated on seeded images, not on --images")
    from stylegan2.utils import sha256_file

    start = time.time()
    adapted, info = load_adapted(adapted_path, device)
    src, src_info = load_source(source, adapted, info, device) if source is not None else (None, None)
    centre, centre_from = truncation_centre(info, src_info, src if src is not None else adapted)
    meta = info.get("meta", {})
    if target_text is None and "clip" in settings.metrics:
        target_text = meta.get("target_class")
        if not target_text:
            raise EvaluationError(f"{adapted_path} has no meta.target_class: pass the CLIP-score text (--target-text)")
    references = dict(references or {})
    label = f"{meta.get('source_class', 'source')} → {meta.get('target_class', 'target')}"
    metrics = evaluate_generators(
        adapted,
        networks,
        settings,
        source=src,
        truncation_latent=centre.to(device),
        references=list(references.values()),
        target_text=target_text,
        world=world,
        progress=progress,
        desc=f"evaluate {label}",
    )
    if metrics is None:
        return None
    return {
        "format": RECORD_FORMAT,
        "label": label,
        "adapted": {"path": str(adapted_path), "sha256": sha256_file(adapted_path)},
        "source": {"spec": source, "path": None if src_info is None else src_info.get("path")},
        "target_text": target_text if "clip" in settings.metrics else None,
        "references": {f"R{i + 1}": name for i, name in enumerate(references)},
        "truncation_centre": centre_from,
        "seeds": [settings.seed_start, settings.seed_start + settings.n - 1],
        "settings": settings.to_dict(),
        "world_size": world.size,
        "metrics": metrics,
        "seconds": round(time.time() - start, 1),
    }


def evaluate_diffusion_checkpoint(adapted_path, networks, settings, *, device, source=RECORDED_SOURCE, references=None, target_text=None, images=None, world=SINGLE, progress=True):
    """:func:`evaluate_checkpoint` of a diffusion run (Diff-IPL or DDPM): held-out real images, reconstructed and edited."""
    from stylegan2.utils import sha256_file

    from ..backends.editing import load_editor
    from ..config import ConfigError
    from ..images import list_images

    start = time.time()
    paired = any(m in settings.metrics for m in PAIRED_METRICS)
    editor, run = load_editor(adapted_path, device, source=source or RECORDED_SOURCE, progress=progress)
    folder = images or run.data.test_images
    if not folder:
        raise EvaluationError(
            f"{adapted_path} is a diffusion run without data.test_images: pass the held-out images to score with --images DIR"
        )
    try:
        files = list_images(folder, "--images")
    except ConfigError as e:
        raise EvaluationError(str(e)) from None
    if len(files) < settings.n:
        raise EvaluationError(f"--images: {folder} holds {len(files)} images, fewer than --num-images {settings.n}: lower --num-images or add images")
    files = files[: settings.n]
    if target_text is None and "clip" in settings.metrics:
        target_text = run.prompt.target_class
    references = dict(references or {})
    check_request(networks, settings, paired=True, references=list(references.values()), target_text=target_text)
    label = f"{run.prompt.source_class} → {run.prompt.target_class}"
    pairs = edited_image_pairs(editor, files, batch=settings.batch, paired=paired, quantize=settings.quantize, world=world)
    metrics = evaluate_stream(
        pairs, networks, settings, n_batches=math.ceil(len(files) / settings.batch), world=world,
        references=list(references.values()), target_text=target_text, progress=progress and world.is_main,
        desc=f"evaluate {label}",
    )  # fmt: skip
    if metrics is None:
        return None
    return {
        "format": RECORD_FORMAT,
        "kind": run.generator.kind,
        "label": label,
        "adapted": {"path": str(adapted_path), "sha256": sha256_file(adapted_path)},
        "source": {"spec": source, "path": None},
        "target_text": target_text if "clip" in settings.metrics else None,
        "references": {f"R{i + 1}": name for i, name in enumerate(references)},
        "images": {"folder": str(Path(folder)), "count": len(files), "first": files[0].name, "last": files[-1].name},
        "ddim": {"t_0": editor.t_0, "n_inv_step": editor.n_inv_step, "n_test_step": editor.n_test_step, "eta": editor.eta},
        "settings": settings.to_dict(),
        "world_size": world.size,
        "metrics": metrics,
        "seconds": round(time.time() - start, 1),
    }


evaluate_diffae_checkpoint = evaluate_diffusion_checkpoint  # the name before DDPM runs were scored too
