"""Source-feature bank: ``(w, E_I(G_s(w)))`` pairs rendered once, reused by every run.

Stage 1 needs, per latent, only ``w`` and the CLIP image feature of the
source image ``G_s(w)``; neither depends on the target domain. Rendering them
is almost all of Stage 1's cost at 1024 px, so the bank renders the exact
latent stream a fresh run would draw (same seed, same per-step batches), once,
and caches it on disk under a key made of everything the pairs depend on. All
target domains of one source generator then share one bank, and each step
takes its batch from it without replacement, in order.
"""

import hashlib
import json
import logging
from pathlib import Path

import torch

from ...distributed import SINGLE, barrier, gather_items
from ...runtime import LatentSampler, atomic_save, progress_bar

log = logging.getLogger(__name__)

BANK_FORMAT = 1


@torch.no_grad()
def render_features(generator, clip_model, w, chunk, antialias=False):
    """CLIP image features ``(N, D)`` of ``G(w)``, rendered ``chunk`` images at a time.

    The images exist only one chunk at a time, so peak memory does not grow
    with N. Noise is drawn fresh (``randomize_noise=True``), as in training.
    """
    features = []
    for part in w.split(max(1, chunk)):
        images = generator([part], input_is_latent=True, randomize_noise=True)[0]
        features.append(clip_model.encode_images(images, antialias=antialias))
    return torch.cat(features)


def latents_to_w(generator, z, truncation=1.0, truncation_latent=None):
    """W codes of Z codes, truncated towards ``truncation_latent`` when < 1."""
    with torch.no_grad():
        w = generator.style(z)
        if truncation < 1:
            w = truncation_latent + truncation * (w - truncation_latent)
    return w


def bank_key(fields):
    """Short stable hash of the fields a bank depends on."""
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class SourceBank:
    """In-memory bank: ``w (N, style_dim)`` and ``features (N, D)`` on the CPU."""

    def __init__(self, fields, w, features):
        self.fields = fields
        self.w = w
        self.features = features

    def __len__(self):
        return self.w.shape[0]

    def batch(self, step, batch, device):
        """The pairs of training step ``step`` (the step-th block of ``batch``)."""
        lo, hi = step * batch, (step + 1) * batch
        if hi > len(self):
            raise IndexError(f"the bank holds {len(self)} pairs; step {step} needs pairs {lo}..{hi - 1}")
        return self.w[lo:hi].to(device), self.features[lo:hi].to(device)

    def state(self):
        return {"format": BANK_FORMAT, "fields": self.fields, "w": self.w, "features": self.features}


def load_bank(path, fields):
    """The bank at ``path`` if it was built for ``fields``, else ``None``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the loader raises many types for damaged files
        data = None
    if not isinstance(data, dict) or data.get("format") != BANK_FORMAT or not all(torch.is_tensor(data.get(k)) for k in ("w", "features")):
        # A damaged cache entry (an interrupted copy, a full disk) is rebuilt, not trusted.
        log.warning("source-feature bank %s is damaged or of another format; building it again", path)
        return None
    if data.get("fields") != fields:
        return None
    w, features = data["w"], data["features"]
    if w.ndim != 2 or features.ndim != 2 or len(w) != len(features) or not (w.is_floating_point() and features.is_floating_point()):
        problem = f"w {tuple(w.shape)} and features {tuple(features.shape)} are not one (N, D) row per pair"
    elif not (torch.isfinite(w).all() and torch.isfinite(features).all()):
        problem = "it holds non-finite values"
    else:
        return SourceBank(fields, w, features)
    log.warning("source-feature bank %s: %s; building it again", path, problem)
    return None


def build_bank(path, fields, generator, clip_model, steps, batch, seed, truncation=1.0, truncation_latent=None, chunk=8, antialias=False, save_every=32, progress=True, world=SINGLE):
    """Load the bank at ``path`` or render the missing pairs, saving as it goes.

    A bank of ``steps * batch`` pairs holds exactly the latents that a fresh
    Stage-1 run with this ``seed`` and ``batch`` draws, in order; a bank
    already holding more serves any shorter run, and an interrupted build
    resumes where its last save left it (saves every ``save_every`` steps).

    With several ranks (``world``, under torchrun), the steps of each round
    between saves go round-robin to the ranks and rank 0 assembles and saves
    them: every step is rendered as one process renders it (its latents from
    the one seeded stream, its noise from its own seed), so the file is the
    same. Every rank returns the bank.

    Returns:
        :class:`SourceBank` with at least ``steps * batch`` pairs.
    """
    device = next(generator.parameters()).device
    bank = load_bank(path, fields)
    have = len(bank) // batch if bank is not None else 0
    if have >= steps:
        return bank
    ws = [bank.w] if bank is not None else []
    feats = [bank.features] if bank is not None else []
    sampler = LatentSampler(seed, batch, generator.style_dim)
    for _ in range(have):  # skip what the bank already holds
        sampler()
    bar = progress_bar(total=steps * batch, initial=have * batch, desc="source-feature bank", unit="img", disable=not (progress and world.is_main))
    start = have
    while start < steps:
        stop = min((start // save_every + 1) * save_every, steps)  # the next save
        mine = []
        for i, step in enumerate(range(start, stop)):
            z = sampler()  # every rank walks the whole stream, renders its own steps
            if not world.owns(i):
                continue
            w = latents_to_w(generator, z.to(device), truncation, truncation_latent)
            # Seeded rendering noise per step: a bank is a function of its fields,
            # however often, on however many ranks and in however many sessions it is built.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + step)
                mine.append((w.cpu(), render_features(generator, clip_model, w, chunk, antialias).cpu()))
            bar.update(batch * world.size)
        rendered = gather_items(world, mine, stop - start)
        if world.is_main:
            ws += [w for w, _ in rendered]
            feats += [f for _, f in rendered]
            bank = SourceBank(fields, torch.cat(ws), torch.cat(feats))
            ws, feats = [bank.w], [bank.features]
            atomic_save(bank.state(), path)
        start = stop
    bar.close()
    if world.active:
        barrier(world)
        bank = load_bank(path, fields) if not world.is_main else bank
    return bank


def bank_fields(config, generator_info, clip_model):
    """Everything the (w, feature) pairs of a source-feature bank depend on."""
    from clip import available_models

    c1 = config.stage1
    return {
        "generator": generator_info["fingerprint"],
        # Random CLIPs are identified by their seed too.
        "clip": config.clip.model if config.clip.model in available_models() else f"{config.clip.model}@seed{config.clip.seed}",
        "clip_dtype": str(clip_model.dtype),
        "clip_resolution": clip_model.input_resolution,
        "antialias": config.clip.antialias,
        "truncation": c1.truncation,
        "seed": c1.seed,
        "batch": c1.batch,
    }


def stage1_bank_path(config, cache_dir, generator_info, clip_model):
    """Where the source-feature bank of a config is cached: ``(path, fields)``."""
    fields = bank_fields(config, generator_info, clip_model)
    return Path(cache_dir) / "banks" / f"bank-{bank_key(fields)}.pt", fields


def build_stage1_bank(config, cache_dir, generator, generator_info, clip_model, truncation_latent=None, progress=True, world=SINGLE):
    """Load or build the source-feature bank a Stage-1 run draws from (under ``cache_dir/banks``)."""
    path, fields = stage1_bank_path(config, cache_dir, generator_info, clip_model)
    return build_bank(
        path,
        fields,
        generator,
        clip_model,
        steps=config.stage1.iterations,
        batch=config.stage1.batch,
        seed=config.stage1.seed,
        truncation=config.stage1.truncation,
        truncation_latent=truncation_latent,
        chunk=config.generator.render_chunk,
        antialias=config.clip.antialias,
        progress=progress,
        world=world,
    )
