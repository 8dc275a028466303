"""Iteration step of SAL pretraining on slice pairs, used as ``iteration_update`` of MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

import torch

from .precision import Precision
from .steps import TrainingStep

__all__ = ["SlicePairStep"]


class SlicePairStep(TrainingStep):
    """One optimisation step of SAL pretraining on pairs of nearby slices.

    The batch (e.g. from :class:`volssl.data.SlicePairDataset` or :class:`volssl.data.SliceBatchLoader` in
    ``"pairs"`` mode) holds the two slices of B pairs, ``image`` and ``image_2`` (B, C, H, W), and their normalised
    positions ``position`` and ``position_2`` (B,). ``engine.network(x_i, x_j)`` returns a dict of tensors
    (:class:`volssl.networks.SalPretrainNet2d`) and ``engine.loss_function(output, p_i, p_j)``
    (:class:`volssl.losses.SalLoss`) gives the loss. A loss module that exposes a ``last_terms`` dict of scalar
    tensors (``la``, ``gp``) has them returned too, for the Stats/TensorBoard handlers.

    The forward runs under the precision policy's autocast (:class:`~volssl.engines.TrainingStep`); the network's
    outputs are cast to float32 before the loss (cosines and squared errors in float32).

    Args:
        image_key: the batch key of the first slices.
        image_2_key: the batch key of the second slices.
        position_key: the batch key of the first slices' positions.
        position_2_key: the batch key of the second slices' positions.
        precision: mixed-precision policy (see :class:`~volssl.engines.TrainingStep`).
        channels_last: feed the slices in ``channels_last`` memory format.

    Returns (from ``__call__``):
        dict with ``loss`` and every entry of the loss's ``last_terms``, detached scalar tensors (no device
        synchronisation: the handlers read them when they log).
    """

    def __init__(
        self,
        image_key: str = "image",
        image_2_key: str = "image_2",
        position_key: str = "position",
        position_2_key: str = "position_2",
        precision: Precision | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(precision, channels_last)
        self.image_key = image_key
        self.image_2_key = image_2_key
        self.position_key = position_key
        self.position_2_key = position_2_key

    def __call__(self, engine, batchdata: dict) -> dict:
        x_i = self.to_device(engine, batchdata[self.image_key])
        x_j = self.to_device(engine, batchdata[self.image_2_key])
        p_i = self.to_device(engine, batchdata[self.position_key], torch.float32).reshape(-1)
        p_j = self.to_device(engine, batchdata[self.position_2_key], torch.float32).reshape(-1)

        self.start(engine)
        with self.autocast(engine):
            output = engine.network(x_i, x_j)
        output = {k: v.float() if torch.is_floating_point(v) else v for k, v in output.items()}
        loss = engine.loss_function(output, p_i, p_j)
        self.update(engine, loss)
        terms = getattr(engine.loss_function, "last_terms", None) or {}
        out = {"loss": loss.detach()}
        out.update({name: torch.as_tensor(value).detach() for name, value in terms.items()})
        return self.finish(engine, out)
