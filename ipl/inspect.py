"""Look inside learned prompts: nearest vocabulary tokens and how image-specific they are."""

import torch

from .clip import clip


def nearest_tokens(ctx, token_embedding, k=3):
    """Nearest vocabulary tokens of each prompt vector by cosine similarity.

    Args:
        ctx: Prompt vectors ``(..., k_dim)``.
        token_embedding: CLIP's token embedding matrix ``(vocab, k_dim)``.
        k: How many neighbours.

    Returns:
        ``(similarities, token ids)``, each ``(..., k)``.
    """
    a = ctx.float() / ctx.float().norm(dim=-1, keepdim=True)
    b = token_embedding.float() / token_embedding.float().norm(dim=-1, keepdim=True)
    return torch.topk(a @ b.t(), k, dim=-1)


def decode_token(token_id):
    """Readable text of one BPE token (``</w>`` marks a word end)."""
    return clip.clip._tokenizer.decoder[int(token_id)].replace("</w>", "")


def mean_pairwise_cosine(ctx):
    """Mean cosine between the prompt sets of different images.

    Each image's prompts ``(m, k)`` are flattened into one vector; 1 means
    every image got the same prompts (no image specificity).

    Args:
        ctx: ``(B, m, k)`` with B >= 2.
    """
    x = ctx.flatten(1).float()
    x = x / x.norm(dim=-1, keepdim=True)
    sim = x @ x.t()
    n = sim.shape[0]
    return ((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).item()


def per_position_cosine(ctx):
    """Mean pairwise cosine across images for each prompt position ``(m,)``."""
    x = ctx.float() / ctx.float().norm(dim=-1, keepdim=True)  # (B, m, k)
    sim = torch.einsum("imk,jmk->mij", x, x)  # (m, B, B)
    n = ctx.shape[0]
    return (sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
