"""Tests of volssl.metrics: per-case 3D metrics, pooled 2D Dice, folder evaluation and the evaluate CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from volssl.data.datalist import case_id
from volssl.io import VolsslInputError, load_nifti, save_nifti
from volssl.metrics import (
    METRIC_KEYS,
    PER_CASE_COLUMNS,
    PooledSliceDice,
    compute_case_metrics,
    evaluate_folder,
    find_prediction,
    format_summary,
    image_diagonal,
    pooled_slice_dice,
    slice_counts,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The metrics run on small tensors, where torch's intra-op threads only add overhead (10x on a loaded 2-core
    machine); the CLI does the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cube(shape=(20, 20, 20), start=(2, 5, 5), size=10, value=1, out=None):
    out = np.zeros(shape, np.int16) if out is None else out
    sl = tuple(slice(s, s + size) for s in start)
    out[sl] = value
    return out


def _brute_force_surface(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """Reference HD95 (max of the directed 95th percentiles) and symmetric ASD (pooled mean), by all pairs."""
    pa = np.argwhere(a ^ binary_erosion(a)) * np.asarray(spacing)
    pb = np.argwhere(b ^ binary_erosion(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    ab, ba = d.min(1), d.min(0)
    return max(np.percentile(ab, 95), np.percentile(ba, 95)), float(np.concatenate([ab, ba]).mean())


# ---------------------------------------------------------------- per-case metrics


def test_identical_prediction_scores_perfectly():
    label = _cube(value=1)
    _cube(start=(12, 0, 0), size=6, value=2, out=label)
    names = ["bg", "a", "b"]
    rows = compute_case_metrics(label.copy(), label, num_classes=3, spacing=(0.7, 1.2, 3.0), class_names=names)
    assert [r["class_index"] for r in rows] == [1, 2]
    assert [r["class_name"] for r in rows] == ["a", "b"]
    for r in rows:
        assert r["dice"] == pytest.approx(1.0) and r["jaccard"] == pytest.approx(1.0)
        for k in ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
            assert r[k] == pytest.approx(0.0)
        assert r["empty_rule"] == "none"


def test_shifted_cube_dice_and_jaccard_by_hand():
    label = _cube(start=(2, 5, 5))
    pred = _cube(start=(4, 5, 5))  # 10x10x10 cube shifted 2 voxels along x
    inter = 8 * 10 * 10  # overlap: 8 x-planes of 10x10
    dice_hand = 2 * inter / (1000 + 1000)  # 0.8
    jacc_hand = inter / (1000 + 1000 - inter)  # 800 / 1200
    (row,) = compute_case_metrics(pred, label, num_classes=2)
    assert row["dice"] == pytest.approx(dice_hand, abs=1e-6)
    assert row["jaccard"] == pytest.approx(jacc_hand, abs=1e-9)
    assert row["pred_voxels"] == 1000 and row["label_voxels"] == 1000
    # the x-faces (100 of 488 edge voxels, > 5%) lie 2 voxels from the other surface: HD95 = 2 voxels
    assert row["hd95_vox"] == pytest.approx(2.0)


def test_hd95_scales_with_anisotropic_spacing_and_matches_brute_force():
    label = _cube(start=(2, 5, 5))
    pred = _cube(start=(4, 5, 5))
    spacing = (3.0, 1.0, 1.0)  # the shift is along the 3 mm axis
    (row,) = compute_case_metrics(pred, label, num_classes=2, spacing=spacing)
    assert row["hd95_vox"] == pytest.approx(2.0)
    assert row["hd95_mm"] == pytest.approx(3.0 * row["hd95_vox"])  # 6 mm
    for unit, sp in (("mm", spacing), ("vox", (1.0, 1.0, 1.0))):
        hd_ref, asd_ref = _brute_force_surface(pred.astype(bool), label.astype(bool), sp)
        assert row[f"hd95_{unit}"] == pytest.approx(hd_ref, abs=1e-4)
        assert row[f"asd_{unit}"] == pytest.approx(asd_ref, abs=1e-4)
    # the same shift along a 1 mm axis leaves mm == voxels
    (row1,) = compute_case_metrics(pred, label, num_classes=2, spacing=(1.0, 3.0, 3.0))
    assert row1["hd95_mm"] == pytest.approx(row1["hd95_vox"]) == pytest.approx(2.0)


def test_empty_case_rules_and_no_nan_in_summary():
    shape, spacing = (20, 20, 20), (3.0, 1.0, 1.0)
    label = _cube(value=1)  # class 2 absent from the label
    cap_mm = math.sqrt((20 * 3.0) ** 2 + 20**2 + 20**2)
    cap_vox = math.sqrt(3 * 20**2)
    assert image_diagonal(shape, spacing) == pytest.approx(cap_mm)
    assert image_diagonal(shape) == pytest.approx(cap_vox)

    both = compute_case_metrics(label, label, 3, spacing)[1]  # class 2 empty in both
    assert both["empty_rule"] == "both_empty"
    assert [both[k] for k in METRIC_KEYS] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]

    missed = compute_case_metrics(np.zeros(shape, np.int16), label, 3, spacing)[0]  # class 1 not predicted
    assert missed["empty_rule"] == "pred_empty"
    assert missed["dice"] == 0.0 and missed["jaccard"] == 0.0
    assert missed["hd95_mm"] == pytest.approx(cap_mm) and missed["asd_mm"] == pytest.approx(cap_mm)
    assert missed["hd95_vox"] == pytest.approx(cap_vox) and missed["asd_vox"] == pytest.approx(cap_vox)

    extra = compute_case_metrics(_cube(value=2), label, 3, spacing)[1]  # class 2 predicted, absent from the label
    assert extra["empty_rule"] == "label_empty"
    assert extra["dice"] == 0.0 and extra["hd95_mm"] == pytest.approx(cap_mm)

    rows = []
    preds = {"a": label, "b": np.zeros(shape, np.int16), "c": _cube(value=2)}
    for name, p in preds.items():
        rows += [dict(r, case=name) for r in compute_case_metrics(p, label, 3, spacing)]
    summary = summarize(rows, {1: "one", 2: "two"}, pooled_slice_dice=[0.5, 0.0])
    json.dumps(summary, allow_nan=False)  # raises on NaN or inf
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert summary["classes"]["2"]["empty_rules"] == {"none": 0, "both_empty": 2, "pred_empty": 0, "label_empty": 1}
    assert summary["mean_foreground"]["dice"]["n"] == 3
    # mean over foreground classes per case, then over cases: a=(1+1)/2, b=(0+1)/2, c=(0+0)/2
    assert summary["mean_foreground"]["dice"]["mean"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert summary["mean_foreground"]["dice"]["std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert "+-" in format_summary(summary)


# ---------------------------------------------------------------- pooled-over-slices 2D Dice


def _two_slice_cases():
    # case A, shape (3, 3, 2): slice z=0 label 4 voxels, prediction 2 of them; slice z=1 empty in both
    la, pa = np.zeros((3, 3, 2), np.int16), np.zeros((3, 3, 2), np.int16)
    la[0:2, 0:2, 0] = 1
    pa[0, 0:2, 0] = 1
    # case B, shape (3, 3, 1): label 1 voxel, prediction that voxel plus 1 false positive
    lb, pb = np.zeros((3, 3, 1), np.int16), np.zeros((3, 3, 1), np.int16)
    lb[1, 1, 0] = 1
    pb[1, 1:3, 0] = 1
    return [pa, pb], [la, lb]


def test_pooled_slice_dice_by_hand():
    preds, labels = _two_slice_cases()
    # sums over the 3 slices: I = 2 + 0 + 1, |P| = 2 + 0 + 2, |L| = 4 + 0 + 1
    expected = 2 * 3 / (4 + 5)
    got = pooled_slice_dice(preds, labels, num_classes=2, axis=-1)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected)
    # a case where sum-pooling and the mean of per-slice Dice differ: one big perfect slice, one tiny missed slice
    lab = np.zeros((10, 10, 2), np.int16)
    lab[:, :, 0] = 1
    lab[0, 0, 1] = 1
    pred = lab.copy()
    pred[0, 0, 1] = 0
    pooled = pooled_slice_dice([pred], [lab], 2)[0]
    assert pooled == pytest.approx(2 * 100 / (100 + 101))  # 0.995, where the mean of slice Dice would be 0.5
    counts = slice_counts(pred, lab, 2, axis=-1)
    assert counts.shape == (2, 1, 3)
    assert counts[:, 0].tolist() == [[100, 100, 100], [0, 0, 1]]


def test_pooled_slice_dice_axis_and_empty_value():
    preds, labels = _two_slice_cases()
    values = [pooled_slice_dice(preds, labels, 2, axis=a)[0] for a in (0, 1, 2, -1)]
    assert np.allclose(values, values[0])  # sum-pooling makes the slice axis irrelevant to the value
    acc = PooledSliceDice(num_classes=3, axis=0)
    counts = acc.update(preds[0], labels[0])
    assert counts.shape == (3, 2, 3) and acc.n_slices == 3
    out = acc.aggregate()
    assert out[0] == pytest.approx(2 * 2 / (2 + 4))
    assert out[1] == 1.0  # class 2 absent everywhere: the volssl empty value
    assert PooledSliceDice(3, empty_value=0.0).aggregate()[1] == 0.0  # positional_cl's eps gives 0


# ---------------------------------------------------------------- folder evaluation


AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])


def _make_dataset(root: Path, n: int = 2) -> tuple[Path, list[np.ndarray]]:
    labels = []
    entries = []
    for i in range(n):
        img = np.random.default_rng(i).normal(size=(16, 14, 12)).astype(np.float32)
        lab = np.zeros((16, 14, 12), np.uint8)
        lab[2:9, 3:10, 2:8] = 1
        if i == 0:
            lab[10:14, 3:7, 4:9] = 2  # case 1 has no class 2
        save_nifti(img, AFFINE, root / "imagesTr" / f"case_{i}.nii.gz")
        save_nifti(lab, AFFINE, root / "labelsTr" / f"case_{i}.nii.gz")
        entries.append({"image": f"imagesTr/case_{i}.nii.gz", "label": f"labelsTr/case_{i}.nii.gz"})
        labels.append(lab)
    dl = {"labels": {"0": "background", "1": "left", "2": "right"}, "test": entries}
    path = root / "datalist.json"
    path.write_text(json.dumps(dl))
    return path, labels


def _write_preds(pred_dir: Path, labels, layout=("plain", "monai")):
    for i, lab in enumerate(labels):
        case = f"case_{i}"
        if layout[i % len(layout)] == "plain":
            save_nifti(lab, AFFINE, pred_dir / f"{case}.nii.gz")
        else:  # MONAI SaveImage default layout and type: <case>/<case>_seg.nii.gz, float32
            save_nifti(lab.astype(np.float32), AFFINE, pred_dir / case / f"{case}_seg.nii.gz")


def test_evaluate_folder_perfect_prediction(tmp_path):
    dl_path, labels = _make_dataset(tmp_path / "data")
    _write_preds(tmp_path / "pred", labels)
    out = tmp_path / "eval"
    summary = evaluate_folder(dl_path, tmp_path / "pred", role="test", output_dir=out, progress=False)
    assert summary["n_cases"] == 2 and summary["num_classes"] == 3
    assert summary["classes"]["1"]["name"] == "left" and summary["classes"]["2"]["name"] == "right"
    assert summary["mean_foreground"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["mean_foreground"]["hd95_mm"]["mean"] == pytest.approx(0.0)
    assert summary["mean_foreground"]["pooled_slice_dice"] == pytest.approx(1.0)
    assert summary["classes"]["2"]["empty_rules"]["both_empty"] == 1
    written = sorted(p.name for p in out.iterdir())  # no temporary file left behind
    assert written == ["metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.json"]

    with open(out / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == PER_CASE_COLUMNS
    assert {"hd95_mm", "hd95_vox", "asd_mm", "asd_vox", "empty_rule"} <= set(rows[0])
    assert len(rows) == 2 * 2
    assert all(float(r["dice"]) == pytest.approx(1.0) for r in rows)
    with open(out / "metrics_summary.csv") as f:
        srows = list(csv.DictReader(f))
    assert [r["class_index"] for r in srows] == ["1", "2", "mean"]
    assert {f"{k}_{s}" for k in METRIC_KEYS for s in ("mean", "std")} | {"n", "pooled_slice_dice"} <= set(srows[0])
    on_disk = json.loads((out / "metrics_summary.json").read_text())
    assert on_disk["mean_foreground"]["dice"]["mean"] == pytest.approx(1.0)
    assert on_disk["files"]["per_case"].endswith("metrics_per_case.csv")


def test_evaluate_folder_imperfect_prediction_in_memory_datalist(tmp_path):
    dl_path, labels = _make_dataset(tmp_path / "data")
    dl = json.loads(dl_path.read_text())
    pred = labels[1].copy()
    pred[2:9, 3:10, 2:5] = 0  # remove half of class 1 (294 voxels) in case_1: Dice 2*147/(147+294)
    save_nifti(labels[0], AFFINE, tmp_path / "pred" / "case_0_seg.nii.gz")
    save_nifti(pred, AFFINE, tmp_path / "pred" / "case_1.nii.gz")
    summary = evaluate_folder(dl, tmp_path / "pred", dataset_dir=tmp_path / "data", progress=False)
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx((1.0 + 2 * 147 / (147 + 294)) / 2, abs=1e-6)
    assert "files" not in summary


@pytest.mark.parametrize("problem", ["missing", "shape", "affine", "label_value", "pred_value", "pred_float"])
def test_evaluate_folder_bad_inputs_name_the_file(tmp_path, problem):
    dl_path, labels = _make_dataset(tmp_path / "data")
    pred_dir = tmp_path / "pred"
    _write_preds(pred_dir, labels, layout=("plain",))
    bad = pred_dir / "case_1.nii.gz"
    if problem == "missing":
        bad.unlink()
    elif problem == "shape":
        save_nifti(labels[1][:-1], AFFINE, bad)
    elif problem == "affine":
        save_nifti(labels[1], np.diag([1.0, 1.0, 2.0, 1.0]), bad)
    elif problem == "pred_value":
        save_nifti(np.where(labels[1] == 1, 3, 0).astype(np.uint8), AFFINE, bad)
    elif problem == "pred_float":
        save_nifti(labels[1] * np.float32(0.5), AFFINE, bad)
    else:
        bad = tmp_path / "data" / "labelsTr" / "case_1.nii.gz"
        save_nifti(np.where(labels[1] == 1, 7, 0).astype(np.uint8), AFFINE, bad)
    with pytest.raises(VolsslInputError) as err:
        evaluate_folder(dl_path, pred_dir, progress=False)
    assert bad.name in str(err.value)
    if problem in ("label_value", "pred_value"):
        assert "outside" in str(err.value)


def test_find_prediction_layouts(tmp_path):
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "c1" / "c1_seg.nii.gz")
    assert find_prediction(tmp_path, "c1") == tmp_path / "c1" / "c1_seg.nii.gz"
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "c2_pred.nii.gz")
    assert find_prediction(tmp_path, "c2", pred_suffix="_pred") == tmp_path / "c2_pred.nii.gz"
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "c1.nii.gz")
    with pytest.raises(VolsslInputError, match="ambiguous"):
        find_prediction(tmp_path, "c1")
    with pytest.raises(VolsslInputError, match="c3"):
        find_prediction(tmp_path, "c3")


# ---------------------------------------------------------------- CLI


def test_cli_subprocess(tmp_path):
    dl_path, labels = _make_dataset(tmp_path / "data")
    _write_preds(tmp_path / "pred", labels)
    out = tmp_path / "eval"
    cmd = [PYTHON, str(REPO_ROOT / "tools" / "evaluate.py"), "--datalist", str(dl_path)]
    cmd += ["--pred_dir", str(tmp_path / "pred"), "--output_dir", str(out), "--role", "test"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    assert "mean (foreground)" in res.stdout and "1.0000 +- 0.0000" in res.stdout
    assert str(out / "metrics_summary.json") in res.stdout
    assert json.loads((out / "metrics_summary.json").read_text())["mean_foreground"]["dice"]["mean"] == 1.0


def test_cli_bad_input_exits_with_message(tmp_path):
    """Bad input: exit status 2 and one last line ``error: <file>: <problem>`` (tools/cli.py's convention)."""
    dl_path, _ = _make_dataset(tmp_path / "data")
    cmd = [PYTHON, str(REPO_ROOT / "tools" / "evaluate.py"), "--datalist", str(dl_path),
           "--pred_dir", str(tmp_path / "nowhere"), "--progress", "False"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nowhere" in last


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_hippocampus_label_as_prediction(hippocampus_dir, tmp_path):
    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    cases = meta["training"][:3]
    dl = {"labels": meta["labels"], "test": cases}
    for shifted in (False, True):
        pred_dir = tmp_path / ("shifted" if shifted else "same")
        for e in cases:
            src = hippocampus_dir / e["label"]
            dst = pred_dir / f"{case_id(e['image'])}.nii.gz"
            if shifted:
                lab, aff = load_nifti(src)
                save_nifti(np.roll(lab.astype(np.uint8), 1, axis=0), aff, dst)
            else:
                pred_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        summary = evaluate_folder(dl, pred_dir, dataset_dir=hippocampus_dir, progress=False)
        assert summary["n_cases"] == 3
        dice = [summary["classes"][c]["dice"]["mean"] for c in ("1", "2")]
        if shifted:
            assert all(d < 1.0 for d in dice) and all(d > 0.3 for d in dice)
            assert summary["mean_foreground"]["hd95_mm"]["mean"] > 0
            assert summary["mean_foreground"]["pooled_slice_dice"] < 1.0
        else:
            assert dice == pytest.approx([1.0, 1.0])
            assert summary["mean_foreground"]["pooled_slice_dice"] == pytest.approx(1.0)
            assert summary["mean_foreground"]["asd_mm"]["mean"] == pytest.approx(0.0)
