"""volssl.io and the datalist format: every bad input names the file and the problem."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from volssl.data.datalist import (
    check_case_files,
    load_datalist,
    resolve_role,
    save_datalist,
    validate_datalist,
)
from volssl.io import VolsslInputError, load_nifti, read_h5, save_nifti, spacing_from_affine

AFFINE = np.diag([1.5, 1.5, 4.0, 1.0])


def _case(tmp_path, name, shape=(8, 8, 4), label_values=(0, 1, 2), affine=AFFINE):
    rng = np.random.default_rng(0)
    img = save_nifti(rng.normal(size=shape).astype(np.float32), affine, tmp_path / "imagesTr" / f"{name}.nii.gz")
    lab = rng.choice(label_values, size=shape).astype(np.uint8)
    lbl = save_nifti(lab, affine, tmp_path / "labelsTr" / f"{name}.nii.gz")
    return img, lbl


def test_save_load_roundtrip_keeps_spacing_and_integer_labels(tmp_path):
    _, lbl = _case(tmp_path, "a")
    arr, affine = load_nifti(lbl)
    assert arr.dtype == np.uint8 and arr.shape == (8, 8, 4)
    assert spacing_from_affine(affine) == pytest.approx((1.5, 1.5, 4.0))
    assert nib.load(str(lbl)).header.get_zooms() == pytest.approx((1.5, 1.5, 4.0))


def test_save_nifti_is_atomic_and_leaves_no_temporary(tmp_path):
    path = save_nifti(np.zeros((2, 2, 2), np.float32), AFFINE, tmp_path / "x.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"] and path.is_file()


def test_missing_nifti_names_the_file(tmp_path):
    with pytest.raises(VolsslInputError, match="nope.nii.gz: file not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_truncated_nifti_names_the_file(tmp_path):
    img, _ = _case(tmp_path, "a", shape=(32, 32, 16))
    data = img.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(VolsslInputError, match="truncated.nii.gz: cannot read NIfTI"):
        load_nifti(bad)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(VolsslInputError, match="garbage.nii.gz"):
        load_nifti(garbage)


def test_non_3d_nifti_rejected(tmp_path):
    path = save_nifti(np.zeros((4, 4), np.float32), np.eye(4), tmp_path / "flat.nii.gz")
    with pytest.raises(VolsslInputError, match="flat.nii.gz: expected a 3D volume"):
        load_nifti(path)


def test_corrupt_and_incomplete_h5(tmp_path):
    import h5py

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(VolsslInputError, match="bad.h5: cannot read h5"):
        read_h5(bad)
    part = tmp_path / "part.h5"
    with h5py.File(part, "w") as f:
        f["image"] = np.zeros((2, 3, 3))
    with pytest.raises(VolsslInputError, match=r"part.h5: missing dataset\(s\) \['label'\]"):
        read_h5(part)
    with pytest.raises(VolsslInputError, match="absent.h5: file not found"):
        read_h5(tmp_path / "absent.h5")


def test_case_checks_shape_affine_and_label_values(tmp_path):
    img, lbl = _case(tmp_path, "ok")
    image, label, _ = check_case_files(img, lbl, num_classes=3)
    assert image.shape == label.shape and set(np.unique(label)) <= {0, 1, 2}

    img2, _ = _case(tmp_path, "shape", shape=(8, 8, 5))
    with pytest.raises(VolsslInputError, match=r"ok.nii.gz: shape \(8, 8, 4\) differs from .*shape.nii.gz"):
        check_case_files(img2, lbl)

    _, lbl3 = _case(tmp_path, "affine", affine=np.diag([1.0, 1.0, 4.0, 1.0]))
    with pytest.raises(VolsslInputError, match="affine.nii.gz: affine differs"):
        check_case_files(img, lbl3)

    _, lbl4 = _case(tmp_path, "values", label_values=(0, 1, 5))
    with pytest.raises(VolsslInputError, match=r"values.nii.gz: label values \[5\] are outside the declared classes 0..2"):
        check_case_files(img, lbl4, num_classes=3)

    frac = save_nifti(np.full((8, 8, 4), 0.5, np.float32), AFFINE, tmp_path / "frac.nii.gz")
    with pytest.raises(VolsslInputError, match="frac.nii.gz: label holds non-integer values"):
        check_case_files(img, frac)


def _datalist():
    return {
        "labels": {"0": "background", "1": "a", "2": "b"},
        "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}],
        "unlabeled": [{"image": "imagesTr/b.nii.gz"}],
        "validation": [],
        "test": [],
    }


def test_datalist_roundtrip_and_resolution(tmp_path):
    for n in "ab":
        _case(tmp_path, n)
    path = save_datalist(_datalist(), tmp_path / "datalist.json")
    dl = load_datalist(path)
    train = resolve_role(dl, "training")
    assert train[0]["image"] == str((tmp_path / "imagesTr/a.nii.gz").resolve())
    assert resolve_role(dl, "unlabeled")[0]["image"].endswith("b.nii.gz")
    # a datalist written elsewhere reaches the images through its relative dataset_dir key
    other = tmp_path / "elsewhere" / "deep"
    moved = dict(_datalist(), dataset_dir="../..")
    dl2 = load_datalist(save_datalist(moved, other / "dl.json"))
    assert resolve_role(dl2, "training")[0]["image"] == train[0]["image"]


def test_datalist_bad_inputs(tmp_path):
    with pytest.raises(VolsslInputError, match="missing.json: datalist file not found"):
        load_datalist(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(VolsslInputError, match="broken.json: not valid JSON"):
        load_datalist(broken)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"training": []}))
    with pytest.raises(VolsslInputError, match="empty.json: 'training' is empty"):
        load_datalist(empty)
    twice = dict(_datalist(), test=[{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}])
    with pytest.raises(VolsslInputError, match="case imagesTr/a.nii.gz appears in both 'training' and 'test'"):
        validate_datalist(twice, source="dl.json")
    no_label = dict(_datalist(), validation=[{"image": "imagesTr/c.nii.gz"}])
    with pytest.raises(VolsslInputError, match="'validation' case imagesTr/c.nii.gz has no label"):
        validate_datalist(no_label)
    with pytest.raises(VolsslInputError, match="'labels' must be 0..C-1"):
        validate_datalist(dict(_datalist(), labels={"1": "a"}))
    dl = validate_datalist(_datalist())
    dl["_path"] = str(tmp_path / "dl.json")
    with pytest.raises(VolsslInputError, match=r"a.nii.gz: file not found \(listed as 'image' in 'training'"):
        resolve_role(dl, "training")


def test_save_datalist_refuses_invalid_and_keeps_previous_file(tmp_path):
    for n in "ab":
        _case(tmp_path, n)
    path = save_datalist(_datalist(), tmp_path / "datalist.json")
    before = path.read_text()
    with pytest.raises(VolsslInputError):
        save_datalist(dict(_datalist(), unlabeled=[{"image": "imagesTr/a.nii.gz"}]), path)
    assert path.read_text() == before



def test_atomic_writes_get_normal_permissions(tmp_path):
    """Files written atomically (mkstemp makes them private) end with the umask's permissions: readable by others."""
    import os
    import stat

    import numpy as np

    from volssl.io import atomic_path, save_nifti

    old = os.umask(0o022)
    try:
        nifti = save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "a.nii.gz")
        with atomic_path(tmp_path / "b.csv") as tmp, open(tmp, "w") as f:
            f.write("x\n")
    finally:
        os.umask(old)
    for path in (nifti, tmp_path / "b.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".tmp_*"))
