"""The losses of both stages, as pure functions of CLIP features.

No function here touches a model, keeps state or writes into its inputs.
Symbols follow the paper: I^i image features, T_s^i / T_t^i source / target
prompt features, Sim_ij cosine similarities, lambda the loss ratio.
"""

import torch
import torch.nn.functional as F


def normalize(x):
    """L2 normalisation along the last dimension (no epsilon, as the official code)."""
    return x / x.norm(dim=-1, keepdim=True)


def cosine(a, b):
    """Row-wise cosine similarity of two ``(..., D)`` tensors (broadcasting)."""
    return (normalize(a) * normalize(b)).sum(-1)


def with_handwritten(learned, handwritten=None):
    """Official text features: ``Norm(E_T(M) + E_T(h))``; ``Norm(E_T(M))`` without h.

    Args:
        learned: Un-normalised features of the learned prompts ``(B, D)``.
        handwritten: Un-normalised feature of the hand-written prompt ``(D,)``
            (or ``(B, D)``), added before normalising; ``None`` for the paper's
            features.
    """
    return normalize(learned if handwritten is None else learned + handwritten)


# ---------------------------------------------------------------------------
# Stage 1


def contrastive_official(image_features, text_features, logit_scale):
    """Symmetric CLIP cross-entropy (official L_contr).

    logits = exp(s) * Norm(I) @ T_s^T,  L = (CE(logits, i) + CE(logits^T, i)) / 2,
    with the image features detached (only the prompts learn).

    Args:
        image_features: ``(n, D)`` features of G_s(w^i).
        text_features: ``(n, D)`` normalised source prompt features T_s^i.
        logit_scale: exp of CLIP's logit scale (100 for the released models).
    """
    image = normalize(image_features).detach()
    logits = logit_scale * image @ text_features.t()  # (n, n), row = image
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def contrastive_paper(image_features, text_features):
    """Eq. 4: E_w ( sum_{i!=j} Sim_ij - sum_{i=j} Sim_ij ).

    Sim_ij = Cos(Norm(E_I(G_s(w^i))), Norm(E_T(M_s^j))) (Eq. 3). The
    expectation over w is the mean over the batch of each image's term
    ``sum_{j!=i} Sim_ij - Sim_ii``, i.e. the double sum divided by n.
    """
    sim = normalize(image_features).detach() @ normalize(text_features).t()  # (n, n)
    n = sim.shape[0]
    positives = sim.diagonal().sum()
    return (sim.sum() - 2 * positives) / n


def domain_official(target_features, target_templates, source_features=None, source_templates=None, lambda_src=0.0):
    """Official L_domain: 1 - cos(T_t^i, mean of the 79 template features).

    ``mean_t`` is the mean of the normalised template features of the target
    label (not re-normalised: it only enters a cosine). With ``lambda_src``,
    the same term for the source prompts is added with that weight.

    Args:
        target_features: ``(n, D)`` target prompt features T_t^i.
        target_templates: ``(D,)`` mean template feature of the target label.
        source_features / source_templates: the same for the source label.
    """
    loss = (1 - cosine(target_features, target_templates)).mean()
    if lambda_src:
        loss = loss + lambda_src * (1 - cosine(source_features, source_templates)).mean()
    return loss


def domain_paper(target_features, label_feature):
    """Eq. 5: -E_w sum_i Cos(E_T(M_t^i), E_T(Y_t)), the sum's expectation as a batch mean."""
    return -cosine(target_features, label_feature).mean()


def stage1_losses(image_features, source_features, target_features, constants, contrastive="official", domain="official", lambda_domain=1.0, lambda_src=0.0, logit_scale=100.0):
    """Eq. 6: L = L_contr + lambda * L_domain, as a dict of named terms plus ``total``.

    Args:
        image_features: ``(n, D)`` CLIP features of the source images.
        source_features / target_features: ``(n, D)`` normalised prompt
            features T_s^i / T_t^i.
        constants: Text features computed once per run: ``source_templates``
            / ``target_templates`` (mean template features, official) and
            ``target_label`` (E_T(Y_t), paper).
    """
    if contrastive == "official":
        l_contr = contrastive_official(image_features, source_features, logit_scale)
    elif contrastive == "paper":
        l_contr = contrastive_paper(image_features, source_features)
    else:
        raise ValueError(f"unknown contrastive loss {contrastive!r}")
    if domain == "official":
        l_domain = domain_official(
            target_features, constants["target_templates"], source_features, constants["source_templates"], lambda_src
        )
    elif domain == "paper":
        l_domain = domain_paper(target_features, constants["target_label"])
    else:
        raise ValueError(f"unknown domain loss {domain!r}")
    return {"contrastive": l_contr, "domain": l_domain, "total": l_contr + lambda_domain * l_domain}


# ---------------------------------------------------------------------------
# Stage 2


def text_directions(source_features, target_features):
    """Eq. 8, per image: dT_i = Norm(Norm(T_t^i) - Norm(T_s^i)), ``(n, D)``."""
    return normalize(normalize(target_features) - normalize(source_features))


def template_direction(source_templates, target_templates):
    """NADA's fixed direction: Norm(mean_k (Norm E_T(t_k(target)) - Norm E_T(t_k(source))))."""
    return normalize((normalize(target_templates) - normalize(source_templates)).mean(0))


def image_direction(source_image_features, target_image_features):
    """NADA's image-to-image direction: Norm(mean_i Norm(E_I(y_i)) - mean_j Norm(E_I(G_s(w_j)))).

    The direction from the source images' mean normalised feature to the
    target images' (StyleGAN-NADA's ``compute_img2img_direction``; neither
    mean is re-normalised).
    """
    return normalize(normalize(target_image_features).mean(0) - normalize(source_image_features).mean(0))


def direction_loss(source_image_features, target_image_features, text_direction):
    """Eq. 7 + 9: mean_i (1 - cos(dI_i, dT_i)).

    dI_i = Norm(Norm(E_I(G_t(w^i))) - Norm(E_I(G_s(w^i)))); ``text_direction``
    is ``(n, D)`` (one direction per image, IPL) or ``(D,)`` (shared, NADA).
    """
    d_image = normalize(normalize(target_image_features) - normalize(source_image_features))
    return (1 - cosine(d_image, text_direction)).mean()


def global_clip_loss(image_features, text_feature, logit_scale):
    """NADA's layer-selection loss: mean_i (1 - exp(s) cos(I_i, T) / 100)."""
    return (1 - logit_scale * cosine(image_features, text_feature) / 100).mean()
