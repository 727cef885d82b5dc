"""Evaluation of adapted generators, and the reproduction of the paper's Table 1.

Evaluation (``evaluate_generators``, ``evaluate_checkpoint``): source and
adapted images are rendered from the same seeds, batch by batch, and every
requested metric consumes the one stream of batches at the same time (each
in its own thread, see :func:`fan_out`), so the images are rendered once and
never all held in memory. The metrics are the ``ipl.metrics`` functions,
called unchanged: IS of the adapted images; SIFID of the adapted images to
each reference image (R1, R2, R3); SCS and ID between the source and adapted
image of the same seed; diversity (intra-cluster LPIPS and CLIP-feature
diversity); CLIP score to the target text. Only the networks of the requested
metrics are loaded.

Table 1 (``plan_table1``, ``run_table1``): for each config, NADA (prompt
scheme ``manual``) and IPL (``adaptive``) with every lambda of the paper's
protocol ({1, 10}; the one with the better IS is kept), each trained by
:class:`ipl.pipeline.Session` into its own run directory and evaluated there;
then our numbers beside the paper's (:data:`PAPER_TABLE1`). Finished work
(a ``generator.pt`` of the same configuration, a ``metrics.json`` of the same
settings and weights) is skipped, so an interrupted reproduction is re-run
with the same command.
"""

import dataclasses
import itertools
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .sampling import RECORDED_SOURCE, load_adapted, load_source, render, to_uint8, truncation_centre, z_from_seeds

log = logging.getLogger(__name__)

METRICS = ("is", "sifid", "scs", "id", "diversity", "clip")
PAIRED_METRICS = ("scs", "id")  # need the source image of the same seed
ID_NETWORKS = ("arcface", "clip")
FACE_SOURCES = ("ffhq", "metfaces")  # sources whose ID uses ArcFace
RECORD_FORMAT = 1
REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluationError(ValueError):
    """Evaluation inputs that cannot be used as given; the message says the fix."""


def parse_metrics(text):
    """``"is,scs"`` -> ``("is", "scs")`` in the canonical order; unknown names are an error."""
    names = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise EvaluationError(f"unknown metrics {unknown or text!r}: choose from {','.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class EvalSettings:
    """Everything an evaluation result depends on, besides the weights and the texts."""

    metrics: tuple = ("is", "scs", "id", "diversity", "clip")
    n: int = 1000  # images per generator (the paper's IS protocol)
    seed_start: int = 0  # seeds seed_start .. seed_start + n - 1, one image each
    batch: int = 4  # images per batch (memory: HED at 1024 px needs ~1 GB per image)
    # The paper does not state it; 0.7 is the truncation of every image the
    # authors' code saves (its sample grids).
    truncation: float = 0.7
    # Round images to 8 bits, as evaluating saved PNG files does.
    quantize: bool = True
    is_splits: int = 10
    is_size: int = 299  # Inception input size (bilinear resize)
    sifid_size: Optional[int] = None  # None: images at their own size, as SinGAN's SIFID
    id_net: str = "arcface"  # "arcface" (faces) or "clip" (CLIP image features, e.g. dogs)
    lpips_clusters: int = 10
    lpips_per_cluster: int = 50
    lpips_size: Optional[int] = 256
    clip_model: str = "ViT-B/32"

    def __post_init__(self):
        names = self.metrics if isinstance(self.metrics, str) else ",".join(self.metrics)
        object.__setattr__(self, "metrics", parse_metrics(names))
        if self.n < 2 or self.batch < 1:
            raise EvaluationError(f"n must be >= 2 and batch >= 1 (got n={self.n}, batch={self.batch})")
        if "is" in self.metrics and self.n < self.is_splits:
            raise EvaluationError(f"IS uses {self.is_splits} splits: n={self.n} is too small")
        if "diversity" in self.metrics and self.n <= self.lpips_clusters:
            raise EvaluationError(
                f"intra-cluster LPIPS takes its {self.lpips_clusters} centres from the images: n={self.n} is too small"
            )
        if self.id_net not in ID_NETWORKS:
            raise EvaluationError(f"id_net must be one of {ID_NETWORKS}, got {self.id_net!r}")
        if not 0 < self.truncation <= 1:
            raise EvaluationError(f"truncation must be in (0, 1], got {self.truncation}")

    @property
    def seeds(self):
        return range(self.seed_start, self.seed_start + self.n)

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as in metrics.json


# ---------------------------------------------------------------------------
# Networks


def required_networks(settings):
    """Names of the networks the requested metrics need (nothing else is loaded)."""
    need = set()
    m = settings.metrics
    if "is" in m:
        need.add("inception")
    if "sifid" in m:
        need.add("sifid_stem")
    if "scs" in m:
        need.add("hed")
    if "id" in m:
        need.add(settings.id_net)
    if "diversity" in m:
        need |= {"lpips", "clip"}
    if "clip" in m:
        need.add("clip")
    return need


@dataclass
class MetricNetworks:
    """The metric networks; ``None`` for those not loaded."""

    inception: object = None
    sifid_stem: object = None
    hed: object = None
    arcface: object = None
    lpips: object = None
    clip: object = None  # ipl.clip.FrozenCLIP

    def check(self, names):
        missing = sorted(n for n in names if getattr(self, n) is None)
        if missing:
            raise EvaluationError(f"metric networks not loaded: {', '.join(missing)}")


def load_metric_networks(names, device, *, weights_dir=None, download=False, clip_model="ViT-B/32", clip_dtype="auto", clip_download_root=""):
    """Load the named networks with their real weights (see docs/EVALUATION.md).

    Every missing file is reported at once, in one ``MissingWeightsError``.
    """
    from . import metrics
    from .clip import load_clip

    loaders = {
        "inception": lambda: metrics.load_inception(device=device, download=download, weights_dir=weights_dir),
        "sifid_stem": lambda: metrics.load_sifid_stem(device=device, download=download, weights_dir=weights_dir),
        "hed": lambda: metrics.load_hed(device=device, download=download, weights_dir=weights_dir),
        "arcface": lambda: metrics.load_arcface(device=device, weights_dir=weights_dir),
        "lpips": lambda: metrics.load_lpips("vgg", device=device, download=download, weights_dir=weights_dir),
        "clip": lambda: load_clip(clip_model, device=device, dtype=clip_dtype, download_root=clip_download_root),
    }
    unknown = sorted(set(names) - set(loaders))
    if unknown:
        raise EvaluationError(f"unknown metric networks {unknown}; known: {sorted(loaders)}")
    loaded, missing = {}, []
    for name in sorted(names):
        try:
            loaded[name] = loaders[name]()
        except metrics.MissingWeightsError as e:
            missing.append(str(e))
    if missing:
        raise metrics.MissingWeightsError("\n\n".join(missing))
    return MetricNetworks(**loaded)


# ---------------------------------------------------------------------------
# Images


def quantize_images(images):
    """Round ``(B, 3, H, W)`` images in [-1, 1] to the 8-bit levels a PNG file stores."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def image_pairs(adapted, seeds, *, source=None, batch=8, truncation=1.0, truncation_latent=None, quantize=True):
    """Yield ``(source_images or None, adapted_images)`` batches, rendered from the same seeds.

    Each image depends only on its seed (``ipl.sampling.render``); batches
    are rendered on demand, so only one is alive at a time here.
    """
    seeds = list(seeds)
    for start in range(0, len(seeds), batch):
        z = z_from_seeds(seeds[start : start + batch], adapted.style_dim)
        images = [None if g is None else render(g, z, truncation, truncation_latent, chunk=batch) for g in (source, adapted)]
        if quantize:
            images = [None if x is None else quantize_images(x) for x in images]
        yield tuple(images)


def load_references(folder):
    """Reference images of a folder, sorted by file name: ``{name: (1, 3, H, W) in [-1, 1]}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"reference folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES)
    if not files:
        raise EvaluationError(f"no reference images ({', '.join(REFERENCE_SUFFIXES)}) in {folder}")
    out = {}
    for p in files:
        array = np.asarray(Image.open(p).convert("RGB"))
        out[p.name] = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return out


# ---------------------------------------------------------------------------
# One pass, several metrics

_END = object()


class _Consumer:
    """A metric run in its own thread over the items put in its queue."""

    def __init__(self, name, fn, depth):
        self.name, self.fn = name, fn
        self.queue = queue.Queue(maxsize=depth)
        self.result, self.error, self.ended = None, None, False
        self.thread = threading.Thread(target=self._run, name=f"metric-{name}", daemon=True)

    def _items(self):
        while True:
            item = self.queue.get()
            if item is _END:
                self.ended = True
                return
            yield item

    def _run(self):
        try:
            with torch.no_grad():  # grad mode is per thread
                self.result = self.fn(self._items())
        except BaseException as e:  # re-raised by fan_out in the caller's thread
            self.error = e
        finally:
            while not self.ended:  # keep taking items so the producer never blocks
                self.ended = self.queue.get() is _END


def fan_out(items, consumers, depth=2):
    """Feed one stream to several consumers in a single pass.

    Args:
        items: Any iterable (e.g. lazily rendered image batches).
        consumers: ``{name: fn}``, each ``fn(iterable) -> result`` taking the
            whole stream as an iterable, as the ``ipl.metrics.compute_*``
            functions do.
        depth: Items buffered per consumer (bounds memory).

    Returns:
        ``{name: result}``. The first consumer error is raised here; a
        failing consumer stops the stream early.
    """
    workers = [_Consumer(name, fn, depth) for name, fn in consumers.items()]
    for w in workers:
        w.thread.start()
    try:
        for item in items:
            for w in workers:
                w.queue.put(item)
            if any(w.error is not None for w in workers):
                break
    finally:
        for w in workers:
            w.queue.put(_END)
        for w in workers:
            w.thread.join()
    for w in workers:
        if w.error is not None:
            raise w.error
    return {w.name: w.result for w in workers}


def _unzip(pairs):
    """Two lazy streams (sources, adapted) of a stream of pairs, consumed in step."""
    a, b = itertools.tee(pairs)
    return (s for s, _ in a), (t for _, t in b)


def _adapted_only(pairs):
    return (t for _, t in pairs)


def _on_device(module):
    """``images -> features`` that first moves the batch to the module's device."""
    device = getattr(module, "device", None) or next(module.parameters()).device
    return lambda images: module.encode_images(images.to(device))


def evaluate_generators(adapted, networks, settings, *, source=None, truncation_latent=None, references=None, target_text=None, progress=True, desc="evaluate"):
    """Compute the requested metrics of an adapted generator in one rendering pass.

    Args:
        adapted: The adapted generator (any device).
        networks: :class:`MetricNetworks` holding at least
            ``required_networks(settings)``.
        settings: :class:`EvalSettings`.
        source: The source generator; needed for SCS and ID.
        truncation_latent: Truncation centre ``(1, style_dim)`` shared by both.
        references: SIFID reference images, a list of ``(1, 3, H, W)`` in
            [-1, 1]; the results are named R1, R2, ... in this order.
        target_text: Text of the CLIP score.

    Returns:
        Flat dict: ``is``, ``is_std``, ``sifid_R1``..., ``scs``, ``id``,
        ``lpips_diversity``, ``lpips_diversity_std``, ``lpips_cluster_sizes``,
        ``clip_diversity``, ``clip_score`` (those requested).
    """
    from . import metrics as M

    wanted = settings.metrics
    networks.check(required_networks(settings))
    if source is None and any(m in wanted for m in PAIRED_METRICS):
        raise EvaluationError("SCS and ID compare source and adapted images: a source generator is needed")
    if "sifid" in wanted and not references:
        raise EvaluationError("SIFID needs reference images of the target domain (e.g. --refs DIR with R1, R2, R3)")
    if "clip" in wanted and not target_text:
        raise EvaluationError("the CLIP score needs a target text (e.g. --target-text 'tolkien elf')")

    consumers = {}
    if "is" in wanted:
        consumers["is"] = lambda s: M.compute_inception_score(
            networks.inception, _adapted_only(s), splits=settings.is_splits, image_size=settings.is_size
        )
    if "sifid" in wanted:
        consumers["sifid"] = lambda s: M.compute_sifid(
            networks.sifid_stem, _adapted_only(s), list(references), image_size=settings.sifid_size
        )
    if "scs" in wanted:
        consumers["scs"] = lambda s: M.compute_scs(networks.hed, *_unzip(s))
    if "id" in wanted:
        if settings.id_net == "arcface":
            consumers["id"] = lambda s: M.compute_id(networks.arcface, *_unzip(s))
        else:
            consumers["id"] = lambda s: M.compute_id(_on_device(networks.clip), *_unzip(s), device="cpu")
    if "diversity" in wanted:
        consumers["lpips"] = lambda s: M.compute_intra_cluster_lpips(
            networks.lpips,
            _adapted_only(s),
            num_clusters=settings.lpips_clusters,
            max_per_cluster=settings.lpips_per_cluster,
            image_size=settings.lpips_size,
        )
        consumers["clip_diversity"] = lambda s: M.compute_clip_diversity(_on_device(networks.clip), _adapted_only(s))
    if "clip" in wanted:
        with torch.no_grad():
            text = networks.clip.encode_text([target_text])[0]
        consumers["clip_score"] = lambda s: M.compute_clip_score(_on_device(networks.clip), _adapted_only(s), text)

    from tqdm import tqdm

    pairs = image_pairs(
        adapted,
        settings.seeds,
        source=source if any(m in wanted for m in PAIRED_METRICS) else None,
        batch=settings.batch,
        truncation=settings.truncation,
        truncation_latent=truncation_latent,
        quantize=settings.quantize,
    )
    total = math.ceil(settings.n / settings.batch)
    raw = fan_out(tqdm(pairs, desc=desc, total=total, unit="batch", disable=not progress), consumers)

    out = {}
    if "is" in raw:
        out["is"], out["is_std"] = raw["is"]
    if "sifid" in raw:
        out.update({f"sifid_R{i + 1}": float(v) for i, v in enumerate(raw["sifid"])})
    if "scs" in raw:
        out["scs"] = raw["scs"]
    if "id" in raw:
        out["id"] = raw["id"]
    if "lpips" in raw:
        out["lpips_diversity"] = raw["lpips"].mean
        out["lpips_diversity_std"] = raw["lpips"].std
        out["lpips_cluster_sizes"] = list(raw["lpips"].cluster_sizes)
        out["clip_diversity"] = raw["clip_diversity"]
    if "clip_score" in raw:
        out["clip_score"] = raw["clip_score"]
    # NaN (e.g. the LPIPS std with < 2 usable clusters) is not JSON: None.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}


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


# ---------------------------------------------------------------------------
# Reports

_COLUMNS = (("IS", "is", 3), ("SCS", "scs", 3), ("ID", "id", 3))
_EXTRA_COLUMNS = (("LPIPS div.", "lpips_diversity", 3), ("CLIP div.", "clip_diversity", 3), ("CLIP score", "clip_score", 3))


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def metrics_table(rows):
    """Markdown table in the layout of the paper's Table 1 (IS, SCS, ID, SIFID R1..) plus ours.

    Args:
        rows: ``[(label, metrics dict as returned by evaluate_generators), ...]``.
    """
    n_refs = max([3] + [int(k.split("R")[1]) for _, m in rows for k in m if k.startswith("sifid_R")])
    columns = list(_COLUMNS) + [(f"SIFID R{i}", f"sifid_R{i}", 3) for i in range(1, n_refs + 1)] + list(_EXTRA_COLUMNS)
    lines = [
        "| Source→Target | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key), d) for _, key, d in columns) + " |")
    return "\n".join(lines) + "\n"


def record_markdown(record):
    """``metrics.md``: the table and the settings behind it."""
    s = record["settings"]
    notes = [
        f"- adapted: `{record['adapted']['path']}` (sha256 {record['adapted']['sha256'][:12]}…)",
        f"- source: {record['source']['spec']}" + (f" (`{record['source']['path']}`)" if record["source"]["path"] else ""),
        f"- {s['n']} images per generator, seeds {record['seeds'][0]}..{record['seeds'][1]}, truncation {s['truncation']} "
        f"towards the {record['truncation_centre']}, {'8-bit' if s['quantize'] else 'float'} images",
    ]
    if "id" in s["metrics"]:
        notes.append(f"- ID network: {s['id_net']}")
    if record["references"]:
        notes.append("- SIFID references: " + ", ".join(f"{k} = `{v}`" for k, v in record["references"].items()))
    if record.get("target_text"):
        notes.append(f"- CLIP score text: \"{record['target_text']}\" ({s['clip_model']})")
    if "is_std" in record["metrics"]:
        notes.append(f"- IS over {s['is_splits']} splits: {record['metrics']['is']:.3f} ± {record['metrics']['is_std']:.3f}")
    return metrics_table([(record["label"], record["metrics"])]) + "\n" + "\n".join(notes) + "\n"


def write_record(record, out_dir):
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir``; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)  # a metrics.json is always complete (reproduce_table1 trusts it)
    (out_dir / "metrics.md").write_text(record_markdown(record))
    return path


# ---------------------------------------------------------------------------
# Table 1: the paper's numbers

METHODS = ("nada", "ipl")

# Table 1 of the paper: IS, SCS, ID and SIFID (R1, R2, R3) of NADA and IPL.
# SIFID's six columns are read as NADA's three, then IPL's, the order of the
# other metrics' columns.
PAPER_TABLE1 = {
    "ffhq_disney": ("FFHQ", "Photo→Disney", (2.721, 3.089), (0.407, 0.448), (0.782, 0.801), (2.776, 3.136, 3.670), (2.517, 2.930, 3.497)),
    "ffhq_anime": ("FFHQ", "Photo→Anime painting", (2.450, 3.051), (0.324, 0.518), (0.666, 0.776), (2.956, 1.811, 1.242), (2.845, 1.595, 1.021)),
    "ffhq_wall_painting": ("FFHQ", "Photo→Wall painting", (2.183, 2.676), (0.439, 0.487), (0.594, 0.637), (1.944, 1.220, 1.331), (1.930, 1.183, 1.274)),
    "ffhq_ukiyoe": ("FFHQ", "Photo→Ukiyo-e", (2.205, 2.974), (0.420, 0.506), (0.775, 0.632), (1.954, 1.990, 1.326), (1.165, 1.255, 0.878)),
    "ffhq_pixar": ("FFHQ", "Human→Pixar character", (2.703, 2.785), (0.379, 0.461), (0.757, 0.853), (0.793, 0.932, 0.865), (0.638, 0.821, 1.092)),
    "ffhq_elf": ("FFHQ", "Human→Tolkien elf", (2.479, 2.778), (0.416, 0.491), (0.711, 0.772), (0.632, 1.495, 1.452), (0.690, 0.637, 0.701)),
    "ffhq_werewolf": ("FFHQ", "Human→Werewolf", (2.619, 2.809), (0.399, 0.417), (0.642, 0.747), (1.969, 1.846, 1.967), (1.734, 1.688, 1.911)),
    "afhqdog_cartoon": ("AFHQ", "Photo→Cartoon", (6.505, 8.658), (0.407, 0.563), (0.925, 0.941), (2.708, 2.672, 3.870), (2.517, 2.477, 3.278)),
    "afhqdog_pointillism": ("AFHQ", "Photo→Pointillism", (5.419, 6.913), (0.224, 0.542), (0.775, 0.881), (7.081, 5.288, 7.142), (4.818, 3.089, 4.074)),
    "afhqdog_cubism": ("AFHQ", "Photo→Cubism", (4.165, 6.450), (0.386, 0.463), (0.934, 0.943), (2.779, 2.938, 3.199), (2.431, 2.956, 2.284)),
}


def paper_metrics(config_key, method):
    """The paper's numbers for one row and method, keyed as our metrics dicts (None if not a Table-1 row)."""
    row = PAPER_TABLE1.get(config_key)
    if row is None:
        return None
    i = METHODS.index(method)
    _, _, is_, scs, id_, sifid_nada, sifid_ipl = row
    sifid = (sifid_nada, sifid_ipl)[i]
    return {"is": is_[i], "scs": scs[i], "id": id_[i], **{f"sifid_R{r + 1}": v for r, v in enumerate(sifid)}}


def row_label(config_key, config=None):
    if config_key in PAPER_TABLE1:
        dataset, task = PAPER_TABLE1[config_key][:2]
        return f"{dataset} {task}"
    if config is not None:
        return f"{config_key}: {config.prompt.source_class}→{config.prompt.target_class}"
    return config_key


# ---------------------------------------------------------------------------
# Table 1: the plan


@dataclass(frozen=True)
class Table1Run:
    """One adaptation run of the reproduction and its evaluation."""

    config_key: str  # e.g. "ffhq_disney"
    config_path: Path
    method: str  # "nada" | "ipl"
    lambda_domain: Optional[float]  # IPL's lambda (None for NADA)
    run_dir: Path
    overrides: tuple  # --set overrides, in order (the user's first)
    settings: EvalSettings  # its evaluation
    references: Optional[Path] = None  # SIFID reference folder

    @property
    def name(self):
        return self.run_dir.name

    def adapt_command(self):
        sets = " ".join(f"--set {_quote(o)}" for o in self.overrides)
        return f"python scripts/adapt.py --config {self.config_path} {sets}"

    def evaluate_command(self, device="auto"):
        s = self.settings
        parts = [
            "python scripts/evaluate.py",
            f"--adapted {self.run_dir / 'generator.pt'}",
            f"--source {RECORDED_SOURCE}",
            f"--metrics {','.join(s.metrics)}",
            f"--n {s.n} --seed-start {s.seed_start} --batch {s.batch} --truncation {s.truncation}",
            f"--id-net {s.id_net}",
            f"--out {self.run_dir}",
            f"--device {device}",
        ]
        if self.references is not None:
            parts.insert(4, f"--refs {self.references}")
        return " ".join(parts)


def _quote(text):
    return f"'{text}'" if any(c in text for c in " '\"") else text


def _format_lambda(value):
    return f"{value:g}"


def resolve_config_path(name, configs_dir=None):
    """A config name (``ffhq_disney``) or a YAML path -> ``(key, path)``."""
    from .config import ConfigError

    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.stem, path
    folder = Path(configs_dir) if configs_dir else Path(__file__).resolve().parents[1] / "configs"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"no config named {name!r} in {folder} (known: {known}); or pass a YAML path")
    try:  # shorter commands in the plan when run from the repository
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return name, path


def id_network_for(config, dog_id="clip"):
    """ArcFace for face sources; for others (AFHQ dogs) the paper's TransFG has no
    released weights, so ``dog_id`` decides: ``"clip"`` features, or ``"none"`` (no ID)."""
    return "arcface" if config.generator.checkpoint in FACE_SOURCES else dog_id


def plan_table1(configs, settings, *, runs_root="runs/table1", lambdas=(1.0, 10.0), overrides=(), refs_root=None, dog_id="clip", configs_dir=None):
    """Every run of the reproduction, in order; reads the YAML files only.

    Args:
        configs: Config names or YAML paths (default in the script: the ten
            of :data:`PAPER_TABLE1`).
        settings: Base :class:`EvalSettings`; per run, ID uses
            :func:`id_network_for` and SIFID is added when ``refs_root`` is
            given (``refs_root/<config>/`` holds that domain's references).
        lambdas: IPL's lambda sweep ({1, 10} in the paper).
        overrides: ``--set`` overrides applied to every run.
    """
    from .config import ConfigError, load_config

    if dog_id not in ID_NETWORKS + ("none",):
        raise EvaluationError(f"dog_id must be 'clip' or 'none', got {dog_id!r}")
    runs, missing_refs = [], []
    for name in configs:
        key, path = resolve_config_path(name, configs_dir)
        config = load_config(path, overrides)  # validates the overrides early
        metrics = list(settings.metrics)
        id_net = id_network_for(config, dog_id)
        if id_net == "none":
            metrics = [m for m in metrics if m != "id"]
        references = None
        if refs_root is not None:
            references = Path(refs_root) / key
            if not references.is_dir():
                missing_refs.append(str(references))
            metrics.append("sifid")
        elif "sifid" in metrics:
            raise EvaluationError("SIFID needs reference images: pass refs_root (--refs-root DIR with DIR/<config>/)")
        run_settings = dataclasses.replace(settings, metrics=tuple(metrics), id_net=settings.id_net if id_net == "none" else id_net)
        variants = [("nada", None)] + [("ipl", float(lam)) for lam in lambdas]
        for method, lam in variants:
            suffix = method if lam is None else f"{method}_lambda{_format_lambda(lam)}"
            run_dir = Path(runs_root) / f"{key}_{suffix}"
            own = [f"name={run_dir.name}", f"run_dir={run_dir}"]
            if method == "nada":
                own.append("prompt.scheme=manual")
            else:
                own += ["prompt.scheme=adaptive", f"stage1.lambda_domain={_format_lambda(lam)}"]
            runs.append(Table1Run(key, path, method, lam, run_dir, tuple(overrides) + tuple(own), run_settings, references))
    if missing_refs:
        raise ConfigError("SIFID reference folders not found: " + ", ".join(missing_refs))
    return runs


def describe_plan(runs, device="auto", runs_root=None):
    """The plan as text: per run its directory, state on disk, commands and metrics."""
    lines = []
    for i, run in enumerate(runs, 1):
        what = "NADA (manual prompts)" if run.method == "nada" else f"IPL (adaptive prompts), lambda={_format_lambda(run.lambda_domain)}"
        have = [f for f in ("generator.pt", "metrics.json") if (run.run_dir / f).exists()]
        state = f"found {', '.join(have)} (checked before reuse)" if have else "nothing yet"
        lines += [
            f"[{i}/{len(runs)}] {run.config_key}: {what} -> {run.run_dir} ({state})",
            f"    adapt:    {run.adapt_command()}",
            f"    evaluate: {run.evaluate_command(device)}",
            f"    metrics:  {', '.join(run.settings.metrics)} (ID: {run.settings.id_net if 'id' in run.settings.metrics else 'not computed'})",
        ]
    if runs_root is not None:
        lines.append(f"then: per config, keep the IPL lambda with the best IS; write {Path(runs_root) / 'table1.md'} and table1.json")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Table 1: running it


def _adapted_is_complete(run, config):
    """True if ``run_dir/generator.pt`` is a finished Stage 2 of this configuration."""
    from stylegan2.checkpoint import CheckpointError, read_checkpoint

    from . import config as config_lib
    from .pipeline import STAGE2_KEYS, config_differences

    path = run.run_dir / "generator.pt"
    if not path.is_file():
        return False
    ckpt = read_checkpoint(path)
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} does not record its configuration; move it away to train this run again")
    diffs = config_differences(saved, config_lib.to_dict(config), STAGE2_KEYS)
    if diffs:
        raise CheckpointError(
            f"{path} was trained with another configuration ({'; '.join(diffs[:5])}); "
            "use another --runs-root or delete the run directory"
        )
    return ckpt.get("step", 0) >= config.stage2.iterations


def _evaluation_key(record):
    return {k: record.get(k) for k in ("settings", "target_text", "references")} | {"sha256": record["adapted"]["sha256"]}


def _reusable_record(run, target_text):
    """The run's ``metrics.json`` if it was computed with these settings on these weights."""
    from stylegan2.utils import sha256_file

    path = run.run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    refs = sorted(p.name for p in run.references.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES) if run.references else []
    wanted = {
        "settings": run.settings.to_dict(),
        "target_text": target_text if "clip" in run.settings.metrics else None,
        "references": {f"R{i + 1}": name for i, name in enumerate(refs)},
        "sha256": sha256_file(run.run_dir / "generator.pt"),
    }
    return record if record.get("format") == RECORD_FORMAT and _evaluation_key(record) == wanted else None


def run_table1(runs, *, device, load_networks, runs_root, progress=True, adapt=None):
    """Train and evaluate every planned run (skipping finished work), then write the tables.

    Args:
        runs: From :func:`plan_table1`.
        device: ``torch.device`` for training and evaluation.
        load_networks: ``names -> MetricNetworks``; called once, with every
            network the remaining evaluations need, and only if one is needed.
        runs_root: Where ``table1.md`` and ``table1.json`` go.
        adapt: ``config -> generator.pt path``; default: Stage 1 + 2 with
            :class:`ipl.pipeline.Session` (resuming a partial run).

    Returns:
        The summary written to ``table1.json``.
    """
    from .config import load_config

    def default_adapt(config):
        from .pipeline import Session

        session = Session(config, device=str(device), progress=progress)
        path = session.adapt(resume=True)
        del session
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return path

    adapt = adapt or default_adapt
    networks = None
    records = {}
    configs = {run.name: load_config(run.config_path, run.overrides) for run in runs}
    for i, run in enumerate(runs, 1):
        config = configs[run.name]
        log.info("[%d/%d] %s", i, len(runs), run.name)
        if _adapted_is_complete(run, config):
            log.info("  reusing %s", run.run_dir / "generator.pt")
        else:
            adapt(config)
        target_text = config.prompt.target_class
        record = _reusable_record(run, target_text)
        if record is not None:
            log.info("  reusing %s", run.run_dir / "metrics.json")
        else:
            if networks is None:
                networks = load_networks(set().union(*(required_networks(r.settings) for r in runs)))
            references = load_references(run.references) if run.references else None
            record = evaluate_checkpoint(
                run.run_dir / "generator.pt",
                networks,
                run.settings,
                device=device,
                source=RECORDED_SOURCE,
                references=references,
                target_text=target_text,
                progress=progress,
            )
            write_record(record, run.run_dir)
        records[run.name] = record
    summary = summarize_table1(runs, records, configs)
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    (runs_root / "table1.json").write_text(json.dumps(summary, indent=2) + "\n")
    (runs_root / "table1.md").write_text(table1_markdown(summary))
    return summary


def summarize_table1(runs, records, configs=None):
    """Per config: NADA's metrics, every IPL lambda's, the chosen lambda (best IS), the paper's."""
    summary = {}
    for run in runs:
        row = summary.setdefault(
            run.config_key,
            {
                "label": row_label(run.config_key, (configs or {}).get(run.name)),
                "nada": None,
                "ipl": None,
                "ipl_lambda": None,
                "ipl_by_lambda": {},
                "runs": {},
                "paper": {m: paper_metrics(run.config_key, m) for m in METHODS},
                "id_net": run.settings.id_net if "id" in run.settings.metrics else None,
            },
        )
        record = records.get(run.name)
        if record is None:
            continue
        row["runs"][run.name] = str(run.run_dir)
        if run.method == "nada":
            row["nada"] = record["metrics"]
        else:
            row["ipl_by_lambda"][_format_lambda(run.lambda_domain)] = record["metrics"]
    for row in summary.values():
        # The paper's protocol: lambda with the better IS (ties: the first).
        best = None
        for lam, m in row["ipl_by_lambda"].items():
            score = m.get("is", float("nan"))
            if best is None or score > best[1]:
                best = (lam, score)
        if best is not None:
            row["ipl_lambda"] = best[0]
            row["ipl"] = row["ipl_by_lambda"][best[0]]
    return summary


def _cells(summary, source, keys):
    """Table cells per row: ours, the paper's, or their difference."""
    rows = []
    for row in summary.values():
        cells = []
        for key in keys:
            for method in METHODS:
                ours = (row[method] or {}).get(key)
                paper = (row["paper"][method] or {}).get(key)
                if source == "ours":
                    value = ours
                elif source == "paper":
                    value = paper
                else:
                    value = None if ours is None or paper is None else ours - paper
                cells.append("–" if value is None else (f"{value:+.3f}" if source == "diff" else f"{value:.3f}"))
        rows.append((row["label"], cells))
    return rows


def _table(header_keys, rows, extra_header=()):
    header = [f"{name} {m.upper()}" for name in header_keys for m in METHODS] + list(extra_header)
    lines = ["| Source→Target | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(summary):
    """Our Table 1, the paper's, their difference, SIFID, and our extra metrics."""
    names = ("IS", "SCS", "ID")
    keys = ("is", "scs", "id")
    ours = _cells(summary, "ours", keys)
    ours = [(label, cells + [row["ipl_lambda"] or "–"]) for (label, cells), row in zip(ours, summary.values())]
    parts = [
        "# Table 1: ours and the paper's\n",
        "## Ours\n",
        _table(names, ours, extra_header=("λ (IPL)",)),
        "\n## Paper (Table 1)\n",
        _table(names, _cells(summary, "paper", keys)),
        "\n## Ours − paper\n",
        _table(names, _cells(summary, "diff", keys)),
    ]
    sifid_keys = tuple(f"sifid_R{i}" for i in (1, 2, 3))
    if any((row[m] or {}).get("sifid_R1") is not None for row in summary.values() for m in METHODS):
        parts += [
            "\n## SIFID (↓), ours / paper\n",
            _table(
                ("SIFID R1", "SIFID R2", "SIFID R3"),
                [
                    (label, [f"{o} / {p}" for o, p in zip(co, cp)])
                    for (label, co), (_, cp) in zip(_cells(summary, "ours", sifid_keys), _cells(summary, "paper", sifid_keys))
                ],
            ),
        ]
    extra = ("lpips_diversity", "clip_diversity", "clip_score")
    parts += ["\n## Not in the paper: diversity and CLIP score\n", _table(("LPIPS div.", "CLIP div.", "CLIP score"), _cells(summary, "ours", extra))]
    lam_rows = []
    for row in summary.values():
        for lam, m in row["ipl_by_lambda"].items():
            lam_rows.append(f"| {row['label']} | {lam} | {_fmt(m.get('is'))} | {'yes' if lam == row['ipl_lambda'] else ''} |")
    if lam_rows:
        parts += ["\n## IPL's lambda (chosen by IS, as in the paper)\n", "| Source→Target | λ | IS | kept |\n|---|---|---|---|\n" + "\n".join(lam_rows) + "\n"]
    notes = ["\nNotes:"]
    for row in summary.values():
        if row["id_net"] == "clip":
            notes.append(f"- {row['label']}: ID uses CLIP image features (the paper's TransFG has no released weights).")
        elif row["id_net"] is None:
            notes.append(f"- {row['label']}: ID not computed.")
    notes.append("- Cells marked – were not computed (or are not in the paper).")
    return "".join(parts) + "\n".join(notes) + "\n"


__all__ = [
    "EvalSettings",
    "EvaluationError",
    "METRICS",
    "MetricNetworks",
    "PAPER_TABLE1",
    "Table1Run",
    "describe_plan",
    "evaluate_checkpoint",
    "evaluate_generators",
    "fan_out",
    "image_pairs",
    "load_metric_networks",
    "load_references",
    "metrics_table",
    "paper_metrics",
    "parse_metrics",
    "plan_table1",
    "quantize_images",
    "record_markdown",
    "required_networks",
    "run_table1",
    "summarize_table1",
    "table1_markdown",
    "write_record",
]
