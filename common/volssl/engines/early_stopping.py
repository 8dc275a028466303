"""Stop training once the validation key metric has reached a plateau (early stopping that survives a resume)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from ignite.engine import Engine, Events

__all__ = ["EarlyStopOnPlateau"]


class EarlyStopOnPlateau:
    """Stop the trainer when the evaluator's ``metric_name`` has not improved for ``patience`` validations.

    A trainer handler (put it in the trainer's handlers after the ``ValidationHandler``, so that at each epoch end the
    validation has run before the check). At every epoch where the evaluator ran (``evaluator.state.epoch`` equals the
    trainer's epoch, so ``val_interval > 1`` is handled), the value counts as an improvement when it beats the best so
    far by more than ``min_delta`` (``mode="max"``: higher is better, e.g. Dice); otherwise a counter goes up, and at
    ``patience`` the trainer is terminated (``Events.TERMINATE``, then ``Events.COMPLETED``). The patience is in
    validations, not epochs. NaN never counts as an improvement. ``patience=None`` (the bundles' default) turns the
    handler off: training runs its ``max_epochs``.

    ``min_epochs``: validations at trainer epochs up to and including ``min_epochs`` still set the best value, but a
    validation without improvement there does not count towards the patience, so the earliest stop is at epoch
    ``min_epochs + patience`` (with one validation per epoch). A run whose validation Dice is still flat at zero in
    its first epochs (a network that has not started to learn) is not stopped for it; one stopped at epoch 6 in the
    LA-half protocol is why this exists.

    The best value, the counter and whether the run has stopped are state (``state_dict``/``load_state_dict``): put
    this object in the resume checkpoint. A run that stopped early and is started again (e.g. the same bundle command
    rerun) loads ``stopped=True`` from its last checkpoint and ends at once instead of training on; the
    checkpoint selected on validation (``BestModelSaver``) is unaffected.

    Args:
        evaluator: the validation evaluator whose ``state.metrics[metric_name]`` is watched.
        metric_name: the key metric, e.g. ``"val_mean_dice"``.
        patience: validations without improvement before stopping (>= 1), or ``None`` to never stop early.
        min_delta: the smallest change that counts as an improvement (>= 0).
        mode: ``"max"`` or ``"min"``.
        min_epochs: trainer epochs during which the patience does not count (>= 0; ``None`` means 0).
    """

    def __init__(
        self,
        evaluator: Engine,
        metric_name: str,
        patience: int | None = None,
        min_delta: float = 0.0,
        mode: str = "max",
        min_epochs: int | None = 0,
    ) -> None:
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be a positive number of validations or None (off), got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        min_epochs = 0 if min_epochs is None else int(min_epochs)
        if min_epochs < 0:
            raise ValueError(f"min_epochs must be >= 0, got {min_epochs}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.patience = None if patience is None else int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.min_epochs = min_epochs
        self.best_metric = -float("inf") if mode == "max" else float("inf")
        self.counter = 0
        self.stopped_epoch = -1
        self.trainer: Engine | None = None
        self.logger = logging.getLogger("volssl.early_stop")

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch >= 0

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        if self.patience is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best_metric + self.min_delta
        return value < self.best_metric - self.min_delta

    def __call__(self, engine: Engine) -> None:
        if self.patience is None or self.evaluator.state.epoch != engine.state.epoch:
            return  # off, or no validation at this epoch
        if self.metric_name not in self.evaluator.state.metrics:
            computed = sorted(self.evaluator.state.metrics)
            raise KeyError(f"metric {self.metric_name!r} not computed by the evaluator: {computed}")
        value = float(self.evaluator.state.metrics[self.metric_name])
        if not math.isnan(value) and self._improved(value):
            self.best_metric, self.counter = value, 0
            return
        if engine.state.epoch <= self.min_epochs:
            return  # too early for the patience to count
        self.counter += 1
        if self.counter >= self.patience:
            self.stopped_epoch = int(engine.state.epoch)
            self.logger.info(
                f"epoch {self.stopped_epoch}: early stop, no {self.metric_name} improvement in "
                f"{self.counter} validations (best {self.best_metric:.4f})"
            )
            engine.terminate()

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "counter": self.counter, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_metric = float(state["best_metric"])
        self.counter = int(state["counter"])
        self.stopped_epoch = int(state["stopped_epoch"])
        # loaded at the trainer's STARTED (resume): a run that already stopped ends here
        if self.stopped and self.patience is not None and self.trainer is not None:
            self.logger.info(f"the run stopped early at epoch {self.stopped_epoch}: not training further")
            self.trainer.terminate()
