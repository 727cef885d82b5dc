"""NADA's adaptive layer selection: which StyleGAN2 layers train in a Stage-2 step."""

import torch

from ...method.losses import global_clip_loss


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
