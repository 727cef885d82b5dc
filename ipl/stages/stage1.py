"""Stage 1: image-specific prompt learning (train the latent mapper F).

Each step: codes c (StyleGAN2's w, Diff-AE's z_sem) -> prompt vectors F(c)
-> source and target prompt features (one batched text-encoder call) ->
contrastive loss against the CLIP features of the source images plus lambda
times the domain regularisation (Eq. 6). The pairs (c, image feature) come
from the backend; the loop never sees a generator.
"""

import time
from pathlib import Path

import torch

from .. import config as config_lib
from ..method.losses import stage1_losses
from ..method.mapper import build_prompt_model
from ..method.prompts import PromptTextEncoder, prompt_features, text_constants
from .target import check_same_target, prepare_target, target_record
from ..runtime import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KINDS,
    CheckpointError,
    atomic_save,
    check_finite,
    learning_rate,
    load_checkpoint,
    open_stats,
    progress_bar,
    rng_state,
    set_rng_state,
)

# The prompt schemes whose prompts Stage 1 learns.
STAGE1_SCHEMES = ("adaptive", "learned_fixed")


def ctx_init_embedding(clip_model, ctx_init, n_ctx):
    """Token embeddings ``(m, k)`` of the ``ctx_init`` words (CoOp's initial prompts)."""
    with torch.no_grad():
        return clip_model.embed_tokens(clip_model.tokenize([ctx_init]))[0, 1 : 1 + n_ctx].float()


def prompt_model_meta(config, code_dim, clip_model, n_ctx, target=None):
    """What a saved prompt model needs to be rebuilt without flags (and the target it was trained for)."""
    return {
        "scheme": config.prompt.scheme,
        "w_dim": code_dim,
        "n_ctx": n_ctx,
        "token_dim": clip_model.token_dim,
        "ctx_init": config.prompt.ctx_init,
        "source_class": config.prompt.source_class,
        "target_class": config.prompt.target_class,
        "clip_model": config.clip.model,
        "target": target_record(target),
    }


def _state_mismatch(expected, found):
    """The first key where a saved state dict and a model's differ, described; None if they agree."""
    if not isinstance(found, dict):
        return f"the weights are a {type(found).__name__}, not a state dict"
    for key, value in expected.items():
        if key not in found:
            return f"no '{key}' in the file"
        if not torch.is_tensor(found[key]) or found[key].shape != value.shape:
            return f"'{key}' is {tuple(getattr(found[key], 'shape', ()))} in the file, {tuple(value.shape)} in the model"
    extra = sorted(set(found) - set(expected))
    return f"the file has '{extra[0]}', which the model does not" if extra else None


def load_prompt_model(path, device="cpu"):
    """Rebuild a Stage-1 prompt model from ``mapper.pt``; returns ``(model, checkpoint)``."""
    ckpt = load_checkpoint(path, "mapper")
    remedy = CHECKPOINT_KINDS["mapper"][2]
    try:
        meta = ckpt["prompt"]
        config = config_lib.from_dict(ckpt["config"])
        init = torch.zeros(meta["n_ctx"], meta["token_dim"])  # overwritten by the state dict
        model = build_prompt_model(meta["scheme"], meta["w_dim"], meta["n_ctx"], meta["token_dim"], config.mapper, init)
    except config_lib.ConfigError as e:
        raise CheckpointError(f"{path}: its recorded run config is not valid here ({e}). {remedy}") from None
    except (KeyError, TypeError, ValueError) as e:
        # A file of another version or a damaged one: its entries do not describe a prompt model.
        problem = f"no {e} entry" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: the Stage-1 checkpoint's contents do not describe a prompt model ({problem}). {remedy}") from None
    mismatch = _state_mismatch(model.state_dict(), ckpt["mapper"])
    if mismatch:
        raise CheckpointError(f"{path}: its weights do not fit the {type(model).__name__} it describes ({mismatch}). {remedy}")
    model.load_state_dict(ckpt["mapper"])
    return model.to(device).eval().requires_grad_(False), ckpt


def train_mapper(config, backend, clip_model, run_dir, device, resume=False, progress=True, run_target=None):
    """Train the Stage-1 prompt model and write ``run_dir/mapper.pt``.

    Args:
        config: The run's :class:`ipl.config.Config` (``stage1``, ``prompt``,
            ``mapper``, ``cache_dir`` and what the backend's pairs depend on).
        backend: An :class:`ipl.backends.base.Backend`; its
            ``stage1_pairs`` give each step's (code, image feature) pairs and
            its ``code_dim`` the mapper's input width.
        clip_model: :class:`ipl.clip.FrozenCLIP` (on ``device``).
        run_dir: Output folder (``mapper.pt``, ``stats_stage1.jsonl``).
        resume: Continue from ``run_dir/mapper.pt`` if it exists.
        run_target: The run's :class:`ipl.stages.target.Target` (default: from
            the config; a learned target word is read from, or written to,
            ``run_dir/target_word.pt`` first).

    Returns:
        Path of the final checkpoint.
    """
    c1, prompt = config.stage1, config.prompt
    if prompt.scheme not in STAGE1_SCHEMES:
        raise ValueError(f"prompt.scheme {prompt.scheme!r} learns no prompts: Stage 1 is for {' and '.join(STAGE1_SCHEMES)}")
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "mapper.pt"

    # Text that never changes: templates and hand-written prompts, once.
    # (The target label may be a word learned from images: it goes wherever the label does.)
    run_target = run_target or prepare_target(config, clip_model, run_dir, progress=progress)
    encoder = PromptTextEncoder(clip_model, prompt.ctx_init, [prompt.source_class, run_target.label])
    constants = text_constants(clip_model, prompt.source_class, run_target.label, prompt.ctx_init)
    handwritten = constants["template"] if c1.handwritten == "template" else None
    logit_scale = clip_model.logit_scale

    # The prompt model (mapper or one shared prompt set) and its optimiser.
    n_ctx = encoder.n_ctx
    model = build_prompt_model(
        config.prompt.scheme,
        backend.code_dim,
        n_ctx,
        clip_model.token_dim,
        config.mapper,
        ctx_init_embedding(clip_model, prompt.ctx_init, n_ctx),
        seed=c1.seed,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=c1.lr)

    # The (code, image feature) pairs of every step, then the stage's seed
    # (the rendering noise of fresh images comes from the global generator).
    pairs = backend.stage1_pairs(config, clip_model, config_lib.resolve(config).cache_dir, progress=progress)
    torch.manual_seed(c1.seed)
    start = 0
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, "mapper")
        check_same_target(ckpt_path, ckpt["prompt"].get("target", {}), run_target)
        model.load_state_dict(ckpt["mapper"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        pairs.load_state(ckpt["rng"])
        start = ckpt["step"]
    log = open_stats(config, run_dir, "stage1", start)

    def save(step):
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": config_lib.to_dict(config),
                "step": step,
                "prompt": prompt_model_meta(config, backend.code_dim, clip_model, n_ctx, run_target),
                "mapper": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {**rng_state(), **pairs.state()},
            },
            ckpt_path,
        )

    bar = progress_bar(range(start, c1.iterations), desc="stage 1", initial=start, total=c1.iterations, disable=not progress)
    tick, last_logged = time.time(), start
    for step in bar:
        codes, image_features = pairs.batch(step, device)

        # Prompts -> features of every source and target prompt in one call.
        source, target = prompt_features(encoder, model(codes), handwritten)
        terms = stage1_losses(
            image_features,
            source,
            target,
            constants,
            contrastive=c1.contrastive_loss,
            domain=c1.domain_loss,
            lambda_domain=c1.lambda_domain,
            lambda_src=c1.lambda_src,
            logit_scale=logit_scale,
        )
        values = {k: v.item() for k, v in terms.items()}
        check_finite(step, values, ckpt_path)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()

        done = step + 1
        bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
        if done % c1.log_every == 0 or done == c1.iterations:
            now = time.time()
            log.write(done, **values, lr=learning_rate(optimizer), sec_per_iter=round((now - tick) / (done - last_logged), 4))
            tick, last_logged = now, done
        if done % c1.checkpoint_every == 0 or done == c1.iterations:
            save(done)
    bar.close()
    log.close()
    if start >= c1.iterations and not ckpt_path.exists():
        save(start)
    return ckpt_path
