"""The 2D U-Net of PCL (Zeng et al., positional contrastive learning), used by the CORAL and SAL bundles.

Architecture (``f`` = ``features``, the base width; 48 for ACDC, 32 for CT):

- encoder: 4 levels of ``[conv3x3 -> BatchNorm -> LeakyReLU] x2``, each followed by a 2x2 max-pool, widths
  ``f, 2f, 4f, 8f``; then a centre block ``[conv3x3 -> ReLU] x2`` of width ``16f`` without normalisation (as in PCL).
- decoder: at each of the 4 levels a 2x2 stride-2 transposed conv that halves the width, concatenation with the
  encoder's skip feature of the same level (upsampled first, skip second), then
  ``[conv3x3 -> BatchNorm -> LeakyReLU] x2``.
- head: a 1x1 conv to ``out_channels`` logits, without bias (as in PCL).

All convs and transposed convs are Kaiming-normal initialised for the LeakyReLU slope (biases zero); BatchNorm keeps
PyTorch's defaults. The encoder's state dict keys (``encoder.*``) are identical in :class:`UNet2d` and
:class:`volssl.networks.PretrainNet2d`, so pretrained encoder weights transfer with
:func:`volssl.networks.load_encoder_weights`.

Input sizes: the encoder accepts any size of at least 16x16. :class:`UNet2d` requires both spatial sizes to be
divisible by 16 (:data:`UNET2D_DIVISOR`) and raises a ``ValueError`` otherwise; PCL instead centre-cropped the skips,
which silently returns a smaller output. Pad the input (e.g. ``monai.transforms.DivisiblePad(k=16)``) or use a sliding
window whose ROI is divisible by 16.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "UNET2D_DIVISOR",
    "ConvNormAct2d",
    "DoubleConv2d",
    "UNetEncoder2d",
    "UNetUpBlock2d",
    "UNetDecoder2d",
    "UNet2d",
    "init_kaiming_normal",
]

#: Both spatial sizes of a :class:`UNet2d` input must be multiples of this (4 max-pools of factor 2).
UNET2D_DIVISOR = 16

_NORMS = ("batch", "instance", None)


def _make_norm(norm: str | None, channels: int) -> nn.Module | None:
    if norm is None:
        return None
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")


class ConvNormAct2d(nn.Sequential):
    """``conv3x3 (padding 1) -> [norm] -> activation``; the spatial size is kept.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: ``"batch"`` (BatchNorm2d), ``"instance"`` (affine InstanceNorm2d) or ``None`` (no normalisation).
        act: ``"leakyrelu"`` or ``"relu"``.
        negative_slope: slope of the LeakyReLU (ignored for ReLU).

    Raises:
        ValueError: unknown ``norm`` or ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str | None = "batch",
        act: str = "leakyrelu",
        negative_slope: float = 0.01,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        # the conv keeps its bias even before a norm layer, as in PCL (it matters for the parameter count only)
        layers["conv"] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        norm_layer = _make_norm(norm, out_channels)
        if norm_layer is not None:
            layers["norm"] = norm_layer
        if act == "leakyrelu":
            layers["act"] = nn.LeakyReLU(negative_slope, inplace=True)
        elif act == "relu":
            layers["act"] = nn.ReLU(inplace=True)
        else:
            raise ValueError(f"act must be 'leakyrelu' or 'relu', got {act!r}.")
        super().__init__(layers)


class DoubleConv2d(nn.Sequential):
    """Two :class:`ConvNormAct2d` in a row (``conv1``: in -> out, ``conv2``: out -> out).

    Args:
        in_channels: input channels.
        out_channels: output channels of both convs.
        norm: see :class:`ConvNormAct2d`.
        act: see :class:`ConvNormAct2d`.
        negative_slope: see :class:`ConvNormAct2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str | None = "batch",
        act: str = "leakyrelu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(
            OrderedDict(
                conv1=ConvNormAct2d(in_channels, out_channels, norm, act, negative_slope),
                conv2=ConvNormAct2d(out_channels, out_channels, norm, act, negative_slope),
            )
        )


def init_kaiming_normal(module: nn.Module, negative_slope: float = 0.01) -> None:
    """Kaiming-normal weights (fan-in, LeakyReLU gain) and zero biases for every (transposed) 2D conv in ``module``.

    Norm and linear layers keep PyTorch's default initialisation (as in PCL).

    Args:
        module: the module whose sub-modules are initialised in place.
        negative_slope: the LeakyReLU slope used for the gain.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNetEncoder2d(nn.Module):
    """PCL's 2D U-Net encoder: 4 conv levels with max-pooling, then a centre (bottleneck) block.

    ``forward`` returns the features of all 5 levels, shallow to deep, so that a decoder can use the skips and a loss
    can pick any level (``levels[-1]`` is the bottleneck; ``levels[k]`` for ``k < 4`` is the level-``k`` output
    before its max-pool):

    ====== ============ =====================
    index  channels     spatial size
    ====== ============ =====================
    0      ``f``        ``H x W``
    1      ``2f``       ``H/2 x W/2``
    2      ``4f``       ``H/4 x W/4``
    3      ``8f``       ``H/8 x W/8``
    4      ``16f``      ``H/16 x W/16``
    ====== ============ =====================

    (sizes are floored by each max-pool when ``H`` or ``W`` is not a multiple of 16.)

    Args:
        in_channels: input image channels.
        features: base width ``f``.
        norm: normalisation of the 4 levels: ``"batch"`` (PCL), ``"instance"`` or ``None``. The centre block is never
            normalised (as in PCL).
        negative_slope: LeakyReLU slope of the 4 levels (the centre block uses ReLU).

    Raises:
        ValueError: ``in_channels`` or ``features`` is not positive, or ``norm`` is unknown.
    """

    num_levels: int = 5

    def __init__(
        self, in_channels: int = 1, features: int = 48, norm: str | None = "batch", negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        if in_channels < 1 or features < 1:
            raise ValueError(f"in_channels and features must be positive, got {in_channels} and {features}.")
        self.in_channels = in_channels
        self.features = features
        self.channels: tuple[int, ...] = tuple(features * 2**k for k in range(5))
        widths = (in_channels,) + self.channels
        self.levels = nn.ModuleList(
            [DoubleConv2d(widths[k], widths[k + 1], norm, "leakyrelu", negative_slope) for k in range(4)]
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.center = DoubleConv2d(widths[4], widths[5], None, "relu")
        init_kaiming_normal(self, negative_slope)

    @property
    def out_channels(self) -> int:
        """Channels of the bottleneck (``16 * features``)."""
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: images, shape (B, in_channels, H, W), H and W at least 16.

        Returns:
            the 5 level features, shallow to deep (see the class docstring); the last one is the bottleneck
            (B, 16f, H/16, W/16).
        """
        out: list[torch.Tensor] = []
        for level in self.levels:
            x = level(x)
            out.append(x)
            x = self.pool(x)
        out.append(self.center(x))
        return out


class UNetUpBlock2d(nn.Module):
    """One decoder level: 2x2 stride-2 transposed conv (``in -> out`` channels), concat the skip, double conv.

    Args:
        in_channels: channels of the deeper feature (``2 * out_channels`` in the U-Net).
        skip_channels: channels of the skip feature.
        out_channels: output channels.
        norm: see :class:`ConvNormAct2d`.
        negative_slope: LeakyReLU slope.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str | None = "batch",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv2d(out_channels + skip_channels, out_channels, norm, "leakyrelu", negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: deeper feature, shape (B, in_channels, h, w).
            skip: skip feature, shape (B, skip_channels, 2h, 2w).

        Returns:
            shape (B, out_channels, 2h, 2w).
        """
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder2d(nn.Module):
    """PCL's 2D U-Net decoder: 4 :class:`UNetUpBlock2d` from the bottleneck (16f) back to full resolution (f).

    Args:
        features: base width ``f`` of the matching :class:`UNetEncoder2d`.
        norm: see :class:`ConvNormAct2d`.
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, features: int = 48, norm: str | None = "batch", negative_slope: float = 0.01) -> None:
        super().__init__()
        ch = [features * 2**k for k in range(5)]
        # deepest first: 16f -> 8f, 8f -> 4f, 4f -> 2f, 2f -> f
        self.blocks = nn.ModuleList(
            [UNetUpBlock2d(ch[k + 1], ch[k], ch[k], norm, negative_slope) for k in range(3, -1, -1)]
        )
        init_kaiming_normal(self, negative_slope)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            levels: the 5 encoder outputs of :meth:`UNetEncoder2d.forward`, shallow to deep.

        Returns:
            decoded features, shape (B, f, H, W).
        """
        x = levels[-1]
        for i, block in enumerate(self.blocks):
            x = block(x, levels[-2 - i])
        return x


class UNet2d(nn.Module):
    """PCL's 2D U-Net for slice segmentation: :class:`UNetEncoder2d` + :class:`UNetDecoder2d` + 1x1 conv head.

    Scriptable with ``torch.jit.script`` (and traceable). Parameters at ``in_channels=1, out_channels=4``:
    17,462,016 for ``features=48`` (encoder 10,602,384) and 1,942,784 for ``features=16`` (the same as PCL's UNet2D).

    Args:
        in_channels: input image channels.
        out_channels: number of output classes (logit channels).
        features: base width ``f`` (48 for ACDC in CORAL, 32 for CT).
        norm: ``"batch"`` (PCL), ``"instance"`` or ``None``; used in the encoder levels and the decoder.
        negative_slope: LeakyReLU slope (also the Kaiming gain).

    Raises:
        ValueError: a non-positive channel count or an unknown ``norm``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        features: int = 48,
        norm: str | None = "batch",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.divisor = UNET2D_DIVISOR
        self.encoder = UNetEncoder2d(in_channels, features, norm, negative_slope)
        self.decoder = UNetDecoder2d(features, norm, negative_slope)
        self.head = nn.Conv2d(features, out_channels, kernel_size=1, bias=False)
        init_kaiming_normal(self.head, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images, shape (B, in_channels, H, W); H and W must be multiples of 16.

        Returns:
            logits, shape (B, out_channels, H, W).

        Raises:
            ValueError: ``x`` is not 4D or H, W are not multiples of 16.
        """
        if x.dim() != 4:
            raise ValueError(f"UNet2d expects a 4D input (B, C, H, W), got shape {list(x.shape)}.")
        h, w = x.shape[-2], x.shape[-1]
        # skipped while tracing: the sizes would be baked into the trace as constants (with a TracerWarning)
        if not torch.jit.is_tracing() and (h % self.divisor != 0 or w % self.divisor != 0):
            raise ValueError(
                f"UNet2d needs H and W divisible by {self.divisor}, got {h}x{w}; pad the input "
                "(e.g. monai.transforms.DivisiblePad(k=16)) or use a sliding-window ROI divisible by 16."
            )
        return self.head(self.decoder(self.encoder(x)))
