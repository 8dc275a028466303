"""Tests of the slice data pipeline: ExtractSlicesd, SliceDataset, TwoViewsd, volume_transform and augment.py."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Compose, LoadImaged, RandFlipd, Randomizable
from monai.utils import set_determinism

from volssl.data.augment import (
    IsotropicRandAffineGrid,
    elastic_parameters,
    finetune_train_transform,
    finetune_val_transform,
    pretrain_slice_transform,
    pretrain_view_transform,
)
from volssl.data.slices import ExtractSlicesd, SliceDataset, TwoViewsd, volume_transform
from volssl.io import VolsslInputError, save_nifti

SLICE_COUNTS = (3, 5, 7)
IN_PLANE = (24, 20)


@pytest.fixture(autouse=True)
def _reset_determinism():
    yield
    set_determinism(seed=None)


def _volume(shape=(1, 8, 6, 5)) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[dict]:
    """Three NIfTI cases with 3, 5 and 7 slices; the label is 1 on the slices with an odd index only."""
    root = tmp_path_factory.mktemp("vols")
    rng = np.random.default_rng(0)
    data = []
    for n, s in enumerate(SLICE_COUNTS):
        image = rng.normal(50.0 * (n + 1), 10.0, size=(*IN_PLANE, s)).astype(np.float32)
        label = np.zeros((*IN_PLANE, s), np.uint8)
        label[4:12, 5:15, 1::2] = 2
        affine = np.diag([1.5, 1.25, 3.0, 1.0])
        affine[:3, 3] = [-10.0, 5.0, 20.0]
        img_path = save_nifti(image, affine, root / f"case{n}.nii.gz")
        lab_path = save_nifti(label, affine, root / f"case{n}_gt.nii.gz")
        data.append({"image": str(img_path), "label": str(lab_path), "ref": image, "ref_label": label})
    return data


def _entries(volumes, keys=("image", "label")) -> list[dict]:
    return [{k: v[k] for k in keys} for v in volumes]


# ---------------------------------------------------------------- ExtractSlicesd


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_extract_slices_each_axis(axis, kind):
    vol = _volume()
    arr = {"numpy": vol, "torch": torch.as_tensor(vol), "meta": MetaTensor(torch.as_tensor(vol))}[kind]
    out = ExtractSlicesd("image", slice_axis=axis)({"image": arr, "name": "case7", "spacing": [1.0, 2.0, 3.0]})
    a = axis % 3
    s = vol.shape[1 + a]
    assert isinstance(out, list) and len(out) == s
    expected_shape = tuple(n for i, n in enumerate(vol.shape) if i != 1 + a)
    for i, item in enumerate(out):
        img = item["image"]
        assert type(img) is type(arr)
        assert tuple(img.shape) == expected_shape
        np.testing.assert_array_equal(np.asarray(img), np.take(vol, i, axis=1 + a))
        assert item["position"] == pytest.approx((i + 1) / s) and item["position"].dtype == np.float32
        assert item["slice_index"] == i and item["num_slices"] == s
        assert item["name"] == "case7" and item["spacing"] == [1.0, 2.0, 3.0]
    if a == 2:
        assert expected_shape == (1, 8, 6)
        np.testing.assert_allclose([it["position"] for it in out], [0.2, 0.4, 0.6, 0.8, 1.0], rtol=1e-6)


def test_extract_single_slice_and_meta_affine():
    out = ExtractSlicesd("image")({"image": _volume((2, 4, 3, 1))})
    assert len(out) == 1 and out[0]["position"] == np.float32(1.0) and out[0]["image"].shape == (2, 4, 3)

    affine = torch.tensor([[1.5, 0, 0, -10], [0, 1.25, 0, 5], [0, 0, 3.0, 20], [0, 0, 0, 1]], dtype=torch.float64)
    vol = MetaTensor(torch.as_tensor(_volume()), affine=affine, meta={"filename_or_obj": "x.nii.gz"})
    z = ExtractSlicesd("image", slice_axis=2)({"image": vol})[3]["image"]
    assert z.meta["filename_or_obj"] == "x.nii.gz"
    np.testing.assert_allclose(z.affine, [[1.5, 0, -10], [0, 1.25, 5], [0, 0, 1]])
    x = ExtractSlicesd("image", slice_axis=0)({"image": vol})[2]["image"]
    np.testing.assert_allclose(x.affine, [[1.25, 0, 5], [0, 3.0, 20], [0, 0, 1]])


def test_extract_slices_several_keys_and_errors():
    vol = _volume()
    out = ExtractSlicesd(["image", "label"])({"image": vol, "label": vol.astype(np.int64) % 3})
    assert len(out) == 5 and out[2]["label"].dtype == np.int64
    np.testing.assert_array_equal(out[2]["label"], vol[..., 2].astype(np.int64) % 3)
    assert len(ExtractSlicesd(["image", "label"], allow_missing_keys=True)({"image": vol})) == 5

    with pytest.raises(VolsslInputError, match="channel-first 3D"):
        ExtractSlicesd("image")({"image": vol[0]})
    with pytest.raises(VolsslInputError, match="spatial shape"):
        ExtractSlicesd(["image", "label"])({"image": vol, "label": vol[:, :4]})
    with pytest.raises(VolsslInputError, match="not an array"):
        ExtractSlicesd("image")({"image": "a.nii.gz"})
    with pytest.raises(VolsslInputError, match="not one of the keys"):
        ExtractSlicesd("image")({"image": vol, "label": vol})
    with pytest.raises(ValueError, match="slice_axis"):
        ExtractSlicesd("image", slice_axis=3)


def test_extract_slices_is_cacheable():
    assert not isinstance(ExtractSlicesd("image"), Randomizable)
    data = [{"image": _volume()}, {"image": _volume((1, 8, 6, 2))}]
    ds = CacheDataset(data, Compose([ExtractSlicesd("image"), RandFlipd("image", prob=0.5)]), progress=False)
    assert ds.cache_num == 2 and [len(ds[i]) for i in range(2)] == [5, 2]


# ---------------------------------------------------------------- volume_transform


def test_volume_transform_normalisation_and_label(volumes):
    entry = _entries(volumes)[1]
    out = volume_transform(keys=("image", "label"))(entry)
    img, lab = out["image"], out["label"]
    assert img.shape == (1, *IN_PLANE, 5) and img.dtype == torch.float32
    assert float(img.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(img.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    assert lab.dtype == torch.int64 and set(torch.unique(lab).tolist()) == {0, 2}
    np.testing.assert_array_equal(lab[0].numpy(), volumes[1]["ref_label"])

    pct = volume_transform(normalize="percentile")({"image": entry["image"]})["image"]
    assert float(pct.min()) == 0.0 and float(pct.max()) == 1.0

    res = volume_transform(keys=("image", "label"), in_plane_spacing=0.75)(entry)
    # MONAI keeps the extent between the first and last voxel centres: (24 - 1) * 1.5 / 0.75 + 1 = 47
    assert res["image"].shape == (1, 47, 33, 5) and res["label"].shape == (1, 47, 33, 5)
    assert set(torch.unique(res["label"]).tolist()) == {0, 2}
    np.testing.assert_allclose(res["image"].pixdim, [0.75, 0.75, 3.0], rtol=1e-5)


# ---------------------------------------------------------------- SliceDataset


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def test_slice_dataset_items(volumes):
    ds = SliceDataset(_entries(volumes), volume_transform(keys=("image", "label")), keys=("image", "label"))
    assert len(ds) == sum(SLICE_COUNTS) and ds.num_slices == list(SLICE_COUNTS)
    n = 0
    for v, s in enumerate(SLICE_COUNTS):
        ref = _zscore(volumes[v]["ref"].astype(np.float64))
        for i in range(s):
            item = ds[n]
            assert item["volume_index"] == v and item["slice_index"] == i and item["num_slices"] == s
            assert item["case"] == f"case{v}"
            assert item["position"] == pytest.approx((i + 1) / s) and item["position"].dtype == np.float32
            assert item["image"].shape == (1, *IN_PLANE) and item["label"].shape == (1, *IN_PLANE)
            np.testing.assert_allclose(item["image"][0].numpy(), ref[..., i], atol=1e-4)
            np.testing.assert_array_equal(item["label"][0].numpy(), volumes[v]["ref_label"][..., i])
            n += 1

    vt = volume_transform(keys=("image", "label"))
    lazy = SliceDataset(_entries(volumes), vt, keys=("image", "label"), cache=False)
    assert len(lazy) == len(ds) and lazy.index == ds.index
    np.testing.assert_array_equal(lazy[9]["image"].numpy(), ds[9]["image"].numpy())


def test_slice_dataset_shuffled_batches_mix_volumes(volumes):
    ds = SliceDataset(
        _entries(volumes, ("image",)), volume_transform(), pretrain_slice_transform(patch_size=(16, 16)), num_workers=2
    )
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 16, 16) and batch["image_2"].shape == batch["image"].shape
        assert batch["position"].dtype == torch.float32 and batch["position"].shape == (batch["image"].shape[0],)
        expected = (batch["slice_index"] + 1).float() / batch["num_slices"].float()
        torch.testing.assert_close(batch["position"], expected)
        seen.append(batch["volume_index"])
    # 8 slices cannot come from one volume (at most 7 slices each): every full batch mixes volumes
    assert len(torch.unique(seen[0])) > 1
    assert sorted(torch.cat(seen).tolist()) == sorted(v for v, s in enumerate(SLICE_COUNTS) for _ in range(s))


def test_slice_dataset_skip_empty_label(volumes):
    ds = SliceDataset(
        _entries(volumes), volume_transform(keys=("image", "label")), keys=("image", "label"), skip_empty_label=True
    )
    assert len(ds) == sum(s // 2 for s in SLICE_COUNTS)
    for n in range(len(ds)):
        item = ds[n]
        assert item["slice_index"] % 2 == 1 and bool((item["label"] > 0).any())
        assert item["position"] == pytest.approx((item["slice_index"] + 1) / item["num_slices"])
    with pytest.raises(ValueError, match="label key"):
        SliceDataset(_entries(volumes, ("image",)), volume_transform(), skip_empty_label=True)


def test_slice_dataset_bad_input_names_the_file(volumes, tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(VolsslInputError, match="nope.nii.gz.*file not found"):
        SliceDataset([{"image": str(missing)}], volume_transform())
    with pytest.raises(Exception, match="nope.nii.gz"):  # MONAI's own loader names the file too
        LoadImaged("image")({"image": str(missing)})
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not a nifti")
    entries = _entries(volumes, ("image",)) + [{"image": str(corrupt)}]
    with pytest.raises(VolsslInputError, match="corrupt.nii.gz.*cannot load"):
        SliceDataset(entries, volume_transform(), num_workers=2)
    with pytest.raises(VolsslInputError, match="no 'label'"):
        SliceDataset(_entries(volumes, ("image",)), volume_transform(), keys=("image", "label"))


# ---------------------------------------------------------------- TwoViewsd and determinism


def _two_views(seed: int | None = None) -> TwoViewsd:
    t = TwoViewsd("image", pretrain_view_transform(patch_size=(32, 32), prob_spatial=1.0, elastic_spacing=(8, 8)))
    return t if seed is None else t.set_random_state(seed)


def test_two_views_differ_and_are_reproducible():
    rng = np.random.default_rng(1)
    item = {"image": MetaTensor(torch.as_tensor(rng.normal(size=(1, 48, 40)).astype(np.float32))), "position": 0.5}
    out = _two_views(0)(item)
    assert set(out) == {"image", "image_2", "position"} and out["position"] == 0.5
    assert out["image"].shape == (1, 32, 32) and out["image_2"].shape == (1, 32, 32)
    assert not torch.allclose(out["image"], out["image_2"])
    assert item["image"].shape == (1, 48, 40)  # the input is left alone

    again = _two_views(0)(item)
    torch.testing.assert_close(again["image"], out["image"])
    torch.testing.assert_close(again["image_2"], out["image_2"])
    other = _two_views(1)(item)
    assert not torch.allclose(other["image"], out["image"])


def _epoch(ds, num_workers: int) -> list[torch.Tensor]:
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=num_workers)
    return [torch.cat([torch.as_tensor(b["image"]), torch.as_tensor(b["image_2"])]) for b in loader]


def test_set_determinism_reproduces_the_pipeline(volumes):
    ds = SliceDataset(_entries(volumes, ("image",)), volume_transform(), pretrain_slice_transform(patch_size=(16, 16)))
    set_determinism(seed=3)
    first = _epoch(ds, 0)
    set_determinism(seed=3)
    second = _epoch(ds, 0)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    set_determinism(seed=4)
    assert not all(torch.allclose(a, b) for a, b in zip(first, _epoch(ds, 0)))
    set_determinism(seed=3)
    w1 = _epoch(ds, 2)
    set_determinism(seed=3)
    for a, b in zip(w1, _epoch(ds, 2)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- augment.py


@pytest.mark.parametrize("in_shape", [(1, 20, 30), (1, 100, 90), (1, 40, 130), (1, 64, 48)])
@pytest.mark.parametrize("elastic", [True, False])
def test_pretrain_view_shape(in_shape, elastic):
    t = pretrain_view_transform(patch_size=(64, 48), prob_spatial=1.0, elastic=elastic, elastic_spacing=(16, 16))
    t.set_random_state(0)
    x = torch.rand(in_shape)
    for _ in range(3):
        out = t({"image": x})["image"]
        assert out.shape == (1, 64, 48) and out.dtype == torch.float32 and torch.isfinite(out).all()
    plain = pretrain_view_transform(patch_size=64, prob_spatial=0.0)({"image": x})["image"]
    assert plain.shape == (1, 64, 64)


def test_pretrain_view_spatial_parameters():
    t = pretrain_view_transform(patch_size=(32, 32), prob_spatial=1.0, elastic_spacing=(8, 8))
    t.set_random_state(0)
    elastic = t.transforms[-1]
    grid = elastic.rand_2d_elastic.rand_affine_grid
    assert isinstance(grid, IsotropicRandAffineGrid)
    angles, scales = [], []
    for _ in range(50):
        t({"image": torch.rand(1, 32, 32)})
        assert grid.scale_params[0] == grid.scale_params[1]
        angles.append(grid.rotate_params[0])
        scales.append(grid.scale_params[0])
    assert 0.0 <= min(angles) and max(angles) <= 2 * np.pi and max(angles) > np.pi
    assert 0.7 <= min(scales) and max(scales) <= 1.3


def test_elastic_parameters_scale_with_the_patch():
    """The public code's elastic values are pixels of 352 x 352 patches: by default they scale with sqrt(h w) / 352
    (the spacing rounded to whole pixels, the offsets by the same factor); given values stay in pixels."""
    assert elastic_parameters((352, 352)) == ((30.0, 30.0), (1.0, 3.5))
    (sy, sx), (m0, m1) = elastic_parameters((64, 64))  # 30 * 64 / 352 = 5.45 -> 5 px
    assert sy == sx == 5.0 and (m0, m1) == pytest.approx((5 / 30, 3.5 * 5 / 30))
    assert elastic_parameters((48, 64))[0] == (5.0, 5.0)  # 30 * sqrt(48 * 64) / 352 = 4.7
    assert elastic_parameters((8, 8))[0] == (1.0, 1.0)
    assert elastic_parameters((64, 64), 8, (1, 2)) == ((8.0, 8.0), (1.0, 2.0))
    for bad in ({"elastic_spacing": 0}, {"elastic_magnitude": (2, 1)}):
        with pytest.raises(ValueError):
            elastic_parameters((64, 64), **bad)
    for make in (pretrain_view_transform, finetune_train_transform):
        grid = make(patch_size=(64, 64), prob_spatial=1.0).transforms[-1 if make is pretrain_view_transform else -2]
        deform = grid.rand_2d_elastic.deform_grid
        assert tuple(deform.spacing) == (5.0, 5.0)
        assert tuple(deform.magnitude) == pytest.approx((5 / 30, 3.5 * 5 / 30))


def _rms_elastic_displacement(size: int, draws: int = 6) -> float:
    """RMS displacement (pixels) of the default elastic field alone (no rotation or scale), inside the patch."""
    t = pretrain_view_transform(patch_size=size, prob_spatial=1.0, rotate_range=(0.0, 0.0), scale_range=(1.0, 1.0),
                                prob_flip=0.0, mode="bilinear", padding_mode="border")
    t.set_random_state(0)
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    coords = torch.stack([rows, cols])  # each pixel holds its own coordinates
    inner = slice(size // 8, size - size // 8)  # away from the border, where "border" padding clips the field
    squares = []
    for _ in range(draws):
        moved = t({"image": coords})["image"]
        squares.append(((moved - coords)[:, inner, inner] ** 2).sum(0).mean())
    return float(torch.stack(squares).mean().sqrt())


def test_elastic_displacement_is_the_same_fraction_of_the_patch():
    """Measured on the transform itself: the default field moves pixels by about 1 % of the patch side at 352 (about
    3 px, the public code's ACDC setting) and at 64 (about 0.6 px, not the 3 px of unscaled values)."""
    big, small = _rms_elastic_displacement(352) / 352, _rms_elastic_displacement(64) / 64
    assert 0.004 < big < 0.02
    assert small == pytest.approx(big, rel=0.35)


def test_finetune_transform_keeps_label_aligned():
    rng = np.random.default_rng(2)
    label = np.zeros((1, 50, 40), np.int64)
    label[0, 10:30, 5:25] = 1
    label[0, 20:45, 20:38] = 3
    both_nearest = finetune_train_transform(
        patch_size=(48, 48), prob_spatial=1.0, elastic_spacing=(12, 12), mode=("nearest", "nearest")
    )
    both_nearest.set_random_state(0)
    for _ in range(5):
        out = both_nearest({"image": torch.as_tensor(label.astype(np.float32)), "label": torch.as_tensor(label)})
        assert out["label"].dtype == torch.int64 and out["label"].shape == (1, 48, 48)
        np.testing.assert_array_equal(out["image"].numpy(), out["label"].numpy().astype(np.float32))

    default = finetune_train_transform(patch_size=(48, 48), prob_spatial=1.0, elastic_spacing=(12, 12))
    default.set_random_state(1)
    for _ in range(5):
        img = torch.as_tensor(label.astype(np.float32) + rng.normal(0, 0.01, label.shape).astype(np.float32))
        out = default({"image": img, "label": torch.as_tensor(label)})
        lab = out["label"]
        assert lab.dtype == torch.int64 and set(torch.unique(lab).tolist()) <= {0, 1, 3}
        agree = (torch.round(out["image"]).long() == lab).float().mean()
        assert agree > 0.95

    val_item = {"image": torch.rand(1, 50, 20), "label": torch.as_tensor(label[:, :, :20])}
    val = finetune_val_transform(patch_size=(32, 32))(val_item)
    assert val["image"].shape == (1, 32, 32) and val["label"].dtype == torch.int64
    np.testing.assert_array_equal(val["label"][0, :, 6:26].numpy(), label[0, 9:41, :20])


def test_transforms_from_bundle_config(volumes):
    config = {
        "data": _entries(volumes, ("image",)),
        "dataset": {
            "_target_": "volssl.data.slices.SliceDataset",
            "data": "@data",
            "volume_transform": {"_target_": "volssl.data.slices.volume_transform", "keys": ["image"]},
            "slice_transform": {
                "_target_": "volssl.data.slices.TwoViewsd",
                "keys": "image",
                "view_transform": {"_target_": "volssl.data.augment.pretrain_view_transform", "patch_size": [16, 16]},
            },
        },
    }
    parser = ConfigParser(config)
    ds = parser.get_parsed_content("dataset")
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["image_2"].shape == (1, 16, 16)
    assert item["position"] == pytest.approx(1 / 3)
