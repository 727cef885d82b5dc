"""Prompt matrices ``[SOS] V1..Vm <label tokens> [EOS]`` and their CLIP features.

As in CoOp, the fixed parts of each prompt are kept as buffers: the start
token embedding (prefix) and the label tokens, end token and padding
(suffix). The learned vectors are spliced in between, and every prompt of a
step (all images, source and target labels) goes through CLIP's text
transformer in one batched call.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..clip import IMAGENET_TEMPLATES, clip
from .losses import normalize


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


@dataclass(frozen=True, eq=False)
class Label:
    """A domain label: words, optionally followed by a learned pseudo-word.

    Every prompt that names a domain ("a photo of a {}", the 79 templates,
    the label alone) takes the label's tokens where ``{}`` stands, then the
    ``word`` rows spliced in as token embeddings, so a learned word goes
    wherever a label does and the rest of IPL is unchanged.

    Attributes:
        text: The words (may be empty when the word stands alone).
        word: Learned token embeddings ``(n, k)`` following the words, or None.
    """

    text: str
    word: Optional[torch.Tensor] = None

    def __str__(self):
        return self.text if self.word is None else f"{self.text} <{self.word.shape[0]} learned tokens>".strip()


def as_label(label):
    """A :class:`Label` from a string or a Label."""
    return label if isinstance(label, Label) else Label(label)


def embed_with_label(clip_model, templates, *labels):
    """Token embeddings of every template (``"... {} ..."``) filled with every label, label-major.

    Labels without a word are tokenised as the filled strings, all in one
    call. With a word, the pieces around ``{}`` and the label's words are
    tokenised apart (the tokenizer never joins across a space or
    punctuation, so the ids are those of the whole string) and the word's
    rows are spliced in after the words, differentiably. Rows are padded to
    the longest with token 0, as the tokenizer pads (the features never
    depend on tokens after [EOS]).

    Returns:
        ``(x (N, L, k), eot (N,))``, N = len(labels) * len(templates), L the
        longest prompt up to its [EOS].
    """
    labels = [as_label(label) for label in labels]
    if all(label.word is None for label in labels):
        tokens = clip_model.tokenize([t.replace("{}", label.text) for label in labels for t in templates])
        eot = tokens.argmax(dim=-1)
        return clip_model.embed_tokens(tokens[:, : int(eot.max()) + 1]), eot
    tokenizer = clip.clip._tokenizer
    start, end = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    rows, words = [], []  # token ids (0 where the word goes), and (first position, word) of each row
    for label in labels:
        for template in templates:
            before, after = template.split("{}")
            head = [start] + tokenizer.encode(before) + tokenizer.encode(label.text)
            n = 0 if label.word is None else label.word.shape[0]
            rows.append(head + [0] * n + tokenizer.encode(after) + [end])
            words.append((len(head), label.word))
    length = max(map(len, rows))
    context = clip_model.model.positional_embedding.shape[0]
    if length > context:
        raise ValueError(f"a prompt of the label {labels} has {length} tokens, more than CLIP's {context}; use fewer word tokens")
    tokens = torch.tensor([r + [0] * (length - len(r)) for r in rows], device=clip_model.device)
    with torch.no_grad():
        base = clip_model.embed_tokens(tokens)  # (N, L, k)
    x = [
        row if word is None else torch.cat([row[:at], word.to(row), row[at + word.shape[0] :]])
        for row, (at, word) in zip(base, words)
    ]
    return torch.stack(x), torch.tensor([len(r) - 1 for r in rows], device=clip_model.device)


def label_features(clip_model, templates, *labels):
    """Un-normalised features ``(len(labels) * len(templates), D)`` of the filled templates, label-major, in one call.

    Differentiable in the labels' words.
    """
    return clip_model.encode_embeddings(*embed_with_label(clip_model, templates, *labels))


class PromptTextEncoder(nn.Module):
    """CLIP text features of learned prompt vectors followed by fixed labels.

    Args:
        clip_model: A :class:`ipl.clip.FrozenCLIP`.
        ctx_init: The words whose token positions the learned vectors take
            (official: ``"a photo of a"``, so m = 4). Only their count and
            positions matter; their embeddings are replaced.
        labels: Domain labels (strings or :class:`Label` with a learned word),
            e.g. ``["human", "tolkien elf"]``. The official prompt is
            ``ctx_init + " " + label`` with no final period.
    """

    def __init__(self, clip_model, ctx_init, labels):
        super().__init__()
        self.clip = clip_model
        self.n_ctx = check_ctx_init(clip_model, ctx_init)
        self.labels = [as_label(label) for label in labels]
        with torch.no_grad():
            embedding, eot = embed_with_label(clip_model, [f"{ctx_init} {{}}"], *self.labels)  # (n_labels, L, k)
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

    ``source_class`` / ``target_class`` are strings or :class:`Label` (a
    learned target word goes wherever the target label does).

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
    source, target = as_label(source_class), as_label(target_class)
    source_t, target_t = (normalize(label_features(clip_model, IMAGENET_TEMPLATES, label)) for label in (source, target))
    return {
        "source_templates": source_t.mean(0),
        "target_templates": target_t.mean(0),
        "source_template_features": source_t,
        "target_template_features": target_t,
        "template": label_features(clip_model, [f"{ctx_init} {{}}."], source, target),
        "ctx_init": clip_model.encode_text([ctx_init])[0],
        "target_label": label_features(clip_model, ["{}"], target)[0],
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
