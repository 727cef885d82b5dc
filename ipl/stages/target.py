"""The target of a run: a text label, or a few images of the target style (``prompt.target_images``).

With images, NADA's scheme (``prompt.scheme=manual``) replaces its text
direction by the image direction of its ``compute_img2img_direction``, and
every IPL scheme first learns a pseudo-word from the images
(:mod:`ipl.method.word`) that then stands wherever the target label does.
The word is learned once, before Stage 1, and kept in ``RUN/target_word.pt``
with a hash of the images it came from; a later stage or a resumed run
reuses it, and refuses it when the images or the word's settings changed.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import config as config_lib
from ..images import IMAGE_SUFFIXES, UnreadableImageError, check_image, list_images, load_photo
from ..method.prompts import Label
from ..method.word import initial_word, learn_word
from ..runtime import CHECKPOINT_FORMAT, CheckpointError, atomic_save

# Fewer pictures give a mean feature that describes their subjects as much
# as their shared style.
MIN_TARGET_IMAGES = 3
WORD_FILE = "target_word.pt"


@dataclass(frozen=True, eq=False)
class Target:
    """What a run adapts towards.

    Attributes:
        label: The target label of every prompt (text, or text + learned word).
        image_features: Un-normalised CLIP features ``(N, D)`` of the target
            images, or None for a text target.
        images_sha256: Hash of the image files (names and contents), or None.
    """

    label: Label
    image_features: Optional[torch.Tensor] = None
    images_sha256: Optional[str] = None


def target_image_files(folder):
    """The image files of ``prompt.target_images``, checked readable; at least :data:`MIN_TARGET_IMAGES`."""
    files = list_images(folder, "prompt.target_images")
    if len(files) < MIN_TARGET_IMAGES:
        raise config_lib.ConfigError(
            f"prompt.target_images: {folder} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
            f"give at least {MIN_TARGET_IMAGES} pictures of the target style"
        )
    for path in files:
        try:
            check_image(path)
        except UnreadableImageError as e:
            raise UnreadableImageError(f"prompt.target_images: {e}; remove or replace the file") from None
    return files


def images_sha256(files):
    """One hash of the files' names and contents, in name order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).name.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


@torch.no_grad()
def target_image_features(clip_model, files):
    """CLIP features ``(N, D)`` (float32) of image files, preprocessed as NADA preprocesses its style images.

    The ``clip`` package's own PIL pipeline (bicubic resize with
    antialiasing, centre crop, RGB, normalisation), as StyleGAN-NADA's
    ``compute_img2img_direction``; files of any size and mode.
    """
    from ..clip import clip

    transform = clip.clip._transform(clip_model.input_resolution)
    x = torch.stack([transform(load_photo(path)) for path in files]).to(clip_model.device)
    return clip_model.model.encode_image(x.to(clip_model.dtype)).float()


def word_settings(config):
    """The settings a learned word depends on (besides the images' contents)."""
    p, c = config.prompt, config.clip
    return {
        "target_class": p.target_class,
        "word_mode": p.word_mode,
        "word_init": p.word_init,
        "word_tokens": p.word_tokens,
        "word_steps": p.word_steps,
        "word_lr": p.word_lr,
        "clip.model": c.model,
        "clip.dtype": c.dtype,
        "clip.seed": c.seed,
    }


def word_label_text(config):
    """The words before the learned ones: none ("replace") or the target label ("append")."""
    return config.prompt.target_class if config.prompt.word_mode == "append" else ""


def read_word(path):
    """``target_word.pt`` as plain data, checked to be one."""
    from stylegan2.checkpoint import read_checkpoint

    remedy = "delete it to learn the word again, or choose another run (name=... or run_dir=...)"
    data = read_checkpoint(path, what="target word", remedy=remedy)
    if not isinstance(data, dict) or data.get("kind") != "target_word" or not torch.is_tensor(data.get("word")):
        raise CheckpointError(f"{path} is not a target word of this project; {remedy}")
    return data


def prepare_target(config, clip_model, run_dir, progress=True, relearn=False):
    """The :class:`Target` of a run; learns and writes ``run_dir/target_word.pt`` when a scheme needs a word.

    Without ``prompt.target_images``: the text label. With images and the
    ``manual`` scheme (NADA): the text label (NADA's layer selection still
    reads it) and the images' features. With images and an IPL scheme: the
    learned word, read from ``target_word.pt`` when that file was learned
    from the same images with the same settings, else learned now
    (``relearn``: learned now in any case, replacing the file, as a restarted
    run replaces its checkpoints).

    Raises:
        CheckpointError: ``target_word.pt`` exists but was learned from other
            images or with other settings (and ``relearn`` is false).
    """
    p = config.prompt
    if not p.target_images:
        return Target(Label(p.target_class))
    files = target_image_files(p.target_images)
    digest = images_sha256(files)
    features = target_image_features(clip_model, files)
    if p.scheme == "manual":
        return Target(Label(p.target_class), features, digest)

    path = Path(run_dir) / WORD_FILE
    settings = word_settings(config)
    if path.exists() and not relearn:
        data = read_word(path)
        changed = [f"prompt.{k}" if "." not in k else k for k, v in settings.items() if data.get("settings", {}).get(k) != v]
        if data.get("images_sha256") != digest:
            changed.insert(0, f"images than {p.target_images} now holds")
        if changed:
            raise CheckpointError(
                f"{path} was learned with other {', '.join(changed)}; train the run again with --restart "
                "(it learns the word again), or train into another run (--set name=NEW)"
            )
        return Target(Label(data["text"], data["word"].to(clip_model.device)), features, digest)

    text = word_label_text(config)
    init = initial_word(clip_model, p.word_init or p.target_class, p.word_tokens)
    word, stats = learn_word(clip_model, features, init, p.word_steps, p.word_lr, text=text, progress=progress)
    atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "kind": "target_word",
            "config": config_lib.to_dict(config),
            "settings": settings,
            "images": [f.name for f in files],
            "images_sha256": digest,
            "text": text,
            "init": init.cpu(),
            "word": word.cpu(),
            "image_features": features.cpu(),
            "stats": stats,
        },
        path,
    )
    return Target(Label(text, word), features, digest)


def target_record(target):
    """What a checkpoint records of the target it was trained for (plain data)."""
    if target is None:
        return {"images_sha256": None, "word": None}
    word = target.label.word
    return {"images_sha256": target.images_sha256, "word": None if word is None else word.detach().cpu()}


def check_same_target(path, record, target):
    """Refuse a checkpoint trained for other target images or another learned word than ``target``."""
    ours = target_record(target)
    if record.get("images_sha256") != ours["images_sha256"]:
        raise CheckpointError(
            f"{path} was trained for other target images than prompt.target_images now holds; "
            "restore those images, or use another run name (name=... or run_dir=...)"
        )
    word = record.get("word")
    if (word is None) != (ours["word"] is None) or (word is not None and not torch.equal(word, ours["word"])):
        raise CheckpointError(
            f"{path} was trained with another learned target word than {WORD_FILE} of this run; "
            "use the run directory it came from, or train it again in this one"
        )
