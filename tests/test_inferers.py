"""Inferers whose cost follows the image: whole slices padded to the network's divisor, and a sliding window fitted
to small volumes; both equal MONAI's inferers where those apply, and keep the input's metadata."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer

from volssl.inferers import FittedSlidingWindowInferer, WholeSliceInferer, padded_size
from volssl.networks import UNet2d


class Divisible2d(torch.nn.Module):
    """A fully convolutional toy that refuses sizes the 4-level U-Net refuses."""

    def __init__(self, divisor: int = 16):
        super().__init__()
        self.divisor = divisor
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        assert x.shape[-1] % self.divisor == 0 and x.shape[-2] % self.divisor == 0, x.shape
        return self.conv(x)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_whole_slice_inferer_equals_slice_inferer_on_padded_slices(axis):
    torch.manual_seed(0)
    net = Divisible2d().eval()
    volume = torch.randn(2, 1, 35, 51, 20)
    out = WholeSliceInferer(spatial_dim=axis, divisor=16, sw_batch_size=7)(volume, net)
    assert out.shape == (2, 3, 35, 51, 20)
    # reference: pad the in-plane axes to a multiple of 16, run MONAI's SliceInferer with the whole slice, crop
    inplane = [a for a in range(3) if a != axis]
    pad = [0, 0, 0, 0, 0, 0]
    for a in inplane:
        pad[2 * (2 - a) + 1] = padded_size(volume.shape[2 + a], 16) - volume.shape[2 + a]
    padded = torch.nn.functional.pad(volume, pad)
    roi = [padded.shape[2 + a] for a in inplane]
    ref = SliceInferer(roi_size=roi, spatial_dim=axis, sw_batch_size=7)(padded, net)[:, :, :35, :51, :20]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_whole_slice_inferer_keeps_metadata_and_runs_the_unet():
    net = UNet2d(1, 4, features=4).eval()
    volume = MetaTensor(torch.randn(1, 1, 17, 33, 5), meta={"filename_or_obj": "case.nii.gz"})
    with torch.no_grad():
        out = WholeSliceInferer(spatial_dim=2, sw_batch_size=4)(volume, net)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"
    assert out.shape == (1, 4, 17, 33, 5)


def test_fitted_window_shrinks_to_small_images_and_tiles_large_ones():
    calls = []

    def net(x):
        calls.append(tuple(x.shape[2:]))
        return torch.cat([x, -x], dim=1)

    inferer = FittedSlidingWindowInferer(roi_size=[64, 64, 32], divisor=16, sw_batch_size=1, overlap=0.5)
    small = torch.randn(1, 1, 35, 51, 20)
    out = inferer(small, net)
    assert out.shape == (1, 2, 35, 51, 20) and set(calls) == {(48, 64, 32)}
    torch.testing.assert_close(out[:, :1], small)
    calls.clear()
    large = torch.randn(1, 1, 100, 70, 40)
    ref = SlidingWindowInferer(roi_size=[64, 64, 32], sw_batch_size=1, overlap=0.5)(large, net)
    torch.testing.assert_close(inferer(large, net), ref)
    assert set(calls) == {(64, 64, 32)}


def test_fitted_window_rejects_a_patch_the_network_cannot_take():
    with pytest.raises(ValueError, match="multiple of divisor"):
        FittedSlidingWindowInferer(roi_size=[50, 64, 32], divisor=16)
