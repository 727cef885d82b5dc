"""Latent mappers: from a latent code w to its m prompt vectors.

``LatentMapper`` is the official architecture of the IPL code. The two
ablation schemes of the paper's Fig. 6 use the same interface: ``FixedPrompts``
(one learned prompt set shared by every image, CoOp style) and an untrained,
seeded ``LatentMapper`` ("random").
"""

import torch
from torch import nn

from stylegan2.ops.layers import EqualLinear, PixelNorm


class LatentMapper(nn.Module):
    """``(B, w_dim) -> (B, m, k)``: PixelNorm, then fully connected layers.

    Every layer is an equalised-lr linear layer with ``lr_mul`` and a fused
    leaky ReLU (slope 0.2, gain sqrt 2), the last one included, so the prompt
    vectors themselves pass through the leaky ReLU (as in the official code).

    Args:
        w_dim: Width of the latent code (512 for StyleGAN2).
        n_ctx: m, the number of prompt vectors.
        token_dim: k, the width of CLIP's token embeddings.
        n_hidden: Hidden layers before the output layer (official: 3).
        hidden_dim: Their width (official: 512).
        lr_mul: Learning-rate multiplier of every layer (official: 0.01).
    """

    def __init__(self, w_dim, n_ctx, token_dim, n_hidden=3, hidden_dim=512, lr_mul=0.01):
        super().__init__()
        self.n_ctx = n_ctx
        self.token_dim = token_dim
        layers = [PixelNorm()]
        in_dim = w_dim
        for _ in range(n_hidden):
            layers.append(EqualLinear(in_dim, hidden_dim, lr_mul=lr_mul, activation="fused_lrelu"))
            in_dim = hidden_dim
        layers.append(EqualLinear(in_dim, n_ctx * token_dim, lr_mul=lr_mul, activation="fused_lrelu"))
        self.mapping = nn.Sequential(*layers)

    def forward(self, w):
        return self.mapping(w).view(w.shape[0], self.n_ctx, self.token_dim)  # (B, m, k)


class FixedPrompts(nn.Module):
    """One learned prompt set ``(m, k)`` shared by every latent (CoOp style).

    Initialised from ``init`` (e.g. the token embeddings of ``ctx_init``, as
    CoOp does when given initial words).
    """

    def __init__(self, init):
        super().__init__()
        self.ctx = nn.Parameter(init.detach().float().clone())  # (m, k)

    @property
    def n_ctx(self):
        return self.ctx.shape[0]

    def forward(self, w):
        return self.ctx.unsqueeze(0).expand(w.shape[0], -1, -1)  # (B, m, k)


def build_prompt_model(scheme, w_dim, n_ctx, token_dim, mapper_config, ctx_embedding=None, seed=0):
    """The prompt model of a scheme: ``adaptive``/``random`` mapper or ``learned_fixed`` prompts.

    The mapper's initial weights come from ``seed`` (a "random" scheme is
    such a mapper, never trained).
    """
    if scheme == "learned_fixed":
        if ctx_embedding is None:
            raise ValueError("the learned_fixed scheme needs ctx_embedding (m, k) to start from")
        return FixedPrompts(ctx_embedding)
    if scheme not in ("adaptive", "random"):
        raise ValueError(f"unknown prompt scheme {scheme!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentMapper(
            w_dim,
            n_ctx,
            token_dim,
            n_hidden=mapper_config.n_hidden,
            hidden_dim=mapper_config.hidden_dim,
            lr_mul=mapper_config.lr_mul,
        )
