"""Pretraining losses on slice embeddings and their normalised positions along the volume.

- :class:`CoralLoss` = :class:`RelationalRankLoss` (RAL) + alpha * :class:`OrdinalDirectionLoss` (OAL): CORAL.
- :class:`PositionalContrastiveLoss`: the PCL baseline (SupCon with positives by position gap).

All take ``(z, positions)`` with ``z`` of shape (N, D) (or (B, V, D) for V views of B slices) and use O(N^2) memory.
"""

from .coral import CoralLoss
from .ordinal import OrdinalDirectionLoss
from .rank_contrastive import RelationalRankLoss
from .supcon import PositionalContrastiveLoss, supcon_from_positives

__all__ = [
    "CoralLoss",
    "OrdinalDirectionLoss",
    "PositionalContrastiveLoss",
    "RelationalRankLoss",
    "supcon_from_positives",
]

from .alignment import (  # noqa: E402
    GlobalPositionalLoss,
    LocalAlignmentLoss,
    SalLoss,
    embedding_cosine,
    windows_to_batch,
)

__all__ += ["GlobalPositionalLoss", "LocalAlignmentLoss", "SalLoss", "embedding_cosine", "windows_to_batch"]

from .crln import ConfidenceWeightedCELoss, CPSLoss, CRLNSupervisedLoss  # noqa: E402

__all__ += ["CPSLoss", "CRLNSupervisedLoss", "ConfidenceWeightedCELoss"]
