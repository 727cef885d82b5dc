"""Evaluation of adapted models with the paper's metrics, in one rendering pass.

``settings``: the metrics, :class:`EvalSettings` and the networks they need;
``stream``: source and adapted images streamed into every metric at once;
``checkpoint``: evaluating an adapted model file into a record;
``report``: ``metrics.json`` and ``metrics.md``. The Table-1 reproduction,
which also trains, is :mod:`ipl.table1`, above this package.
"""

from .checkpoint import RECORD_FORMAT, evaluate_checkpoint
from .report import metrics_table, record_markdown, write_record
from .settings import (
    METRICS,
    EvalSettings,
    EvaluationError,
    MetricNetworks,
    load_metric_networks,
    parse_metrics,
    required_networks,
)
from .stream import (
    evaluate_generators,
    fan_out,
    image_pairs,
    load_references,
    quantize_images,
)

__all__ = [
    "EvalSettings",
    "EvaluationError",
    "METRICS",
    "MetricNetworks",
    "RECORD_FORMAT",
    "evaluate_checkpoint",
    "evaluate_generators",
    "fan_out",
    "image_pairs",
    "load_metric_networks",
    "load_references",
    "metrics_table",
    "parse_metrics",
    "quantize_images",
    "record_markdown",
    "required_networks",
    "write_record",
]
