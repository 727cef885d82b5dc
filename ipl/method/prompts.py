"""Prompt matrices ``[SOS] V1..Vm <label tokens> [EOS]`` and their CLIP features.

As in CoOp, the fixed parts of each prompt are kept as buffers: the start
token embedding (prefix) and the label tokens, end token and padding
(suffix). The learned vectors are spliced in between, and every prompt of a
step (all images, source and target labels) goes through CLIP's text
transformer in one batched call.
"""

import torch
from torch import nn


def check_ctx_init(clip_model, ctx_init):
    """Number of prompt vectors m set by ``ctx_init``; each word must be one token."""
    words = ctx_init.split(" ")
    tokens = clip_model.tokenize([ctx_init])[0]
    n_tokens = int(tokens.argmax()) - 1  # between [SOS] and [EOS]
    if not ctx_init.strip() or n_tokens != len(words):
        raise ValueError(
            f"prompt.ctx_init {ctx_init!r} has {len(words)} words but {n_tokens} CLIP tokens; the learned "
            "vectors replace one token per word, so use words that are single tokens (e.g. 'a photo of a')"
        )
    return len(words)


class PromptTextEncoder(nn.Module):
    """CLIP text features of learned prompt vectors followed by fixed labels.

    Args:
        clip_model: A :class:`ipl.clip.FrozenCLIP`.
        ctx_init: The words whose token positions the learned vectors take
            (official: ``"a photo of a"``, so m = 4). Only their count and
            positions matter; their embeddings are replaced.
        labels: Domain labels, e.g. ``["human", "tolkien elf"]``. The official
            prompt is ``ctx_init + " " + label`` with no final period.
    """

    def __init__(self, clip_model, ctx_init, labels):
        super().__init__()
        self.clip = clip_model
        self.n_ctx = check_ctx_init(clip_model, ctx_init)
        self.labels = list(labels)
        tokens = clip_model.tokenize([f"{ctx_init} {label}" for label in self.labels])  # (n_labels, 77)
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1  # the features never depend on tokens after [EOS]
        with torch.no_grad():
            embedding = clip_model.embed_tokens(tokens[:, :length])  # (n_labels, L, k)
        self.register_buffer("prefix", embedding[:, :1].clone(), persistent=False)  # (n_labels, 1, k) [SOS]
        self.register_buffer("suffix", embedding[:, 1 + self.n_ctx :].clone(), persistent=False)  # labels, [EOS]
        self.register_buffer("eot", eot, persistent=False)  # (n_labels,)

    def prompt_embeddings(self, ctx, label):
        """The prompt matrices of one label, ``(B, L, k)``, from ``ctx`` ``(B, m, k)``."""
        batch = ctx.shape[0]
        return torch.cat(
            [
                self.prefix[label].expand(batch, -1, -1),  # (B, 1, k)
                ctx.to(self.prefix.dtype),  # (B, m, k)
                self.suffix[label].expand(batch, -1, -1),  # (B, L - 1 - m, k)
            ],
            dim=1,
        )

    def forward(self, ctx, labels=None):
        """Features of every label's prompt for every set of vectors, in one call.

        Args:
            ctx: Prompt vectors ``(B, m, k)``.
            labels: Indices into ``self.labels`` (default: all).

        Returns:
            Un-normalised features ``(n_labels, B, D)`` in float32.
        """
        labels = range(len(self.labels)) if labels is None else labels
        if ctx.ndim != 3 or ctx.shape[1] != self.n_ctx:
            raise ValueError(f"expected prompt vectors of shape (B, {self.n_ctx}, k), got {tuple(ctx.shape)}")
        batch = ctx.shape[0]
        x = torch.cat([self.prompt_embeddings(ctx, i) for i in labels])  # (n_labels * B, L, k)
        eot = torch.cat([self.eot[i].expand(batch) for i in labels])  # (n_labels * B,)
        return self.clip.encode_embeddings(x, eot).view(len(labels), batch, -1)


@torch.no_grad()
def text_constants(clip_model, source_class, target_class, ctx_init):
    """Text features that never change during a run, computed once.

    Returns a dict of float32 tensors:
        ``source_templates`` / ``target_templates`` ``(D,)``: mean of the
            normalised features of the 79 ImageNet templates (not
            re-normalised), the official domain-regularisation anchors;
        ``source_template_features`` / ``target_template_features`` ``(79, D)``:
            the normalised template features themselves (NADA's direction);
        ``template`` ``(2, D)``: un-normalised features of the Stage-1
            hand-written prompts ``ctx_init + " {label}."`` (source, target);
        ``ctx_init`` ``(D,)``: un-normalised feature of ``ctx_init`` alone,
            the official Stage-2 hand-written text;
        ``target_label`` ``(D,)``: E_T(Y_t), the target label alone (Eq. 5).
    """
    source_t = clip_model.template_features(source_class)
    target_t = clip_model.template_features(target_class)
    return {
        "source_templates": source_t.mean(0),
        "target_templates": target_t.mean(0),
        "source_template_features": source_t,
        "target_template_features": target_t,
        "template": clip_model.encode_text([f"{ctx_init} {source_class}.", f"{ctx_init} {target_class}."]),
        "ctx_init": clip_model.encode_text([ctx_init])[0],
        "target_label": clip_model.encode_text([target_class])[0],
    }


def prompt_features(encoder, ctx, handwritten=None):
    """Normalised source and target prompt features ``(B, D)`` each.

    Args:
        encoder: A :class:`PromptTextEncoder` over ``[source, target]``.
        ctx: Prompt vectors ``(B, m, k)``.
        handwritten: ``None`` (paper: learned prompts alone) or un-normalised
            hand-written features ``(2, D)`` for (source, target), added
            before normalising (official).
    """
    features = encoder(ctx)  # (2, B, D)
    if handwritten is not None:
        features = features + handwritten[:, None]
    features = features / features.norm(dim=-1, keepdim=True)
    return features[0], features[1]
