"""Ignite engine pieces: iteration steps for self-supervised pretraining and handlers shared by the bundles."""

from .handlers import BestModelSaver, LearningCurveWriter, ResumeFromLatest, latest_checkpoint
from .pretrain import TwoViewContrastiveStep

__all__ = ["BestModelSaver", "LearningCurveWriter", "ResumeFromLatest", "TwoViewContrastiveStep", "latest_checkpoint"]

from .probe import EmbeddingProbe  # noqa: E402
from .sal import SlicePairStep  # noqa: E402

__all__ += ["EmbeddingProbe", "SlicePairStep"]

from .semi_supervised import CRLNStep, ema_decay, ema_update_, make_teacher  # noqa: E402

__all__ += ["CRLNStep", "ema_decay", "ema_update_", "make_teacher"]
