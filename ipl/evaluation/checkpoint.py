"""Evaluating an adapted model file: load it and its source, stream the metrics, keep a record."""

import time

from ..sampling import RECORDED_SOURCE, load_adapted, load_source, truncation_centre
from .settings import EvaluationError
from .stream import evaluate_generators

RECORD_FORMAT = 1  # of metrics.json


def evaluate_checkpoint(adapted_path, networks, settings, *, device, source=RECORDED_SOURCE, references=None, target_text=None, progress=True):
    """Evaluate an adapted generator file; returns the record written as ``metrics.json``.

    Args:
        adapted_path: The adapted generator (``RUN/generator.pt``).
        networks: :class:`MetricNetworks`.
        settings: :class:`EvalSettings`.
        device: Where the generators run.
        source: Pretrained name, checkpoint path, ``"recorded"`` (the source
            in the adapted file's run config) or None (no SCS / ID then).
        references: ``{file name: (1, 3, H, W)}`` (see :func:`load_references`).
        target_text: CLIP-score text; default: the file's ``meta.target_class``.
    """
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
        progress=progress,
        desc=f"evaluate {label}",
    )
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
        "metrics": metrics,
        "seconds": round(time.time() - start, 1),
    }
