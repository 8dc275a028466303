"""The base of volssl's Ignite iteration steps, and the supervised training and evaluation steps built on it.

MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` take an ``iteration_update(engine, batch)`` callable. Every
volssl step (fine-tuning, CORAL/PCL pretraining, SAL pretraining, CRLN) derives from :class:`TrainingStep`, which
writes once what they share:

- moving batch items to the training device as plain tensors (MONAI's ``MetaTensor`` only slows the maths down),
  in ``channels_last`` for 4D images when the 2D networks use it;
- mixed precision (:class:`~volssl.engines.precision.Precision`: bf16 autocast on CUDA and on CPUs with native bf16,
  a gradient scaler for float16), which MONAI's engines apply on CUDA only;
- the training mode, zeroing the gradients, the backward pass and the optimiser step;
- MONAI's iteration events (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
  ``MODEL_COMPLETED``), fired where MONAI's default iteration fires them, so that the trainer's postprocessing, its
  metrics and handlers listening to them behave as with MONAI's own iteration.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from .precision import Precision

__all__ = ["TrainingStep", "SupervisedStep", "EvaluationStep", "plain_tensor"]


def plain_tensor(value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` as a plain ``torch.Tensor`` (a MetaTensor unwrapped, numbers and arrays converted)."""
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    return torch.as_tensor(value, dtype=dtype)


class TrainingStep:
    """Shared machinery of an ``iteration_update``: device transfer, mixed precision, optimiser step, events.

    Subclasses implement ``__call__(engine, batchdata)`` with the helpers below.

    Args:
        precision: the mixed-precision policy (:class:`Precision`); ``None``: one resolved on the engine's device
            from the engine's ``amp`` flag (mixed precision when it is set, fp32 otherwise).
        channels_last: move 4D floating-point inputs to ``channels_last`` (use with
            :func:`~volssl.engines.precision.to_channels_last` on the 2D networks).
    """

    def __init__(self, precision: Precision | None = None, channels_last: bool = False) -> None:
        self.precision = precision
        self.channels_last = bool(channels_last)

    def policy(self, engine) -> Precision:
        """The precision policy (resolved from ``engine.amp`` on the engine's device when none was given)."""
        if self.precision is None:
            self.precision = Precision(engine.state.device, enabled=bool(getattr(engine, "amp", False)))
        return self.precision

    def to_device(self, engine, value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A batch item on the engine's device, as a plain tensor (``channels_last`` for 4D float images)."""
        tensor = plain_tensor(value, dtype)
        tensor = tensor.to(device=engine.state.device, non_blocking=engine.non_blocking)
        if self.channels_last and tensor.dim() == 4 and tensor.is_floating_point():
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def autocast(self, engine):
        """The autocast context of the policy."""
        return self.policy(engine).autocast()

    def start(self, engine) -> None:
        """Training mode and zeroed gradients, before the forwards."""
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

    def update(self, engine, loss: torch.Tensor) -> None:
        """Backward pass and optimiser step (through the scaler for float16), with MONAI's events around it."""
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.policy(engine).backward_step(loss, engine.optimizer)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

    def finish(self, engine, output: dict) -> dict:
        """Put ``output`` into ``engine.state.output`` and fire ``MODEL_COMPLETED`` (postprocessing, decollation);
        returns what the handlers then see."""
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def state_dict(self) -> dict:
        """The gradient scaler's state (float16 only), for the resumable checkpoint."""
        return self.precision.state_dict() if self.precision is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.precision is not None:
            self.precision.load_state_dict(state)


class SupervisedStep(TrainingStep):
    """Supervised segmentation training (the bundles' fine-tuning), MONAI's default iteration with our precision.

    The batch holds ``image`` (B, C, H, W) and ``label`` (B, 1, H, W); ``pred = engine.inferer(image,
    engine.network)`` under autocast, ``loss = engine.loss_function(pred.float(), label)``, then backward and step.
    ``engine.state.output`` is ``{"image", "label", "pred", "loss"}`` as with MONAI's iteration, so the trainer's
    postprocessing and ``key_train_metric`` work unchanged.
    """

    def __init__(
        self,
        precision: Precision | None = None,
        channels_last: bool = False,
        image_key: str = Keys.IMAGE,
        label_key: str = Keys.LABEL,
    ) -> None:
        super().__init__(precision, channels_last)
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, engine, batchdata: dict) -> dict:
        image = self.to_device(engine, batchdata[self.image_key])
        label = self.to_device(engine, batchdata[self.label_key])
        self.start(engine)
        with self.autocast(engine):
            pred = engine.inferer(image, engine.network)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label, Keys.PRED: pred}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        pred = pred.float()  # the loss (softmax, Dice) in float32
        loss = engine.loss_function(pred, label).mean()
        engine.state.output[Keys.LOSS] = loss
        self.update(engine, loss)
        return self.finish(
            engine, {Keys.IMAGE: image, Keys.LABEL: label, Keys.PRED: pred.detach(), Keys.LOSS: loss.detach()}
        )


class EvaluationStep(TrainingStep):
    """The ``iteration_update`` of a ``SupervisedEvaluator``: ``engine.inferer`` under the precision policy's
    autocast (MONAI's evaluator autocasts on CUDA only), predictions returned in float32. The inputs keep their
    type (a MetaTensor's metadata reaches the prediction, as with MONAI's own iteration).

    ``engine.state.output`` is ``{"image", "label", "pred"}`` as with MONAI's evaluator iteration.
    """

    def __init__(
        self, precision: Precision | None = None, image_key: str = Keys.IMAGE, label_key: str = Keys.LABEL
    ) -> None:
        super().__init__(precision, channels_last=False)
        self.image_key = image_key
        self.label_key = label_key

    def _keep_meta(self, engine, value):
        # MetaTensors stay MetaTensors (the prediction inherits the image's metadata: the writers need its affine)
        if isinstance(value, torch.Tensor):
            return value.to(device=engine.state.device, non_blocking=engine.non_blocking)
        return self.to_device(engine, value)

    def __call__(self, engine, batchdata: dict) -> dict:
        image = self._keep_meta(engine, batchdata[self.image_key])
        label = batchdata.get(self.label_key)
        label = self._keep_meta(engine, label) if label is not None else None
        with engine.mode(engine.network), self.autocast(engine):
            pred = engine.inferer(image, engine.network)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label, Keys.PRED: pred.float()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
