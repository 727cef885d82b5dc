"""DiffusionCLIP's fine-tuning, shared by the diffusion backends (Diff-AE and the plain DDPM).

DiffusionCLIP (Kim et al. CVPR 2022, ``clip_finetune``) inverts every
training image deterministically to x_{t_0}, then fine-tunes the whole
diffusion network so that the images it generates from those latents in
``n_train_step`` DDIM steps move along a text direction in CLIP space.
Here the direction is NADA's (``prompt.scheme=manual``: Diff-CLIP on a DDPM,
Diff-CLIP+ on Diff-AE) or one per image from IPL's learned prompts.

A backend hands this module a :class:`DiffusionModel` (a network that
predicts noise, optionally conditioned on a code of the image, with its
cumulative alphas) and the codes its prompt model reads; the walks are
:mod:`ipl.diffusion`'s. Nothing below asks which backend it serves.

* :class:`InversionCache`: x0, the network's condition and x_{t_0} of each
  image, computed once and kept on disk;
* :class:`ImagePairs`: Stage 1's (code, CLIP feature) pairs of real images;
* :func:`diffusionclip_losses`: ``clip_w * -log((2 - L_dir) / 2) + l1_w *
  |x0 - x| + id_w * L_id``;
* :class:`DiffusionCLIPAdaptation`: Stage 2 (Adam, StepLR per pass, the
  per-step variant ``clip_finetune_eff``, resume, grids).
"""

import copy
import hashlib
import logging
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .. import diffusion
from ..images import IMAGE_SUFFIXES, UnreadableImageError, check_image, image_tensor, list_images
from ..method.losses import direction_loss
from ..runtime import atomic_save, progress_bar
from .base import Batch

log = logging.getLogger(__name__)

# 2: the network's condition is stored as "cond" (None for an unconditional model).
CACHE_FORMAT = 2


class DiffusionModel(Protocol):
    """A noise-predicting network with its schedule, as DiffusionCLIP's fine-tuning uses it."""

    img_size: int  # side of the square images
    T: int  # length of the diffusion process
    alphas_cumprod: np.ndarray  # (T,) float64
    hyper_parameters: dict  # what rebuilds the network (plain data)

    def condition(self, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """What the network is conditioned on for images x0 (Diff-AE: z_sem), or None."""

    def eps(self, x_t: torch.Tensor, t, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Noise prediction ``(B, 3, S, S)`` at original timesteps ``t``."""

    def trainable_parameters(self) -> list:
        """The parameters DiffusionCLIP fine-tunes."""

    def use_channels_last(self, enabled: bool = True):
        """Memory format of weights and activations; returns the model."""


def eps_fn(model, cond):
    """``eps_fn(x, t)`` of ``model`` conditioned on ``cond`` (None for an unconditional model)."""
    return lambda x, t: model.eps(x, t, cond)


def _rows(cond, index):
    return None if cond is None else cond[index]


# ----------------------------------------------------------------------------
# Images


# The config keys that count the images read from each folder.
_COUNT_KEYS = {"data.images": "data.n_images (and data.n_train, stage1.batch)", "data.test_images": "data.n_test"}


def training_images(folder, n, what="data.images"):
    """The first ``n`` image files of ``folder`` in name order; a clear error if there are fewer."""
    from ..config import ConfigError

    if not folder:
        raise ConfigError(f"{what} is empty: a diffusion run trains on real images; set it to a folder of them (--set {what}=DIR)")
    files = list_images(folder, what)
    if len(files) < n:
        raise ConfigError(
            f"{what}: {folder} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}), fewer than the {n} the config asks for: "
            f"add images, or lower {_COUNT_KEYS.get(what, 'the count')} to at most {len(files)}"
        )
    # Every image is opened now (headers and checksums only), so that a
    # damaged file stops the run before any model is downloaded or built.
    for path in files[:n]:
        try:
            check_image(path)
        except UnreadableImageError as e:
            raise UnreadableImageError(f"{what}: {e}; remove or replace the file") from None
    return files[:n]


class InversionCache:
    """Each image's x0, the network's condition and x_{t_0}, computed once and kept on disk.

    An entry is keyed by everything it depends on: the source model's
    fingerprint, the image file's content and the resolution (for x0 and
    the condition), plus ``t_0`` and ``n_inv_step`` (for x_{t_0}). Entries
    are written atomically, one file per image and kind, so an interrupted
    build resumes and runs of other target domains reuse them.

    Args:
        model: The frozen source :class:`DiffusionModel`.
        fingerprint: What identifies its weights (a file hash, or a random architecture and seed).
        folder: Cache folder (``<cache_dir>/<kind>``).
    """

    def __init__(self, model, fingerprint, folder):
        self.model, self.folder = model, Path(folder)
        self.model_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.device = next(model.parameters()).device

    def _path(self, image_file, kind, **fields):
        digest = hashlib.sha256(Path(image_file).read_bytes()).hexdigest()[:16]
        extra = "".join(f"-{k}{v}" for k, v in sorted(fields.items()))
        return self.folder / self.model_key / f"{digest}-{self.model.img_size}px-{kind}{extra}.pt"

    def _load(self, path, keys):
        """The entry at ``path`` if it holds what ``keys`` name, with the right shapes and finite
        values; None (after one warning naming the file and the problem) for anything else, which is
        then computed again: a damaged, foreign or non-finite entry never reaches training."""
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # the loader raises many types for damaged files
            entry = None
        problem = self._problem(entry, keys)
        if problem:
            log.warning("inversion cache entry %s: %s; computing it again", path, problem)
            return None
        return entry

    def _problem(self, entry, keys):
        """Why a loaded cache entry cannot be used, or None."""
        if not isinstance(entry, dict):
            return "unreadable or not a cache entry"
        if entry.get("format") != CACHE_FORMAT:
            return f"format {entry.get('format')!r}, not {CACHE_FORMAT} (written by another version)"
        image = (1, 3, self.model.img_size, self.model.img_size)
        for key in keys:
            if key not in entry:
                return f"no {key!r}"
            value = entry[key]
            if value is None and key == "cond":
                continue  # a model without a condition (the DDPM)
            if not torch.is_tensor(value) or not value.is_floating_point():
                return f"{key!r} is not a floating-point tensor"
            if (key in ("x0", "x_t") and tuple(value.shape) != image) or value.ndim < 1 or value.shape[0] != 1:
                return f"{key!r} has shape {tuple(value.shape)}, expected {image if key in ('x0', 'x_t') else '(1, ...)'}"
            if not torch.isfinite(value).all():
                return f"{key!r} holds non-finite values"
        return None

    @torch.no_grad()
    def encoded(self, files, progress=True):
        """``(x0 (N, 3, S, S), cond (N, ...) or None)`` on the CPU, x0 in [-1, 1]."""
        x0s, conds = [], []
        for path in progress_bar(files, desc="encode images", unit="img", disable=not progress):
            entry_path = self._path(path, "encoded")
            entry = self._load(entry_path, ("x0", "cond"))
            if entry is None:
                x0 = image_tensor(path, self.model.img_size)  # (1, 3, S, S)
                cond = self.model.condition(x0.to(self.device))
                entry = {"format": CACHE_FORMAT, "x0": x0, "cond": None if cond is None else cond.cpu(), "image": str(path)}
                atomic_save(entry, entry_path)
            x0s.append(entry["x0"])
            conds.append(entry["cond"])
        cond = None if any(c is None for c in conds) else torch.cat(conds)
        return torch.cat(x0s), cond

    @torch.no_grad()
    def inverted(self, files, t_0, n_inv_step, progress=True):
        """``(x0, cond, x_{t_0})`` of ``files`` on the CPU: DiffusionCLIP's deterministic inversion."""
        x0, cond = self.encoded(files, progress=False)
        latents = []
        for i, path in enumerate(progress_bar(files, desc=f"invert to t_0={t_0}", unit="img", disable=not progress)):
            entry_path = self._path(path, "inverted", t=t_0, n=n_inv_step)
            entry = self._load(entry_path, ("x_t",))
            if entry is None:
                c = None if cond is None else cond[i : i + 1].to(self.device)
                x_t = diffusion.partial_invert(eps_fn(self.model, c), x0[i : i + 1].to(self.device), self.model.alphas_cumprod, t_0, n_inv_step)
                entry = {"format": CACHE_FORMAT, "x_t": x_t.cpu(), "image": str(path)}
                atomic_save(entry, entry_path)
            latents.append(entry["x_t"])
        return x0, cond, torch.cat(latents)


class ImagePairs:
    """Stage-1 pairs of real images: each step, ``batch`` distinct images drawn from a seeded stream.

    Distinct within a batch because the contrastive loss takes image i's
    prompts as the positives of image i only.
    """

    def __init__(self, codes, features, batch, seed):
        if batch > codes.shape[0]:
            raise ValueError(f"a Stage-1 batch of {batch} distinct images needs at least {batch} images, got {codes.shape[0]}")
        self.codes, self.features, self.size = codes, features, batch
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, step, device):
        index = torch.randperm(self.codes.shape[0], generator=self.generator)[: self.size]
        return self.codes[index].to(device), self.features[index].to(device)

    def state(self):
        return {"images": self.generator.get_state()}

    def load_state(self, state):
        if "images" in state:
            self.generator.set_state(state["images"])


@torch.no_grad()
def clip_features(clip_model, images, chunk=8, antialias=False):
    """CLIP image features ``(N, D)`` of images ``(N, 3, S, S)`` in [-1, 1], ``chunk`` at a time."""
    device = clip_model.device
    return torch.cat([clip_model.encode_images(part.to(device), antialias=antialias).cpu() for part in images.split(chunk)])


class DiffusionBackend:
    """A pretrained (or seeded random) diffusion model and a folder of real images, as the stages see it.

    What the two diffusion families share; each subclass names its ``kind``
    and ``adapted_file`` and says how its source model is loaded
    (:meth:`load_source`), what the mapper reads of an image (:meth:`codes`,
    of width :meth:`code_width`) and how a fine-tuned model is saved
    (:meth:`save_model`).

    Args:
        config: The run's :class:`ipl.config.Config` (``generator``, the
            family's section, ``data``, ``diffusionclip``).
        device: Where the models run.
    """

    kind = ""
    adapted_file = ""

    def __init__(self, config, device, progress=True):
        self.device = torch.device(device)
        # The data first: a missing folder stops the run before any download.
        self.files = training_images(config.data.images, config.data.n_images)
        self.test_files = training_images(config.data.test_images, config.data.n_test, "data.test_images") if config.data.test_images else []
        self.model, self.fingerprint = self.load_source(config, self.device, progress)
        self.code_dim = self.code_width(config)
        self.progress = progress
        t_0 = config.diffusionclip.t_0
        if t_0 >= self.model.T:
            from ..config import ConfigError

            raise ConfigError(f"diffusionclip.t_0: {t_0} must be below the model's T = {self.model.T}")

    def load_source(self, config, device, progress):
        """The frozen source model and its fingerprint (what identifies its weights)."""
        raise NotImplementedError

    def code_width(self, config):
        """Width of the codes the mapper reads."""
        raise NotImplementedError

    def codes(self, x0, cond, features):
        """What the mapper reads of images x0 ``(N, 3, S, S)``, given their condition (or None) and CLIP features ``(N, D)``."""
        raise NotImplementedError

    def describe_codes(self):
        return f"codes={self.code_dim}"

    def describe(self):
        m = self.model
        return f"img_size={m.img_size}, {self.describe_codes()}, T={m.T}, images={len(self.files)}"

    def cache(self, cache_dir):
        return InversionCache(self.model, self.fingerprint, Path(cache_dir) / self.kind)

    def stage1_pairs(self, config, clip_model, cache_dir, progress=True):
        x0, cond = self.cache(cache_dir).encoded(self.files, progress=progress)
        features = clip_features(clip_model, x0, antialias=config.clip.antialias)
        return ImagePairs(self.codes(x0, cond, features), features, config.stage1.batch, config.stage1.seed)

    def source_features(self, config, clip_model, n):
        """CLIP features ``(n, D)`` of n source images (NADA's image direction): the first n training images."""
        return source_image_features(self, config, clip_model, n)

    def adaptation(self, config, clip_model, constants):
        return DiffusionCLIPAdaptation(self, config, clip_model)


def source_image_features(backend, config, clip_model, n):
    """CLIP features ``(n, D)`` of the first ``n`` training images: a diffusion run's source images are real ones."""
    from ..config import resolve

    files = backend.files[:n]
    if len(files) < n:
        from ..config import ConfigError

        raise ConfigError(f"prompt.img2img_batch: {n} source images are asked for, data.n_images gives {len(files)}; lower it or add images")
    x0, _ = backend.cache(resolve(config).cache_dir).encoded(files, progress=False)
    return clip_features(clip_model, x0, antialias=config.clip.antialias)


# ----------------------------------------------------------------------------
# The loss


def diffusionclip_losses(source_features, target_features, text_direction, x0, x, *, clip_w, l1_w, id_w, identity=None):
    """DiffusionCLIP's fine-tuning loss with a per-image (or shared) text direction.

    ``clip = -log((2 - L_dir) / 2)`` with L_dir = mean_i (1 - cos(dI_i, dT_i))
    (Eq. 7 + 9 of IPL on the images x0 and x), ``l1 = mean |x0 - x|``,
    ``id = mean_i (1 - <identity(x0)_i, identity(x)_i>)``.

    Args:
        source_features / target_features: CLIP features ``(b, D)`` of x0 and x.
        text_direction: ``(b, D)`` or ``(D,)``.
        x0, x: Images ``(b, 3, S, S)`` in [-1, 1].
        identity: Unit-norm face embedding function (needed when ``id_w > 0``).
    """
    l_dir = direction_loss(source_features, target_features, text_direction)
    terms = {"clip": -torch.log((2 - l_dir) / 2)}
    total = clip_w * terms["clip"]
    if l1_w:
        terms["l1"] = F.l1_loss(x, x0)
        total = total + l1_w * terms["l1"]
    if id_w:
        with torch.no_grad():
            reference = identity(x0)
        terms["id"] = (1 - (identity(x) * reference).sum(-1)).mean()
        total = total + id_w * terms["id"]
    terms["total"] = total
    return terms


# ----------------------------------------------------------------------------
# Gradient checkpointing where the chain would not fit

# Share of the free memory the chain and the optimiser state may take: the
# backward's own temporaries (gradients of activations, CLIP's graph) and the
# allocator's slack come on top of the activations the forward keeps.
MEMORY_MARGIN = 0.7


def needs_checkpointing(step_bytes, n_steps, state_bytes, free_bytes, margin=MEMORY_MARGIN):
    """Whether the full backward must recompute each DDIM step's activations to fit in memory.

    Without checkpointing the backward keeps the activations of all
    ``n_steps`` network calls; with it, one call's at a time.

    Args:
        step_bytes: Activations one network call keeps for its backward (the batch's).
        n_steps: Network calls in the chain (``n_train_step``).
        state_bytes: Memory the fine-tuning has still to allocate besides
            (the trained weights' gradients and Adam's two moments).
        free_bytes: Memory free on the device now, or None where unknown (then: checkpoint).
    """
    if free_bytes is None:
        return True
    return n_steps * step_bytes + state_bytes > margin * free_bytes


def free_memory(device):
    """Bytes free for new tensors on ``device``: CUDA's free memory plus what PyTorch holds unused;
    on the CPU the kernel's ``MemAvailable``; None where neither is known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
        except OSError:
            return None
    return None


def saved_activation_bytes(model, x_t, t, cond):
    """Bytes of the tensors one network call ``model.eps(x_t, t, cond)`` keeps for its backward,
    counted during one forward on the actual device (the weights themselves not counted)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.eps(x_t, t, cond)
    return sum(storages.values())


# ----------------------------------------------------------------------------
# Stage 2


class DiffusionCLIPAdaptation:
    """Stage 2 on a diffusion model: DiffusionCLIP's fine-tuning from cached x_{t_0} latents.

    Step ``s`` takes the ``s``-th batch of ``diffusionclip.batch`` images
    of the training images, in order, every pass; a pass is ``data.n_train``
    full batches (DiffusionCLIP's ``n_train_img`` counts batches of its
    ``drop_last`` loader). StepLR multiplies the learning rate by
    ``lr_gamma`` after the last step of every pass. The network's condition
    (Diff-AE's z_sem) comes from the source model and stays fixed.

    Args:
        backend: The diffusion backend: ``kind``, ``model`` (the frozen
            source :class:`DiffusionModel`), ``fingerprint``, ``files``,
            ``test_files``, ``device``, ``progress``, ``cache(cache_dir)``,
            ``codes(x0, cond, clip_model, antialias)`` (what the prompt model
            reads), ``adapted_file`` and ``save_model(path, model, **extra)``.
        config: The run's :class:`ipl.config.Config`.
        clip_model: The run's frozen CLIP.
    """

    checkpoint_key = "model"
    chunk = 0  # one loss per batch: -log((2 - L) / 2) is not a mean over images

    def __init__(self, backend, config, clip_model):
        from ..config import resolve, to_dict

        self.config, self.clip, self.backend = config, clip_model, backend
        dc = self.settings = config.diffusionclip
        self.device = backend.device
        self.adapted_file = backend.adapted_file
        self.meta = {"kind": backend.kind, "source_class": config.prompt.source_class, "target_class": config.prompt.target_class}
        self.run_config = to_dict(config)
        self.source_fingerprint = backend.fingerprint

        # Data: x0, condition and x_{t_0} of every training image (cached on
        # disk), and the codes the prompt model reads.
        cache = backend.cache(resolve(config).cache_dir)
        self.steps_per_epoch = config.data.n_train
        files = backend.files[: self.steps_per_epoch * dc.batch]
        x0, cond, x_t = cache.inverted(files, dc.t_0, dc.n_inv_step, progress=backend.progress)
        codes = backend.codes(x0, cond, clip_features(clip_model, x0, antialias=config.clip.antialias))
        self.data = {"x0": x0.to(self.device), "x_t": x_t.to(self.device)}
        if cond is not None:
            self.data["cond"] = cond.to(self.device)
        self.codes = codes.to(self.device)
        self.iterations = dc.epochs * self.steps_per_epoch
        sample_files = (backend.test_files or backend.files)[: config.data.n_test]
        self.samples = cache.inverted(sample_files, dc.t_0, dc.n_inv_step, progress=backend.progress)
        self._source_row = None

        # The frozen source and its trainable copy. NCHW for the trainable
        # copy: channels-last speeds up the CPU forward but doubles the
        # backward's time there (benchmarks/RESULTS.md).
        self.source = backend.model
        self.trainable = copy.deepcopy(self.source).use_channels_last(False)
        self.trainable.requires_grad_(False)
        self.trained = list(self.trainable.trainable_parameters())
        for p in self.trained:
            p.requires_grad_(True)
        # DiffusionCLIP calls model.train(), but every model it fine-tunes
        # has dropout 0: its chain is deterministic. diffusionclip.dropout
        # switches a model's own dropout on.
        self.trainable.train(dc.dropout)

        # Adam as DiffusionCLIP's; the fused kernel updates every tensor in one pass, without
        # the foreach implementation's temporaries the size of the whole network.
        self.optimizer = torch.optim.Adam(self.trained, lr=dc.lr, weight_decay=0, fused=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=dc.lr_gamma)
        self.identity = load_identity(self.device) if dc.id_loss_w else None
        self.checkpoint = self._checkpointing()

    def _checkpointing(self):
        """``diffusionclip.checkpoint`` decided: ``auto`` measures one network call's activations
        and checkpoints only where the whole chain's would not fit the free memory."""
        dc = self.settings
        if dc.per_step:
            return False  # one call's graph at a time already
        if dc.checkpoint != "auto":
            return dc.checkpoint == "true"
        first = {k: v[: dc.batch] for k, v in self.data.items()}  # a batch of the size trained
        t = torch.full((dc.batch,), dc.t_0, dtype=torch.long, device=self.device)
        step = saved_activation_bytes(self.trainable, first["x_t"], t, first.get("cond"))
        state = 3 * sum(p.numel() * p.element_size() for p in self.trained)  # gradients, Adam's exp_avg and exp_avg_sq
        free = free_memory(self.device)
        decision = needs_checkpointing(step, dc.n_train_step, state, free)
        gib = 2.0**30
        room = "unknown free memory" if free is None else f"{MEMORY_MARGIN:g} x {free / gib:.1f} GiB free"
        log.info(
            "diffusionclip.checkpoint=auto: %d steps x %.2f GiB of activations + %.2f GiB of optimiser state against %s on %s: %s",
            dc.n_train_step, step / gib, state / gib, room, self.device.type,
            "gradient checkpointing" if decision else "no gradient checkpointing (the whole chain fits)",
        )  # fmt: skip
        return decision

    def batch(self, step):
        i = step % self.steps_per_epoch
        index = torch.arange(i * self.settings.batch, (i + 1) * self.settings.batch)
        return Batch(self.codes[index], {k: v[index] for k, v in self.data.items()})

    def select_trainable(self, step):
        return None  # the whole network trains

    def source_images(self, part):
        return part.data["x0"]  # DiffusionCLIP's direction starts at the real image

    def trainable_images(self, part):
        dc = self.settings
        cond = part.data.get("cond")
        ac = self.trainable.alphas_cumprod
        fn = eps_fn(self.trainable, cond)
        if not dc.per_step:
            yield diffusion.partial_generate(fn, part.data["x_t"], ac, dc.t_0, dc.n_train_step, eta=dc.eta, checkpoint=self.checkpoint)
            return
        # clip_finetune_eff: each step's x0 prediction is a loss of its own;
        # after_backward steps the optimiser before the next DDIM step.
        steps = diffusion.partial_generation_steps(ac, dc.t_0, dc.n_train_step)
        for out in diffusion.ddim_loop(fn, part.data["x_t"], steps, eta=dc.eta, detach=True):
            yield out.x0

    def losses(self, source_features, target_features, text_direction, source_images, target_images):
        dc = self.settings
        return diffusionclip_losses(
            source_features, target_features, text_direction, source_images, target_images,
            clip_w=dc.clip_loss_w, l1_w=dc.l1_loss_w, id_w=dc.id_loss_w, identity=self.identity,
        )  # fmt: skip

    def _optimizer_step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def after_backward(self):
        if self.settings.per_step:
            self._optimizer_step()

    def update(self, step):
        if not self.settings.per_step:
            self._optimizer_step()
        if (step + 1) % self.steps_per_epoch == 0:
            self.scheduler.step()  # DiffusionCLIP: after every pass over the training images

    def parameters(self):
        return self.trained

    def state_dict(self):
        return {
            "model": self.trainable.net.state_dict(),
            "hyper_parameters": self.trainable.hyper_parameters,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "meta": self.meta,
        }

    def load_state_dict(self, state):
        self.trainable.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    @torch.no_grad()
    def render(self, model, x_t, cond):
        """Images from x_{t_0} in ``n_test_step`` steps, one at a time (eval mode, as DiffusionCLIP's test)."""
        dc = self.settings
        was_training = model.training
        model.eval()
        out = []
        for i in range(len(x_t)):
            c = None if cond is None else cond[i : i + 1].to(self.device)
            out.append(diffusion.partial_generate(eps_fn(model, c), x_t[i : i + 1].to(self.device), model.alphas_cumprod, dc.t_0, dc.n_test_step, eta=dc.eta).cpu())
        model.train(was_training)
        return torch.cat(out)

    def sample_rows(self):
        """Input images, the source model's reconstructions and the adapted renders of the same x_{t_0}."""
        x0, cond, x_t = self.samples
        if self._source_row is None:
            self._source_row = self.render(self.source, x_t, cond)
        return [x0, self._source_row, self.render(self.trainable, x_t, cond)]

    def save_adapted(self, path, step):
        self.backend.save_model(path, self.trainable, config=self.run_config, step=step, meta={**self.meta, "step": step}, source=self.source_fingerprint)


def load_identity(device):
    """ArcFace IR-SE50 embeddings of face images (the network of DiffusionCLIP's IDLoss).

    As DiffusionCLIP's IDLoss, the images are not clamped to [-1, 1] before
    the face crop (the metric's preprocessing clamps).
    """
    from ..metrics.arcface import load_arcface

    extractor = load_arcface(device=device).requires_grad_(False)
    extractor.clamp = False
    return extractor
