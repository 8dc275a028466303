"""Ignite engine pieces: iteration steps for self-supervised pretraining and handlers shared by the bundles."""

from .handlers import LearningCurveWriter, ResumeFromLatest, latest_checkpoint
from .pretrain import TwoViewContrastiveStep

__all__ = ["LearningCurveWriter", "ResumeFromLatest", "TwoViewContrastiveStep", "latest_checkpoint"]
