"""The reproduction of the paper's Fig. 5: real photos translated by five adapted models per domain.

Fig. 5 (Sec. 4.3) shows, per domain ("wall painting", "tolkien elf"), rows
of CelebA-HQ photos in nine columns:

    Input | Recon1 | NADA | GAN-IPL | Recon2 | Diff-CLIP | Recon3 | Diff-CLIP+ | Diff-IPL

Three source models, each with its own inversion of a photo (a *family*):
the FFHQ StyleGAN2 (ReStyle-e4e into W+; Recon1), DiffusionCLIP's plain
CelebA-HQ DDPM (deterministic DDIM to t_0; Recon2) and the FFHQ-256
diffusion autoencoder (z_sem and DDIM to t_0; Recon3). The five adapted
columns are five runs of :class:`ipl.pipeline.Session` per domain. A photo
is inverted once per family (the inversion does not depend on the target,
so both domains share it); each adapted model of the family renders the
same codes. The supplementary table scores each adapted column on the
held-out photos as :mod:`ipl.evaluation` scores a diffusion run: the
family's reconstruction is the "source" image, the adapted render the
"adapted" one (CLIP score to the target text; ID and SCS between the two).

Phases (:func:`run_fig5`): train or reuse the runs (run i on rank i % N);
cache the inversions of the held-out photos (item i on rank i % N, as
``scripts/build_bank.py`` shares a bank); then rank 0 renders the
translations, writes one figure per domain and the table. Finished runs and
cached inversions are reused, so an interrupted reproduction continues with
the same command.
"""

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import SINGLE, barrier

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # of the inversion files
RECORD_FORMAT = 1  # of fig5.json

COLUMNS = ("Input", "Recon1", "NADA", "GAN-IPL", "Recon2", "Diff-CLIP", "Recon3", "Diff-CLIP+", "Diff-IPL")


@dataclass(frozen=True)
class Family:
    """A source model, the inversion of photos into it, and its reconstruction column."""

    key: str  # "gan" | "ddpm" | "diffae"
    kind: str  # generator.kind of its runs
    recon: str  # its reconstruction's column label
    inversion: str  # how a photo becomes codes (as the paper's caption says)
    config_prefix: str  # configs/<prefix>_<domain>.yaml
    tiny_config: str  # configs/<tiny>.yaml for --tiny


FAMILIES = (
    Family("gan", "stylegan2", "Recon1", "ReStyle-e4e into W+ of the FFHQ StyleGAN2", "ffhq", "tiny"),
    Family("ddpm", "ddpm", "Recon2", "DDIM inversion of the CelebA-HQ DDPM", "ddpm", "tiny_ddpm"),
    Family("diffae", "diffae", "Recon3", "diffusion autoencoder (z_sem, DDIM) of FFHQ-256", "diffae", "tiny_diffae"),
)
FAMILY = {f.key: f for f in FAMILIES}

# The adapted columns: (label, family, prompt.scheme). The manual scheme is
# NADA's template direction: NADA on StyleGAN2, DiffusionCLIP (Diff-CLIP) on
# the DDPM, Diff-CLIP+ on the autoencoder.
METHODS = (
    ("NADA", "gan", "manual"),
    ("GAN-IPL", "gan", "adaptive"),
    ("Diff-CLIP", "ddpm", "manual"),
    ("Diff-CLIP+", "diffae", "manual"),
    ("Diff-IPL", "diffae", "adaptive"),
)

DOMAINS = {"wall_painting": "Photo→Wall painting", "elf": "Human→Tolkien elf"}

# --tiny: few steps of everything, so that ten runs and the figures take
# minutes on a CPU. The prompts (labels, ctx_init) still come from the
# domain's full config.
TINY_OVERRIDES = {
    "gan": ("stage1.iterations=10", "stage1.batch=8", "stage1.checkpoint_every=10", "stage1.log_every=5", "stage2.iterations=4",
            "stage2.output_interval=4", "stage2.checkpoint_every=4", "stage2.log_every=2", "stage2.auto_layer_batch=4",
            "stage2.n_sample=4"),
    "ddpm": ("stage1.iterations=10", "stage1.checkpoint_every=10", "stage1.log_every=5", "stage1.batch=4", "data.n_images=4",
             "data.n_train=2", "data.n_test=2", "diffusionclip.epochs=1", "diffusionclip.n_inv_step=4", "diffusionclip.n_train_step=2",
             "diffusionclip.n_test_step=4", "stage2.output_interval=2", "stage2.checkpoint_every=2", "stage2.log_every=1"),
}  # fmt: skip
TINY_OVERRIDES["diffae"] = TINY_OVERRIDES["ddpm"]
PROMPT_KEYS = ("source_class", "target_class", "ctx_init")


class Fig5Error(ValueError):
    """Inputs of the Fig. 5 reproduction that cannot be used; the message says the fix."""


# ---------------------------------------------------------------------------
# The photos


@dataclass(frozen=True)
class PhotoSplit:
    """Training photos of the diffusion runs and the held-out photos of the figure and the table.

    Attributes:
        train_folder: ``data.images`` of the diffusion runs.
        n_train: How many of its files (in name order) are training photos.
        held_out: The held-out photo files; the figure shows the first rows.
        how: Where the held-out photos come from, in words (for the outputs).
    """

    train_folder: Path
    n_train: int
    held_out: tuple
    how: str


def split_photos(images, test_images=None, n_test=50):
    """The training / held-out split: ``test_images`` when given, else the last ``n_test`` files of ``images``.

    The diffusion runs read the first ``data.n_images`` files of their folder,
    so holding out the last files keeps them out of training.
    """
    from ..config import ConfigError
    from ..images import UnreadableImageError, check_image, list_images

    try:
        train = list_images(images, "--images")
        if test_images:
            held_out, how = list_images(test_images, "--test-images"), f"every image of {test_images} (--test-images)"
            n_train = len(train)
            if Path(test_images).resolve() == Path(images).resolve():
                raise Fig5Error("--test-images is the --images folder: give a folder of other photos, or leave it out to hold out the last --n-test")
        else:
            if len(train) <= n_test:
                raise Fig5Error(
                    f"--images: {images} holds {len(train)} images; holding out the last {n_test} (--n-test) leaves none to train on: "
                    "add images, lower --n-test or give --test-images DIR"
                )
            n_train = len(train) - n_test
            held_out = train[n_train:]
            how = f"the last {n_test} images of {images} ({held_out[0].name} .. {held_out[-1].name}), not trained on"
        for path in held_out:
            check_image(path)
    except (ConfigError, UnreadableImageError) as e:
        raise Fig5Error(str(e)) from None
    return PhotoSplit(Path(images), n_train, tuple(held_out), how)


# ---------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Fig5Run:
    """One adapted column of one domain."""

    domain: str
    column: str  # e.g. "GAN-IPL"
    family: str  # key of FAMILY
    config_path: Path
    overrides: tuple  # --set overrides, in order (the user's first, the run's own last)
    run_dir: Path

    @property
    def name(self):
        return self.run_dir.name

    @property
    def adapted_path(self):
        from ..pipeline import ADAPTED_FILES

        return self.run_dir / ADAPTED_FILES[FAMILY[self.family].kind]

    def config(self):
        from ..config import load_config

        return load_config(self.config_path, self.overrides)

    def adapt_command(self):
        sets = " ".join(f"--set {_quote(o)}" for o in self.overrides)
        return f"python scripts/adapt.py --config {self.config_path} {sets}"


def _quote(text):
    return f"'{text}'" if any(c in text for c in " '\"") else text


def _slug(column):
    return column.lower().replace("+", "_plus").replace("-", "_")


def plan_fig5(photos, *, domains=tuple(DOMAINS), runs_root="runs/fig5", tiny=False, overrides=(), configs_dir=None):
    """The ten runs (five per domain), in order; reads the YAML files only.

    Args:
        photos: :class:`PhotoSplit`; the diffusion runs train on its training photos.
        domains: Keys of :data:`DOMAINS` (a config ``<prefix>_<domain>.yaml``
            must exist for each family).
        tiny: Tiny random models (``configs/tiny*.yaml``) with the domain's
            prompts and :data:`TINY_OVERRIDES`.
        overrides: ``--set`` overrides of every run (e.g. ``cache_dir=...``).
    """
    from ..config import ConfigError, load_config

    folder = Path(configs_dir) if configs_dir else Path(__file__).resolve().parents[2] / "configs"
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise Fig5Error(f"--domains {','.join(domains)!r}: choose among {', '.join(DOMAINS)} (the paper's two)")

    def config_file(name):
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"no config {path}: the Fig. 5 reproduction needs it")
        try:  # shorter commands in the plan when run from the repository
            return path.relative_to(Path.cwd())
        except ValueError:
            return path

    runs = []
    for domain in domains:
        for column, family_key, scheme in METHODS:
            family = FAMILY[family_key]
            full = config_file(f"{family.config_prefix}_{domain}")
            own = []
            if tiny:
                prompt = load_config(full).prompt
                own += [f"prompt.{k}={getattr(prompt, k)}" for k in PROMPT_KEYS] + list(TINY_OVERRIDES[family_key])
                path = config_file(family.tiny_config)
            else:
                path = full
            own.append(f"prompt.scheme={scheme}")
            if family.kind != "stylegan2":
                # The recipe's number of images, or every training photo if fewer.
                n_images = load_config(path, list(overrides) + own).data.n_images
                own += [f"data.images={photos.train_folder}", f"data.n_images={min(n_images, photos.n_train)}"]
            run_dir = Path(runs_root) / f"{domain}_{_slug(column)}"
            own += [f"name={run_dir.name}", f"run_dir={run_dir}"]
            try:  # every run's config is valid before anything trains
                load_config(path, list(overrides) + own)
            except ConfigError as e:
                hint = f" ({photos.n_train} training photos in {photos.train_folder}: add photos, or --set data.n_train=N for fewer)" if family.kind != "stylegan2" else ""
                raise ConfigError(f"{run_dir.name}: {e}{hint}") from None
            runs.append(Fig5Run(domain, column, family_key, path, tuple(overrides) + tuple(own), run_dir))
    return runs


def describe_plan(runs, photos, out=None):
    """The plan as text: per run its directory, state on disk and command; then the photos and outputs."""
    lines = []
    for i, run in enumerate(runs, 1):
        state = "finished: reused" if run.adapted_path.exists() else ("partial: resumed" if run.run_dir.exists() else "nothing yet")
        lines += [f"[{i}/{len(runs)}] {DOMAINS[run.domain]} {run.column} -> {run.run_dir} ({state})", f"    adapt: {run.adapt_command()}"]
    lines.append(f"held-out photos (figure rows and table): {photos.how}")
    lines.append(f"diffusion runs train on the first {photos.n_train} images of {photos.train_folder} (at most data.n_images)")
    if out is not None:
        lines.append(f"then: invert the held-out photos once per source model, write {out}/fig5_<domain>.png, fig5.md and fig5.json")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Training


def run_is_finished(run, config):
    """True if the run directory holds the finished adapted model of this configuration.

    Cheap (no model is built). Raises ``CheckpointError`` if its checkpoints
    were trained with another configuration.
    """
    from ..pipeline import check_run_dir

    check_run_dir(config, "adapt", resume=True)
    return run.adapted_path.is_file()  # written once, after Stage 2's last step


def train_runs(runs, *, device, world=SINGLE, progress=True, adapt=None):
    """Train (or resume) every unfinished run this rank owns (run i: rank i % N); returns ``{name: seconds}``.

    Args:
        adapt: ``config -> adapted path``; default Stage 1 + 2 with
            :class:`ipl.pipeline.Session` (resuming a partial run).
    """

    def default_adapt(config):
        from ..pipeline import adapt_run

        return adapt_run(config, device, progress)

    adapt = adapt or default_adapt
    configs = {run.name: run.config() for run in runs}
    if world.active:
        from ..table1 import build_banks  # ranks build the shared source-feature banks together first

        build_banks([configs[run.name] for run in runs], device, world, progress)
    seconds = {}
    for i, run in enumerate(runs):
        if not world.owns(i):
            continue
        config = configs[run.name]
        if run_is_finished(run, config):
            log.info("reusing %s", run.adapted_path)
            continue
        log.info("[%d/%d] training %s %s into %s", i + 1, len(runs), DOMAINS[run.domain], run.column, run.run_dir)
        start = time.perf_counter()
        adapt(config)
        seconds[run.name] = round(time.perf_counter() - start, 1)
    barrier(world)
    return seconds


# ---------------------------------------------------------------------------
# Translating the photos


@dataclass(frozen=True)
class InversionSettings:
    """How photos are inverted into the StyleGAN2 (the diffusion families use their runs' own DDIM settings).

    Attributes:
        gan: ``"restyle"`` (the paper's), ``"e4e"`` or ``"project"``.
        encoder: ReStyle / e4e checkpoint (default: the registry's FFHQ file).
        steps: Projection steps.
        distance: Projection distance, ``"lpips"`` (NVIDIA's) or ``"mse"`` (needs no weight file).
    """

    gan: str = "restyle"
    encoder: Optional[str] = None
    steps: int = 1000
    distance: str = "lpips"

    def describe(self):
        if self.gan == "project":
            return f"projection into W of the FFHQ StyleGAN2, {self.steps} steps, {self.distance} distance"
        return FAMILY["gan"].inversion if self.gan == "restyle" else "e4e into W+ of the FFHQ StyleGAN2"


def build_column_translator(run, device, inversion, *, invert=False, progress=False):
    """The :class:`ipl.inversion.translate.PhotoTranslator` of an adapted run.

    Only a family's inverting translator (``invert=True``) needs the
    StyleGAN2 inversion's encoder; the others only render codes, so they are
    built without one (their ``invert`` is never called).
    """
    from ..inversion.projection import mean_squared_error
    from ..inversion.translate import build_translator

    if run.family != "gan":
        return build_translator(run.adapted_path, device=device, progress=progress)
    how = inversion.gan if invert else "project"
    return build_translator(
        run.adapted_path, inversion=how, encoder=inversion.encoder if invert and how != "project" else None,
        steps=inversion.steps, distance=mean_squared_error if inversion.distance == "mse" else None,
        device=device, progress=progress,
    )  # fmt: skip


def aligned_face(path):
    """An aligned photo as the translators take it: its centred square (``PIL.Image``)."""
    from ..images import center_square, load_photo

    return center_square(load_photo(path))


def _file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def inversion_key(run, config, inversion, photo):
    """What a cached inversion depends on: the source model, the inversion settings and the photo's content."""
    from .. import config as config_lib

    data = config_lib.to_dict(config)
    kind = FAMILY[run.family].kind
    if kind == "stylegan2":
        how = {"gan": inversion.gan, "encoder": inversion.encoder}
        if inversion.gan == "project":
            how.update(steps=inversion.steps, distance=inversion.distance)
    else:
        how = {"arch": data[kind], "t_0": data["diffusionclip"]["t_0"], "n_inv_step": data["diffusionclip"]["n_inv_step"]}
    return json.dumps({"family": run.family, "source": data["generator"], "inversion": how, "photo": _file_digest(photo)}, sort_keys=True)


def check_shared_inversion(runs):
    """The runs of a family render the codes of one inversion: their DDIM settings must agree."""
    seen = {}
    for run in runs:
        if FAMILY[run.family].kind == "stylegan2":
            continue
        dc = run.config().diffusionclip
        settings = (dc.t_0, dc.n_inv_step)
        first = seen.setdefault(run.family, (run, settings))
        if first[1] != settings:
            raise Fig5Error(
                f"{run.name} inverts to t_0={dc.t_0} in {dc.n_inv_step} steps, {first[0].name} to t_0={first[1][0]} in "
                f"{first[1][1]}: the columns of one source model share the inversion of each photo; give them the same "
                "diffusionclip.t_0 and n_inv_step"
            )


def inversion_name(family, photo_name):
    return f"inversions/{family}/{photo_name}.pt"


def load_inversion(path, key):
    """A cached ``{"codes", "reconstruction"}`` entry, or None when missing, damaged or of other settings."""
    if not Path(path).is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the loader raises many types for damaged files
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
        return None
    return entry


def family_leaders(runs):
    """Per family, the run whose translator inverts the photos (the first of the family in the plan)."""
    leaders = {}
    for run in runs:
        leaders.setdefault(run.family, run)
    return leaders


def cache_inversions(runs, photos, out, *, device, inversion, world=SINGLE, progress=False):
    """Invert every held-out photo once per family and keep codes and reconstruction in ``out/inversions/``.

    Item i of (family, photo) belongs to rank i % N, as ``build_bank.py``
    shares a bank; the files are registered in ``out`` by the caller (rank 0)
    beforehand, so ranks write only paths the folder owns. Entries of the
    same source model, settings and photo content are reused.

    Returns:
        ``{family: seconds}`` this rank spent inverting, for the families of
        which it inverted at least one photo (the others were cached).
    """
    from ..runtime import atomic_save
    from ..inversion.translate import unique_names

    names = unique_names(photos.held_out)
    configs = {run.name: run.config() for run in runs}
    seconds = {}
    index = 0
    for family, run in family_leaders(runs).items():
        translator, computed = None, 0
        start = time.perf_counter()
        for photo, name in zip(photos.held_out, names):
            mine, index = world.owns(index), index + 1
            if not mine:
                continue
            key = inversion_key(run, configs[run.name], inversion, photo)
            path = Path(out) / inversion_name(family, name)
            if load_inversion(path, key) is not None:
                continue
            if translator is None:
                translator = build_column_translator(run, device, inversion, invert=True, progress=progress)
            codes = translator.invert(aligned_face(photo))
            entry = {"format": CACHE_FORMAT, "key": key, "image": str(photo), "codes": codes, "reconstruction": translator.reconstruct(codes)}
            atomic_save(entry, path)
            computed += 1
        if computed:
            seconds[family] = round(time.perf_counter() - start, 1)
        del translator
    barrier(world)
    return seconds


def cached_inversions(run, photos, out, inversion):
    """The family's cached entries of every held-out photo, in order (after :func:`cache_inversions`)."""
    from ..inversion.translate import unique_names

    config, entries = run.config(), []
    for photo, name in zip(photos.held_out, unique_names(photos.held_out)):
        path = Path(out) / inversion_name(run.family, name)
        entry = load_inversion(path, inversion_key(run, config, inversion, photo))
        if entry is None:
            raise Fig5Error(f"{path}: the inversion of {photo} is missing or out of date; run the same command again to compute it")
        entries.append(entry)
    return entries


def _quantized(images):
    from ..evaluation import quantize_images

    return quantize_images(images)


def translate_column(run, entries, *, device, inversion, networks, settings, rows, progress=False):
    """Render one adapted column from its family's cached codes and score it against the reconstructions.

    Returns:
        ``(cells, metrics)``: the first ``rows`` renders ``(1, 3, R, R)`` and
        the :func:`ipl.evaluation.stream.evaluate_stream` metrics of all
        held-out photos (reconstruction = source image, render = adapted).
    """
    from ..evaluation.stream import check_request, evaluate_stream

    target_text = run.config().prompt.target_class
    check_request(networks, settings, paired=True, target_text=target_text)
    translator = build_column_translator(run, device, inversion, progress=progress)
    cells = []

    def pairs():
        for lo in range(0, len(entries), settings.batch):
            batch = entries[lo : lo + settings.batch]
            adapted = torch.cat([translator.translate(e["codes"]).float().cpu() for e in batch])  # (B, 3, R, R)
            cells.extend(adapted[i : i + 1] for i in range(max(0, min(len(batch), rows - lo))))
            recon = torch.cat([e["reconstruction"].float() for e in batch])
            if settings.quantize:
                recon, adapted = _quantized(recon), _quantized(adapted)
            yield recon, adapted

    n_batches = math.ceil(len(entries) / settings.batch)
    metrics = evaluate_stream(pairs(), networks, settings, n_batches=n_batches, target_text=target_text, progress=progress,
                              desc=f"{run.column} {DOMAINS[run.domain]}")  # fmt: skip
    return cells, metrics


# ---------------------------------------------------------------------------
# The figure and the table


def resize_cell(image, size):
    """``(1, 3, H, W)`` in [-1, 1] -> ``(1, 3, size, size)`` (antialiased bilinear, either way)."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


HEADER = 18  # pixels of the label row


def figure_image(rows, labels=COLUMNS, cell=256, pad=2):
    """The figure: a header of column labels over rows of cells, ``(H, W, 3)`` uint8.

    Args:
        rows: Per photo, one ``(1, 3, h, w)`` image in [-1, 1] per label
            (any size; each is resized to ``cell``).

    Layout: cell (i, j) is at ``y = HEADER + pad + i * (cell + pad)``,
    ``x = pad + j * (cell + pad)``; the header is white with black labels,
    each centred over its column.
    """
    from PIL import Image, ImageDraw

    from ..sampling import grid

    if any(len(row) != len(labels) for row in rows):
        raise ValueError(f"every row needs {len(labels)} cells, one per label")
    body = grid([torch.cat([resize_cell(x, cell) for x in row]) for row in rows], pad=pad)  # (rows*(cell+pad)+pad, W, 3)
    canvas = Image.new("RGB", (body.shape[1], HEADER + body.shape[0]), "white")
    canvas.paste(Image.fromarray(body), (0, HEADER))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label)
        x = pad + j * (cell + pad) + (cell - (right - left)) / 2
        draw.text((x - left, (HEADER - (bottom - top)) / 2 - top), label, fill="black")
    return np.asarray(canvas)


# Columns of the table per requested metric: (header, key of the metrics dict).
TABLE_COLUMNS = {
    "is": (("IS", "is"),),
    "scs": (("SCS", "scs"),),
    "id": (("ID", "id"),),
    "diversity": (("LPIPS div.", "lpips_diversity"), ("CLIP div.", "clip_diversity")),
    "clip": (("CLIP score", "clip_score"),),
}


def _fmt(value):
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def fig5_markdown(summary):
    """The supplementary table: per domain, one row per adapted column, and what each number means."""
    settings = summary["settings"]
    columns = [c for m in settings["metrics"] for c in TABLE_COLUMNS[m]]
    parts = ["# Fig. 5: real-photo translation, scored on held-out photos\n"]
    for domain in summary["domains"].values():
        parts += [
            f"\n## {domain['label']}\n\n",
            "| Column | Source model | " + " | ".join(h for h, _ in columns) + " |\n",
            "|---|---|" + "---|" * len(columns) + "\n",
        ]
        for column, entry in domain["columns"].items():
            cells = [_fmt(entry["metrics"].get(key)) for _, key in columns]
            parts.append(f"| {column} | {entry['recon']}: {entry['inversion']} | " + " | ".join(cells) + " |\n")
    photos = summary["photos"]
    notes = [
        "\nNotes:",
        f"- {photos['count']} held-out photos: {photos['how']}; the figures show the first {summary['rows']}.",
        "- Each photo is inverted once per source model; its reconstruction (Recon1/2/3) is the source image and the "
        "column's render of the same codes the adapted image, as ipl.evaluation scores a diffusion run.",
    ]
    if "id" in settings["metrics"]:
        notes.append(f"- ID: cosine similarity of {'ArcFace' if settings['id_net'] == 'arcface' else 'CLIP image'} features of the two images.")
    if "clip" in settings["metrics"]:
        notes.append(f"- CLIP score: cosine similarity to the target text with CLIP {settings['clip_model']}.")
    if "is" in settings["metrics"]:
        notes.append(f"- IS over {settings['is_splits']} splits of the held-out renders.")
    notes.append("- The paper gives these numbers in its supplementary material, which is not public: no paper column.")
    timing = ["\n## Time per column (seconds, on this machine)\n", "| Column | train (per domain) | invert (shared by the domains) | render + score (per domain) |\n", "|---|---|---|---|\n"]
    for column, t in summary["seconds"].items():
        timing.append(f"| {column} | {_secs(t.get('train'))} | {_secs(t.get('invert'))} | {_secs(t.get('render'))} |\n")
    return "".join(parts) + "\n".join(notes) + "\n" + "".join(timing)


def _secs(values):
    if values is None:
        return "–"
    if isinstance(values, dict):
        known = [v for v in values.values() if v is not None]
        return " / ".join(f"{v:.0f}" for v in known) if known else "–"
    return f"{values:.0f}"


# ---------------------------------------------------------------------------
# Running it


def output_names(domains, photos):
    """Every file the reproduction writes into its output folder."""
    from ..inversion.translate import unique_names

    names = [inversion_name(f.key, n) for f in FAMILIES for n in unique_names(photos.held_out)]
    return names + [f"fig5_{d}.png" for d in domains] + ["fig5.md", "fig5.json"]


def _previous_seconds(out):
    """The timings of the previous fig5.json in ``out`` (kept for work reused this time)."""
    try:
        return json.loads((out.folder / "fig5.json").read_text()).get("seconds", {}) if "fig5.json" in out.owned else {}
    except (OSError, ValueError, AttributeError):
        return {}


def run_fig5(runs, photos, out, *, device, inversion, settings, load_networks, rows=4, cell=256, world=SINGLE, progress=True, adapt=None):
    """Train or reuse the runs, invert the held-out photos, write the figures and the table.

    Args:
        runs: From :func:`plan_fig5`.
        photos: :class:`PhotoSplit`.
        out: :class:`ipl.outputs.OutputFolder` of the figures, the table and the inversions.
        device: ``torch.device`` of training, inversion and rendering.
        inversion: :class:`InversionSettings` of the StyleGAN2 columns.
        settings: :class:`ipl.evaluation.EvalSettings` of the table (``n``
            is set to the number of held-out photos here).
        load_networks: ``names -> MetricNetworks``, called once on rank 0.
        rows: Photos shown in each figure (the first held-out ones).
        cell: Side of a figure cell in pixels.
        world: Ranks (:mod:`ipl.distributed`): training and the inversions
            are shared; rank 0 renders and writes.
        adapt: See :func:`train_runs`.

    Returns:
        The summary written to ``fig5.json`` (None on ranks other than 0).
    """
    import dataclasses

    from ..evaluation import required_networks
    from ..images import to_tensor
    from ..sampling import save_png

    check_shared_inversion(runs)
    domains = list(dict.fromkeys(run.domain for run in runs))
    if world.is_main:
        out.check(*output_names(domains, photos))  # before any training: a folder of someone else's files is refused now
    trained = train_runs(runs, device=device, world=world, progress=progress, adapt=adapt)
    if world.is_main:
        for name in output_names(domains, photos):  # registered by one rank, written by every rank
            out.path(name)
    barrier(world)
    inverted = cache_inversions(runs, photos, out.folder, device=device, inversion=inversion, world=world, progress=progress)
    if not world.is_main:
        return None

    settings = dataclasses.replace(settings, n=len(photos.held_out))
    networks = load_networks(required_networks(settings))
    previous = _previous_seconds(out)
    leaders = family_leaders(runs)
    seconds = {}
    for family in FAMILIES:
        if family.key in leaders:
            seconds[family.recon] = {"invert": inverted.get(family.key, previous.get(family.recon, {}).get("invert"))}
    summary_domains = {}
    for domain in domains:
        mine = [run for run in runs if run.domain == domain]
        faces = [aligned_face(p) for p in photos.held_out[:rows]]
        columns = {"Input": [to_tensor(face, cell) for face in faces]}
        entry_rows = {}
        for family in FAMILIES:
            family_runs = [run for run in mine if run.family == family.key]
            if not family_runs:
                continue
            entries = cached_inversions(leaders[family.key], photos, out.folder, inversion)
            columns[family.recon] = [e["reconstruction"] for e in entries[:rows]]
            for run in family_runs:
                start = time.perf_counter()
                cells, metrics = translate_column(run, entries, device=device, inversion=inversion, networks=networks,
                                                  settings=settings, rows=rows, progress=progress)  # fmt: skip
                columns[run.column] = cells
                earlier = previous.get(run.column, {})
                timing = seconds.setdefault(run.column, {"train": {}, "render": {}})
                timing["train"][domain] = trained.get(run.name, (earlier.get("train") or {}).get(domain))
                timing["render"][domain] = round(time.perf_counter() - start, 1)
                description = inversion.describe() if family.key == "gan" else family.inversion
                entry_rows[run.column] = {"run": str(run.run_dir), "adapted": str(run.adapted_path), "recon": family.recon,
                                          "inversion": description, "metrics": metrics}  # fmt: skip
        labels = [c for c in COLUMNS if c in columns]
        image = figure_image([[columns[c][i] for c in labels] for i in range(len(faces))], labels, cell=cell)
        save_png(image, out.path(f"fig5_{domain}.png"))
        summary_domains[domain] = {"label": DOMAINS[domain], "figure": f"fig5_{domain}.png", "columns": entry_rows}
    seconds = {c: seconds[c] for c in COLUMNS if c in seconds}
    summary = {
        "format": RECORD_FORMAT,
        "photos": {"how": photos.how, "count": len(photos.held_out), "files": [str(p) for p in photos.held_out],
                   "train_folder": str(photos.train_folder), "n_train": photos.n_train},  # fmt: skip
        "rows": min(rows, len(photos.held_out)),
        "settings": settings.to_dict(),
        "gan_inversion": inversion.describe(),
        "domains": summary_domains,
        "seconds": seconds,
    }
    out.path("fig5.json").write_text(json.dumps(summary, indent=2) + "\n")
    out.path("fig5.md").write_text(fig5_markdown(summary))
    return summary
