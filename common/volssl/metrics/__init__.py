"""Segmentation metrics: per-case 3D Dice/Jaccard/HD95/ASD, pooled-over-slices 2D Dice, folder evaluation.

The embedding diagnostics of slice encoders (position probe, collapse) are in :mod:`volssl.metrics.embeddings`.
"""

from .evaluate import (
    PER_CASE_COLUMNS,
    evaluate_case,
    evaluate_folder,
    find_prediction,
    format_summary,
    output_paths,
    summarize,
    write_outputs,
)
from .report import evaluate_and_report
from .segmentation import (
    ASD_DEFINITION,
    EMPTY_RULES,
    HD95_DEFINITION,
    METRIC_KEYS,
    compute_case_metrics,
    empty_rule,
    image_diagonal,
    one_hot,
)
from .slice_dice import PooledSliceDice, pooled_slice_dice, slice_counts

__all__ = [
    "ASD_DEFINITION",
    "EMPTY_RULES",
    "HD95_DEFINITION",
    "METRIC_KEYS",
    "PER_CASE_COLUMNS",
    "PooledSliceDice",
    "compute_case_metrics",
    "empty_rule",
    "evaluate_and_report",
    "evaluate_case",
    "evaluate_folder",
    "find_prediction",
    "format_summary",
    "image_diagonal",
    "one_hot",
    "output_paths",
    "pooled_slice_dice",
    "slice_counts",
    "summarize",
    "write_outputs",
]
