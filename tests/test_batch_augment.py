"""The batched augmentation against MONAI's per-sample pipelines: the same outputs given the same random draws, and
the same distributions of the draws (crop positions, flips, rotation angles, scales, deformation magnitude) and of
the augmented intensities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import set_track_meta
from monai.transforms import Compose, RandAxisFlipd, RandRotate90d, RandSpatialCropd, SpatialPadd
from scipy import stats

from volssl.data.augment import finetune_train_transform
from volssl.data.batch_augment import BatchPatchSampler3d, BatchSliceAugmentation, crop_origins, gather_patches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_meta():
    set_track_meta(False)  # plain tensors out of MONAI, as the training pipelines run
    yield
    set_track_meta(True)


def _monai_slice_draws(t, size, patch) -> dict:
    """The random parameters a ``finetune_train_transform`` drew in its last call, in BatchSliceAugmentation's
    convention (crop start in the unpadded slice)."""
    _, crop, flip0, flip1, elastic = t.transforms[:5]
    start = [crop.cropper._slices[a].start - max(p - s, 0) // 2 for a, (s, p) in enumerate(zip(size, patch))]
    e = elastic.rand_2d_elastic
    done = bool(elastic._do_transform)
    aug = BatchSliceAugmentation(patch_size=patch)
    control = aug.control_grid("cpu").shape[1:]
    return {
        "origin": torch.tensor([start]),
        "flip": torch.tensor([[bool(flip0._do_transform), bool(flip1._do_transform)]]),
        "spatial": torch.tensor([done]),
        "angle": torch.tensor([float(e.rand_affine_grid.rotate_params[0]) if done else 0.0]),
        "scale": torch.tensor([[float(v) for v in e.rand_affine_grid.scale_params]] if done else [[1.0, 1.0]]),
        "magnitude": torch.tensor([float(e.deform_grid.rand_mag)]),
        "offsets": torch.as_tensor(e.deform_grid.random_offset).unsqueeze(0) if done else torch.zeros(1, 2, *control),
    }


@pytest.mark.parametrize("size, patch", [((50, 70), (64, 64)), ((80, 90), (64, 64)), ((40, 30), (32, 48))])
def test_slice_augmentation_equals_monai_given_its_draws(size, patch):
    """Crop/pad, flips, rotation, scale and elastic deformation: MONAI's output, pixel for pixel (bicubic image to
    float precision, nearest label exactly), for slices larger, smaller and mixed against the patch."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, *size, generator=g)
    label = torch.randint(0, 3, (1, *size), generator=g).float()
    aug = BatchSliceAugmentation(patch_size=patch)
    seen_spatial = set()
    for seed in range(8):
        t = finetune_train_transform(patch_size=patch)
        t.set_random_state(seed)
        want = t({"image": image.clone(), "label": label.clone()})
        params = _monai_slice_draws(t, size, patch)
        seen_spatial.add(bool(params["spatial"]))
        got_image, got_label = aug([image.reshape(1, -1), label.reshape(1, -1)], torch.tensor([0]),
                                   torch.tensor([list(size)]), params=params, labels=[False, True])
        assert got_image.shape == (1, 1, *patch) and got_label.dtype == torch.int64
        assert (got_image[0] - torch.as_tensor(want["image"])).abs().max() < 1e-4, seed
        assert torch.equal(got_label[0], torch.as_tensor(want["label"]).long()), seed
    assert seen_spatial == {True, False}  # both branches compared


def test_affine_without_elastic_equals_monai():
    """``elastic=False``: the grid of MONAI's ``RandAffine`` (its ``AffineGrid`` of the rotation and scale on the
    identity grid, then ``Resample``), built here from known parameters (``RandAffined`` redraws its parameters after
    using them, so they cannot be read back from it)."""
    from monai.transforms import AffineGrid, Resample
    from monai.transforms.utils import create_grid

    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 32, 40, generator=g)
    aug = BatchSliceAugmentation(patch_size=(32, 40), elastic=False)
    for angle, scale in [(0.0, (1.2, 1.2)), (1.3, (1.0, 1.0)), (4.0, (0.8, 1.1))]:
        grid, _ = AffineGrid(rotate_params=[angle], scale_params=list(scale))(
            grid=torch.as_tensor(create_grid((32, 40)), dtype=torch.float32))
        want = Resample(mode="bicubic", padding_mode="zeros")(image, grid)
        params = {"origin": torch.zeros(1, 2, dtype=torch.long), "flip": torch.zeros(1, 2, dtype=torch.bool),
                  "spatial": torch.tensor([True]), "angle": torch.tensor([angle]), "scale": torch.tensor([scale]),
                  "magnitude": torch.zeros(1), "offsets": torch.zeros(1, 2, 1, 1)}
        (got,) = aug([image.reshape(1, -1)], torch.tensor([0]), torch.tensor([[32, 40]]), params=params)
        assert (got[0] - torch.as_tensor(want)).abs().max() < 1e-4, (angle, scale)


@pytest.mark.parametrize("shape, patch", [((20, 15, 9), (12, 12, 8)), ((10, 14, 6), (12, 12, 8)),
                                          ((20, 25, 9), (16, 8, 10))])
def test_patch_sampler_equals_monai_given_its_draws(shape, patch):
    """CRLN's weak view (rot90, axis flip, pad, random crop) as one gather: MONAI's output exactly, for volumes larger,
    smaller and non-square patches (the rotated volume's shape decides the crop range)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, *shape, generator=g)
    sampler = BatchPatchSampler3d(patch)
    turns = set()
    for seed in range(10):
        t = Compose([RandRotate90d(["image"], prob=0.75, max_k=3, spatial_axes=(0, 1)),
                     RandAxisFlipd(["image"], prob=1.0), SpatialPadd(["image"], spatial_size=patch, mode="constant"),
                     RandSpatialCropd(["image"], roi_size=patch, random_size=False)])
        t.set_random_state(seed)
        want = torch.as_tensor(t({"image": image.clone()})["image"])
        rot, flip, _, crop = t.transforms
        k = rot._rand_k if rot._do_transform else 0
        rotated = [shape[1], shape[0], shape[2]] if k % 2 else list(shape)
        origin = [crop.cropper._slices[a].start - max(p - s, 0) // 2 for a, (s, p) in enumerate(zip(rotated, patch))]
        params = {"k": torch.tensor([k]), "flip_axis": torch.tensor([flip.flipper._axis]),
                  "origin": torch.tensor([origin])}
        (got,) = sampler([image.reshape(1, -1)], torch.tensor([0]), torch.tensor([list(shape)]), params=params)
        turns.add(k)
        assert torch.equal(got[0], want), seed
    assert len(turns) >= 3


def test_gather_patches_pads_with_zeros_and_reads_each_sample_from_its_own_array():
    a = torch.arange(6.0).view(2, 3)
    b = 100 + torch.arange(12.0).view(3, 4)
    buffer = torch.cat([a.reshape(1, -1), b.reshape(1, -1)], dim=1)
    out = gather_patches(buffer, torch.tensor([0, 6]), torch.tensor([[2, 3], [3, 4]]), torch.tensor([[-1, 0], [1, 1]]),
                         (2, 2))
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # one row of padding above
    assert torch.equal(out[1, 0], b[1:3, 1:3])


def test_crop_origins_cover_every_position_uniformly():
    size = torch.tensor([[10, 3]]).repeat(6000, 1)
    origin = crop_origins(size, (4, 5), torch.Generator().manual_seed(0))
    counts = torch.bincount(origin[:, 0], minlength=7)
    assert counts.numel() == 7 and counts.min() > 700  # 0..6 each about 857 times
    assert torch.all(origin[:, 1] == -1)  # smaller than the patch: centred ((5 - 3) // 2 = 1 pixel of padding before)


# --- distributions ------------------------------------------------------------------------------------------------


def _same_distribution(a, b, name):
    p = stats.ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).pvalue
    assert p > 1e-3, f"{name}: the batched draws differ from MONAI's (KS p = {p:.2e})"


def test_slice_augmentation_draws_and_outputs_match_monai_in_distribution():
    """Crop positions, flips, the spatial branch, angles, scales, elastic magnitudes and RMS deformation, and the
    augmented images' intensity moments: MONAI's per-sample pipeline and the batched one, 400 draws each."""
    size, patch, n = (48, 80), (32, 64), 400
    g = torch.Generator().manual_seed(5)
    image = torch.randn(1, *size, generator=g).cumsum(1) / 10  # structured, so intensity moments vary with the crop
    label = torch.zeros(1, *size)
    old = {k: [] for k in ("r", "c", "flip0", "flip1", "spatial", "angle", "scale", "mag", "rms", "mean", "std")}
    aug = BatchSliceAugmentation(patch_size=patch)
    for seed in range(n):
        t = finetune_train_transform(patch_size=patch)
        t.set_random_state(seed)
        out = torch.as_tensor(t({"image": image.clone(), "label": label.clone()})["image"])
        d = _monai_slice_draws(t, size, patch)
        old["r"].append(int(d["origin"][0, 0]))
        old["c"].append(int(d["origin"][0, 1]))
        old["flip0"].append(bool(d["flip"][0, 0]))
        old["flip1"].append(bool(d["flip"][0, 1]))
        old["spatial"].append(bool(d["spatial"]))
        old["mean"].append(float(out.mean()))
        old["std"].append(float(out.std()))
        if bool(d["spatial"]):
            old["angle"].append(float(d["angle"]))
            old["scale"].append(float(d["scale"][0, 0]))
            old["mag"].append(float(d["magnitude"]))
            field = F.interpolate(d["magnitude"].view(1, 1, 1, 1) * d["offsets"], scale_factor=list(aug.spacing),
                                  mode="bicubic", align_corners=False, recompute_scale_factor=True)
            old["rms"].append(float(field.pow(2).sum(1).mean().sqrt()))
    params = aug.sample(torch.tensor([list(size)]).repeat(n, 1), torch.Generator().manual_seed(0))
    (images,) = aug([image.reshape(1, -1)], torch.zeros(n, dtype=torch.long), torch.tensor([list(size)]).repeat(n, 1),
                    params=params)
    chosen = params["spatial"]
    field = aug._upsample(params["magnitude"].view(-1, 1, 1, 1) * params["offsets"])
    new = {"r": params["origin"][:, 0], "c": params["origin"][:, 1], "flip0": params["flip"][:, 0],
           "flip1": params["flip"][:, 1], "spatial": chosen, "angle": params["angle"][chosen],
           "scale": params["scale"][chosen, 0], "mag": params["magnitude"][chosen],
           "rms": field[chosen].pow(2).sum(1).mean((1, 2)).sqrt(), "mean": images.mean((1, 2, 3)),
           "std": images.flatten(1).std(1)}
    for key in old:
        _same_distribution(old[key], new[key], key)
    assert 0.6 < float(chosen.float().mean()) < 0.74  # prob_spatial 0.67


def test_patch_sampler_draws_match_monai_in_distribution():
    shape, patch, n = (20, 15, 9), (12, 12, 8), 600
    image = torch.zeros(1, *shape)
    old = {"k": [], "axis": [], "r": [], "c": [], "z": []}
    for seed in range(n):
        t = Compose([RandRotate90d(["image"], prob=0.75, max_k=3, spatial_axes=(0, 1)),
                     RandAxisFlipd(["image"], prob=1.0), SpatialPadd(["image"], spatial_size=patch, mode="constant"),
                     RandSpatialCropd(["image"], roi_size=patch, random_size=False)])
        t.set_random_state(seed)
        t({"image": image})
        rot, flip, _, crop = t.transforms
        old["k"].append(rot._rand_k if rot._do_transform else 0)
        old["axis"].append(flip.flipper._axis)
        old["r"].append(crop.cropper._slices[0].start)
        old["c"].append(crop.cropper._slices[1].start)
        old["z"].append(crop.cropper._slices[2].start)
    sampler = BatchPatchSampler3d(patch)
    params = sampler.sample(torch.tensor([list(shape)]).repeat(n, 1), torch.Generator().manual_seed(0))
    new = {"k": params["k"], "axis": params["flip_axis"], "r": params["origin"][:, 0], "c": params["origin"][:, 1],
           "z": params["origin"][:, 2]}
    for key in old:
        _same_distribution(old[key], new[key], key)
