"""Inferers whose cost follows the image, not the training patch.

The bundles' networks are fully convolutional: a 2D U-Net runs on any slice whose sides are multiples of 16, and the
CRLN networks on any volume whose sides are multiples of 16. MONAI's ``SliceInferer`` / ``SlidingWindowInferer`` with
the training patch as window pad every small image up to the patch (a 35 x 51 slice to 352 x 352: 70 times the
pixels). These inferers pad only to what the network needs:

- :class:`WholeSliceInferer`: every slice of the volume at once (in batches of ``sw_batch_size`` slices), each padded
  to a multiple of ``divisor``; no windows, no blending.
- :class:`FittedSlidingWindowInferer`: MONAI's sliding window, with the window shrunk along each axis where the image
  (padded to a multiple of ``divisor``) is smaller than the training patch; images larger than the patch are tiled
  with the patch as before.

Both return a tensor of the input's type (a ``MetaTensor`` keeps the input's metadata), so ``SaveImaged`` writes the
prediction on the input's grid and affine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type, ensure_tuple_rep

__all__ = ["FittedSlidingWindowInferer", "WholeSliceInferer", "padded_size"]


def padded_size(size: int, divisor: int) -> int:
    """The smallest multiple of ``divisor`` that is at least ``size``."""
    return -(-int(size) // int(divisor)) * int(divisor)


class WholeSliceInferer(Inferer):
    """Run a 2D network on every whole slice of a batch of 3D volumes.

    Input ``(B, C, X, Y, Z)``; the slices along spatial axis ``spatial_dim`` (0, 1, 2 for X, Y, Z) go through the
    network in batches of ``sw_batch_size``, each padded (constant ``pad_value``, bottom/right) to a multiple of
    ``divisor`` and cropped back after. Output ``(B, C_out, X, Y, Z)``. Equivalent to MONAI's
    ``SliceInferer(roi_size=<whole slice>)`` on a padded volume, without its windowing bookkeeping.

    Args:
        spatial_dim: the slice axis among the three spatial axes.
        divisor: the network's size divisor (16 for the 4-level U-Net).
        sw_batch_size: slices per forward pass.
        pad_value: the padding value (0: the mean intensity after z-scoring).
    """

    def __init__(self, spatial_dim: int = 2, divisor: int = 16, sw_batch_size: int = 16, pad_value: float = 0.0):
        super().__init__()
        if spatial_dim not in (0, 1, 2):
            raise ValueError(f"spatial_dim must be 0, 1 or 2, got {spatial_dim}")
        if divisor < 1 or sw_batch_size < 1:
            raise ValueError(f"divisor and sw_batch_size must be positive, got {divisor} and {sw_batch_size}")
        self.spatial_dim = spatial_dim
        self.divisor = divisor
        self.sw_batch_size = sw_batch_size
        self.pad_value = pad_value

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"expected a batch of 3D volumes (B, C, X, Y, Z), got shape {tuple(inputs.shape)}")
        # a plain tensor: the network sees no metadata (slicing a batched MetaTensor would try to split its meta)
        data = inputs.as_tensor() if isinstance(inputs, MetaTensor) else torch.as_tensor(inputs)
        axis = 2 + self.spatial_dim
        batch, channels = data.shape[:2]
        moved = torch.movedim(data, axis, 2)  # (B, C, S, H, W)
        num_slices, height, width = moved.shape[2:]
        slices = moved.permute(0, 2, 1, 3, 4).reshape(batch * num_slices, channels, height, width)
        pad_h = padded_size(height, self.divisor) - height
        pad_w = padded_size(width, self.divisor) - width
        if pad_h or pad_w:
            slices = F.pad(slices, (0, pad_w, 0, pad_h), value=self.pad_value)
        outputs = [
            network(slices[start : start + self.sw_batch_size], *args, **kwargs)[..., :height, :width]
            for start in range(0, slices.shape[0], self.sw_batch_size)
        ]
        out = torch.cat(outputs, dim=0)
        out = out.reshape(batch, num_slices, out.shape[1], height, width).permute(0, 2, 1, 3, 4)
        out = torch.movedim(out, 2, axis)
        return convert_to_dst_type(out, inputs, device=out.device)[0]


class FittedSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` with the window fitted to small images.

    Along each spatial axis the window is ``min(roi_size, image size padded to a multiple of divisor)``: an image
    smaller than the training patch is run once, padded only to what the network needs; a larger one is tiled with the
    patch. All other arguments are those of ``SlidingWindowInferer``.

    Args:
        roi_size: the training patch (the largest window).
        divisor: the network's size divisor (16 for the 4-level V-Net and 3D U-Net).
    """

    def __init__(self, roi_size: Sequence[int] | int, divisor: int = 16, **kwargs) -> None:
        super().__init__(roi_size=roi_size, **kwargs)
        self.max_roi_size = tuple(int(r) for r in ensure_tuple_rep(roi_size, 3))
        if any(r % divisor for r in self.max_roi_size):
            raise ValueError(f"roi_size {self.max_roi_size} must be a multiple of divisor {divisor} on every axis")
        self.divisor = divisor

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        spatial = inputs.shape[2:]
        if len(spatial) != len(self.max_roi_size):
            raise ValueError(f"expected {len(self.max_roi_size)} spatial axes, got input shape {tuple(inputs.shape)}")
        self.roi_size = tuple(min(r, padded_size(s, self.divisor)) for r, s in zip(self.max_roi_size, spatial))
        return super().__call__(inputs, network, *args, **kwargs)
