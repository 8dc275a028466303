"""Converters (MSD, SSL4MIS ACDC h5, UA-MT LA h5), the datalist check and the prepare_data CLI.

Real-data tests convert only a few cases (``limit``) into pytest's tmp_path and skip when ../shared/data is absent.
Bad-input tests use tiny synthetic folders written into tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from volssl.data.converters import (
    acdc_h5_to_nifti,
    acdc_split,
    check_datalist,
    la_h5_to_nifti,
    la_split,
    msd_to_datalist,
    read_case_list,
)
from volssl.data.datalist import load_datalist, resolve_role
from volssl.data.split import group_by_regex
from volssl.io import VolsslInputError, read_h5, save_nifti, spacing_from_affine

REPO_ROOT = Path(__file__).resolve().parents[1]
ROLES = ("training", "unlabeled", "validation", "test")
ACDC_SPACING = (1.5625, 1.5625, 10.0)
PATIENT = group_by_regex(r"patient\d+")
realdata = pytest.mark.realdata


# ----------------------------------------------------------------------------------------------------------------------
# synthetic folders


def _write_msd(root: Path, n: int = 12, shape=(6, 5, 4), spacing=(1.0, 1.0, 2.0), num_classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    training = []
    for i in range(n):
        name = f"toy_{i:03d}.nii.gz"
        save_nifti(rng.normal(size=shape).astype(np.float32), affine, root / "imagesTr" / name)
        save_nifti(rng.integers(0, num_classes, size=shape).astype(np.uint8), affine, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    index = {
        "name": "Toy",
        "modality": {"0": "MRI"},
        "labels": {str(c): f"class{c}" for c in range(num_classes)},
        "numTraining": n,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(index, indent=1))
    return root


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray, spacing_mm=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)
        if spacing_mm is not None:
            f.attrs["spacing_mm"] = np.asarray(spacing_mm, dtype=np.float64)
    return path


def _write_acdc(root: Path, train=(1, 2, 3, 4), val=(5,), test=(6,), shape=(3, 8, 6)) -> Path:
    rng = np.random.default_rng(1)
    for name, patients in (("train", train), ("val", val), ("test", test)):
        names = [f"patient{p:03d}_frame{f:02d}" for p in patients for f in (1, 2)]
        for case in names:
            image = rng.random(shape).astype(np.float16)
            _write_h5(root / "volumes" / f"{case}.h5", image, rng.integers(0, 4, size=shape).astype(np.uint8))
        (root / f"{name}.list").write_text("\n".join(names) + "\n")
    return root


def _write_la(root: Path, train=6, test=2, shape=(8, 7, 5), spacing_mm=(1.25, 1.25, 1.25)) -> Path:
    rng = np.random.default_rng(2)
    ids = [f"ID{i:04d}" for i in range(train + test)]
    for case in ids:
        h5 = root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"
        label = rng.integers(0, 2, size=shape).astype(np.uint8)
        _write_h5(h5, rng.normal(size=shape).astype(np.float16), label, spacing_mm)
    (root / "train.list").write_text("\n".join(ids[:train]) + "\n")
    (root / "test.list").write_text("\n".join(ids[train:]) + "\n")
    return root


def _roles_disjoint(datalist) -> None:
    images = [e["image"] for role in ROLES for e in datalist[role]]
    assert len(images) == len(set(images)), "a case appears in two roles"


def _check_nifti_pair(entry, spacing, num_classes):
    """Loads an image/label pair and checks the grid, spacing and label values; returns (image, label)."""
    img, lab = nib.load(entry["image"]), nib.load(entry["label"])
    assert img.header.get_zooms()[:3] == pytest.approx(spacing)
    assert spacing_from_affine(img.affine) == pytest.approx(spacing)
    assert spacing_from_affine(lab.affine) == pytest.approx(spacing)
    image, label = np.asarray(img.dataobj), np.asarray(lab.dataobj)
    assert image.dtype == np.float32
    assert np.issubdtype(label.dtype, np.integer)
    assert image.shape == label.shape and image.ndim == 3
    assert set(np.unique(label).tolist()) <= set(range(num_classes))
    return image, label


# ----------------------------------------------------------------------------------------------------------------------
# MSD (real hippocampus)


@realdata
def test_msd_hippocampus_datalist_resolves_without_copying(hippocampus_dir, tmp_path):
    out = tmp_path / "lists" / "hippo.json"
    written = msd_to_datalist(hippocampus_dir, out, n_labeled=5, n_val=3, n_test=4, seed=0)
    assert not (tmp_path / "lists" / "imagesTr").exists(), "no image may be copied"
    datalist = load_datalist(out)
    assert datalist["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert datalist["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert datalist["name"] == "Hippocampus" and datalist["modality"] == {"0": "MRI"}
    assert datalist["dataset_dir"] == os.path.relpath(hippocampus_dir.resolve(), out.parent.resolve())
    counts = {role: len(datalist[role]) for role in ROLES}
    assert counts == {"training": 5, "unlabeled": 188, "validation": 3, "test": 4}
    _roles_disjoint(datalist)
    for role in ROLES:
        for entry in resolve_role(datalist, role):  # raises when a file does not exist
            assert Path(entry["image"]).is_file()
            assert ("label" in entry) == (role != "unlabeled")
            if role != "unlabeled":
                assert Path(entry["label"]).is_file()
                assert Path(entry["label"]).name == Path(entry["image"]).name
    assert written["training"] == datalist["training"]
    counts_checked = check_datalist(out, roles=("training", "validation", "test"), progress=False)
    assert counts_checked == counts


@realdata
def test_msd_split_reproducible_and_nested(hippocampus_dir, tmp_path):
    a = msd_to_datalist(hippocampus_dir, tmp_path / "a.json", 5, 10, 20, seed=1)
    b = msd_to_datalist(hippocampus_dir, tmp_path / "b.json", 5, 10, 20, seed=1)
    c = msd_to_datalist(hippocampus_dir, tmp_path / "c.json", 10, 10, 20, seed=1)
    d = msd_to_datalist(hippocampus_dir, tmp_path / "d.json", 5, 10, 20, seed=2)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    imgs = {k: {e["image"] for e in v["training"]} for k, v in dict(a=a, c=c, d=d).items()}
    assert imgs["a"] < imgs["c"]
    assert a["validation"] == c["validation"] and a["test"] == c["test"]
    assert a["test"] != d["test"]


def test_msd_missing_file_and_spacing_mismatch(tmp_path):
    root = _write_msd(tmp_path / "msd")
    dl = msd_to_datalist(root, tmp_path / "dl.json", 2, 2, 2)
    assert dl["spacing"] == pytest.approx([1.0, 1.0, 2.0])
    save_nifti(np.zeros((6, 5, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), root / "imagesTr" / "toy_000.nii.gz")
    dl = msd_to_datalist(root, tmp_path / "dl.json", 2, 2, 2)
    assert "spacing" not in dl, "spacing must be left out when the images disagree"
    (root / "labelsTr" / "toy_003.nii.gz").unlink()
    missing = r"dataset.json: 1 listed file\(s\) not found:\n.*labelsTr/toy_003.nii.gz"
    with pytest.raises(VolsslInputError, match=missing):
        msd_to_datalist(root, tmp_path / "dl.json", 2, 2, 2)
    with pytest.raises(VolsslInputError, match="dataset.json: MSD index file not found"):
        msd_to_datalist(tmp_path / "nowhere", tmp_path / "dl.json", 1, 1, 1)


def test_msd_too_many_asked_names_the_index(tmp_path):
    root = _write_msd(tmp_path / "msd", n=5)
    with pytest.raises(VolsslInputError, match=r"dataset.json: asked for 6 groups"):
        msd_to_datalist(root, tmp_path / "dl.json", 4, 1, 1)


def test_check_collects_all_problems(tmp_path):
    root = _write_msd(tmp_path / "msd", n=8)
    out = tmp_path / "dl.json"
    dl = msd_to_datalist(root, out, 3, 2, 2, seed=0)
    assert check_datalist(out, progress=False) == {"training": 3, "unlabeled": 1, "validation": 2, "test": 2}
    bad_label = root / dl["training"][0]["label"]
    save_nifti(np.full((6, 5, 4), 7, np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]), bad_label)
    bad_shape = root / dl["validation"][0]["label"]
    save_nifti(np.zeros((6, 5, 3), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]), bad_shape)
    missing = root / dl["test"][0]["image"]
    missing.unlink()
    corrupt = root / dl["unlabeled"][0]["image"]
    corrupt.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(VolsslInputError) as info:
        check_datalist(out, progress=False)
    msg = str(info.value)
    assert msg.startswith(f"{out.resolve()}: 4 problem(s) found")
    assert f"{bad_label}" in msg and "outside the declared classes 0..2" in msg
    assert f"{bad_shape}" in msg and "shape" in msg
    assert f"{missing}: file not found" in msg
    assert f"{corrupt}: cannot read NIfTI" in msg


# ----------------------------------------------------------------------------------------------------------------------
# ACDC


@realdata
def test_acdc_real_conversion(acdc_dir, tmp_path):
    out = tmp_path / "acdc"
    dl = acdc_h5_to_nifti(acdc_dir, out, ACDC_SPACING, n_labeled_patients=1, seed=0, limit=1, progress=False)
    datalist = load_datalist(out / "datalist.json")
    assert datalist["labels"] == {"0": "background", "1": "RV", "2": "myocardium", "3": "LV"}
    assert datalist["spacing"] == pytest.approx(list(ACDC_SPACING)) and datalist["dataset_dir"] == "."
    assert {role: len(dl[role]) for role in ROLES} == {"training": 2, "unlabeled": 2, "validation": 2, "test": 2}
    _roles_disjoint(datalist)
    lists = {role: read_case_list(acdc_dir / f"{name}.list") for role, name in
             (("training", "train"), ("validation", "val"), ("test", "test"))}
    patients_of_role = {}
    for role in ROLES:
        for entry in resolve_role(datalist, role):
            name = Path(entry["image"]).name[: -len(".nii.gz")]
            patients_of_role.setdefault(PATIENT(name), set()).add(role)
            assert name in lists["training" if role == "unlabeled" else role]
            if role == "unlabeled":
                assert "label" not in entry
                continue
            image, label = _check_nifti_pair(entry, ACDC_SPACING, 4)
            h5 = read_h5(acdc_dir / "volumes" / f"{name}.h5")
            assert image.shape == h5["image"].shape[::-1], "(slices, H, W) must become (W, H, slices)"
            np.testing.assert_array_equal(label, h5["label"].transpose(2, 1, 0))
            np.testing.assert_allclose(image, h5["image"].astype(np.float32).transpose(2, 1, 0))
    assert all(len(roles) == 1 for roles in patients_of_role.values()), "both frames of a patient share a role"


@realdata
def test_acdc_real_resume_and_overwrite(acdc_dir, tmp_path):
    out = tmp_path / "acdc"
    acdc_h5_to_nifti(acdc_dir, out, ACDC_SPACING, n_labeled_patients=1, limit=1, progress=False)
    files = sorted(out.glob("*/*.nii.gz"))
    assert len(files) == 16
    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    acdc_h5_to_nifti(acdc_dir, out, ACDC_SPACING, n_labeled_patients=1, limit=1, progress=False)
    assert all(f.stat().st_mtime_ns == 1_000_000_000 for f in files), "a re-run must not rewrite good files"
    acdc_h5_to_nifti(acdc_dir, out, (1.0, 1.0, 5.0), n_labeled_patients=1, limit=1, progress=False)
    assert all(f.stat().st_mtime_ns != 1_000_000_000 for f in files), "files with another spacing are rewritten"
    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    acdc_h5_to_nifti(acdc_dir, out, (1.0, 1.0, 5.0), n_labeled_patients=1, limit=1, overwrite=True, progress=False)
    assert all(f.stat().st_mtime_ns != 1_000_000_000 for f in files)


@realdata
def test_acdc_full_split_keeps_lists_and_patients(acdc_dir):
    train = set(read_case_list(acdc_dir / "train.list"))
    small, large = acdc_split(acdc_dir, 3, seed=0), acdc_split(acdc_dir, 7, seed=0)
    assert len(large["training"]) == 14 and len(large["unlabeled"]) == 126
    assert set(large["training"]) | set(large["unlabeled"]) == train
    assert large["validation"] == sorted(read_case_list(acdc_dir / "val.list"))
    assert large["test"] == sorted(read_case_list(acdc_dir / "test.list"))
    assert set(small["training"]) < set(large["training"])
    assert small["validation"] == large["validation"] and small["test"] == large["test"]
    assert {PATIENT(c) for c in large["training"]}.isdisjoint({PATIENT(c) for c in large["unlabeled"]})
    assert acdc_split(acdc_dir, 7, seed=1)["training"] != large["training"]


def test_acdc_synthetic_roles_and_axes(tmp_path):
    root = _write_acdc(tmp_path / "src")
    dl = acdc_h5_to_nifti(root, tmp_path / "out", "1.5,1.5,8", n_labeled_patients=2, seed=0, progress=False)
    assert {role: len(dl[role]) for role in ROLES} == {"training": 4, "unlabeled": 4, "validation": 2, "test": 2}
    entry = resolve_role(load_datalist(tmp_path / "out" / "datalist.json"), "training")[0]
    image, label = _check_nifti_pair(entry, (1.5, 1.5, 8.0), 4)
    assert image.shape == (6, 8, 3)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing_list", r"val.list: case list file not found"),
        ("empty_list", r"test.list: case list is empty"),
        ("missing_volume", r"patient002_frame01.h5: volume file not found"),
        ("garbage", r"patient003_frame02.h5: cannot read h5 \(corrupt or truncated file\)"),
        ("truncated", r"patient001_frame01.h5: cannot read h5 \(corrupt or truncated file\)"),
        ("shape", r"patient004_frame01.h5: image shape \(3, 8, 6\) differs from label shape \(3, 8, 5\)"),
        ("values", r"patient005_frame02.h5: label values \[5\] are outside the declared classes 0..3"),
        ("two_lists", r"case patient001_frame02 is listed in both train.list and test.list"),
        ("twice", r"train.list: case patient002_frame02 is listed twice"),
        ("spacing", r"spacing must be three positive numbers"),
        ("too_many", r"train.list: asked for 5 groups"),
    ],
)
def test_acdc_bad_inputs_name_the_file(tmp_path, damage, match):
    root = _write_acdc(tmp_path / "src")
    vol = root / "volumes"
    kwargs = {"spacing": (1.5, 1.5, 8.0), "n_labeled_patients": 1}
    if damage == "missing_list":
        (root / "val.list").unlink()
    elif damage == "empty_list":
        (root / "test.list").write_text("\n  \n")
    elif damage == "missing_volume":
        (vol / "patient002_frame01.h5").unlink()
    elif damage == "garbage":
        (vol / "patient003_frame02.h5").write_bytes(os.urandom(3000))
    elif damage == "truncated":
        data = (vol / "patient001_frame01.h5").read_bytes()
        (vol / "patient001_frame01.h5").write_bytes(data[: len(data) // 2])
    elif damage == "shape":
        _write_h5(vol / "patient004_frame01.h5", np.zeros((3, 8, 6), np.float16), np.zeros((3, 8, 5), np.uint8))
    elif damage == "values":
        _write_h5(vol / "patient005_frame02.h5", np.zeros((3, 8, 6), np.float16), np.full((3, 8, 6), 5, np.uint8))
    elif damage == "two_lists":
        with open(root / "test.list", "a") as f:
            f.write("patient001_frame02\n")
    elif damage == "twice":
        with open(root / "train.list", "a") as f:
            f.write("patient002_frame02\n")
    elif damage == "spacing":
        kwargs["spacing"] = (1.5, -1.0, 8.0)
    elif damage == "too_many":
        kwargs["n_labeled_patients"] = 5
    with pytest.raises(VolsslInputError, match=match):
        acdc_h5_to_nifti(root, tmp_path / "out", progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# LA


@realdata
def test_la_real_conversion(la_dir, tmp_path):
    out = tmp_path / "la"
    dl = la_h5_to_nifti(la_dir, out, n_labeled=2, n_val=2, seed=0, limit=2, progress=False)
    datalist = load_datalist(out / "datalist.json")
    assert datalist["labels"] == {"0": "background", "1": "left atrium"}
    assert datalist["spacing"] == pytest.approx([1.25, 1.25, 1.25])
    assert {role: len(dl[role]) for role in ROLES} == {"training": 2, "unlabeled": 2, "validation": 2, "test": 2}
    _roles_disjoint(datalist)
    test_ids = set(read_case_list(la_dir / "test.list"))
    for role in ("training", "validation", "test"):
        for entry in resolve_role(datalist, role):
            case = Path(entry["image"]).name[: -len(".nii.gz")]
            assert (case in test_ids) == (role == "test")
            image, label = _check_nifti_pair(entry, (1.25, 1.25, 1.25), 2)
            h5 = read_h5(la_dir / "2018LA_Seg_Training Set" / case / "mri_norm2.h5")
            assert image.shape == h5["image"].shape, "UA-MT arrays are already (x, y, z)"
            np.testing.assert_array_equal(label, h5["label"])


@realdata
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_la_full_split_validation_never_holds_a_test_case(la_dir, seed):
    train, test = set(read_case_list(la_dir / "train.list")), set(read_case_list(la_dir / "test.list"))
    split = la_split(la_dir, n_labeled=8, n_val=8, seed=seed)
    assert {role: len(v) for role, v in split.items()} == {"training": 8, "unlabeled": 64, "validation": 8, "test": 20}
    assert set(split["validation"]) <= train and set(split["validation"]).isdisjoint(test)
    assert set(split["test"]) == test
    assert set(split["training"]) | set(split["unlabeled"]) | set(split["validation"]) == train
    larger = la_split(la_dir, n_labeled=16, n_val=8, seed=seed)
    assert set(split["training"]) < set(larger["training"]) and larger["validation"] == split["validation"]


def test_la_list_lines_as_paths_and_spacing_sources(tmp_path):
    root = _write_la(tmp_path / "src", spacing_mm=None)
    ids = read_case_list(root / "train.list")
    lines = [f"  ../data/2018LA_Seg_Training Set/{ids[0]}/mri_norm2.h5", "", *ids[1:], "   "]
    (root / "train.list").write_text("\n".join(lines) + "\n")
    with pytest.raises(VolsslInputError, match=r"mri_norm2.h5: no 'spacing_mm' attribute in the file; pass spacing"):
        la_h5_to_nifti(root, tmp_path / "out", n_labeled=2, n_val=1, progress=False)
    dl = la_h5_to_nifti(root, tmp_path / "out", n_labeled=2, n_val=1, spacing=[0.625] * 3, progress=False)
    assert dl["spacing"] == pytest.approx([0.625] * 3)
    assert {role: len(dl[role]) for role in ROLES} == {"training": 2, "unlabeled": 3, "validation": 1, "test": 2}
    assert {Path(e["image"]).name for r in ROLES for e in dl[r]} >= {f"{ids[0]}.nii.gz"}
    entry = resolve_role(load_datalist(tmp_path / "out" / "datalist.json"), "validation")[0]
    _check_nifti_pair(entry, (0.625,) * 3, 2)
    root2 = _write_la(tmp_path / "src2", spacing_mm=(2.0, 2.0, 3.0))
    with pytest.warns(UserWarning, match="overrides the spacing argument"):
        dl = la_h5_to_nifti(root2, tmp_path / "out2", n_labeled=1, n_val=1, spacing=(1, 1, 1), progress=False)
    assert dl["spacing"] == pytest.approx([2.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "damage, match",
    [
        ("both_lists", r"case ID0001 is listed in both train.list and test.list"),
        ("missing_list", r"test.list: case list file not found"),
        ("empty_list", r"train.list: case list is empty"),
        ("missing_volume", r"ID0007/mri_norm2.h5: volume file not found"),
        ("values", r"ID0002/mri_norm2.h5: label values \[2\] are outside the declared classes 0..1"),
        ("too_many_val", r"train.list: asked for 7 groups"),
    ],
)
def test_la_bad_inputs_name_the_file(tmp_path, damage, match):
    root = _write_la(tmp_path / "src")
    kwargs = {"n_labeled": 2, "n_val": 1}
    if damage == "both_lists":
        with open(root / "test.list", "a") as f:
            f.write("ID0001\n")
    elif damage == "missing_list":
        (root / "test.list").unlink()
    elif damage == "empty_list":
        (root / "train.list").write_text("")
    elif damage == "missing_volume":
        (root / "2018LA_Seg_Training Set" / "ID0007" / "mri_norm2.h5").unlink()
    elif damage == "values":
        h5 = root / "2018LA_Seg_Training Set" / "ID0002" / "mri_norm2.h5"
        _write_h5(h5, np.zeros((8, 7, 5), np.float16), np.full((8, 7, 5), 2, np.uint8), (1.25, 1.25, 1.25))
    elif damage == "too_many_val":
        kwargs = {"n_labeled": 2, "n_val": 5}
    with pytest.raises(VolsslInputError, match=match):
        la_h5_to_nifti(root, tmp_path / "out", progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_split_and_check_on_a_synthetic_msd_folder(tmp_path):
    root = _write_msd(tmp_path / "msd", n=10)
    out = tmp_path / "lists" / "dl.json"
    tool = [sys.executable, str(REPO_ROOT / "tools" / "prepare_data.py")]
    run = subprocess.run(
        [*tool, "split", str(root), str(out), "--n_labeled", "2", "--n_val", "3", "--n_test", "1", "--seed", "4"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"wrote {out.resolve()}: training 2, unlabeled 4, validation 3, test 1" in run.stdout
    datalist = load_datalist(out)
    assert datalist["dataset_dir"] == "../msd"
    assert len(resolve_role(datalist, "unlabeled")) == 4
    (root / "imagesTr" / "toy_000.nii.gz").unlink()
    bad = subprocess.run([*tool, "check", str(out)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert bad.returncode == 2
    assert "error:" in bad.stderr and "toy_000.nii.gz: file not found" in bad.stderr


def test_msd_and_check_warn_about_unlisted_images_and_orphan_labels(tmp_path):
    """An image in imagesTr not listed in dataset.json, and a label without an image: one warning line each from
    `msd` and `check` (exit 0); hidden companions such as macOS `._*` files are not images."""
    root = _write_msd(tmp_path / "msd", n=8)
    rng = np.random.default_rng(1)
    save_nifti(rng.normal(size=(6, 5, 4)).astype(np.float32), np.eye(4), root / "imagesTr" / "extra_001.nii.gz")
    save_nifti(np.zeros((6, 5, 4), np.uint8), np.eye(4), root / "labelsTr" / "lonely_002.nii.gz")
    (root / "imagesTr" / "._toy_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    tool = [sys.executable, str(REPO_ROOT / "tools" / "prepare_data.py")]
    out = tmp_path / "dl.json"
    for args in (["msd", str(root), str(out), "--n_labeled", "2", "--n_val", "2", "--n_test", "2"], ["check", str(out)]):
        run = subprocess.run([*tool, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert run.returncode == 0, run.stderr
        warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 2, run.stderr
        assert any("extra_001.nii.gz: not listed in any role" in w for w in warnings)
        assert any("lonely_002.nii.gz: orphan label" in w for w in warnings)


def test_check_rejects_nan_voxels(tmp_path):
    root = _write_msd(tmp_path / "msd", n=6)
    image = np.ones((6, 5, 4), np.float32)
    image[1, 1, 1] = np.nan
    save_nifti(image, np.diag([1.0, 1.0, 2.0, 1.0]), root / "imagesTr" / "toy_003.nii.gz")
    out = tmp_path / "dl.json"
    tool = [sys.executable, str(REPO_ROOT / "tools" / "prepare_data.py")]
    subprocess.run([*tool, "msd", str(root), str(out), "--n_labeled", "2", "--n_val", "1", "--n_test", "1"],
                   check=True, capture_output=True, cwd=REPO_ROOT, timeout=120)
    bad = subprocess.run([*tool, "check", str(out)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert bad.returncode == 2
    assert "toy_003.nii.gz: 1 voxels are NaN or infinite" in bad.stderr
