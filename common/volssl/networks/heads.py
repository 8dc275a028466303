"""Projection head and the pretraining network (encoder + projection head) of PCL / CORAL."""

from __future__ import annotations

import torch
from torch import nn

from .unet2d import UNetEncoder2d

__all__ = ["ProjectionHead", "PretrainNet2d"]


class ProjectionHead(nn.Module):
    """Global average pool -> Linear -> ReLU -> Linear, as in PCL's pretraining model.

    The linear layers keep PyTorch's default initialisation (as in PCL). The output is not normalised; the
    contrastive losses normalise it.

    Args:
        in_channels: channels of the input feature map (``16 * features`` for the U-Net bottleneck).
        hidden_dim: width of the hidden layer; ``None`` means ``in_channels`` (PCL).
        out_dim: output dimension (512 in CORAL).

    Raises:
        ValueError: a non-positive size.
    """

    def __init__(self, in_channels: int = 768, hidden_dim: int | None = None, out_dim: int = 512) -> None:
        super().__init__()
        hidden = in_channels if hidden_dim is None else hidden_dim
        if min(in_channels, hidden, out_dim) < 1:
            raise ValueError(f"sizes must be positive, got in_channels={in_channels}, hidden={hidden}, out={out_dim}.")
        self.in_channels = in_channels
        self.hidden_dim = hidden
        self.out_dim = out_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map, shape (B, in_channels, h, w).

        Returns:
            projection, shape (B, out_dim).
        """
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(self.act(self.fc1(x)))


class PretrainNet2d(nn.Module):
    """Pretraining network of CORAL / PCL: :class:`~volssl.networks.UNetEncoder2d` + :class:`ProjectionHead`.

    ``forward`` returns the unnormalised projection of the bottleneck. The encoder attribute is named ``encoder``
    as in :class:`~volssl.networks.UNet2d`, so its state dict keys (``encoder.*``) transfer for fine-tuning, and the
    projection head (``projection.*``) is dropped by :func:`~volssl.networks.load_encoder_weights`. For the level
    features (e.g. SAL's local alignment), call ``net.encoder(x)``: it returns the 5 levels, shallow to deep.

    Parameters at ``in_channels=1, proj_dim=512``: 11,586,704 for ``features=48`` and 1,376,816 for ``features=16``.

    Args:
        in_channels: input image channels.
        features: base width ``f`` of the encoder.
        proj_dim: output dimension of the projection head.
        hidden_dim: hidden width of the projection head; ``None`` means ``16 * features`` (PCL).
        norm: normalisation of the encoder levels, see :class:`~volssl.networks.UNetEncoder2d`.
        negative_slope: LeakyReLU slope of the encoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: int = 48,
        proj_dim: int = 512,
        hidden_dim: int | None = None,
        norm: str | None = "batch",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder2d(in_channels, features, norm, negative_slope)
        self.projection = ProjectionHead(self.encoder.out_channels, hidden_dim, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images, shape (B, in_channels, H, W), H and W at least 16.

        Returns:
            projections z, shape (B, proj_dim), not normalised.
        """
        return self.projection(self.encoder(x)[-1])
