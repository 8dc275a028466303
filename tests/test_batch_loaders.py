"""The batched data path: the tensor caches, the batch loaders (epochs, seeds, resumption, distributed shares, SAL
pairs) and the bundles' ``data_path`` switch, old path against new."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, make_tiny_dataset
from monai.bundle import ConfigParser

from volssl.data import load_images, load_role
from volssl.data.batch_augment import BatchPatchSampler3d, BatchSliceAugmentation
from volssl.data.batch_loaders import EpochBatches, PatchBatchLoader, SliceBatchLoader
from volssl.data.slices import volume_transform
from volssl.data.tensor_cache import SliceTensorCache, VolumeTensorCache
from volssl.io import VolsslInputError, save_nifti

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("phantoms"), n=6, n_labeled=2, n_val=1, n_test=1)


@pytest.fixture(scope="module")
def slice_cache(datalist):
    return SliceTensorCache(load_role(datalist, "training"), volume_transform(("image", "label")),
                            keys=("image", "label"), slice_axis=2)


def test_slice_cache_holds_every_slice_with_its_position(slice_cache, datalist):
    assert len(slice_cache) == 2 * 24 and slice_cache.num_volumes == 2
    assert torch.equal(slice_cache.slice_index[:24], torch.arange(24))
    assert torch.allclose(slice_cache.position[:24], (torch.arange(24) + 1) / 24)
    assert slice_cache.buffers["label"].dtype == torch.uint8
    # slice 5 of volume 1, read back from the flat buffer, is the preprocessed volume's slice
    vol = volume_transform(("image",))(load_role(datalist, "training")[1])["image"]
    n = 24 + 5
    h, w = int(slice_cache.height[n]), int(slice_cache.width[n])
    start = int(slice_cache.offset[n])
    got = slice_cache.buffers["image"][0, start : start + h * w].view(h, w)
    assert torch.allclose(got, torch.as_tensor(vol)[0, :, :, 5], atol=1e-3)


def test_skip_empty_label_keeps_the_slices_with_foreground(datalist):
    cache = SliceTensorCache(load_role(datalist, "training"), volume_transform(("image", "label")),
                             keys=("image", "label"), slice_axis=2, skip_empty_label=True)
    labels = cache.buffers["label"][0]
    for n in cache.items.tolist():
        start, size = int(cache.offset[n]), int(cache.height[n] * cache.width[n])
        assert labels[start : start + size].any()
    assert 0 < cache.items.numel() <= len(cache)


def test_caches_name_a_missing_or_broken_file(tmp_path, datalist):
    entries = load_role(datalist, "training")
    missing = [{"image": str(tmp_path / "nope.nii.gz"), "label": entries[0]["label"]}]
    with pytest.raises(VolsslInputError, match="nope.nii.gz.*file not found"):
        SliceTensorCache(missing, volume_transform(("image", "label")), keys=("image", "label"))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(VolsslInputError, match="broken.nii.gz"):
        VolumeTensorCache([{"image": str(broken)}], volume_transform(("image",)), keys=("image",))
    with pytest.raises(VolsslInputError, match="no volumes"):
        VolumeTensorCache([], volume_transform(("image",)), keys=("image",))
    nan = tmp_path / "nan.nii.gz"
    save_nifti(np.full((8, 8, 4), np.nan, dtype=np.float32), np.eye(4), nan)
    with pytest.raises(VolsslInputError, match="nan.nii.gz.*NaN"):
        VolumeTensorCache([{"image": str(nan)}], volume_transform(("image",), normalize=None), keys=("image",))


def test_epoch_batches_one_pass_iterations_and_distributed_shares():
    one_pass = EpochBatches(10, 3)
    assert len(one_pass) == 4 and sorted(torch.cat(list(one_pass.batches(1))).tolist()) == list(range(10))
    assert len(EpochBatches(10, 3, drop_last=True)) == 3
    fixed = EpochBatches(10, 4, iterations_per_epoch=7)
    order = torch.cat(list(fixed.batches(1)))
    assert len(fixed) == 7 and order.numel() == 28
    assert sorted(order[:10].tolist()) == list(range(10))  # successive shuffled passes, as RandomSampler
    assert not torch.equal(order, torch.cat(list(fixed.batches(2))))  # each epoch draws anew
    ranks = [EpochBatches(12, 2, rank=r, world_size=2) for r in (0, 1)]
    shares = [torch.cat(list(r.batches(3))) for r in ranks]
    assert len(ranks[0]) == 3 and set(shares[0].tolist()).isdisjoint(shares[1].tolist())
    assert sorted(shares[0].tolist() + shares[1].tolist()) == list(range(12))  # DistributedSampler's partition
    # with iterations per epoch every process runs that many (CRLN's schedules count iterations), on disjoint draws
    per_rank = [EpochBatches(12, 2, iterations_per_epoch=3, rank=r, world_size=2) for r in (0, 1)]
    draws = [torch.cat(list(r.batches(1))) for r in per_rank]
    assert [len(r) for r in per_rank] == [3, 3] and [d.numel() for d in draws] == [6, 6]
    assert set(draws[0].tolist()).isdisjoint(draws[1].tolist())


def _batches(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_slice_loader_single_mode_batches_and_resumption(slice_cache):
    aug = BatchSliceAugmentation(patch_size=(32, 32))
    loader = SliceBatchLoader(slice_cache, aug, batch_size=5, iterations_per_epoch=4, seed=3)
    first = _batches(loader, 1)
    assert len(first) == 4 and first[0]["image"].shape == (5, 1, 32, 32)
    assert first[0]["label"].shape == (5, 1, 32, 32) and first[0]["label"].dtype == torch.int64
    assert set(first[0]["label"].unique().tolist()) <= {0, 1, 2, 3}
    second = _batches(loader)  # the next pass is epoch 2 without a trainer
    assert not torch.equal(first[0]["image"], second[0]["image"])
    resumed = SliceBatchLoader(slice_cache, aug, batch_size=5, iterations_per_epoch=4, seed=3)
    again = _batches(resumed, 2)  # a run resumed at epoch 2 draws what the uninterrupted one drew
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) for a, b in zip(second, again))
    other_seed = _batches(SliceBatchLoader(slice_cache, aug, batch_size=5, iterations_per_epoch=4, seed=4), 2)
    assert not torch.equal(other_seed[0]["image"], second[0]["image"])


def test_two_views_are_independent_draws_of_the_same_slices(slice_cache):
    aug = BatchSliceAugmentation(patch_size=(32, 32))
    loader = SliceBatchLoader(slice_cache, aug, batch_size=8, mode="two_views", drop_last=True, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == batch["image_2"].shape == (8, 1, 32, 32) and batch["position"].shape == (8,)
    assert not torch.equal(batch["image"], batch["image_2"])
    assert len(loader) == 48 // 8


def test_pairs_are_nearby_slices_of_one_volume(slice_cache):
    aug = BatchSliceAugmentation(patch_size=(32, 32), prob_spatial=0.0, prob_flip=0.0)
    loader = SliceBatchLoader(slice_cache, aug, batch_size=12, mode="pairs", pair_threshold=0.1, seed=1)
    for batch in loader:
        gap = (batch["slice_index"] - batch["slice_index_2"]).abs()
        assert torch.all(gap >= 1) and torch.all(gap <= int(0.1 * 24))
        assert torch.allclose(batch["position_2"], (batch["slice_index_2"] + 1) / 24)


def test_shared_augmentation_gives_both_slices_of_a_pair_the_same_geometry(tmp_path):
    """On a volume that is the same on every slice, a shared draw makes the two images of a pair identical."""
    plane = np.random.default_rng(0).normal(size=(40, 36, 1)).astype(np.float32)
    path = tmp_path / "same.nii.gz"
    save_nifti(np.repeat(plane, 10, axis=2), np.eye(4), path)
    cache = SliceTensorCache([{"image": str(path)}], volume_transform(("image",)), keys=("image",))
    aug = BatchSliceAugmentation(patch_size=(32, 32))
    shared = next(iter(SliceBatchLoader(cache, aug, batch_size=10, mode="pairs", pair_threshold=0.2, seed=0)))
    assert torch.allclose(shared["image"], shared["image_2"], atol=1e-5)
    apart = next(iter(SliceBatchLoader(cache, aug, batch_size=10, mode="pairs", pair_threshold=0.2, seed=0,
                                       shared_augmentation=False)))
    assert not torch.allclose(apart["image"], apart["image_2"], atol=1e-3)


def test_patch_loader_labelled_and_unlabelled(datalist):
    labelled = VolumeTensorCache(load_role(datalist, "training"), volume_transform(("image", "label")),
                                 keys=("image", "label"))
    sampler = BatchPatchSampler3d((32, 32, 16))
    loader = PatchBatchLoader(labelled, sampler, batch_size=2, iterations_per_epoch=3, seed=0)
    batches = _batches(loader, 1)
    assert len(batches) == 3 and batches[0]["image"].shape == (2, 1, 32, 32, 16)
    assert batches[0]["label"].shape == (2, 1, 32, 32, 16) and batches[0]["label"].dtype == torch.int64
    unlabelled = VolumeTensorCache(load_images(datalist, ["unlabeled"]), volume_transform(("image",)), keys=("image",))
    u = PatchBatchLoader(unlabelled, sampler, batch_size=2, iterations_per_epoch=3, seed=0, stream=1)
    ub = next(iter(u))
    assert set(ub) == {"image"} and ub["image"].shape == (2, 1, 32, 32, 16)


def _parsed(files, datalist, tmp_path, **values):
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(datalist.parent), "datalist": str(datalist),
                   **values})
    return parser


@pytest.mark.parametrize("bundle, config, section, extra", [
    ("coral_mri_segmentation", "train.json", "train", {}),
    ("coral_mri_segmentation", "pretrain.json", "pretrain", {}),
    ("sal_mri_segmentation", "pretrain.json", "pretrain", {}),
    ("crln_mri_segmentation", "train.json", "train", {"num_classes": 4, "patch_size": [32, 32, 16]}),
])
def test_data_path_switch_gives_the_same_batches_in_layout(bundle, config, section, extra, datalist, tmp_path):
    """``data_path``: ``loader`` (per-sample MONAI transforms in a DataLoader, the previous path) and ``device`` (the
    batched path, the default) give batches with the same keys, shapes and dtypes; only the selected path is built."""
    configs = BUNDLES / bundle / "configs"
    files = [configs / config, configs / "cpu_small.json"]
    layouts = {}
    for path in ("loader", "device"):
        parser = _parsed(files, datalist, tmp_path / path, data_path=path, num_workers=0, **extra)
        loader = parser.get_parsed_content(f"{section}#dataloader")
        batch = next(iter(loader))
        layouts[path] = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()
                         if isinstance(v, torch.Tensor) and v.dim() > 1}
        unused = "sample_loader" if path == "device" else "batches"
        assert parser.get_parsed_content(f"{section}#{unused}") is None
    assert layouts["loader"] == layouts["device"]
    assert parser.get_parsed_content("data_path") == "device"


def test_bundles_default_to_the_device_path_with_mixed_precision():
    for bundle, config in [("coral_mri_segmentation", "train.json"), ("coral_mri_segmentation", "pretrain.json"),
                           ("sal_mri_segmentation", "pretrain.json"), ("crln_mri_segmentation", "train.json")]:
        values = json.loads((BUNDLES / bundle / "configs" / config).read_text())
        assert values["data_path"] == "device" and values["mixed_precision"] is True, (bundle, config)
        assert "amp" not in values  # MONAI's amp autocasts on CUDA only; the steps apply the precision policy
