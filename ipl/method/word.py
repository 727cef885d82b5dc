"""A target label learned from images: textual inversion in CLIP's text encoder.

Many target styles have no good name in CLIP's vocabulary, but IPL needs a
target label inside its prompts (``[V1..Vm] <label>``). Given a few images
of the target, a new pseudo-word S* (a few token embeddings, the only thing
that learns; CLIP stays frozen) is optimised so that the 79 ImageNet
templates filled with it ("a bad photo of a S*.", ...) point where the
images point:

    L(S*) = 1 - cos(mean_t Norm(E_T(t(S*))), mean_i Norm(E_I(x_i)))

The template mean is what IPL's domain regularisation anchors on, and the
image mean is NADA's target encoding of the same images. The word then
stands wherever the target label does (:class:`ipl.method.prompts.Label`).
"""

import time

import torch

from ..clip import IMAGENET_TEMPLATES
from ..runtime import progress_bar
from .losses import normalize
from .prompts import Label, label_features


def initial_word(clip_model, text, n_tokens):
    """The word's starting embeddings ``(n_tokens, k)`` (float32) from the tokens of ``text``.

    The text's own token embeddings when it has ``n_tokens`` tokens, else
    their mean in every row (a one-token word from "tolkien elf" starts
    between the two).
    """
    tokens = clip_model.tokenize([text])[0]
    eot = int(tokens.argmax())
    if eot < 2:
        raise ValueError(f"the initial word {text!r} has no CLIP tokens; give it at least one word")
    with torch.no_grad():
        rows = clip_model.embed_tokens(tokens[None, 1:eot])[0].float()  # (t, k), between [SOS] and [EOS]
    return rows.clone() if rows.shape[0] == n_tokens else rows.mean(0, keepdim=True).repeat(n_tokens, 1)


def word_alignment(clip_model, label, target, templates=IMAGENET_TEMPLATES):
    """cos(mean_t Norm(E_T(t(label))), target): how well a label's templates point at ``target`` ``(D,)``."""
    mean = normalize(label_features(clip_model, templates, label)).mean(0)
    return (normalize(mean) * normalize(target)).sum()


def learn_word(clip_model, image_features, init, steps, lr, text="", templates=IMAGENET_TEMPLATES, progress=False):
    """Textual inversion: the word S* whose template features match the images' mean feature.

    Args:
        clip_model: :class:`ipl.clip.FrozenCLIP` (never changed).
        image_features: Un-normalised CLIP features of the target images ``(N, D)``.
        init: Starting embeddings ``(n, k)`` (:func:`initial_word`).
        steps: Adam steps.
        lr: Adam's learning rate.
        text: Words before the learned ones in every prompt ("" = the word alone).
        templates: Where the label goes (default: the 79 ImageNet templates).

    Returns:
        ``(word (n, k) float32, stats)``; ``stats`` holds the cosine
        alignment before and after and the seconds taken.
    """
    target = normalize(image_features.float()).mean(0).detach()  # NADA's target encoding: mean of normalised features
    word = torch.nn.Parameter(init.detach().float().clone())
    optimizer = torch.optim.Adam([word], lr=lr)
    with torch.no_grad():
        before = word_alignment(clip_model, Label(text, word), target, templates).item()
    tick = time.time()
    for _ in progress_bar(range(steps), desc="target word", disable=not progress):
        loss = 1 - word_alignment(clip_model, Label(text, word), target, templates)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.time() - tick
    with torch.no_grad():
        after = word_alignment(clip_model, Label(text, word), target, templates).item()
    return word.detach().clone(), {"alignment_before": before, "alignment_after": after, "seconds": round(seconds, 3)}
