"""Translating real photos with an adapted generator.

For every photo: align the face (FFHQ recipe, unless the photos are already
aligned), invert it into the source model's latent space, render the code
with the source model (the reconstruction) and with the adapted one (the
translation), and write ``aligned input | source reconstruction | adapted``.

What a model family must provide is :class:`PhotoTranslator`; the loop
(:func:`translate_photos`) never asks which family it holds.
:func:`build_translator` picks the family from the adapted checkpoint
(:func:`checkpoint_kind`): StyleGAN2 (:class:`StyleGAN2Translator`:
ReStyle-e4e, e4e or NVIDIA's projection into W / W+) or a diffusion run
(:class:`DiffusionTranslator`: a Diff-IPL run's own semantic encoder and
DDIM inversion, or a DDPM run's DDIM inversion alone).

Outputs in ``outdir``: ``<name>.png`` (the three columns), ``<name>.pt``
(the codes, plain data: ``torch.load(weights_only=True)``), ``aligned/<name>.png``
(the aligned face, reusable with ``aligned=True``), ``grid.png`` (one row
per face) and ``translate.json`` (settings; per face done: how many faces
its photo had, which was used and its detection score; photos skipped).
``<name>`` is the photo's file stem, or ``<stem>_face<k>`` for face k of
dlib's detections when every face is translated.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ipl.backends import checkpoint_kind
from stylegan2.checkpoint import CheckpointError
from stylegan2.utils import atomic_save

from .align import FaceNotFoundError, LandmarkDetector, align_face, best_face
from .encoders import ENCODER_SIZE
from .images import (
    UnreadableImageError,
    center_square,
    encoder_input,
    load_photo,
    to_tensor,
)

log = logging.getLogger(__name__)

CODES_FORMAT = 1
INVERSIONS = ("restyle", "e4e", "project", "diffae", "ddpm")
# A diffusion run inverts with its own source model: its inversion is named after its kind.
DIFFUSION_KINDS = ("diffae", "ddpm")
DEFAULT_INVERSION = {"stylegan2": "restyle", "diffae": "diffae", "ddpm": "ddpm"}
DEFAULT_ENCODERS = {"restyle": "restyle_e4e_ffhq", "e4e": "e4e_ffhq"}  # keys of ipl.metrics.weights.WEIGHTS
GRID_CELL = 256  # largest cell of grid.png (the per-photo files keep the full resolution)


class PhotoTranslator(Protocol):
    """What translating photos needs from a model family."""

    kind: str  # e.g. "stylegan2"; stored in every codes file
    resolution: int  # side of the rendered images

    def invert(self, face) -> dict:
        """The codes of one aligned face (a ``PIL.Image``): plain data, tensors on the CPU."""

    def reconstruct(self, codes: dict) -> torch.Tensor:
        """``(1, 3, R, R)`` in [-1, 1]: the codes rendered by the source model."""

    def translate(self, codes: dict) -> torch.Tensor:
        """``(1, 3, R, R)`` in [-1, 1]: the codes rendered by the adapted model."""

    def settings(self) -> dict:
        """Plain data describing the models and the inversion (for ``translate.json``)."""


class StyleGAN2Translator:
    """Photos through a source StyleGAN2 and its adapted copy, sharing W+ codes.

    Args:
        source: The source generator the adapted one was trained from.
        adapted: The adapted generator; with ``alpha < 1`` the translation
            uses ``blend_generators(source, adapted, alpha)``.
        inversion: ``"restyle"``, ``"e4e"`` (both need ``encoder``) or
            ``"project"`` (NVIDIA's projection into the source generator;
            it starts from ``encoder``'s code when one is given).
        encoder: A :class:`ipl.inversion.encoders.StyleEncoder`, trained with
            (a copy of) the source generator.
        iterations: ReStyle passes (default 5).
        space: Projection space, ``"w"`` or ``"w+"``; default ``"w"`` from
            ``w_avg`` (as NVIDIA) and ``"w+"`` from an encoder's code.
        steps: Projection steps (NVIDIA: 1000).
        seed: Projection seed.
        distance: Projection distance (default LPIPS-VGG16).
        names: Plain data naming the models (kept in ``settings()``).
        progress: Progress bars of the projection.
    """

    kind = "stylegan2"

    def __init__(self, source, adapted, *, inversion="restyle", encoder=None, iterations=None, alpha=1.0,
                 space=None, steps=1000, seed=0, distance=None, names=None, progress=True):  # fmt: skip
        from ipl.sampling import blend_generators, check_same_architecture

        if inversion not in INVERSIONS:
            raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")
        if inversion != "project" and encoder is None:
            raise ValueError(f"inversion {inversion!r} needs an encoder")
        if encoder is not None and inversion != "project" and encoder.kind != inversion:
            raise CheckpointError(f"{encoder.describe} was given for inversion {inversion!r}; pass a {inversion} checkpoint")
        if encoder is not None and encoder.n_styles != source.n_latent:
            raise CheckpointError(
                f"{encoder.describe} writes {encoder.n_styles} W+ slots, the source generator has {source.n_latent}"
            )
        check_same_architecture(source, adapted)
        self.source = source
        self.target = adapted if alpha == 1 else blend_generators(source, adapted, alpha)
        self.inversion, self.encoder, self.iterations = inversion, encoder, iterations
        self.alpha, self.steps, self.seed, self.distance = float(alpha), int(steps), int(seed), distance
        self.space = space or ("w+" if encoder is not None else "w")
        self.names = dict(names or {})
        self.progress = progress
        self.resolution = source.size
        self.device = source.input.input.device

    def invert(self, face):
        extra = {}
        if self.inversion != "project":
            wplus = self.encoder.invert(encoder_input(face).to(self.device), iterations=self.iterations)
        else:
            from .projection import default_distance, project

            if self.distance is None:  # loaded once, for every photo
                self.distance = default_distance(self.device)
            init = None
            if self.encoder is not None:
                init = self.encoder.invert(encoder_input(face).to(self.device), iterations=self.iterations)
            result = project(
                self.source, to_tensor(face, self.resolution), distance=self.distance, space=self.space, init=init,
                num_steps=self.steps, seed=self.seed, progress=self.progress,
            )  # fmt: skip
            wplus = result.wplus
            extra = {"distance": float(result.distance[0, -1]), "space": self.space}
        return {"wplus": wplus[0].detach().float().cpu(), **extra}  # (n_latent, D)

    @torch.no_grad()
    def _render(self, generator, codes):
        image, _ = generator([codes["wplus"][None].to(self.device)], input_is_latent=True, randomize_noise=False)
        return image.float().cpu()

    def reconstruct(self, codes):
        return self._render(self.source, codes)

    def translate(self, codes):
        return self._render(self.target, codes)

    def settings(self):
        settings = {"kind": self.kind, "inversion": self.inversion, "alpha": self.alpha, "resolution": self.resolution, **self.names}
        if self.inversion == "restyle" or (self.encoder is not None and self.encoder.kind == "restyle"):
            settings["iterations"] = self.iterations or self.encoder.default_iterations
        if self.inversion == "project":
            settings.update(space=self.space, steps=self.steps, seed=self.seed)
        return settings


class DiffusionTranslator:
    """Photos through a diffusion run: the source model's x_{t_0} (and z_sem), rendered by both models.

    A Diff-IPL run's codes are ``{"z_sem", "x_t"}`` (its semantic encoder's
    code and DiffusionCLIP's inversion given it); a DDPM run has no semantic
    code, its codes are ``{"x_t"}``.

    Args:
        editor: An :class:`ipl.backends.editing.Editor` (source and
            fine-tuned models with the run's DDIM settings; its ``ratio``
            is the blend).
        kind: ``"diffae"`` or ``"ddpm"``, the run's family (also its inversion's name).
        names: Plain data naming the models (kept in ``settings()``).
    """

    def __init__(self, editor, kind="diffae", names=None):
        self.editor, self.kind, self.names = editor, kind, dict(names or {})
        self.resolution = editor.resolution

    def invert(self, face):
        from PIL import Image

        cond, x_t = self.editor.invert(to_tensor(face, self.resolution, Image.Resampling.BILINEAR))
        codes = {"x_t": x_t[0].float().cpu()}
        if cond is not None:
            codes["z_sem"] = cond[0].float().cpu()
        return codes

    @staticmethod
    def _latents(codes):
        cond = codes.get("z_sem")
        return (None if cond is None else cond[None]), codes["x_t"][None]

    def reconstruct(self, codes):
        return self.editor.reconstruct(*self._latents(codes)).float().cpu()

    def translate(self, codes):
        return self.editor.edit(*self._latents(codes)).float().cpu()

    def settings(self):
        e = self.editor
        return {"kind": self.kind, "inversion": self.kind, "alpha": e.ratio, "resolution": self.resolution,
                "t_0": e.t_0, "n_inv_step": e.n_inv_step, "n_test_step": e.n_test_step, "eta": e.eta, **self.names}  # fmt: skip


DiffAETranslator = DiffusionTranslator  # the name before DDPM runs were translated too


# ----------------------------------------------------------------------------
# The translator of an adapted checkpoint


def build_translator(ckpt, *, source="recorded", inversion=None, encoder=None, alpha=1.0, iterations=None,
                     space=None, steps=1000, seed=0, distance=None, device="cpu", progress=True):  # fmt: skip
    """The :class:`PhotoTranslator` for an adapted checkpoint.

    Args:
        ckpt: The adapted model (Stage 2's ``generator.pt``).
        source: Its source: a pretrained name, a checkpoint path or
            ``"recorded"`` (the one named in the checkpoint's run config).
        inversion: StyleGAN2: ``"restyle"`` (default), ``"e4e"`` or
            ``"project"``; a Diff-IPL run: ``"diffae"`` (its own encoder
            and inversion), a DDPM run: ``"ddpm"`` (its own DDIM
            inversion): the default and only choice of each.
        encoder: Encoder checkpoint path; default for restyle / e4e: the
            registry's FFHQ file (``ipl.metrics.weights.WEIGHTS``), fetched
            when missing. For ``"project"`` an encoder is used only when
            given, as the starting code.
        alpha, iterations, space, steps, seed, distance: See
            :class:`StyleGAN2Translator`.

    Raises:
        CheckpointError: unreadable files, mismatched architectures, or an
            inversion the model family does not have.
    """
    kind = checkpoint_kind(ckpt)
    inversion = inversion or DEFAULT_INVERSION.get(kind, "restyle")
    if kind in DIFFUSION_KINDS:
        if inversion != kind or encoder is not None:
            how = "its own semantic encoder and DDIM inversion" if kind == "diffae" else "its own DDIM inversion"
            what = "a Diff-IPL run" if kind == "diffae" else "a DDPM run"
            raise CheckpointError(
                f"{ckpt} is {what}: it inverts photos with {how} (--invert {kind}, no --encoder); "
                "e4e, ReStyle and projection are for StyleGAN2 runs"
            )
        from ipl.backends.editing import load_editor

        editor, _ = load_editor(ckpt, device, source=source, ratio=alpha, progress=progress)
        return DiffusionTranslator(editor, kind, names={"ckpt": str(ckpt), "source": str(source)})
    if inversion in DIFFUSION_KINDS:
        raise CheckpointError(f"{ckpt} is a StyleGAN2 run: invert its photos with --invert restyle, e4e or project")
    from ipl.sampling import load_adapted, load_source

    from .encoders import check_decoder, load_encoder

    # The encoder first: a wrong file stops the run before a source model is downloaded.
    model = None
    if inversion != "project" or encoder is not None:
        if encoder is None:
            from ipl.metrics.weights import resolve_weights

            encoder = resolve_weights(DEFAULT_ENCODERS[inversion], download=True)
        model = load_encoder(encoder, device)
    adapted, adapted_info = load_adapted(ckpt, device)
    source_model, _ = load_source(source, adapted, adapted_info, device)
    if model is not None:
        check_decoder(model, source_model, generator_name=f"the source generator ({source})")
    names = {"ckpt": str(ckpt), "source": str(source), "encoder": None if encoder is None else str(encoder)}
    return StyleGAN2Translator(
        source_model, adapted, inversion=inversion, encoder=model, iterations=iterations, alpha=alpha, space=space,
        steps=steps, seed=seed, distance=distance, names=names, progress=progress,
    )  # fmt: skip


# ----------------------------------------------------------------------------
# The loop over photos


@dataclass
class TranslationSummary:
    """What :func:`translate_photos` did.

    Attributes:
        done: Per translated photo: ``{"image", "name", "grid", "codes", "aligned"}`` paths.
        skipped: Per photo left out: ``{"image", "reason"}``.
        grid: ``grid.png`` of all translated photos, or None.
        outdir: The output folder.
    """

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    grid: Optional[Path] = None
    outdir: Optional[Path] = None


def unique_names(paths):
    """File stems, with ``-1``, ``-2``, ... added where two photos share one."""
    seen, names = {}, []
    for path in paths:
        stem = Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}-{count}")
    return names


def _shrink(images, size=GRID_CELL):
    return F.adaptive_avg_pool2d(images, size) if images.shape[-1] > size else images


def _faces(photo, detector, all_faces, min_score):
    """The detected faces to translate in ``photo``, and how many dlib found.

    Raises:
        FaceNotFoundError: no face, or none scoring at least ``min_score``.
    """
    found = detector.detect(photo)
    kept = [face for face in found if face.score >= min_score]
    if not kept:
        if not found:
            raise FaceNotFoundError("no face found by dlib's frontal face detector")
        best = max(face.score for face in found)
        raise FaceNotFoundError(f"{len(found)} face(s) found, none scoring at least {min_score:g} (best {best:.3f}); lower --min-face-score")
    return (kept if all_faces else [best_face(kept)]), len(found)


def translate_photos(paths, outdir, translator, *, aligned=False, detector=None, align_size=None, record=None,
                     all_faces=False, min_face_score=0.0):  # fmt: skip
    """Align, invert and translate photos; write the grids and codes; skip what cannot be done.

    Args:
        paths: Image files.
        outdir: Output folder (see the module docstring for its files), or an
            :class:`ipl.outputs.OutputFolder`; files there that this function
            did not write are never replaced (:class:`ipl.outputs.OutputError`).
        translator: A :class:`PhotoTranslator` (:func:`build_translator`).
        aligned: The photos are aligned faces already: only their centred
            square is used, no landmarks are detected.
        detector: An object whose ``detect(PIL.Image)`` returns the photo's
            :class:`ipl.inversion.align.DetectedFace` list; default
            :class:`ipl.inversion.align.LandmarkDetector` (dlib), made when
            the first photo needs it.
        align_size: Side of the aligned faces; default the larger of the
            model resolution and 256 (1024 for FFHQ, the recipe's size).
        record: More plain data for ``translate.json``.
        all_faces: Translate every detected face scoring at least
            ``min_face_score``, each in its own row named ``<photo>_face<k>``
            (k: dlib's detection index); otherwise the best-scoring face only.
        min_face_score: Faces dlib scores below this are ignored (0: every
            face dlib reports).

    Returns:
        :class:`TranslationSummary`. Unreadable files and photos without a
        detected face are reported (logged and listed) and skipped; each
        translated face records how many faces the photo had and which was used.

    Raises:
        ipl.inversion.align.MissingDependencyError: photos need aligning and
            dlib is not installed.
    """
    from ipl.outputs import OutputFolder
    from ipl.sampling import grid, save_png

    paths = [Path(p) for p in paths]
    out = outdir if isinstance(outdir, OutputFolder) else OutputFolder(outdir, "outdir", "translate_photos", reads=paths)
    out.check("grid.png", "translate.json")
    outdir = out.folder
    summary = TranslationSummary(outdir=outdir)
    align_size = align_size or max(translator.resolution, ENCODER_SIZE)
    rows = []
    for index, (path, name) in enumerate(zip(paths, unique_names(paths))):
        try:
            photo = load_photo(path)
            if aligned:
                items = [(name, center_square(photo), {})]
            else:
                if detector is None:
                    detector = LandmarkDetector()
                faces, found = _faces(photo, detector, all_faces, min_face_score)
                items = [
                    (
                        f"{name}_face{face.index}" if all_faces else name,
                        align_face(photo, face.landmarks, output_size=align_size),
                        {"faces_found": found, "face": face.index, "score": round(face.score, 4)},
                    )
                    for face in faces
                ]
        except (UnreadableImageError, FaceNotFoundError) as error:
            reason = str(error) if isinstance(error, UnreadableImageError) else f"{path}: {error}"
            log.warning("skipped %s", reason)
            summary.skipped.append({"image": str(path), "reason": reason})
            continue

        for item_name, face, detection in items:
            codes = translator.invert(face)
            shown = to_tensor(face, translator.resolution)  # (1, 3, R, R)
            row = torch.cat([shown, translator.reconstruct(codes), translator.translate(codes)])  # (3, 3, R, R)
            files = {"grid": out.path(f"{item_name}.png"), "codes": out.path(f"{item_name}.pt"), "aligned": out.path(f"aligned/{item_name}.png")}
            save_png(grid([row]), files["grid"])
            save_png(np.asarray(face), files["aligned"])
            atomic_save({"format": CODES_FORMAT, "kind": translator.kind, "image": str(path), **codes,
                         "settings": translator.settings()}, files["codes"])  # fmt: skip
            rows.append(_shrink(row))
            summary.done.append({"image": str(path), "name": item_name, **detection, **{k: str(v) for k, v in files.items()}})
            log.info("%d/%d %s -> %s", index + 1, len(paths), path, files["grid"])

    if rows:
        summary.grid = out.path("grid.png")
        save_png(grid(rows), summary.grid)
    settings = {**translator.settings(), "aligned": aligned, **(record or {})}
    if not aligned:
        settings.update(faces="all" if all_faces else "best", min_face_score=min_face_score)
    report = {"settings": settings, "done": summary.done, "skipped": summary.skipped}
    out.path("translate.json").write_text(json.dumps(report, indent=2) + "\n")
    return summary
