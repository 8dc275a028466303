"""Tests of SAL's slice-pair sampling (SlicePairDataset) and its training step (SlicePairStep)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from volssl.data import SlicePairDataset
from volssl.data.augment import pretrain_view_transform
from volssl.data.pairs import max_slice_offset, partner_candidates
from volssl.engines import SlicePairStep
from volssl.losses import SalLoss
from volssl.networks import SalPretrainNet2d

SLICE_COUNTS = (1, 2, 5, 40)
IN_PLANE = (16, 16)


@pytest.fixture(autouse=True)
def _reset():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; avoids stalls when other processes share the cores
    yield
    torch.set_num_threads(threads)
    set_determinism(seed=None)


def _entries(counts=SLICE_COUNTS) -> list[dict]:
    """Channel-first volumes whose voxel values encode (volume, slice): 1000 * v + s, plus a little texture."""
    out = []
    for v, s in enumerate(counts):
        vol = np.broadcast_to(1000.0 * v + np.arange(s, dtype=np.float32), (1, *IN_PLANE, s)).copy()
        vol[0, :8] += np.linspace(0, 0.5, 8, dtype=np.float32)[:, None, None]
        out.append({"image": vol})
    return out


def _dataset(threshold=0.1, counts=SLICE_COUNTS, **kwargs) -> SlicePairDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SlicePairDataset(_entries(counts), threshold=threshold, **kwargs)


def _decode(image: torch.Tensor) -> tuple[int, int]:
    value = float(torch.as_tensor(image)[0, -1, 0])  # an untextured voxel: exactly 1000 * v + s
    return int(value // 1000), int(round(value % 1000))


# ---------------------------------------------------------------- the pairing rule


def test_max_slice_offset_is_robust_to_rounding():
    assert max_slice_offset(0.1, 10) == 1  # 0.3 -> 0.4 is within t although |0.4 - 0.3| > 0.1 in floating point
    assert abs(np.float64(0.4) - np.float64(0.3)) > 0.1
    assert max_slice_offset(0.1, 30) == 3 and max_slice_offset(0.29, 100) == 29
    assert max_slice_offset(0.1, 5) == 0 and max_slice_offset(0.0, 40) == 0 and max_slice_offset(1.0, 7) == 7


def test_partner_candidates_rules():
    np.testing.assert_array_equal(partner_candidates(5, range(40), 2), [3, 4, 6, 7])
    np.testing.assert_array_equal(partner_candidates(0, range(40), 2), [1, 2])
    np.testing.assert_array_equal(partner_candidates(2, range(5), 0), [1, 3])  # nearest neighbours
    np.testing.assert_array_equal(partner_candidates(4, range(5), 0), [3])
    np.testing.assert_array_equal(partner_candidates(0, [0], 3), [0])  # a single slice: itself
    np.testing.assert_array_equal(partner_candidates(3, [0, 3, 9], 1), [0])  # filtered slices: nearest kept


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_pairs_respect_volume_and_threshold(threshold):
    ds = _dataset(threshold, seed=0)
    assert len(ds) == sum(SLICE_COUNTS)
    seen_offsets: dict[int, set] = {s: set() for s in SLICE_COUNTS}
    for _ in range(4):
        for n in range(len(ds)):
            item = ds[n]
            v, i, j, s = item["volume_index"], item["slice_index"], item["slice_index_2"], item["num_slices"]
            # the images really are slices i and j of volume v
            assert _decode(item["image"]) == (v, i) and _decode(item["image_2"]) == (v, j)
            assert item["position"] == pytest.approx((i + 1) / s) and item["position_2"] == pytest.approx((j + 1) / s)
            if s == 1:
                assert j == i
                continue
            assert j != i
            if max_slice_offset(threshold, s) >= 1:
                assert abs(item["position"] - item["position_2"]) <= threshold + 1e-6
            else:
                assert abs(i - j) == 1  # too few slices for t: the nearest neighbour
            seen_offsets[s].add(j - i)
    k = max_slice_offset(threshold, 40)
    assert seen_offsets[40] == set(range(-k, k + 1)) - {0}  # every allowed offset is drawn
    assert seen_offsets[2] == {-1, 1}


def test_warns_once_about_sparse_volumes():
    with pytest.warns(UserWarning, match=r"2 volume\(s\) have slices with no partner.*1 volume\(s\) have a single"):
        SlicePairDataset(_entries(), threshold=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SlicePairDataset(_entries((5, 40)), threshold=0.3)  # every slice has a partner within t: no warning
    with pytest.raises(ValueError, match="threshold"):
        SlicePairDataset(_entries((5,)), threshold=1.5)


def test_skip_empty_label_pairs_kept_slices_only():
    counts = (10, 10)
    entries = _entries(counts)
    for v, e in enumerate(entries):
        label = np.zeros_like(e["image"], dtype=np.uint8)
        kept = [2, 3, 7] if v == 0 else [4]
        label[..., kept] = 1
        e["label"] = label
    with pytest.warns(UserWarning, match=r"1 volume\(s\) have slices .* 1 volume\(s\) have a single"):
        ds = SlicePairDataset(entries, threshold=0.1, keys=("image", "label"), skip_empty_label=True, seed=0)
    items = [ds[n] for n in range(len(ds)) for _ in range(5)]
    pairs = {(item["volume_index"], item["slice_index"], item["slice_index_2"]) for item in items}
    assert pairs == {(0, 2, 3), (0, 3, 2), (0, 7, 3), (1, 4, 4)}
    item = ds[0]
    assert item["label_2"].shape == item["label"].shape == (1, *IN_PLANE)


# ---------------------------------------------------------------- augmentation, collation, determinism


def _view():
    return pretrain_view_transform(patch_size=(16, 16), prob_spatial=1.0, elastic_spacing=(8, 8))


def test_batches_collate_into_plain_tensors_and_views_are_independent():
    entries = [{"image": MetaTensor(torch.as_tensor(e["image"]))} for e in _entries()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = SlicePairDataset(entries, slice_transform=_view(), threshold=0.1, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=6, shuffle=True, num_workers=0)))
    assert batch["image"].shape == batch["image_2"].shape == (6, 1, 16, 16)
    assert type(batch["image"]) is torch.Tensor and type(batch["image_2"]) is torch.Tensor
    assert batch["position"].dtype == batch["position_2"].dtype == torch.float32
    assert batch["position_2"].shape == (6,)
    # the single-slice volume is paired with itself, yet the two slices are augmented independently
    single = ds[0]
    assert single["slice_index"] == single["slice_index_2"] == 0
    assert not torch.allclose(single["image"], single["image_2"])


def test_shared_augmentation_gives_both_slices_one_draw():
    """shared_augmentation: one crop, flip and spatial draw for the pair, so the two slices stay in register (what
    the windowed local alignment compares); the default draws once per slice."""
    entries = _entries((12,))
    ramp = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    entries[0]["image"] = entries[0]["image"] + ramp[None, :, None, None] * 10 + ramp[None, None, :, None] * 3
    crop = dict(patch_size=(12, 12), prob_spatial=0.0)  # crop + flips: exact, no interpolation
    shared = SlicePairDataset(entries, threshold=0.5, seed=0, shared_augmentation=True,
                              slice_transform=pretrain_view_transform(keys=("image", "image_2"), **crop))
    own = SlicePairDataset(entries, threshold=0.5, seed=0, slice_transform=pretrain_view_transform(**crop))
    in_register = {True: 0, False: 0}
    for ds, is_shared in ((shared, True), (own, False)):
        for n in range(len(ds)):
            item = ds[n]
            # slices of one volume differ by a constant (their index): in register, the difference is that constant
            diff = item["image_2"] - item["image"]
            in_register[is_shared] += bool(torch.allclose(diff, diff.flatten()[0].expand_as(diff), atol=1e-4))
            assert type(item["image"]) is torch.Tensor and type(item["image_2"]) is torch.Tensor
            assert item["image"].shape == item["image_2"].shape == (1, 12, 12)
    assert in_register[True] == len(shared)
    assert in_register[False] < len(own) // 2  # independent crops and flips rarely coincide


def test_batches_hold_pairs_from_many_volumes():
    """A shuffled batch of B pairs mixes volumes: about V (1 - (1 - 1/V)^B) of V equal volumes (the cross-subject
    global positional loss needs slices of many subjects in one batch)."""
    counts = (20,) * 30
    ds = _dataset(0.1, counts=counts, seed=0)
    set_determinism(seed=0)
    batches = list(DataLoader(ds, batch_size=16, shuffle=True, num_workers=0, drop_last=True))
    distinct = [len(set(b["volume_index"].tolist())) for b in batches]
    expected = 30 * (1 - (1 - 1 / 30) ** 16)  # 12.4
    assert abs(np.mean(distinct) - expected) < 1.0 and min(distinct) >= 8
    for b in batches:  # every pair stays within its volume
        assert torch.equal(b["image"][:, 0, -1, 0] // 1000, b["image_2"][:, 0, -1, 0] // 1000)


def _epoch(ds) -> list[torch.Tensor]:
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    out = []
    for b in loader:
        partner = b["slice_index_2"].float()[:, None, None, None].expand(-1, 1, 16, 16)
        out.append(torch.cat([b["image"], b["image_2"], partner]))
    return out


def test_pairs_are_deterministic_with_a_seed():
    ds = _dataset(0.5, counts=(1, 2, 5, 12), slice_transform=_view())
    draws = lambda: [(ds[n]["slice_index_2"], ds[n]["image_2"]) for n in range(len(ds))]  # noqa: E731
    ds.set_random_state(7)
    first = draws()
    ds.set_random_state(7)
    for (j1, x1), (j2, x2) in zip(first, draws()):
        assert j1 == j2
        torch.testing.assert_close(x1, x2)
    ds.set_random_state(8)
    assert [j for j, _ in first] != [j for j, _ in draws()]

    set_determinism(seed=3)
    a = _epoch(ds)
    set_determinism(seed=3)
    b = _epoch(ds)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    set_determinism(seed=4)
    assert not all(torch.equal(x, y) for x, y in zip(a, _epoch(ds)))


# ---------------------------------------------------------------- the training step


def test_slice_pair_step_trains_the_network():
    torch.manual_seed(0)
    ds = _dataset(0.1, counts=(5, 40), slice_transform=_view(), seed=0)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=0)
    net = SalPretrainNet2d(1, features=4, embed_dim=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    outputs = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        epoch_length=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=SalLoss(window=1),
        iteration_update=SlicePairStep(),
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    assert len(outputs) == 2
    for out in outputs:
        assert {"loss", "la", "gp", "la_cosine"} <= set(out) and np.isfinite(float(out["loss"]))
        assert float(out["loss"]) == pytest.approx(out["la"] + out["gp"], rel=1e-5)
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("embedding.") for k in changed) and any(k.startswith("position_head.") for k in changed)
