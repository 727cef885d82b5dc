"""What an evaluation computes: the metric names, their settings and the networks they need."""

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

METRICS = ("is", "sifid", "scs", "id", "diversity", "clip")
PAIRED_METRICS = ("scs", "id")  # need the source image of the same seed
ID_NETWORKS = ("arcface", "clip")
FACE_SOURCES = ("ffhq", "metfaces")  # sources whose ID uses ArcFace


class EvaluationError(ValueError):
    """Evaluation inputs that cannot be used as given; the message says the fix."""


def parse_metrics(text):
    """``"is,scs"`` -> ``("is", "scs")`` in the canonical order; unknown names are an error."""
    names = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    if not names:
        raise EvaluationError(f"--metrics {text!r} names no metric: choose from {','.join(METRICS)}, or leave --metrics out for all")
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise EvaluationError(f"unknown metrics {unknown}: choose from {','.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class EvalSettings:
    """Everything an evaluation result depends on, besides the weights and the texts."""

    metrics: tuple = ("is", "scs", "id", "diversity", "clip")
    n: int = 1000  # images per generator (the paper's IS protocol)
    seed_start: int = 0  # seeds seed_start .. seed_start + n - 1, one image each
    batch: int = 4  # images per batch (memory: HED at 1024 px needs ~1 GB per image)
    # The paper does not state it; 0.7 is the truncation of every image the
    # authors' code saves (its sample grids).
    truncation: float = 0.7
    # Round images to 8 bits, as evaluating saved PNG files does.
    quantize: bool = True
    is_splits: int = 10
    is_size: int = 299  # Inception input size (bilinear resize)
    sifid_size: Optional[int] = None  # None: images at their own size, as SinGAN's SIFID
    id_net: str = "arcface"  # "arcface" (faces) or "clip" (CLIP image features, e.g. dogs)
    lpips_clusters: int = 10
    lpips_per_cluster: int = 50
    lpips_size: Optional[int] = 256
    clip_model: str = "ViT-B/32"

    def __post_init__(self):
        names = self.metrics if isinstance(self.metrics, str) else ",".join(self.metrics)
        object.__setattr__(self, "metrics", parse_metrics(names))
        if self.n < 2 or self.batch < 1:
            raise EvaluationError(f"n must be >= 2 and batch >= 1 (got n={self.n}, batch={self.batch})")
        if "is" in self.metrics and self.n < self.is_splits:
            raise EvaluationError(f"IS uses {self.is_splits} splits: n={self.n} is too small")
        if "diversity" in self.metrics and self.n <= self.lpips_clusters:
            raise EvaluationError(
                f"intra-cluster LPIPS takes its {self.lpips_clusters} centres from the images: n={self.n} is too small"
            )
        if self.id_net not in ID_NETWORKS:
            raise EvaluationError(f"id_net must be one of {ID_NETWORKS}, got {self.id_net!r}")
        if not 0 < self.truncation <= 1:
            raise EvaluationError(f"truncation must be in (0, 1], got {self.truncation}")

    @property
    def seeds(self):
        return range(self.seed_start, self.seed_start + self.n)

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists, as in metrics.json


# ---------------------------------------------------------------------------
# Networks


def required_networks(settings):
    """Names of the networks the requested metrics need (nothing else is loaded)."""
    need = set()
    m = settings.metrics
    if "is" in m:
        need.add("inception")
    if "sifid" in m:
        need.add("sifid_stem")
    if "scs" in m:
        need.add("hed")
    if "id" in m:
        need.add(settings.id_net)
    if "diversity" in m:
        need |= {"lpips", "clip"}
    if "clip" in m:
        need.add("clip")
    return need


@dataclass
class MetricNetworks:
    """The metric networks; ``None`` for those not loaded."""

    inception: object = None
    sifid_stem: object = None
    hed: object = None
    arcface: object = None
    lpips: object = None
    clip: object = None  # ipl.clip.FrozenCLIP

    def check(self, names):
        missing = sorted(n for n in names if getattr(self, n) is None)
        if missing:
            raise EvaluationError(f"metric networks not loaded: {', '.join(missing)}")


def load_metric_networks(names, device, *, weights_dir=None, download=False, clip_model="ViT-B/32", clip_dtype="auto", clip_download_root=""):
    """Load the named networks with their real weights (see docs/EVALUATION.md).

    Every missing file is reported at once, in one ``MissingWeightsError``.
    """
    from .. import metrics
    from ..clip import load_clip

    loaders = {
        "inception": lambda: metrics.load_inception(device=device, download=download, weights_dir=weights_dir),
        "sifid_stem": lambda: metrics.load_sifid_stem(device=device, download=download, weights_dir=weights_dir),
        "hed": lambda: metrics.load_hed(device=device, download=download, weights_dir=weights_dir),
        "arcface": lambda: metrics.load_arcface(device=device, weights_dir=weights_dir),
        "lpips": lambda: metrics.load_lpips("vgg", device=device, download=download, weights_dir=weights_dir),
        "clip": lambda: load_clip(clip_model, device=device, dtype=clip_dtype, download_root=clip_download_root),
    }
    unknown = sorted(set(names) - set(loaders))
    if unknown:
        raise EvaluationError(f"unknown metric networks {unknown}; known: {sorted(loaders)}")
    loaded, missing = {}, []
    for name in sorted(names):
        try:
            loaded[name] = loaders[name]()
        except metrics.MissingWeightsError as e:
            missing.append(str(e))
    if missing:
        raise metrics.MissingWeightsError("\n\n".join(missing))
    return MetricNetworks(**loaded)
