"""Iteration step of SAL pretraining on slice pairs, used as ``iteration_update`` of MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

import torch

__all__ = ["SlicePairStep"]


class SlicePairStep:
    """One optimisation step of SAL pretraining on pairs of nearby slices.

    The batch (e.g. from :class:`volssl.data.SlicePairDataset`) holds the two slices of B pairs, ``image`` and
    ``image_2`` (B, C, H, W), and their normalised positions ``position`` and ``position_2`` (B,).
    ``engine.network(x_i, x_j)`` returns a dict of tensors (:class:`volssl.networks.SalPretrainNet2d`) and
    ``engine.loss_function(output, p_i, p_j)`` (:class:`volssl.losses.SalLoss`) gives the loss. A loss module that
    exposes a ``last_terms`` dict of scalar tensors (``la``, ``gp``) has them returned too, for the Stats/TensorBoard
    handlers.

    Mixed precision follows ``engine.amp`` (CUDA only: autocast is a no-op on CPU) with the engine's grad scaler; the
    network's outputs are cast to float32 before the loss.

    Args:
        image_key: the batch key of the first slices.
        image_2_key: the batch key of the second slices.
        position_key: the batch key of the first slices' positions.
        position_2_key: the batch key of the second slices' positions.

    Returns (from ``__call__``):
        dict with ``loss`` (detached scalar) and every entry of the loss's ``last_terms`` (floats).
    """

    def __init__(
        self,
        image_key: str = "image",
        image_2_key: str = "image_2",
        position_key: str = "position",
        position_2_key: str = "position_2",
    ) -> None:
        self.image_key = image_key
        self.image_2_key = image_2_key
        self.position_key = position_key
        self.position_2_key = position_2_key

    def _to_device(self, engine, value, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = torch.as_tensor(value, dtype=dtype)
        return tensor.to(device=engine.state.device, non_blocking=engine.non_blocking)

    def __call__(self, engine, batchdata: dict) -> dict:
        device = engine.state.device
        x_i = self._to_device(engine, batchdata[self.image_key])
        x_j = self._to_device(engine, batchdata[self.image_2_key])
        p_i = self._to_device(engine, batchdata[self.position_key], torch.float32).reshape(-1)
        p_j = self._to_device(engine, batchdata[self.position_2_key], torch.float32).reshape(-1)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp) and device.type == "cuda"
        with torch.autocast(device.type, enabled=use_amp, **(engine.amp_kwargs or {})):
            output = engine.network(x_i, x_j)
        # cosines and squared errors in float32 under AMP (the loss would upcast anyway; this makes it explicit)
        output = {k: v.float() if torch.is_floating_point(v) else v for k, v in output.items()}
        loss = engine.loss_function(output, p_i, p_j)
        if use_amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        terms = getattr(engine.loss_function, "last_terms", None) or {}
        out = {"loss": loss.detach()}
        out.update({name: float(value) for name, value in terms.items()})
        return out
