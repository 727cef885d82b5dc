"""Stage 2: adapt the generative model with image-specific directions (Eq. 7-9).

Each step takes a batch of images from the backend, lets it choose what
trains (StyleGAN2: NADA's adaptive layer selection), computes one text
direction per image from that image's code and its learned prompts (or
NADA's single template direction), and moves every pair (source image,
trainable image) along its own direction in CLIP space. The loop owns the
schedule, logging, checkpoints, resume and divergence checks; the backend
owns the model.
"""

import functools
import time
from pathlib import Path

import torch

from .. import config as config_lib
from ..method.directions import build_directions
from ..runtime import (
    CHECKPOINT_FORMAT,
    TrainingDiverged,
    atomic_save,
    check_finite,
    learning_rate,
    load_checkpoint,
    open_stats,
    progress_bar,
    rng_state,
    set_rng_state,
)
from ..sampling import grid, save_png
from .target import check_same_target, prepare_target, target_record


def train_generator(config, backend, clip_model, run_dir, device, prompt_model=None, resume=False, progress=True, run_target=None):
    """Stage 2: fine-tune a copy of the backend's source model and write the adapted model.

    Args:
        config: The run's :class:`ipl.config.Config`.
        backend: An :class:`ipl.backends.base.Backend`.
        clip_model: :class:`ipl.clip.FrozenCLIP` (on ``device``).
        run_dir: Output folder: ``stage2.pt`` (resumable), the adapted model
            (``generator.pt`` for StyleGAN2), ``samples/``, ``stats_stage2.jsonl``.
        prompt_model: The Stage-1 prompt model (``adaptive``, ``learned_fixed``).
        resume: Continue from ``run_dir/stage2.pt`` if it exists.
        run_target: The run's :class:`ipl.stages.target.Target` (default: from
            the config, a learned word read from or written to
            ``run_dir/target_word.pt``).

    Returns:
        Path of the adapted model.
    """
    c2 = config.stage2
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "stage2.pt"

    # The target (text, or images and their learned word); constant text
    # features once; the direction provider of the scheme; then the model
    # to adapt and the stage's seed.
    run_target = run_target or prepare_target(config, clip_model, run_dir, progress=progress)
    source_features = functools.partial(backend.source_features, config, clip_model)  # NADA's image direction starts there
    directions, constants = build_directions(config, clip_model, backend.code_dim, prompt_model, run_target, source_features)
    model = backend.adaptation(config, clip_model, constants)
    torch.manual_seed(c2.seed)  # noise, dropout and everything else the backend draws globally
    start = 0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, "stage2", key=model.checkpoint_key)
        check_same_target(ckpt_path, ckpt.get("target", {}), run_target)
        model.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
    log = open_stats(config, run_dir, "stage2", start)

    def save(step):
        # Never write weights that went non-finite; keep the last good file.
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            check_finite(step, {"weights": float("nan")}, ckpt_path)
        state = model.state_dict()
        state["rng"] = {**rng_state(), **state.get("rng", {})}
        record = {"format": CHECKPOINT_FORMAT, "config": config_lib.to_dict(config), "step": step, "target": target_record(run_target)}
        atomic_save({**record, **state}, ckpt_path)

    def samples(step):
        image = grid(model.sample_rows())
        save_png(image, run_dir / "samples" / f"step_{step:06d}.png")
        log.image(step, "samples", image)

    total = model.iterations
    antialias = config.clip.antialias  # the image features of Stage 1 and Stage 2 are made alike
    bar = progress_bar(range(start, total), desc="stage 2", initial=start, total=total, disable=not progress)
    tick, sums, n_summed = time.time(), {}, 0  # sums stay on the device: no per-step sync
    for step in bar:
        batch = model.batch(step)
        trained = model.select_trainable(step)

        # One direction per image (or NADA's one for all), then the loss of
        # every (source, trainable) pair, in the backend's chunks (where its
        # terms are per-image means), each weighted by its share of the batch.
        d_text = directions(batch.codes)
        n = len(batch)
        for index in torch.arange(n, device=batch.codes.device).split(model.chunk or n):
            part = batch.select(index)
            source = model.source_images(part)
            with torch.no_grad():
                f_source = clip_model.encode_images(source, antialias=antialias)
            d = d_text if d_text.ndim == 1 else d_text[index]
            for target in model.trainable_images(part):
                terms = model.losses(f_source, clip_model.encode_images(target, antialias=antialias), d, source, target)
                (terms["total"] * (len(index) / n)).backward()
                model.after_backward()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0) + value.detach() * (len(index) / n)
        n_summed += 1
        lr = learning_rate(model.optimizer)  # the rate this step used; update() may schedule the next
        model.update(step)

        done = step + 1
        if done % c2.log_every == 0 or done == total:
            means = {("loss" if k == "total" else k): v.item() / n_summed for k, v in sums.items()}
            check_finite(done, means, ckpt_path)
            now = time.time()
            extra = {} if trained is None else {"layers": trained}
            log.write(done, **means, **extra, lr=lr, sec_per_iter=round((now - tick) / n_summed, 4))
            bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
            sums, n_summed, tick = {}, 0, now
        if done % c2.output_interval == 0 or done == total:
            samples(done)
        if done % c2.checkpoint_every == 0 or done == total:
            save(done)
    bar.close()
    log.close()

    out = run_dir / model.adapted_file
    model.save_adapted(out, total)
    return out


__all__ = ["TrainingDiverged", "train_generator"]
