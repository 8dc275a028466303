"""3D backbones of CRLN: the UA-MT V-Net (LA, Pancreas-CT) and a 3D U-Net with InstanceNorm (BraTS).

Both share one interface, used by :class:`volssl.networks.CRLNNet`:

- ``forward(x)``: logits, (B, out_channels, *spatial).
- ``forward_features(x)``: ``(logits, f_quarter, f_half, f_full)``, the logits and three decoder features at 1/4,
  1/2 and full resolution, with ``feature_channels`` = their channel counts (``(4f, 2f, f)`` for base width ``f``).
- ``divisor = 16``: every spatial size of the input must be a multiple of it (4 down-samplings by 2); otherwise a
  ``ValueError`` says so. Pad the input (``monai.transforms.DivisiblePad(k=16)``) or use a sliding-window ROI
  divisible by 16.

Axis convention: MONAI's (B, C, H, W, D); the networks themselves are isotropic (any axis may be the slice axis).
Both are scriptable with ``torch.jit.script`` and traceable.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["VNET_DIVISOR", "ConvNormAct3d", "VNetConvStage", "VNet", "UNet3dCRLN", "check_divisible"]

#: Every spatial size of a :class:`VNet` / :class:`UNet3dCRLN` input must be a multiple of this.
VNET_DIVISOR = 16

_NORMS = ("batch", "instance", "none", None)


def _make_norm(norm: str | None, channels: int) -> nn.Module | None:
    if norm is None or norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")


def _check_sizes(n_channels: int, n_classes: int, n_filters: int, dropout: float) -> None:
    """The constructor arguments shared by :class:`VNet` and :class:`UNet3dCRLN`."""
    if min(n_channels, n_classes, n_filters) < 1:
        raise ValueError(
            f"n_channels, n_classes and n_filters must be positive, got {n_channels}, {n_classes}, {n_filters}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def check_divisible(x: torch.Tensor, divisor: int, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is 5D (B, C, *3 spatial) with every spatial size divisible by ``divisor``.

    Skipped while tracing (the sizes would be baked into the trace as constants).
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != 5:
        raise ValueError(f"{name} expects a 5D input (B, C, H, W, D), got shape {list(x.shape)}.")
    for s in x.shape[2:]:
        if s % divisor != 0:
            raise ValueError(
                f"{name} needs every spatial size divisible by {divisor}, got {list(x.shape[2:])}; pad the input "
                f"(e.g. monai.transforms.DivisiblePad(k={divisor})) or use a sliding-window ROI divisible by {divisor}."
            )


class ConvNormAct3d(nn.Sequential):
    """``conv (kernel k, stride s; or a transposed conv) -> [norm] -> ReLU``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 3 (padding 1, size kept) or 2 (stride 2, padding 0: down-sampling, or up-sampling if
            ``transposed``).
        norm: ``"batch"``, ``"instance"`` (affine) or ``"none"``/``None``.
        transposed: use ``ConvTranspose3d`` (up-sampling by 2 with ``kernel_size=2``).

    Raises:
        ValueError: unknown ``norm`` or a ``kernel_size`` other than 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: str | None = "batch",
        transposed: bool = False,
    ) -> None:
        if kernel_size not in (2, 3):
            raise ValueError(f"kernel_size must be 2 or 3, got {kernel_size}.")
        stride, padding = (1, 1) if kernel_size == 3 else (2, 0)
        conv_cls = nn.ConvTranspose3d if transposed else nn.Conv3d
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        norm_layer = _make_norm(norm, out_channels)
        if norm_layer is not None:
            layers["norm"] = norm_layer
        layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class VNetConvStage(nn.Sequential):
    """``n_blocks`` x :class:`ConvNormAct3d` (3x3x3), the first ``in -> out`` channels, the others ``out -> out``.

    As in UA-MT's ``ConvBlock``: no residual connection inside the stage.
    """

    def __init__(self, n_blocks: int, in_channels: int, out_channels: int, norm: str | None = "batch") -> None:
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be positive, got {n_blocks}.")
        super().__init__(
            *[ConvNormAct3d(in_channels if i == 0 else out_channels, out_channels, 3, norm) for i in range(n_blocks)]
        )


class VNet(nn.Module):
    """The V-Net of UA-MT (Yu et al. 2019), used by CRLN for LA and Pancreas-CT.

    With ``f = n_filters``:

    ========== ================================================= =========== ==========
    stage      layers                                            channels    resolution
    ========== ================================================= =========== ==========
    enc 1      1 x [conv3 -> norm -> ReLU]                       f           1
    enc 2      down (conv k2 s2) + 2 x conv block                2f          1/2
    enc 3      down + 3 x conv block                             4f          1/4
    enc 4      down + 3 x conv block                             8f          1/8
    bottleneck down + 3 x conv block, Dropout3d                  16f         1/16
    dec 4      up (transposed conv k2 s2) + skip, 3 x conv block 8f          1/8
    dec 3      up + skip, 3 x conv block                         4f          1/4  (``f_quarter``)
    dec 2      up + skip, 2 x conv block                         2f          1/2  (``f_half``)
    dec 1      up + skip, 1 x conv block                         f           1    (``f_full``)
    head       Dropout3d, conv 1x1x1 -> n_classes
    ========== ================================================= =========== ==========

    Every down/up-sampling conv is followed by norm and ReLU; skips are additive (``up(x) + skip``). Dropout3d with
    probability ``dropout`` acts on the bottleneck and on the last decoder feature before the head (UA-MT's
    ``has_dropout=True``); ``f_full`` is the decoder feature *before* that dropout.
    Convs keep PyTorch's default initialisation (as in UA-MT).

    Parameter count at ``n_channels=1, n_classes=2, n_filters=16, norm="batch"``: 9,448,866 (UA-MT's VNet).

    Args:
        n_channels: input channels.
        n_classes: output classes (logit channels).
        n_filters: base width ``f``.
        norm: ``"batch"`` (UA-MT), ``"instance"`` or ``"none"``.
        dropout: Dropout3d probability (UA-MT: 0.5); 0 disables it.

    Raises:
        ValueError: a non-positive size, a ``dropout`` outside [0, 1) or an unknown ``norm``.
    """

    def __init__(
        self,
        n_channels: int = 1,
        n_classes: int = 2,
        n_filters: int = 16,
        norm: str | None = "batch",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_sizes(n_channels, n_classes, n_filters, dropout)
        f = n_filters
        self.in_channels = n_channels
        self.out_channels = n_classes
        self.n_filters = f
        self.divisor = VNET_DIVISOR
        self.feature_channels: tuple[int, int, int] = (4 * f, 2 * f, f)

        self.block_one = VNetConvStage(1, n_channels, f, norm)
        self.block_one_dw = ConvNormAct3d(f, 2 * f, 2, norm)
        self.block_two = VNetConvStage(2, 2 * f, 2 * f, norm)
        self.block_two_dw = ConvNormAct3d(2 * f, 4 * f, 2, norm)
        self.block_three = VNetConvStage(3, 4 * f, 4 * f, norm)
        self.block_three_dw = ConvNormAct3d(4 * f, 8 * f, 2, norm)
        self.block_four = VNetConvStage(3, 8 * f, 8 * f, norm)
        self.block_four_dw = ConvNormAct3d(8 * f, 16 * f, 2, norm)
        self.block_five = VNetConvStage(3, 16 * f, 16 * f, norm)

        self.block_five_up = ConvNormAct3d(16 * f, 8 * f, 2, norm, transposed=True)
        self.block_six = VNetConvStage(3, 8 * f, 8 * f, norm)
        self.block_six_up = ConvNormAct3d(8 * f, 4 * f, 2, norm, transposed=True)
        self.block_seven = VNetConvStage(3, 4 * f, 4 * f, norm)
        self.block_seven_up = ConvNormAct3d(4 * f, 2 * f, 2, norm, transposed=True)
        self.block_eight = VNetConvStage(2, 2 * f, 2 * f, norm)
        self.block_eight_up = ConvNormAct3d(2 * f, f, 2, norm, transposed=True)
        self.block_nine = VNetConvStage(1, f, f, norm)

        self.dropout = nn.Dropout3d(p=dropout) if dropout > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(f, n_classes, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: images, (B, n_channels, H, W, D), every spatial size a multiple of 16.

        Returns:
            ``(logits, f_quarter, f_half, f_full)``: (B, n_classes, H, W, D), (B, 4f, H/4, W/4, D/4),
            (B, 2f, H/2, W/2, D/2), (B, f, H, W, D).

        Raises:
            ValueError: ``x`` is not 5D or a spatial size is not a multiple of 16.
        """
        check_divisible(x, self.divisor, "VNet")
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))

        x6 = self.block_six(self.block_five_up(x5) + x4)
        x7 = self.block_seven(self.block_six_up(x6) + x3)
        x8 = self.block_eight(self.block_seven_up(x7) + x2)
        x9 = self.block_nine(self.block_eight_up(x8) + x1)
        logits = self.out_conv(self.dropout(x9))
        return logits, x7, x8, x9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (B, n_classes, H, W, D), for images (B, n_channels, H, W, D) with sizes divisible by 16."""
        return self.forward_features(x)[0]


class _DoubleConv3d(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str | None) -> None:
        super().__init__(
            OrderedDict(
                conv1=ConvNormAct3d(in_channels, out_channels, 3, norm),
                conv2=ConvNormAct3d(out_channels, out_channels, 3, norm),
            )
        )


class UNet3dCRLN(nn.Module):
    """A 3D U-Net with InstanceNorm (CRLN's BraTS backbone), with :class:`VNet`'s interface.

    Widths ``f, 2f, 4f, 8f`` (encoder levels) and ``16f`` (centre), ``f = 16`` by default (16..256 filters):

    - encoder: per level ``[conv3 -> norm -> ReLU] x 2``, then a 2x2x2 max-pool; centre block of the same form,
      followed by Dropout3d.
    - decoder: per level a k2 s2 transposed conv halving the width, concatenation with the encoder skip
      (upsampled first), ``[conv3 -> norm -> ReLU] x 2``; features ``f_quarter`` (4f, 1/4), ``f_half`` (2f, 1/2),
      ``f_full`` (f, 1).
    - head: Dropout3d then a 1x1x1 conv to ``n_classes``.

    InstanceNorm needs more than one voxel per channel, so with ``norm="instance"`` the centre (1/16 resolution)
    must have at least 2 voxels: a 16x16x16 input fails (torch's error), 16x16x32 works.

    Args:
        n_channels: input channels (4 MRI sequences for BraTS).
        n_classes: output classes.
        n_filters: base width ``f``.
        norm: ``"instance"`` (default), ``"batch"`` or ``"none"``.
        dropout: Dropout3d probability on the centre block and before the head; 0 disables it.

    Raises:
        ValueError: a non-positive size, a ``dropout`` outside [0, 1) or an unknown ``norm``.
    """

    def __init__(
        self,
        n_channels: int = 1,
        n_classes: int = 2,
        n_filters: int = 16,
        norm: str | None = "instance",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        _check_sizes(n_channels, n_classes, n_filters, dropout)
        f = n_filters
        self.in_channels = n_channels
        self.out_channels = n_classes
        self.n_filters = f
        self.divisor = VNET_DIVISOR
        self.feature_channels: tuple[int, int, int] = (4 * f, 2 * f, f)
        w = [f * 2**k for k in range(5)]
        self.enc1 = _DoubleConv3d(n_channels, w[0], norm)
        self.enc2 = _DoubleConv3d(w[0], w[1], norm)
        self.enc3 = _DoubleConv3d(w[1], w[2], norm)
        self.enc4 = _DoubleConv3d(w[2], w[3], norm)
        self.center = _DoubleConv3d(w[3], w[4], norm)
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.up4 = nn.ConvTranspose3d(w[4], w[3], kernel_size=2, stride=2)
        self.dec4 = _DoubleConv3d(2 * w[3], w[3], norm)
        self.up3 = nn.ConvTranspose3d(w[3], w[2], kernel_size=2, stride=2)
        self.dec3 = _DoubleConv3d(2 * w[2], w[2], norm)
        self.up2 = nn.ConvTranspose3d(w[2], w[1], kernel_size=2, stride=2)
        self.dec2 = _DoubleConv3d(2 * w[1], w[1], norm)
        self.up1 = nn.ConvTranspose3d(w[1], w[0], kernel_size=2, stride=2)
        self.dec1 = _DoubleConv3d(2 * w[0], w[0], norm)
        self.dropout = nn.Dropout3d(p=dropout) if dropout > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(w[0], n_classes, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: images, (B, n_channels, H, W, D), every spatial size a multiple of 16.

        Returns:
            ``(logits, f_quarter, f_half, f_full)``: (B, n_classes, H, W, D), (B, 4f, H/4, W/4, D/4),
            (B, 2f, H/2, W/2, D/2), (B, f, H, W, D).

        Raises:
            ValueError: ``x`` is not 5D or a spatial size is not a multiple of 16.
        """
        check_divisible(x, self.divisor, "UNet3dCRLN")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        c = self.dropout(self.center(self.pool(e4)))
        d4 = self.dec4(torch.cat([self.up4(c), e4], dim=1))
        d3 = self.dec3(torch.cat([self.up3(d4), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        logits = self.out_conv(self.dropout(d1))
        return logits, d3, d2, d1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (B, n_classes, H, W, D), for images (B, n_channels, H, W, D) with sizes divisible by 16."""
        return self.forward_features(x)[0]
