"""Photo -> W+ encoders: e4e (one pass) and ReStyle-e4e (iterative refinement).

:func:`load_encoder` reads the authors' checkpoints (``e4e_ffhq_encode.pt``,
``restyle_e4e_ffhq_encode.pt``). Such a file holds

* ``state_dict``: the encoder under ``encoder.*`` and the StyleGAN2 it was
  trained with under ``decoder.*`` (in the reference port's names, so it
  loads strictly into :class:`stylegan2.Generator`);
* ``latent_avg``: the mean W, repeated over the W+ slots ``(n_styles, 512)``;
* ``opts``: the training options as a dict. ``encoder_type`` names the
  encoder (``Encoder4Editing`` for e4e, ``ProgressiveBackboneEncoder`` for
  ReStyle-e4e); the decoder resolution is ``stylegan_size`` (e4e) or
  ``output_size`` (ReStyle), and ``n_styles = 2 log2(resolution) - 2``;
  ReStyle's ``input_nc`` is 6; e4e adds ``latent_avg`` to its output when
  ``start_from_latent_avg`` is set (as in the released file).

Inference, as the authors run it (e4e ``scripts/inference.py``, ReStyle
``utils/inference_utils.run_on_batch``): images resized to 256x256, mapped
to [-1, 1] (mean = std = 0.5), see :func:`ipl.inversion.images.encoder_input`.

* e4e: ``W+ = encoder(x) + latent_avg``.
* ReStyle, ``K`` iterations (5 by default, the authors' ``n_iters_per_batch``
  at inference): the first input is the image next to the average image
  (the decoder's rendering of ``latent_avg``, pooled to 256); each iteration
  adds the encoder's output to the previous W+ (the first to
  ``latent_avg``), renders it with the decoder (``randomize_noise=False``),
  and pools the rendering to 256x256 (adaptive average pooling) to be the
  next reconstruction input.

W+ codes describe images of the encoder's own decoder; rendered by another
generator they mean something else. :func:`check_decoder` compares the
decoder with the generator the codes will be rendered by.
"""

import argparse
import logging
import math
import pickle
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ipl.metrics.weights import load_strict
from stylegan2.checkpoint import (
    CheckpointError,
    build_generator,
    infer_generator_config,
    require_file,
)
from stylegan2.utils import refused_global, safe_globals, torch_file_problem

from .networks import ENCODER_CLASSES, infer_encoder_config

log = logging.getLogger(__name__)

ENCODER_SIZE = 256  # the encoders' input resolution (and ReStyle's feedback resolution)
RESTYLE_ITERATIONS = 5  # ReStyle's n_iters_per_batch at inference
E4E_MEAN_LATENT_SAMPLES = 10_000  # pSp/e4e's mean_latent(10000) when a file has no latent_avg

# encoder_type -> (our name for it, the option holding the decoder resolution)
SUPPORTED = {
    "Encoder4Editing": ("e4e", "stylegan_size"),
    "ProgressiveBackboneEncoder": ("restyle", "output_size"),
}
# Encoder types of the same code bases that these loaders do not build.
OTHER_TYPES = ("GradualStyleEncoder", "SingleStyleCodeEncoder", "BackboneEncoder", "ResNetGradualStyleEncoder",
               "ResNetBackboneEncoder", "ResNetProgressiveBackboneEncoder")  # fmt: skip


@dataclass
class InversionStep:
    """One encoder pass.

    Attributes:
        wplus: ``(B, n_styles, style_dim)`` the code after this pass.
        image: ``(B, 3, S, S)`` the decoder's rendering of it at its full
            resolution ``S`` (``randomize_noise=False``), roughly in [-1, 1].
    """

    wplus: torch.Tensor
    image: torch.Tensor


class StyleEncoder(nn.Module):
    """An image encoder into the W+ space of the StyleGAN2 it was trained with.

    Attributes:
        encoder: The encoder network.
        decoder: Its StyleGAN2 (:class:`stylegan2.Generator`), frozen.
        latent_avg: ``(n_styles, style_dim)`` buffer.
        kind: ``"e4e"`` or ``"restyle"``.
        opts: The checkpoint's options (a dict).
        path: The checkpoint file.
    """

    kind = None
    default_iterations = 1

    def __init__(self, encoder, decoder, latent_avg, opts=None, path=None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("latent_avg", latent_avg)
        self.opts = dict(opts or {})
        self.path = None if path is None else str(path)
        self.eval().requires_grad_(False)

    @property
    def n_styles(self):
        return self.decoder.n_latent

    @property
    def describe(self):
        """``"restyle encoder (FILE)"``: how messages name this encoder."""
        return f"{self.kind} encoder" + (f" ({self.path})" if self.path else "")

    def render(self, wplus):
        """``(B, n_styles, D)`` -> ``(B, 3, S, S)``: the decoder's image, fixed noise buffers."""
        image, _ = self.decoder([wplus], input_is_latent=True, randomize_noise=False)
        return image

    @torch.no_grad()
    def invert(self, images, iterations=None):
        """W+ codes of aligned face images.

        Args:
            images: ``(B, 3, 256, 256)`` in [-1, 1], prepared as the authors'
                inference transform (:func:`ipl.inversion.images.encoder_input`).
            iterations: Encoder passes (ReStyle; default 5). e4e is a single
                pass: ``None`` or 1.

        Returns:
            ``(B, n_styles, style_dim)`` codes for :attr:`decoder`, on the
            encoder's device.
        """
        return self._run(images, iterations, keep_images=False)[-1].wplus

    @torch.no_grad()
    def invert_steps(self, images, iterations=None):
        """Like :meth:`invert`, keeping every pass: a list of :class:`InversionStep`."""
        return self._run(images, iterations, keep_images=True)

    def _run(self, images, iterations, keep_images):
        raise NotImplementedError

    def _prepare(self, images):
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (ENCODER_SIZE, ENCODER_SIZE):
            raise ValueError(
                f"the {self.kind} encoder takes (B, 3, {ENCODER_SIZE}, {ENCODER_SIZE}) images in [-1, 1], got "
                f"{tuple(images.shape)}; prepare photos with ipl.inversion.images.encoder_input"
            )
        return images.to(self.latent_avg.device, torch.float32)


class E4EEncoder(StyleEncoder):
    """e4e: ``W+ = encoder(x) (+ latent_avg)`` in one pass."""

    kind = "e4e"

    def __init__(self, encoder, decoder, latent_avg, add_latent_avg=True, opts=None, path=None):
        super().__init__(encoder, decoder, latent_avg, opts, path)
        self.add_latent_avg = add_latent_avg

    def _run(self, images, iterations, keep_images):
        if iterations not in (None, 1):
            raise ValueError(f"e4e encodes in a single pass; iterations must be 1 (or None), got {iterations}")
        x = self._prepare(images)
        wplus = self.encoder(x)  # (B, n_styles, D)
        if self.add_latent_avg:
            wplus = wplus + self.latent_avg
        return [InversionStep(wplus, self.render(wplus) if keep_images else None)]


class ReStyleEncoder(StyleEncoder):
    """ReStyle-e4e: iterative residual refinement of W+ against the decoder's reconstruction."""

    kind = "restyle"
    default_iterations = RESTYLE_ITERATIONS

    def __init__(self, encoder, decoder, latent_avg, opts=None, path=None):
        super().__init__(encoder, decoder, latent_avg, opts, path)
        self._average_image = None

    def average_image(self):
        """``(1, 3, 256, 256)``: the decoder's image of ``latent_avg``, pooled to the encoder size."""
        cached = self._average_image
        if cached is None or cached.device != self.latent_avg.device:
            with torch.no_grad():
                image = self.render(self.latent_avg[None])  # (1, 3, S, S)
            cached = self._average_image = F.adaptive_avg_pool2d(image, ENCODER_SIZE).float()
        return cached

    def _run(self, images, iterations, keep_images):
        iterations = RESTYLE_ITERATIONS if iterations is None else int(iterations)
        if iterations < 1:
            raise ValueError(f"ReStyle needs at least one iteration, got {iterations}")
        x = self._prepare(images)
        reconstruction = self.average_image().expand(x.shape[0], -1, -1, -1)  # (B, 3, 256, 256)
        wplus, steps = self.latent_avg[None], []  # the first offset is taken from latent_avg
        for k in range(iterations):
            wplus = wplus + self.encoder(torch.cat([x, reconstruction], dim=1))  # (B, n_styles, D)
            last = k == iterations - 1
            # The last rendering only serves to look at, so `invert` skips it.
            image = self.render(wplus) if keep_images or not last else None
            steps.append(InversionStep(wplus, image if keep_images else None))
            if not last:
                reconstruction = F.adaptive_avg_pool2d(image, ENCODER_SIZE)  # (B, 3, 256, 256)
        return steps


# ----------------------------------------------------------------------------
# Reading a checkpoint


ENCODER_REMEDY = (
    "The encoders are the authors' e4e_ffhq_encode.pt and restyle_e4e_ffhq_encode.pt (Google Drive; see "
    "ipl.metrics.weights.WEIGHTS): leave out --encoder to fetch the default one, or download the file again"
)


def read_encoder_file(path):
    """The loaded contents of an encoder checkpoint, without running code from it.

    ``torch.load(weights_only=True)`` first (``argparse.Namespace`` allowed,
    the reference code's option bag). A file whose pickle names other Python
    objects is read by :func:`ipl.safe_load.load_untrusted`, which turns them
    into inert placeholders.

    Raises:
        CheckpointError: missing, empty or unreadable file.
    """
    what = "e4e / ReStyle encoder checkpoint"
    path = require_file(path, what, ENCODER_REMEDY)
    try:
        with safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = refused_global(error)
        if not unsafe:
            raise CheckpointError(f"{path} is not a readable {what} ({torch_file_problem(path, error)}). {ENCODER_REMEDY}") from None
    except Exception as error:  # the loader raises many types for damaged files
        raise CheckpointError(f"{path} is not a readable {what} ({torch_file_problem(path, error)}). {ENCODER_REMEDY}") from None
    try:
        from ipl.safe_load import SafeLoadError, load_untrusted
    except ImportError:
        raise CheckpointError(
            f"{path}: its pickle references {unsafe}, which the tensors-only loader refuses, and "
            "ipl.safe_load (the code-free reader of such files) is not available"
        ) from None
    log.info("%s references %s; reading it with ipl.safe_load.load_untrusted (no code from the file runs)", path, unsafe)
    try:
        return load_untrusted(path)
    except SafeLoadError as error:
        raise CheckpointError(f"{error}. {ENCODER_REMEDY}") from None


def _options(checkpoint, path):
    opts = checkpoint.get("opts") if isinstance(checkpoint, dict) else None
    if opts is not None and not isinstance(opts, dict):
        # An option object (a Namespace), or the inert placeholder that
        # ipl.safe_load leaves for one: its fields are the pickled state.
        state = getattr(opts, "state", None)
        opts = state if isinstance(state, dict) else getattr(opts, "__dict__", None)
    if not isinstance(opts, dict) or "encoder_type" not in opts:
        from ipl.runtime import describe_contents

        from ipl.safe_load import placeholder_names

        found = "options without an 'encoder_type'" if isinstance(checkpoint, dict) and "opts" in checkpoint else describe_contents(checkpoint)
        objects = placeholder_names(checkpoint)
        if objects:  # what ipl.safe_load read as inert placeholders
            found += f" and pickled objects of {', '.join(objects[:3])} (read as inert placeholders: nothing from the file ran)"
        raise CheckpointError(
            f"{path} is not an e4e / ReStyle checkpoint: it holds {found}, and no 'opts' with an 'encoder_type'. {ENCODER_REMEDY}"
        )
    return opts


def _prefixed(state_dict, prefix):
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _latent_avg_rows(latent_avg, n_styles, style_dim, path):
    """``latent_avg`` as ``(n_styles, style_dim)`` (files hold it per slot or once)."""
    if latent_avg.numel() == style_dim:
        return latent_avg.reshape(1, style_dim).float().repeat(n_styles, 1)
    if tuple(latent_avg.shape) == (n_styles, style_dim):
        return latent_avg.float().clone()
    raise CheckpointError(
        f"{path}: 'latent_avg' has shape {tuple(latent_avg.shape)}, expected ({n_styles}, {style_dim}) or ({style_dim},)"
    )


def load_encoder(path, device="cpu"):
    """An e4e or ReStyle-e4e encoder from the authors' checkpoint, with its decoder.

    The encoder type comes from ``opts["encoder_type"]``; the architecture
    (backbone widths, number of W+ slots, the decoder) from the tensors,
    checked against the options. Encoder and decoder load strictly (the
    ReStyle code loads its encoder non-strictly; unknown encoder keys are
    only logged here for that reason, missing ones are an error).

    Args:
        path: ``e4e_ffhq_encode.pt`` / ``restyle_e4e_ffhq_encode.pt`` or a
            file of the same layout.
        device: Where the networks go.

    Returns:
        :class:`E4EEncoder` or :class:`ReStyleEncoder` in eval mode, frozen;
        ``invert(images (B, 3, 256, 256), iterations=K) -> (B, n_styles, 512)``.

    Raises:
        CheckpointError: unreadable file, unsupported encoder type, or
            tensors that do not fit the options.
    """
    checkpoint = read_encoder_file(path)
    opts = _options(checkpoint, path)
    encoder_type = opts["encoder_type"]
    if encoder_type not in SUPPORTED:
        other = " (a pSp / ResNet variant of the same code bases)" if encoder_type in OTHER_TYPES else ""
        raise CheckpointError(
            f"{path}: encoder_type {encoder_type!r}{other} is not supported; supported: Encoder4Editing (e4e, "
            "e4e_ffhq_encode.pt) and ProgressiveBackboneEncoder (ReStyle-e4e, restyle_e4e_ffhq_encode.pt)"
        )
    kind, size_option = SUPPORTED[encoder_type]
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is missing or is not a dict of tensors")

    # Decoder: the StyleGAN2 the codes belong to.
    size = int(opts.get(size_option, 1024))
    n_styles = 2 * int(math.log2(size)) - 2
    decoder_state = _prefixed(state, "decoder.")
    if not decoder_state:
        raise CheckpointError(f"{path}: no 'decoder.*' weights in its state_dict")
    decoder_config = infer_generator_config(decoder_state, hints={"size": size})
    if decoder_config["size"] != size:
        raise CheckpointError(
            f"{path}: opts say {size_option}={size}, but the decoder weights are a {decoder_config['size']} px generator"
        )
    decoder = build_generator(decoder_state, decoder_config, path=f"{path} (decoder.*)")

    # Encoder.
    encoder_state = _prefixed(state, "encoder.")
    try:
        config = infer_encoder_config(encoder_state)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    expected_channels = 6 if kind == "restyle" else 3
    for what, found, wanted in (
        ("W+ slots (style blocks)", config["n_styles"], int(opts.get("n_styles", n_styles))),
        ("style width", config["style_dim"], decoder.style_dim),
        ("input channels", config["input_channels"], int(opts.get("input_nc", expected_channels))),
        ("input channels", config["input_channels"], expected_channels),
    ):
        if found != wanted:
            raise CheckpointError(f"{path}: the {encoder_type} weights have {found} {what}, expected {wanted}")
    encoder = ENCODER_CLASSES[encoder_type](**config)
    if kind == "restyle":
        unexpected = sorted(set(encoder_state) - set(encoder.state_dict()))
        if unexpected:
            log.warning("%s: ignoring encoder tensors that ReStyle-e4e does not have: %s", path, ", ".join(unexpected[:5]))
            encoder_state = {k: v for k, v in encoder_state.items() if k not in unexpected}
    try:
        load_strict(encoder, encoder_state, f"{encoder_type} ({path})")
    except RuntimeError as error:
        raise CheckpointError(str(error)) from None

    # latent_avg.
    latent_avg = checkpoint.get("latent_avg")
    if latent_avg is not None and not torch.is_tensor(latent_avg):
        raise CheckpointError(f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor")
    if kind == "restyle":
        if latent_avg is None:
            raise CheckpointError(f"{path}: a ReStyle checkpoint must hold 'latent_avg' (its first iteration starts there)")
        latent_avg = _latent_avg_rows(latent_avg, n_styles, decoder.style_dim, path)
        model = ReStyleEncoder(encoder, decoder, latent_avg, opts, path)
    else:
        add = bool(opts.get("start_from_latent_avg", latent_avg is not None))
        if latent_avg is None:
            # pSp/e4e estimate it from 10,000 mapped samples; seeded here so it is reproducible.
            with torch.no_grad():
                z = torch.randn(E4E_MEAN_LATENT_SAMPLES, decoder.style_dim, generator=torch.Generator().manual_seed(0))
                latent_avg = decoder.style(z).mean(0)
        latent_avg = _latent_avg_rows(latent_avg, n_styles, decoder.style_dim, path)
        model = E4EEncoder(encoder, decoder, latent_avg, add_latent_avg=add, opts=opts, path=path)
    return model.to(device)


# ----------------------------------------------------------------------------
# Is the decoder the generator the codes will be rendered by?


@dataclass(frozen=True)
class DecoderCheck:
    """How an encoder's decoder compares with another generator.

    Attributes:
        architecture: Differences of the constructor settings (empty if equal).
        weights: Largest relative difference ``max|a - b| / max|a|`` over the
            tensors other than the noise buffers (``inf`` when the
            architectures differ).
        worst: The tensor with that difference.
        noise: The same over the fixed noise buffers ``noises.noise_i``,
            which change the fine details of a rendering, not its meaning.
        tolerance: The bound ``weights`` is held to.
    """

    architecture: tuple
    weights: float
    worst: Optional[str]
    noise: float
    tolerance: float

    @property
    def matches(self):
        return not self.architecture and self.weights <= self.tolerance


def _relative_difference(a, b):
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def _architecture_differences(decoder, generator):
    """What makes two generators different networks (resolution, W width, tensor shapes)."""
    a, b = decoder.config, generator.config
    differences = [f"{key}: {a[key]} in the decoder, {b[key]} in the generator" for key in ("size", "style_dim") if a[key] != b[key]]
    if differences:
        return tuple(differences)
    # Settings that build the same tensors (e.g. the channel multiplier below
    # 64 px) are the same network; compare what the weights hold.
    ours, theirs = decoder.state_dict(), generator.state_dict()
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours or key not in theirs:
            return (f"'{key}' only in the {'decoder' if key in ours else 'generator'}",)
        if ours[key].shape != theirs[key].shape:
            return (f"'{key}': {tuple(ours[key].shape)} in the decoder, {tuple(theirs[key].shape)} in the generator",)
    return ()


def compare_generators(decoder, generator, tolerance=1e-3):
    """:class:`DecoderCheck` of ``decoder`` against ``generator`` (both :class:`stylegan2.Generator`)."""
    architecture = _architecture_differences(decoder, generator)
    if architecture:
        return DecoderCheck(architecture, float("inf"), None, float("inf"), tolerance)
    ours, theirs = decoder.state_dict(), generator.state_dict()
    weights, worst, noise = 0.0, None, 0.0
    for key, value in ours.items():
        if not value.is_floating_point():
            continue
        difference = _relative_difference(value, theirs[key])
        if key.startswith("noises."):
            noise = max(noise, difference)
        elif difference > weights:
            weights, worst = difference, key
    return DecoderCheck((), weights, worst, noise, tolerance)


def check_decoder(encoder, generator, generator_name="the source generator", tolerance=1e-3):
    """Compare an encoder's decoder with the generator its codes will be rendered by; warn when they differ.

    Args:
        encoder: A :class:`StyleEncoder`.
        generator: The :class:`stylegan2.Generator` (e.g. the source of an
            adapted generator).
        generator_name: How the warning names it (a pretrained name or a path).
        tolerance: Largest relative weight difference taken as "the same
            network" (conversions between formats round at about 1e-7).

    Returns:
        :class:`DecoderCheck`. A mismatch is logged as a warning naming both.
    """
    result = compare_generators(encoder.decoder, generator, tolerance)
    if result.architecture:
        log.warning(
            "the %s was trained with a different StyleGAN2 than %s (%s): its W+ codes do not describe the photo "
            "in %s",
            encoder.describe, generator_name, "; ".join(result.architecture), generator_name,
        )
    elif result.weights > tolerance:
        log.warning(
            "the decoder of the %s differs from %s (relative weight difference %.3g at %s, tolerance %.1g): its W+ "
            "codes describe images of its own decoder, so renderings by %s will not reproduce the photo",
            encoder.describe, generator_name, result.weights, result.worst, tolerance, generator_name,
        )
    elif result.noise > tolerance:
        log.info(
            "the %s and %s share their weights but not their fixed noise buffers (relative difference %.3g): "
            "fine details of the renderings differ",
            encoder.describe, generator_name, result.noise,
        )
    return result
