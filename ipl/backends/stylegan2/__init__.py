"""The StyleGAN2 backend: the mapper reads w = mapping(z); Stage 2 trains the layers NADA selects."""

from .backend import BankPairs, FreshPairs, StyleGAN2Adaptation, StyleGAN2Backend
from .bank import (
    SourceBank,
    bank_fields,
    bank_key,
    build_bank,
    build_stage1_bank,
    latents_to_w,
    load_bank,
    render_features,
)
from .selection import (
    SLOT_MAPPINGS,
    candidate_layers,
    exact_slot_layers,
    official_slot_layers,
    select_layers,
    set_trainable,
)
from .source import build_source_generator, mean_latent

__all__ = [
    "BankPairs",
    "FreshPairs",
    "SLOT_MAPPINGS",
    "SourceBank",
    "StyleGAN2Adaptation",
    "StyleGAN2Backend",
    "bank_fields",
    "bank_key",
    "build_bank",
    "build_source_generator",
    "build_stage1_bank",
    "candidate_layers",
    "exact_slot_layers",
    "latents_to_w",
    "load_bank",
    "mean_latent",
    "official_slot_layers",
    "render_features",
    "select_layers",
    "set_trainable",
]
