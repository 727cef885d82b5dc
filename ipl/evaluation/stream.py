"""One rendering pass, several metrics: source and adapted images from the same seeds, streamed.

Source and adapted images are rendered from the same seeds, batch by batch,
and every requested metric consumes the one stream of batches at the same
time (each in its own thread, see :func:`fan_out`), so the images are
rendered once and never all held in memory. The metrics are the
``ipl.metrics`` functions, called unchanged.
"""

import itertools
import math
import queue
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import SINGLE, gather_items
from ..images import IMAGE_SUFFIXES
from ..sampling import render, to_uint8, z_from_seeds
from .settings import PAIRED_METRICS, EvaluationError, required_networks

REFERENCE_SUFFIXES = IMAGE_SUFFIXES


# ---------------------------------------------------------------------------
# Images


def quantize_images(images):
    """Round ``(B, 3, H, W)`` images in [-1, 1] to the 8-bit levels a PNG file stores."""
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def batches(n, batch, world=SINGLE):
    """The ``(start, stop)`` index ranges of the batches of ``n`` items that ``world``'s rank owns.

    Batches are cut the same way for any number of ranks and dealt out
    round-robin, so every batch is computed exactly as by one process.
    """
    ranges = [(start, min(start + batch, n)) for start in range(0, n, batch)]
    return [ranges[i] for i in world.items(len(ranges))]


def image_pairs(adapted, seeds, *, source=None, batch=8, truncation=1.0, truncation_latent=None, quantize=True, world=SINGLE):
    """Yield ``(source_images or None, adapted_images)`` batches, rendered from the same seeds.

    Each image depends only on its seed (``ipl.sampling.render``); batches
    are rendered on demand, so only one is alive at a time here. With
    several ranks, only this rank's batches (:func:`batches`) are rendered.
    """
    seeds = list(seeds)
    for lo, hi in batches(len(seeds), batch, world):
        z = z_from_seeds(seeds[lo:hi], adapted.style_dim)
        images = [None if g is None else render(g, z, truncation, truncation_latent, chunk=batch) for g in (source, adapted)]
        if quantize:
            images = [None if x is None else quantize_images(x) for x in images]
        yield tuple(images)


def edited_image_pairs(editor, files, *, batch=4, paired=True, quantize=True, world=SINGLE):
    """Yield ``(reconstructions or None, edits)`` batches of a diffusion run's images (Diff-IPL or DDPM).

    Each image is inverted to x_{t_0} by the source model (Diff-AE: given its
    z_sem); the source's render of those latents is the "source" image, the
    fine-tuned model's render the "adapted" one (see :class:`ipl.backends.editing.Editor`).
    """
    from ..images import image_tensor

    files = list(files)
    for lo, hi in batches(len(files), batch, world):
        x0 = torch.cat([image_tensor(f, editor.resolution) for f in files[lo:hi]])
        cond, x_t = editor.invert(x0)
        images = [editor.reconstruct(cond, x_t).cpu() if paired else None, editor.edit(cond, x_t).cpu()]
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
    from ..images import UnreadableImageError, load_photo

    out = {}
    for p in files:
        try:
            array = np.asarray(load_photo(p))
        except UnreadableImageError as e:
            raise EvaluationError(f"SIFID reference {e}; remove or replace it") from None
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


def check_request(networks, settings, *, paired, references=None, target_text=None):
    """Refuse an evaluation that cannot run: missing networks, source, references or text."""
    wanted = settings.metrics
    networks.check(required_networks(settings))
    if not paired and any(m in wanted for m in PAIRED_METRICS):
        raise EvaluationError("SCS and ID compare source and adapted images: a source generator (or source model) is needed")
    if "sifid" in wanted and not references:
        raise EvaluationError("SIFID needs reference images of the target domain (e.g. --refs DIR with R1, R2, R3)")
    if "clip" in wanted and not target_text:
        raise EvaluationError("the CLIP score needs a target text (e.g. --target-text 'tolkien elf')")


def metric_consumers(networks, settings, *, references=None, lpips_images=False):
    """``{name: fn(stream of (source, adapted) batches) -> one result per batch}`` for the requested metrics.

    Every metric is reduced from per-image values (class probabilities,
    SIFID to each reference, SCS, ID, unit CLIP features), so that the
    batches may be computed by several ranks and reduced by one. Intra-cluster
    LPIPS needs all images in order: computed in the stream for one process,
    or, with ``lpips_images``, each batch's resized images are kept for
    rank 0 to cluster.
    """
    from .. import metrics as M

    def per_batch(fn):
        return lambda stream: [fn(source, adapted) for source, adapted in stream]

    wanted = settings.metrics
    consumers = {}
    if "is" in wanted:
        consumers["is"] = per_batch(lambda s, t: M.inception_probabilities(networks.inception, t, image_size=settings.is_size))
    if "sifid" in wanted:
        stats = M.reference_statistics(networks.sifid_stem, list(references), image_size=settings.sifid_size)
        consumers["sifid"] = per_batch(lambda s, t: M.sifid_values(networks.sifid_stem, t, stats, image_size=settings.sifid_size))
    if "scs" in wanted:
        consumers["scs"] = per_batch(lambda s, t: M.scs_values(networks.hed, s, t))
    if "id" in wanted:
        if settings.id_net == "arcface":
            consumers["id"] = per_batch(lambda s, t: M.id_values(networks.arcface, s, t))
        else:
            consumers["id"] = per_batch(lambda s, t: M.id_values(_on_device(networks.clip), s, t, device="cpu"))
    if "diversity" in wanted or "clip" in wanted:
        consumers["clip_features"] = per_batch(lambda s, t: M.unit_features(_on_device(networks.clip), t))
    if "diversity" in wanted:
        if lpips_images:
            from ..metrics.images import module_device, prepare

            device = module_device(networks.lpips)
            consumers["lpips_images"] = per_batch(lambda s, t: prepare(t, device, settings.lpips_size, antialias=True).cpu())
        else:
            consumers["lpips"] = lambda stream: intra_cluster_lpips(networks, settings, _adapted_only(stream), settings.lpips_size)
    return consumers


def intra_cluster_lpips(networks, settings, images, image_size):
    """The intra-cluster LPIPS result of ``images``, resized to ``image_size`` first (None: as they are)."""
    from .. import metrics as M

    return M.compute_intra_cluster_lpips(
        networks.lpips,
        images,
        num_clusters=settings.lpips_clusters,
        max_per_cluster=settings.lpips_per_cluster,
        image_size=image_size,
    )


def metrics_of(raw, networks, settings, *, target_text=None):
    """The flat metrics dict from every batch's results, in batch order (NaN as None: it is not JSON)."""
    from .. import metrics as M

    out = {}
    if "is" in raw:
        out["is"], out["is_std"] = M.inception_score(torch.cat(raw["is"]), splits=settings.is_splits)
    if "sifid" in raw:
        out.update({f"sifid_R{i + 1}": float(v) for i, v in enumerate(np.concatenate(raw["sifid"]).mean(axis=0))})
    for name in ("scs", "id"):
        if name in raw:
            out[name] = torch.cat(raw[name]).mean().item()
    if "lpips_images" in raw:  # several ranks: clustered here, over the batches in order
        raw["lpips"] = intra_cluster_lpips(networks, settings, raw["lpips_images"], None)  # resized by each rank
    if "lpips" in raw:
        out["lpips_diversity"] = raw["lpips"].mean
        out["lpips_diversity_std"] = raw["lpips"].std
        out["lpips_cluster_sizes"] = list(raw["lpips"].cluster_sizes)
    if "clip_features" in raw:
        features = torch.cat(raw["clip_features"])  # (N, D) unit, float64
        if "diversity" in settings.metrics:
            out["clip_diversity"] = M.diversity_from_sum(features.sum(dim=0), features.shape[0])
        if "clip" in settings.metrics:
            with torch.no_grad():
                text = F.normalize(networks.clip.encode_text([target_text])[0].double().cpu(), dim=0)
            out["clip_score"] = (features @ text).mean().item()
    order = ["is", "is_std"] + [k for k in out if k.startswith("sifid_")] + ["scs", "id", "lpips_diversity", "lpips_diversity_std", "lpips_cluster_sizes", "clip_diversity", "clip_score"]
    return {k: None if isinstance(out[k], float) and not math.isfinite(out[k]) else out[k] for k in order if k in out}


def evaluate_stream(pairs, networks, settings, *, n_batches, world=SINGLE, references=None, target_text=None, progress=True, desc="evaluate"):
    """The requested metrics of a stream of ``(source or None, adapted)`` image batches, in one pass.

    Args:
        pairs: Iterable of this rank's ``(source (B, 3, H, W) or None,
            adapted (B, 3, H, W))`` batches in [-1, 1], produced lazily.
        networks: :class:`MetricNetworks` holding at least ``required_networks(settings)``.
        settings: :class:`EvalSettings`.
        n_batches: Number of batches of all ranks together.
        world: The ranks sharing the batches (:mod:`ipl.distributed`); each
            rank computes its batches' per-image values and rank 0 reduces
            them in batch order, as one process would.
        references: SIFID reference images, a list of ``(1, 3, H, W)`` in
            [-1, 1]; the results are named R1, R2, ... in this order.
        target_text: Text of the CLIP score.

    Returns:
        Flat dict: ``is``, ``is_std``, ``sifid_R1``..., ``scs``, ``id``,
        ``lpips_diversity``, ``lpips_diversity_std``, ``lpips_cluster_sizes``,
        ``clip_diversity``, ``clip_score`` (those requested); None on ranks
        other than 0.
    """
    from ..runtime import progress_bar

    consumers = metric_consumers(networks, settings, references=references, lpips_images=world.active)
    mine = len(world.items(n_batches))
    raw = fan_out(progress_bar(pairs, desc=desc, total=mine, unit="batch", disable=not progress), consumers)
    if world.active:
        names = sorted(raw)
        gathered = gather_items(world, list(zip(*(raw[k] for k in names))), n_batches)
        if gathered is None:
            return None
        raw = {k: [batch[i] for batch in gathered] for i, k in enumerate(names)}
    return metrics_of(raw, networks, settings, target_text=target_text)


def evaluate_generators(adapted, networks, settings, *, source=None, truncation_latent=None, references=None, target_text=None, world=SINGLE, progress=True, desc="evaluate"):
    """Compute the requested metrics of an adapted generator in one rendering pass.

    Args:
        adapted: The adapted generator (any device).
        networks: :class:`MetricNetworks` holding at least
            ``required_networks(settings)``.
        settings: :class:`EvalSettings` (its seeds name the images).
        source: The source generator; needed for SCS and ID.
        truncation_latent: Truncation centre ``(1, style_dim)`` shared by both.
        references, target_text, world: See :func:`evaluate_stream`.

    Returns:
        The metrics dict of :func:`evaluate_stream`.
    """
    paired = any(m in settings.metrics for m in PAIRED_METRICS)
    check_request(networks, settings, paired=source is not None or not paired, references=references, target_text=target_text)
    pairs = image_pairs(
        adapted,
        settings.seeds,
        source=source if paired else None,
        batch=settings.batch,
        truncation=settings.truncation,
        truncation_latent=truncation_latent,
        quantize=settings.quantize,
        world=world,
    )
    n_batches = math.ceil(settings.n / settings.batch)
    return evaluate_stream(
        pairs, networks, settings, n_batches=n_batches, world=world, references=references, target_text=target_text,
        progress=progress and world.is_main, desc=desc,
    )  # fmt: skip
