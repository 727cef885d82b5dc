"""Evaluation metrics of the paper (IS, SIFID, SCS, ID) and mode-collapse measures.

Naming: ``compute_*`` functions take networks plus images (one tensor or an
iterable of (B, 3, H, W) batches in [-1, 1]) and stream over them; the other
metric functions are pure functions of probabilities or features. ``load_*``
read the real weights from local files (see ``ipl.metrics.weights``);
``build_*`` / the network classes give weight-free networks.
See docs/EVALUATION.md.
"""

from .arcface import IRSE50, ArcFaceExtractor, arcface_preprocess, load_arcface
from .clip_metrics import (
    clip_score,
    compute_clip_diversity,
    compute_clip_score,
    diversity_from_sum,
    mean_pairwise_cosine_distance,
    unit_features,
)
from .diversity import (
    IntraClusterLPIPS,
    build_lpips,
    compute_intra_cluster_lpips,
    load_lpips,
)
from .frechet import frechet_distance, gaussian_statistics
from .hed import HED, load_hed
from .identity import compute_id, id_values, identity_similarity
from .inception import InceptionStem, build_inception, load_inception, load_sifid_stem
from .inception_score import (
    compute_inception_score,
    inception_probabilities,
    inception_score,
)
from .scs import compute_scs, quantize_edges, scs_values, structural_consistency
from .sifid import compute_sifid, reference_statistics, sifid_statistics, sifid_values
from .weights import (
    WEIGHTS,
    MissingWeightsError,
    WeightFile,
    download_weights,
    resolve_weights,
)

__all__ = [
    "ArcFaceExtractor",
    "HED",
    "IRSE50",
    "InceptionStem",
    "IntraClusterLPIPS",
    "MissingWeightsError",
    "WEIGHTS",
    "WeightFile",
    "arcface_preprocess",
    "build_inception",
    "build_lpips",
    "clip_score",
    "compute_clip_diversity",
    "compute_clip_score",
    "compute_id",
    "compute_inception_score",
    "compute_intra_cluster_lpips",
    "compute_scs",
    "compute_sifid",
    "diversity_from_sum",
    "download_weights",
    "frechet_distance",
    "gaussian_statistics",
    "id_values",
    "identity_similarity",
    "inception_probabilities",
    "inception_score",
    "load_arcface",
    "load_hed",
    "load_inception",
    "load_lpips",
    "load_sifid_stem",
    "mean_pairwise_cosine_distance",
    "quantize_edges",
    "reference_statistics",
    "resolve_weights",
    "scs_values",
    "sifid_statistics",
    "sifid_values",
    "structural_consistency",
    "unit_features",
]
