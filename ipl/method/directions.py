"""Stage 2's text directions dT, per prompt scheme, from the codes of a batch.

Nothing here knows which generative model made the images: a direction
depends only on the code the prompt model reads (StyleGAN2's w, Diff-AE's
z_sem) and on the text encoder.
"""

import torch

from .losses import image_direction, template_direction, text_directions
from .mapper import build_prompt_model
from .prompts import PromptTextEncoder, prompt_features, text_constants


class Directions:
    """Text directions dT for a batch of codes, per prompt scheme.

    ``manual``: NADA's single direction from the 79 templates (computed once),
    or ``fixed``, its direction from images.
    ``adaptive`` / ``learned_fixed`` / ``random``: one direction per code from
    its prompts, Norm(Norm(T_t) - Norm(T_s)) with the official hand-written
    composition (``handwritten``).
    """

    def __init__(self, scheme, clip_model, constants, prompt_model=None, encoder=None, handwritten="ctx_init", fixed=None):
        self.scheme = scheme
        self.prompt_model = prompt_model
        self.encoder = encoder
        if scheme == "manual":
            if fixed is None:
                fixed = template_direction(constants["source_template_features"], constants["target_template_features"])
            self.fixed = fixed
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
    def __call__(self, codes):
        """``(B, D)`` directions for codes ``(B, code_dim)`` (``manual``: ``(D,)`` shared by all)."""
        if self.scheme == "manual":
            return self.fixed
        source, target = prompt_features(self.encoder, self.prompt_model(codes), self.handwritten)
        return text_directions(source, target)


def build_directions(config, clip_model, code_dim, prompt_model=None, target=None, source_features=None):
    """The :class:`Directions` of a run's ``prompt.scheme``, and the constant text features.

    Args:
        config: The run's :class:`ipl.config.Config` (``prompt``, ``mapper``,
            ``stage1.seed``, ``stage2.handwritten`` are used).
        clip_model: :class:`ipl.clip.FrozenCLIP`.
        code_dim: Width of the codes the prompt model reads.
        prompt_model: The Stage-1 prompt model (``adaptive``, ``learned_fixed``).
        target: The run's :class:`ipl.stages.target.Target` (default: the
            text label ``prompt.target_class``); its label goes wherever the
            target label does.
        source_features: ``n -> (n, D)`` CLIP features of n source images
            (the backend's ``source_features``), needed by ``manual`` with
            target images.

    Returns:
        ``(directions, constants)``.
    """
    prompt = config.prompt
    label = prompt.target_class if target is None else target.label
    constants = text_constants(clip_model, prompt.source_class, label, prompt.ctx_init)
    if prompt.scheme == "manual":
        fixed = None
        if target is not None and target.image_features is not None:
            # NADA's compute_img2img_direction, from img2img_batch source images.
            source = source_features(prompt.img2img_batch).to(clip_model.device)
            fixed = image_direction(source, target.image_features.to(clip_model.device))
        return Directions("manual", clip_model, constants, fixed=fixed), constants
    encoder = PromptTextEncoder(clip_model, prompt.ctx_init, [prompt.source_class, label])
    if prompt.scheme == "random":
        # The adaptive mapper as initialised before Stage 1 (same seed), untrained.
        prompt_model = build_prompt_model("random", code_dim, encoder.n_ctx, clip_model.token_dim, config.mapper, seed=config.stage1.seed)
    if prompt_model is None:
        raise ValueError(f"prompt.scheme {prompt.scheme!r} needs a Stage-1 checkpoint (mapper.pt)")
    prompt_model = prompt_model.to(clip_model.device).eval().requires_grad_(False)
    directions = Directions(prompt.scheme, clip_model, constants, prompt_model, encoder, config.stage2.handwritten)
    return directions, constants
