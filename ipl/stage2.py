"""Stage 2: adapt the generator with image-specific directions (Eq. 7-9).

Two generators come from one checkpoint: the frozen source G_s and the
trainable G_t, plus G_t's EMA. Each step picks the layers to train (NADA's
adaptive layer selection), computes one text direction per latent from its
learned prompts (or NADA's single template direction), and moves every
image pair ``(G_s(w), G_t(w))`` along its own direction in CLIP space.
"""

import copy
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import config as config_lib
from .losses import direction_loss, global_clip_loss, template_direction, text_directions
from .mapper import build_prompt_model
from .prompts import PromptTextEncoder, prompt_features, text_constants
from .runtime import (
    CHECKPOINT_FORMAT,
    LatentSampler,
    StatsLog,
    TrainingDiverged,
    atomic_save,
    check_finite,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .sampling import grid, render, save_png, z_from_seeds

# ---------------------------------------------------------------------------
# Which layers a W+ slot selects


def official_slot_layers(generator):
    """The official mapping: slot j selects entry j of [conv1, to_rgb1] + convs.

    This is off by one from the network: ``to_rgb1`` and ``convs.0`` read slot
    1, ``convs.j`` reads slot j + 1. The authors' results were produced with
    it, so it is the default.
    """
    return [[name] for name, _ in generator.adaptable_layers()][: generator.n_latent]


def exact_slot_layers(generator):
    """The candidate layers that actually read each W+ slot."""
    slots = [["conv1"]] + [[f"convs.{j}"] for j in range(len(generator.convs))]
    slots[1].insert(0, "to_rgb1")
    return slots[: generator.n_latent]


SLOT_MAPPINGS = {"official": official_slot_layers, "exact": exact_slot_layers}


def candidate_layers(generator):
    """The Stage-2 trainable candidates by name: conv1, to_rgb1, convs.* (never
    the mapping network, the constant input or to_rgbs)."""
    return dict(generator.adaptable_layers())


def set_trainable(generator, names):
    """Freeze every weight of ``generator``, then unfreeze the named layers."""
    generator.requires_grad_(False)
    for name in names:
        generator.get_submodule(name).requires_grad_(True)


def select_layers(generator, clip_model, w, text_feature, k, mapping="official", iters=1, lr=0.01, chunk=0, noise=None):
    """NADA's adaptive layer selection, with gradients w.r.t. W+ only.

    W = w broadcast to every slot; ``iters`` SGD steps (``lr``) on W minimising
    ``1 - exp(s) cos(E_I(G(W)), E_T(target label)) / 100``; slots ranked by
    mean |W - W0|; the top ``k`` slots mapped to layers. Only the gradient
    w.r.t. W is computed (no weight gradients), and in chunks of ``chunk``
    images (the loss is a mean over images, so the sum of the chunks' scaled
    gradients is the batch gradient).

    Args:
        generator: G_t; its weights are frozen here (the caller re-selects).
        w: ``(B, style_dim)`` latents.
        text_feature: ``(D,)`` features of the raw target label.
        noise: Optional explicit noise list (tests); default random noise.

    Returns:
        Sorted list of the chosen layer names.
    """
    generator.requires_grad_(False)
    n = w.shape[0]
    w0 = w.detach().unsqueeze(1).repeat(1, generator.n_latent, 1)  # (B, n_latent, D)
    wplus = w0.clone()
    logit_scale = clip_model.logit_scale
    for _ in range(iters):
        grad = torch.zeros_like(wplus)
        for idx in torch.arange(n, device=w.device).split(chunk or n):
            x = wplus[idx].requires_grad_(True)
            part_noise = None if noise is None else [nz[idx] if nz.shape[0] == n else nz for nz in noise]
            image = generator([x], input_is_latent=True, noise=part_noise)[0]
            loss = global_clip_loss(clip_model.encode_images(image), text_feature, logit_scale) * (len(idx) / n)
            grad[idx] = torch.autograd.grad(loss, x)[0]
        wplus = wplus.add(grad, alpha=-lr)  # the SGD update, same arithmetic as torch.optim.SGD
    score = (wplus - w0).abs().mean(dim=-1).mean(dim=0)  # (n_latent,)
    slots = torch.topk(score, k).indices.tolist()
    layers = SLOT_MAPPINGS[mapping](generator)
    return sorted({name for s in slots for name in layers[s]})


# ---------------------------------------------------------------------------
# Text directions


class Directions:
    """Text directions dT for a batch of latents, per prompt scheme.

    ``manual``: NADA's single direction from the 79 templates (computed once).
    ``adaptive`` / ``learned_fixed`` / ``random``: one direction per latent from
    its prompts, Norm(Norm(T_t) - Norm(T_s)) with the official hand-written
    composition (``handwritten``).
    """

    def __init__(self, scheme, clip_model, constants, prompt_model=None, encoder=None, handwritten="ctx_init"):
        self.scheme = scheme
        self.prompt_model = prompt_model
        self.encoder = encoder
        if scheme == "manual":
            self.fixed = template_direction(constants["source_template_features"], constants["target_template_features"])
            return
        if prompt_model is None or encoder is None:
            raise ValueError(f"the {scheme!r} scheme needs a prompt model and a prompt encoder")
        if handwritten == "ctx_init":
            # The official Stage-2 quirk: the hand-written text is ctx_init
            # alone, identical for source and target.
            self.handwritten = constants["ctx_init"].expand(2, -1)
        elif handwritten == "template":
            self.handwritten = constants["template"]
        else:
            self.handwritten = None

    @torch.no_grad()
    def __call__(self, w):
        """``(B, D)`` directions (``manual``: ``(D,)`` shared by all)."""
        if self.scheme == "manual":
            return self.fixed
        source, target = prompt_features(self.encoder, self.prompt_model(w), self.handwritten)
        return text_directions(source, target)


# ---------------------------------------------------------------------------
# Training


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, over every parameter and buffer."""
    ema_t = list(ema.state_dict(keep_vars=True).values())
    model_t = list(model.state_dict(keep_vars=True).values())
    ema_t = [t.data for t in ema_t]
    torch._foreach_mul_(ema_t, decay)
    torch._foreach_add_(ema_t, [t.data for t in model_t], alpha=1 - decay)


def build_directions(config, clip_model, generator, prompt_model=None):
    """The Directions of a run's ``prompt.scheme`` (and the constant text features)."""
    c2, prompt = config.stage2, config.prompt
    constants = text_constants(clip_model, prompt.source_class, prompt.target_class, prompt.ctx_init)
    if prompt.scheme == "manual":
        return Directions("manual", clip_model, constants), constants
    encoder = PromptTextEncoder(clip_model, prompt.ctx_init, [prompt.source_class, prompt.target_class])
    if prompt.scheme == "random":
        # The adaptive mapper as initialised before Stage 1 (same seed), untrained.
        prompt_model = build_prompt_model(
            "random", generator.style_dim, encoder.n_ctx, clip_model.token_dim, config.mapper, seed=config.stage1.seed
        )
    if prompt_model is None:
        raise ValueError(f"prompt.scheme {prompt.scheme!r} needs a Stage-1 checkpoint (mapper.pt)")
    prompt_model = prompt_model.to(clip_model.device).eval().requires_grad_(False)
    directions = Directions(prompt.scheme, clip_model, constants, prompt_model, encoder, c2.handwritten)
    return directions, constants


def sample_rows(source, ema, config, truncation_latent):
    """Source and adapted images of the fixed sample seeds."""
    c2 = config.stage2
    z = z_from_seeds(range(c2.sample_seed, c2.sample_seed + c2.n_sample), source.style_dim)
    chunk = config.generator.render_chunk
    kw = dict(truncation=c2.sample_truncation, truncation_latent=truncation_latent, chunk=chunk)
    return render(source, z, **kw), render(ema, z, **kw)


def train_generator(config, source, clip_model, run_dir, device, prompt_model=None, truncation_latent=None, latent_avg=None, resume=False, progress=True):
    """Stage 2: fine-tune a copy of ``source`` and write its EMA.

    Args:
        config: The run's :class:`ipl.config.Config`.
        source: The frozen source generator G_s (on ``device``).
        clip_model: :class:`ipl.clip.FrozenCLIP` (on ``device``).
        run_dir: Output folder: ``stage2.pt`` (resumable), ``generator.pt``
            (the EMA generator in the reference-port format), ``samples/``,
            ``stats_stage2.jsonl``.
        prompt_model: The Stage-1 prompt model (``adaptive``, ``learned_fixed``).
        truncation_latent: Mean W for the sample grids.
        latent_avg: The source checkpoint's ``latent_avg``, carried into the output.
        resume: Continue from ``run_dir/stage2.pt`` if it exists.

    Returns:
        Path of ``generator.pt``.
    """
    from stylegan2 import save_generator

    c2 = config.stage2
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "stage2.pt"
    derived = config_lib.resolve(config, source.size)

    # Generators: frozen source, trainable copy, EMA copy.
    source = source.eval().requires_grad_(False)
    trainable = copy.deepcopy(source).train()
    ema = copy.deepcopy(source).eval()
    candidates = [p for _, layer in trainable.adaptable_layers() for p in layer.parameters()]

    # Text: constant features once; the direction provider of the scheme.
    directions, constants = build_directions(config, clip_model, source, prompt_model)
    label_feature = constants["target_label"]

    # Adam over the candidates. Every candidate holds a (zero) gradient from
    # the start: with the old zero_grad semantics of the authors' PyTorch,
    # layers not chosen in a step still took an Adam step with a zero
    # gradient (no move with beta1 = 0, but their second moments decay).
    optimizer = torch.optim.Adam(candidates, lr=derived.stage2_lr, betas=derived.stage2_betas)
    for p in candidates:
        p.grad = torch.zeros_like(p)

    torch.manual_seed(c2.seed)  # noise of both generators, layer-selection latents
    sampler = LatentSampler(c2.seed, c2.batch, source.style_dim)
    selection_sampler = LatentSampler(c2.seed + 1, c2.auto_layer_batch, source.style_dim)
    start, chosen = 0, []
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, "g")
        trainable.load_state_dict(ckpt["g"])
        ema.load_state_dict(ckpt["g_ema"])
        optimizer.load_state_dict(ckpt["g_optim"])
        set_rng_state(ckpt["rng"], sampler)
        selection_sampler.generator.set_state(ckpt["rng"]["selection"])
        start, chosen = ckpt["step"], list(ckpt["chosen_layers"])
    log = StatsLog(run_dir / "stats_stage2.jsonl", resume=start > 0)
    log.truncate_after(start)
    meta = {"source_class": config.prompt.source_class, "target_class": config.prompt.target_class}

    def save(step):
        # Never write weights that went non-finite; keep the last good file.
        if not all(torch.isfinite(p).all() for p in candidates):
            check_finite(step, {"weights": float("nan")}, ckpt_path)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": config_lib.to_dict(config),
            "step": step,
            "generator": source.config,
            "g_ema": ema.state_dict(),
            "latent_avg": latent_avg,
            "g": trainable.state_dict(),
            "g_optim": optimizer.state_dict(),
            "chosen_layers": chosen,
            "rng": {**rng_state(sampler), "selection": selection_sampler.generator.get_state()},
            "meta": meta,
        }
        atomic_save(state, ckpt_path)

    def samples(step):
        src, adapted = sample_rows(source, ema, config, truncation_latent)
        save_png(grid([src, adapted]), run_dir / "samples" / f"step_{step:06d}.png")

    bar = tqdm(range(start, c2.iterations), desc="stage 2", initial=start, total=c2.iterations, disable=not progress)
    tick = time.time()
    loss_sum, n_summed = torch.zeros((), device=device), 0  # summed on the device: no per-step sync
    for step in bar:
        z = sampler().to(device)
        # Layer selection (every `layer_selection_every` steps; 1 = authors').
        if step % c2.layer_selection_every == 0 or not chosen:
            w_sel = source.style(selection_sampler().to(device))
            chosen = select_layers(
                trainable,
                clip_model,
                w_sel,
                label_feature,
                derived.auto_layer_k,
                c2.layer_mapping,
                c2.auto_layer_iters,
                c2.auto_layer_lr,
                c2.chunk,
            )
        set_trainable(trainable, chosen)

        # Directions and the adaptive directional loss, chunk by chunk.
        with torch.no_grad():
            w = source.style(z)
        d_text = directions(w)
        for idx in torch.arange(c2.batch, device=device).split(c2.chunk or c2.batch):
            with torch.no_grad():
                f_source = clip_model.encode_images(source([w[idx]], input_is_latent=True)[0])
            f_target = clip_model.encode_images(trainable([w[idx]], input_is_latent=True)[0])
            d = d_text if d_text.ndim == 1 else d_text[idx]
            loss = direction_loss(f_source, f_target, d) * (len(idx) / c2.batch)
            loss.backward()
            loss_sum += loss.detach()
        n_summed += 1
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        ema_update(ema, trainable, c2.ema_decay)

        done = step + 1
        if done % c2.log_every == 0 or done == c2.iterations:
            mean_loss = loss_sum.item() / n_summed
            check_finite(done, {"loss": mean_loss}, ckpt_path)
            now = time.time()
            log.write(done, loss=mean_loss, layers=chosen, sec_per_iter=round((now - tick) / n_summed, 4))
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            loss_sum.zero_()
            n_summed, tick = 0, now
        if done % c2.output_interval == 0 or done == c2.iterations:
            samples(done)
        if done % c2.checkpoint_every == 0 or done == c2.iterations:
            save(done)
    bar.close()

    out = run_dir / "generator.pt"
    save_generator(out, ema, latent_avg=latent_avg, meta={**meta, "step": c2.iterations}, config=config_lib.to_dict(config), step=c2.iterations)
    return out


__all__ = [
    "Directions",
    "TrainingDiverged",
    "candidate_layers",
    "ema_update",
    "exact_slot_layers",
    "official_slot_layers",
    "select_layers",
    "set_trainable",
    "train_generator",
]
