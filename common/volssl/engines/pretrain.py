"""Iteration steps for slice pretraining, used as ``iteration_update`` of MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .precision import Precision
from .steps import TrainingStep

__all__ = ["TwoViewContrastiveStep"]


class TwoViewContrastiveStep(TrainingStep):
    """One optimisation step of position-aware contrastive pretraining (CORAL, PCL).

    The batch holds two independently augmented views of B slices (``image``, ``image_2``: (B, C, H, W)) and the
    slices' normalised positions (``position``: (B,)). Each view goes through the network in its own forward pass
    (as the public CORAL/PCL code: BatchNorm normalises each view with its own batch statistics, and its running
    statistics are updated once per view), and the projections are concatenated view-major into z: (N, D), N = 2B;
    the positions are repeated for the second view, and ``engine.loss_function(z, positions)`` gives the loss.
    ``separate_forwards=False`` puts all the views through one forward instead (BatchNorm statistics shared by the
    views). A loss module that exposes a ``last_terms`` dict of
    scalar tensors (e.g. the RAL and OAL parts) has them returned too, so that Stats/TensorBoard handlers can log
    them with ``output_transform=lambda out: out``-style transforms.

    The forwards run under the precision policy's autocast (:class:`~volssl.engines.TrainingStep`); the projections
    are cast to float32 before the loss (its normalisation and log-sum-exp stay in float32).

    Args:
        view_keys: the batch keys of the views, concatenated along the batch axis in this order.
        position_key: the batch key of the positions.
        separate_forwards: one forward per view (the public code) rather than one for all views.
        precision: mixed-precision policy (see :class:`~volssl.engines.TrainingStep`).
        channels_last: feed the views in ``channels_last`` memory format.

    Returns (from ``__call__``):
        dict with ``loss`` and every entry of the loss's ``last_terms``, detached scalar tensors (no device
        synchronisation: the handlers read them when they log).
    """

    def __init__(
        self,
        view_keys: Sequence[str] = ("image", "image_2"),
        position_key: str = "position",
        separate_forwards: bool = True,
        precision: Precision | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(precision, channels_last)
        self.view_keys = tuple(view_keys)
        self.position_key = position_key
        self.separate_forwards = bool(separate_forwards)

    def __call__(self, engine, batchdata: dict) -> dict:
        views = [self.to_device(engine, batchdata[k]) for k in self.view_keys]
        positions = self.to_device(engine, batchdata[self.position_key], torch.float32).reshape(-1)
        positions = positions.repeat(len(self.view_keys))

        self.start(engine)
        with self.autocast(engine):
            if self.separate_forwards:
                z = torch.cat([engine.network(v) for v in views], dim=0)
            else:
                z = engine.network(torch.cat(views, dim=0))
        loss = engine.loss_function(z.float(), positions)
        self.update(engine, loss)
        # a DistributedDataParallel-wrapped loss (its OAL direction is a parameter) keeps the terms on .module
        loss_module = getattr(engine.loss_function, "module", engine.loss_function)
        terms = getattr(loss_module, "last_terms", None) or {}
        out = {"loss": loss.detach()}
        out.update({name: torch.as_tensor(value).detach() for name, value in terms.items()})
        return self.finish(engine, out)
