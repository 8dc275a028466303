"""Ignite engine pieces: iteration steps for self-supervised pretraining and handlers shared by the bundles."""

from .handlers import (
    BestModelSaver,
    EpochProgress,
    EpochSnapshotSaver,
    LearningCurveWriter,
    ResumeFromLatest,
    latest_checkpoint,
)
from .pretrain import TwoViewContrastiveStep

__all__ = [
    "BestModelSaver",
    "EpochProgress",
    "EpochSnapshotSaver",
    "LearningCurveWriter",
    "ResumeFromLatest",
    "TwoViewContrastiveStep",
    "latest_checkpoint",
]

from .probe import EmbeddingProbe  # noqa: E402
from .sal import SlicePairStep  # noqa: E402

__all__ += ["EmbeddingProbe", "SlicePairStep"]

from .semi_supervised import CRLNStep, ema_decay, ema_update_, make_teacher  # noqa: E402

__all__ += ["CRLNStep", "ema_decay", "ema_update_", "make_teacher"]

from .early_stopping import EarlyStopOnPlateau  # noqa: E402

__all__ += ["EarlyStopOnPlateau"]

from .epoch_seed import EpochSeed  # noqa: E402
from .precision import Precision, cpu_has_native_bf16, to_channels_last  # noqa: E402
from .steps import EvaluationStep, SupervisedStep, TrainingStep  # noqa: E402

__all__ += [
    "EpochSeed",
    "EvaluationStep",
    "Precision",
    "SupervisedStep",
    "TrainingStep",
    "cpu_has_native_bf16",
    "to_channels_last",
]
