"""Diff-AE as the stages see it: real images, their z_sem codes, and DiffusionCLIP's fine-tuning.

Diff-IPL (the paper's Sec. 4.3) is DiffusionCLIP with its DDIM model
replaced by a diffusion autoencoder and NADA's single text direction by
IPL's image-specific ones:

* the latent mapper reads z_sem = Enc(x0), the semantic code of a real
  training image (StyleGAN2's w), and Stage 1's pairs are
  (z_sem, E_I(x0)) of those images;
* every training image is encoded and inverted once, deterministically, to
  x_{t_0} in ``n_inv_step`` DDIM steps conditioned on its z_sem, and kept
  on disk (:class:`InversionCache`), the counterpart of the source-feature
  bank;
* Stage 2 runs ``n_train_step`` DDIM steps from x_{t_0} through the
  trainable UNet, with gradients, and minimises DiffusionCLIP's loss
  ``clip_w * -log((2 - L_dir) / 2) + l1_w * |x0 - x| + id_w * L_id``, where
  L_dir compares the image direction E_I(x) - E_I(x0) with each image's
  text direction. Adam and StepLR as in DiffusionCLIP's ``clip_finetune``;
  its ``clip_finetune_eff`` (a loss and an optimiser step per DDIM step) is
  ``diffusionclip.per_step``.
"""

import copy
import hashlib
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...images import IMAGE_SUFFIXES, UnreadableImageError, check_image, image_tensor, list_images
from ...method.losses import direction_loss
from ...runtime import atomic_save, progress_bar
from ..base import Batch
from .checkpoint import build_autoencoder, load_autoencoder, save_autoencoder

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def model_fingerprint(gcfg, dcfg, model):
    """What identifies the source autoencoder's weights (file hash, or random architecture and seed)."""
    if gcfg.checkpoint == "random":
        return "random:" + json.dumps({"arch": dcfg.arch, "seed": gcfg.seed}, sort_keys=True)
    from stylegan2.utils import sha256_file

    return "sha256:" + sha256_file(model.checkpoint_info["path"])


def load_source_autoencoder(gcfg, dcfg, device, progress=True):
    """The frozen source autoencoder of a run: ``(model, fingerprint)``."""
    if gcfg.checkpoint == "random":
        model = build_autoencoder(dcfg.arch, seed=gcfg.seed, device=device)
    else:
        model = load_autoencoder(gcfg.checkpoint, device, download=True, progress=progress)
    model.use_channels_last(torch.device(device).type == "cpu")
    return model.eval().requires_grad_(False), model_fingerprint(gcfg, dcfg, model)


def training_images(folder, n, what="data.images"):
    """The first ``n`` image files of ``folder`` in name order; a clear error if there are fewer."""
    from ...config import ConfigError

    if not folder:
        raise ConfigError(f"{what} is empty: a Diff-IPL run trains on real images; set it to a folder of them (--set {what}=DIR)")
    files = list_images(folder, what)
    if len(files) < n:
        raise ConfigError(
            f"{what}: {folder} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}), fewer than the {n} the config asks for: "
            f"add images, or lower data.n_images (and data.n_train, stage1.batch) to at most {len(files)}"
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
    """Each image's x0, z_sem = Enc(x0) and x_{t_0}, computed once and kept on disk.

    An entry is keyed by everything it depends on: the source model's
    fingerprint, the image file's content and the resolution (for x0 and
    z_sem), plus ``t_0`` and ``n_inv_step`` (for x_{t_0}). Entries are
    written atomically, one file per image and kind, so an interrupted
    build resumes and runs of other target domains reuse them.

    Args:
        model: The frozen source :class:`~.autoencoder.DiffusionAutoencoder`.
        fingerprint: Its :func:`model_fingerprint`.
        folder: Cache folder (``<cache_dir>/diffae``).
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
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # the loader raises many types for damaged files
            entry = None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or not all(k in entry for k in keys):
            # A damaged or foreign cache entry is recomputed, not trusted.
            log.warning("inversion cache entry %s is damaged or out of date; computing it again", path)
            return None
        return entry

    @torch.no_grad()
    def encoded(self, files, progress=True):
        """``(x0 (N, 3, S, S), z_sem (N, style_ch))`` on the CPU, x0 in [-1, 1]."""
        x0s, codes = [], []
        for path in progress_bar(files, desc="encode images", unit="img", disable=not progress):
            entry_path = self._path(path, "encoded")
            entry = self._load(entry_path, ("x0", "z_sem"))
            if entry is None:
                x0 = image_tensor(path, self.model.img_size)  # (1, 3, S, S)
                z_sem = self.model.encode(x0.to(self.device)).cpu()
                entry = {"format": CACHE_FORMAT, "x0": x0, "z_sem": z_sem, "image": str(path)}
                atomic_save(entry, entry_path)
            x0s.append(entry["x0"])
            codes.append(entry["z_sem"])
        return torch.cat(x0s), torch.cat(codes)

    @torch.no_grad()
    def inverted(self, files, t_0, n_inv_step, progress=True):
        """``(x0, z_sem, x_{t_0})`` of ``files`` on the CPU: DiffusionCLIP's deterministic inversion given z_sem."""
        x0, codes = self.encoded(files, progress=False)
        latents = []
        for i, path in enumerate(progress_bar(files, desc=f"invert to t_0={t_0}", unit="img", disable=not progress)):
            entry_path = self._path(path, "inverted", t=t_0, n=n_inv_step)
            entry = self._load(entry_path, ("x_t",))
            if entry is None:
                x_t = self.model.invert(x0[i : i + 1].to(self.device), codes[i : i + 1].to(self.device), t_0, n_inv_step).cpu()
                entry = {"format": CACHE_FORMAT, "x_t": x_t, "image": str(path)}
                atomic_save(entry, entry_path)
            latents.append(entry["x_t"])
        return x0, codes, torch.cat(latents)


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


class DiffAEBackend:
    """A pretrained (or seeded random) diffusion autoencoder and a folder of real images.

    Args:
        config: The run's :class:`ipl.config.Config` (``generator``, ``diffae``,
            ``data``, ``diffusionclip``).
        device: Where the models run.
    """

    kind = "diffae"

    def __init__(self, config, device, progress=True):
        self.device = torch.device(device)
        # The data first: a missing folder stops the run before any download.
        self.files = training_images(config.data.images, config.data.n_images)
        self.test_files = training_images(config.data.test_images, config.data.n_test, "data.test_images") if config.data.test_images else []
        self.model, self.fingerprint = load_source_autoencoder(config.generator, config.diffae, self.device, progress)
        self.code_dim = self.model.style_ch
        self.progress = progress
        t_0 = config.diffusionclip.t_0
        if t_0 >= self.model.T:
            from ...config import ConfigError

            raise ConfigError(f"diffusionclip.t_0: {t_0} must be below the model's T = {self.model.T}")

    def describe(self):
        m = self.model
        return f"img_size={m.img_size}, z_sem={m.style_ch}, T={m.T}, images={len(self.files)}"

    def cache(self, cache_dir):
        return InversionCache(self.model, self.fingerprint, Path(cache_dir) / "diffae")

    def stage1_pairs(self, config, clip_model, cache_dir, progress=True):
        x0, codes = self.cache(cache_dir).encoded(self.files, progress=progress)
        features = clip_features(clip_model, x0, antialias=config.clip.antialias)
        return ImagePairs(codes, features, config.stage1.batch, config.stage1.seed)

    def adaptation(self, config, clip_model, constants):
        return DiffAEAdaptation(self, config, clip_model)


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


class DiffAEAdaptation:
    """Stage 2 on Diff-AE: DiffusionCLIP's fine-tuning of the UNet from cached x_{t_0} latents.

    Step ``s`` takes the ``s``-th batch of the first ``data.n_train``
    images, in order, every epoch (DiffusionCLIP iterates its precomputed
    pairs so); StepLR multiplies the learning rate by ``lr_gamma`` after
    every epoch. The semantic encoder is not trained: the codes come from
    the source model and stay fixed.
    """

    checkpoint_key = "model"
    adapted_file = "autoencoder.pt"

    def __init__(self, backend, config, clip_model):
        from ...config import to_dict

        self.config, self.clip = config, clip_model
        dc = self.settings = config.diffusionclip
        self.device = backend.device
        self.meta = {"kind": "diffae", "source_class": config.prompt.source_class, "target_class": config.prompt.target_class}
        self.run_config = to_dict(config)
        self.source_fingerprint = backend.fingerprint

        # Data: every training image's x0, z_sem and x_{t_0} (cached on disk).
        cache = backend.cache(config_cache_dir(config))
        n_train = config.data.n_train
        x0, codes, x_t = cache.inverted(backend.files[:n_train], dc.t_0, dc.n_inv_step, progress=backend.progress)
        self.data = {"x0": x0.to(self.device), "codes": codes.to(self.device), "x_t": x_t.to(self.device)}
        self.steps_per_epoch = math.ceil(n_train / dc.batch)
        self.iterations = dc.epochs * self.steps_per_epoch
        sample_files = (backend.test_files or backend.files)[: config.data.n_test]
        self.samples = cache.inverted(sample_files, dc.t_0, dc.n_inv_step, progress=backend.progress)
        self._source_row = None

        # The frozen source and its trainable copy; DiffusionCLIP trains in train() mode.
        self.source = backend.model
        # NCHW for the trainable copy: channels-last speeds up the CPU forward
        # but doubles the backward's time there (benchmarks/RESULTS.md).
        self.trainable = copy.deepcopy(self.source).use_channels_last(False)
        self.trainable.net.requires_grad_(False)
        self.trained = [p for name, p in self.trainable.net.named_parameters() if not name.startswith("encoder.")]
        for p in self.trained:
            p.requires_grad_(True)
        self.trainable.train(dc.dropout)

        # Adam as DiffusionCLIP's; the fused kernel updates every tensor in one pass, without
        # the foreach implementation's temporaries the size of the whole UNet.
        self.optimizer = torch.optim.Adam(self.trained, lr=dc.lr, weight_decay=0, fused=True)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=dc.lr_gamma)
        self.identity = load_identity(self.device) if dc.id_loss_w else None

    def batch(self, step):
        i = step % self.steps_per_epoch
        index = torch.arange(i * self.settings.batch, min((i + 1) * self.settings.batch, len(self.data["codes"])))
        return Batch(self.data["codes"][index], {"x0": self.data["x0"][index], "x_t": self.data["x_t"][index]})

    def select_trainable(self, step):
        return None  # the whole UNet trains

    def source_images(self, part):
        return part.data["x0"]  # DiffusionCLIP's direction starts at the real image

    def trainable_images(self, part):
        dc = self.settings
        if not dc.per_step:
            yield self.trainable.generate(part.data["x_t"], part.codes, dc.t_0, dc.n_train_step, eta=dc.eta, checkpoint=dc.grad_checkpoint)
            return
        # clip_finetune_eff: each step's x0 prediction is a loss of its own;
        # after_backward steps the optimiser before the next DDIM step.
        for out in self.trainable.generate_steps(part.data["x_t"], part.codes, dc.t_0, dc.n_train_step, eta=dc.eta, detach=True):
            yield out.x0

    def losses(self, source_features, target_features, text_direction, source_images, target_images):
        dc = self.settings
        return diffusionclip_losses(
            source_features, target_features, text_direction, source_images, target_images,
            clip_w=dc.clip_loss_w, l1_w=dc.l1_loss_w, id_w=dc.id_loss_w, identity=self.identity,
        )

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
    def render(self, model, x_t, codes):
        """Images from x_{t_0} in ``n_test_step`` steps, one at a time (eval mode, as DiffusionCLIP's test)."""
        dc = self.settings
        was_training = model.training
        model.eval()
        out = [model.generate(x_t[i : i + 1].to(self.device), codes[i : i + 1].to(self.device), dc.t_0, dc.n_test_step, eta=dc.eta).cpu() for i in range(len(x_t))]
        model.train(was_training)
        return torch.cat(out)

    def sample_rows(self):
        """Input images, the source model's reconstructions and the adapted renders of the same x_{t_0}."""
        x0, codes, x_t = self.samples
        if self._source_row is None:
            self._source_row = self.render(self.source, x_t, codes)
        return [x0, self._source_row, self.render(self.trainable, x_t, codes)]

    def save_adapted(self, path, step):
        save_autoencoder(path, self.trainable, config=self.run_config, step=step, meta={**self.meta, "step": step}, source=self.source_fingerprint)


def config_cache_dir(config):
    from ...config import resolve

    return resolve(config).cache_dir


def load_identity(device):
    """ArcFace IR-SE50 embeddings of face images in [-1, 1] (the network of DiffusionCLIP's IDLoss)."""
    from ...metrics.arcface import load_arcface

    return load_arcface(device=device).requires_grad_(False)
