"""CRLN's network: a 3D backbone, the Dynamic Interaction Module, a representation head and the rectifier.

``y`` = backbone logits, ``M`` = DIM's rectification map, ``a`` = one learned scalar (init 0)::

    rectified = y + (1 - a) * M

``forward(x)`` (inference, sliding window, TorchScript, ``verify_net_in_out``) returns the rectified logits only;
``forward_train(x)`` returns every output that the CRLN training step needs.
"""

from __future__ import annotations

import torch
from torch import nn

from .dim import DynamicInteractionModule

__all__ = ["RepresentationHead3d", "CRLNNet"]


class RepresentationHead3d(nn.Module):
    """``conv3x3x3 -> BatchNorm -> ReLU -> conv1x1x1``: per-voxel embeddings for CRLN's CPS (regional contrast) loss,
    the representation head of the official code (its first conv has no bias: a BatchNorm follows).

    Args:
        in_channels: channels of the input feature.
        out_dim: embedding dimension.
        hidden_dim: width after the first conv; ``None`` means ``out_dim`` (as the official code).
    """

    def __init__(self, in_channels: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = out_dim if hidden_dim is None else hidden_dim
        if min(in_channels, out_dim, hidden) < 1:
            raise ValueError(
                f"sizes must be positive, got in_channels={in_channels}, out_dim={out_dim}, hidden={hidden}."
            )
        self.out_dim = out_dim
        self.conv1 = nn.Conv3d(in_channels, hidden, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm3d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(hidden, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> (B, out_dim, *spatial)."""
        return self.conv2(self.act(self.norm(self.conv1(x))))


class CRLNNet(nn.Module):
    """CRLN (arXiv 2502.11456): backbone + Dynamic Interaction Module + representation head + rectifier.

    The backbone must provide ``forward_features(x) -> (logits, f_quarter, f_half, f_full)`` and
    ``feature_channels`` (as :class:`~volssl.networks.VNet` and :class:`~volssl.networks.UNet3dCRLN` do). The DIM
    attends to ``f_quarter`` and ``f_half``; the representation head maps ``f_full`` to ``rep_dim`` channels.

    The prototypes and the embeddings share one space of dimension ``rep_dim`` (``E``): CPS's positive key mixes
    the class-mean embedding with the mean of the teacher's class prototypes. ``rep_dim=None`` means ``E = K``
    (methods.md: "a representation head of dimension K").

    Outputs of :meth:`forward_train`, for x (B, C, H, W, D):

    - ``logits``: y, (B, n, H, W, D);
    - ``rect_map``: M, (B, n, H, W, D), non-negative (the DIM ends with a ReLU);
    - ``rectified``: y + (1 - a) M, (B, n, H, W, D);
    - ``embedding``: (B, E, H, W, D);
    - ``prototypes``: the updated prototypes, (B, n, K, E).

    Args:
        backbone: the segmentation network (its ``out_channels`` must equal ``num_classes`` when it has one).
        num_classes: ``n``.
        num_prototypes: ``K`` per class.
        rep_dim: ``E``, the prototype and embedding dimension; ``None`` means ``num_prototypes``.
        mlp_ratio: hidden width of the DIM's prototype MLPs, as a multiple of ``E``.

    Raises:
        ValueError: a backbone without ``forward_features``/``feature_channels``, a class-count mismatch or a
            non-positive size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_prototypes: int = 16,
        rep_dim: int | None = None,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_features") or not hasattr(backbone, "feature_channels"):
            raise ValueError(
                f"the backbone ({type(backbone).__name__}) needs forward_features(x) -> (logits, f_quarter, f_half, "
                "f_full) and feature_channels, as volssl.networks.VNet and UNet3dCRLN have."
            )
        out_channels = getattr(backbone, "out_channels", num_classes)
        if out_channels != num_classes:
            raise ValueError(f"num_classes={num_classes} but the backbone has {out_channels} output channels.")
        dim = num_prototypes if rep_dim is None else rep_dim
        c_quarter, c_half, c_full = (int(c) for c in backbone.feature_channels)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.rep_dim = dim
        self.out_channels = num_classes
        self.divisor = int(getattr(backbone, "divisor", 16))
        self.dim = DynamicInteractionModule(
            (c_quarter, c_half), num_classes, num_prototypes, embed_dim=dim, mlp_ratio=mlp_ratio, upsample=2
        )
        self.rep_head = RepresentationHead3d(c_full, dim)
        self.a = nn.Parameter(torch.zeros(()))

    def rectify(self, logits: torch.Tensor, rect_map: torch.Tensor) -> torch.Tensor:
        """``y + (1 - a) * M`` (same shape as ``logits``)."""
        return logits + (1.0 - self.a) * rect_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images, (B, C, H, W, D), sizes divisible by the backbone's ``divisor`` (16).

        Returns:
            the rectified logits, (B, n, H, W, D).
        """
        logits, f_quarter, f_half, _ = self.backbone.forward_features(x)
        rect_map, _ = self.dim([f_quarter, f_half])
        return self.rectify(logits, rect_map)

    def forward_train(self, x: torch.Tensor, rectifier: bool = True) -> dict[str, torch.Tensor]:
        """All training outputs (see the class docstring): ``logits``, ``rect_map``, ``rectified``, ``embedding``,
        ``prototypes``; with ``rectifier=False`` only ``logits`` and ``embedding`` (the DIM is not run: the official
        code's student forward on the strongly augmented unlabelled batch)."""
        logits, f_quarter, f_half, f_full = self.backbone.forward_features(x)
        out = {"logits": logits, "embedding": self.rep_head(f_full)}
        if rectifier:
            rect_map, prototypes = self.dim([f_quarter, f_half])
            out.update(rect_map=rect_map, rectified=self.rectify(logits, rect_map), prototypes=prototypes)
        return out
