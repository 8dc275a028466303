"""Iteration steps for slice pretraining, used as ``iteration_update`` of MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TwoViewContrastiveStep"]


class TwoViewContrastiveStep:
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

    Mixed precision follows ``engine.amp`` (CUDA only: autocast is a no-op on CPU) with the engine's grad scaler.

    Args:
        view_keys: the batch keys of the views, concatenated along the batch axis in this order.
        position_key: the batch key of the positions.
        separate_forwards: one forward per view (the public code) rather than one for all views.

    Returns (from ``__call__``):
        dict with ``loss`` (detached scalar) and every entry of the loss's ``last_terms`` (detached floats).
    """

    def __init__(
        self,
        view_keys: Sequence[str] = ("image", "image_2"),
        position_key: str = "position",
        separate_forwards: bool = True,
    ) -> None:
        self.view_keys = tuple(view_keys)
        self.position_key = position_key
        self.separate_forwards = bool(separate_forwards)

    def __call__(self, engine, batchdata: dict) -> dict:
        device = engine.state.device
        views = [torch.as_tensor(batchdata[k]).to(device=device, non_blocking=engine.non_blocking) for k in self.view_keys]
        positions = torch.as_tensor(batchdata[self.position_key], dtype=torch.float32).reshape(-1)
        positions = positions.repeat(len(self.view_keys)).to(device=device, non_blocking=engine.non_blocking)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp) and device.type == "cuda"
        with torch.autocast(device.type, enabled=use_amp, **(engine.amp_kwargs or {})):
            if self.separate_forwards:
                z = torch.cat([engine.network(v) for v in views], dim=0)
            else:
                z = engine.network(torch.cat(views, dim=0))
        # the losses normalise and exponentiate: keep them in float32 under AMP
        loss = engine.loss_function(z.float(), positions)
        if use_amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        # a DistributedDataParallel-wrapped loss (its OAL direction is a parameter) keeps the terms on .module
        loss_module = getattr(engine.loss_function, "module", engine.loss_function)
        terms = getattr(loss_module, "last_terms", None) or {}
        out = {"loss": loss.detach()}
        out.update({name: float(value) for name, value in terms.items()})
        return out
