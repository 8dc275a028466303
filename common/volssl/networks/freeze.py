"""Freezing a network's encoder for decoder-only fine-tuning (the representation is evaluated as it was pretrained)."""

from __future__ import annotations

import logging
import types

from torch import nn

__all__ = ["freeze_encoder"]

logger = logging.getLogger(__name__)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # replaces the frozen module's ``train``: its parents' ``train()`` reach it through this method
    return nn.Module.train(self, False)


def freeze_encoder(model: nn.Module, freeze: bool = True, attribute: str = "encoder") -> nn.Module:
    """Freeze ``model.<attribute>`` (default ``model.encoder``) in place and return ``model``, for bundle configs.

    Frozen means: no gradient for its parameters (``requires_grad=False``; build the optimizer from the parameters
    that still require one) and always in eval mode, so its BatchNorm layers keep the running statistics they were
    loaded with instead of using (and updating) batch statistics; ``model.train()`` leaves it in eval mode. This
    isolates the representation: only the decoder and the head learn. The model's ``state_dict`` is unchanged (the
    encoder's weights are still saved with the model). With ``freeze=False`` the model is returned untouched.

    Args:
        model: the network, e.g. :class:`~volssl.networks.UNet2d` (its encoder is ``model.encoder``).
        freeze: whether to freeze (the bundles' ``freeze_encoder`` switch).
        attribute: the name of the submodule to freeze.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` has no submodule ``attribute``.
    """
    if not freeze:
        return model
    encoder = getattr(model, attribute, None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{type(model).__name__} has no submodule '{attribute}' to freeze")
    for param in encoder.parameters():
        param.requires_grad_(False)
    encoder.train = types.MethodType(_stay_in_eval, encoder)
    encoder.eval()
    n = sum(p.numel() for p in encoder.parameters())
    logger.info(
        "froze %s.%s (%d parameters, eval mode): only the rest of the network is trained",
        type(model).__name__,
        attribute,
        n,
    )
    return model
