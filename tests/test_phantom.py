"""Tests of the synthetic phantom generator (volssl.data.phantom) and its CLI (tools/make_phantoms.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import spearmanr

from volssl.data.datalist import check_case_files, load_datalist, resolve_role
from volssl.data.phantom import (
    ANISOTROPIC_SPACING,
    DEFAULT_SHAPE,
    PHANTOM_LABELS,
    case_seed,
    make_phantom,
    save_phantom_preview,
    write_phantom_dataset,
)
from volssl.io import VolsslInputError, load_nifti, spacing_from_affine

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = [case_seed(0, k) for k in range(8)]


@pytest.fixture(scope="module")
def subjects() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [make_phantom(s) for s in SEEDS]


@pytest.fixture(scope="module")
def dataset3(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph3"), n=3, seed=5)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def test_deterministic_by_seed():
    img1, lab1, aff1 = make_phantom(7)
    img2, lab2, aff2 = make_phantom(7)
    assert img1.tobytes() == img2.tobytes() and lab1.tobytes() == lab2.tobytes()
    np.testing.assert_array_equal(aff1, aff2)
    img3, lab3, _ = make_phantom(8)
    assert img1.tobytes() != img3.tobytes() and not np.array_equal(lab1, lab3)


def test_types_shape_and_values(subjects):
    for image, label, affine in subjects:
        assert image.shape == label.shape == DEFAULT_SHAPE
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert np.all(np.isfinite(image)) and image.min() >= 0 and image.max() > 100
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # all three foreground classes in every subject
        assert affine.shape == (4, 4)


def test_anatomy_monotone_along_slices(subjects):
    z = np.arange(DEFAULT_SHAPE[2])
    for _, label, _ in subjects:
        areas = np.stack([(label == c).sum(axis=(0, 1)) for c in (1, 2, 3)])
        assert spearmanr(z, areas[0])[0] > 0.9  # the shell grows
        assert spearmanr(z, areas[1])[0] < -0.9  # the core shrinks
        assert np.all(areas[:2] > 0)  # shell and core in every slice
        assert areas[2, :4].sum() == 0 and np.all(areas[2, -4:] > 0)  # the tail only in the upper part
        fg = label > 0
        adjacent = [_dice(fg[:, :, k], fg[:, :, k + 1]) for k in range(len(z) - 1)]
        assert np.mean(adjacent) > 0.85 and min(adjacent) > 0.7  # smooth change from slice to slice
        for c in (1, 2):
            per_class = [_dice(label[:, :, k] == c, label[:, :, k + 1] == c) for k in range(len(z) - 1)]
            assert np.mean(per_class) > 0.8


def test_subjects_differ_and_classes_have_distinct_intensities(subjects):
    volumes = [int((label > 0).sum()) for _, label, _ in subjects]
    assert len(set(volumes)) == len(volumes)
    assert np.std(volumes) / np.mean(volumes) > 0.03
    for image, label, _ in subjects:
        mean = {c: float(image[label == c].mean()) for c in (1, 2, 3)}
        assert mean[2] < mean[1] < mean[3]  # dark core, grey shell, bright tail: learnable from intensity
    gains = [float(np.median(image[label == 1])) for image, label, _ in subjects]
    assert np.std(gains) / np.mean(gains) > 0.03  # intensities vary by subject


def test_make_phantom_spacing_and_bad_arguments():
    image, label, affine = make_phantom(3, shape=(40, 48, 12), spacing=(0.8, 0.8, 2.5))
    assert image.shape == label.shape == (40, 48, 12)
    np.testing.assert_allclose(spacing_from_affine(affine), (0.8, 0.8, 2.5))
    with pytest.raises(ValueError):
        make_phantom(-1)
    with pytest.raises(ValueError):
        make_phantom(0, shape=(64, 64))
    with pytest.raises(ValueError):
        make_phantom(0, spacing=(1.0, 0.0, 1.0))


def test_dataset_files_and_datalist(dataset3):
    datalist = load_datalist(dataset3)
    raw = json.loads(dataset3.read_text())
    assert raw["labels"] == PHANTOM_LABELS and raw["modality"] == {"0": "synthetic MRI"}
    assert raw["numTraining"] == 3 and raw["test"] == [] and raw["spacing"] == [1.0, 1.0, 1.0]
    assert raw["training"][0] == {"image": "./imagesTr/phantom_000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"}
    assert raw["phantom_parameters"]["seed"] == 5 and raw["phantom_parameters"]["shape"] == list(DEFAULT_SHAPE)
    entries = resolve_role(datalist, "training")
    assert len(entries) == 3
    for k, entry in enumerate(entries):
        label_img = nib.load(entry["label"])
        assert label_img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(np.linalg.norm(label_img.affine[:3, :3], axis=0), (1.0, 1.0, 1.0))
        image, label, affine = check_case_files(entry["image"], entry["label"], num_classes=4)
        ref_image, ref_label, ref_affine = make_phantom(case_seed(5, k))
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(label, ref_label)
        np.testing.assert_allclose(affine, ref_affine)


def test_case_depends_only_on_seed_and_index(tmp_path, dataset3):
    bigger = write_phantom_dataset(tmp_path / "ph5", n=5, seed=5)
    assert json.loads(bigger.read_text())["numTraining"] == 5
    for k in range(3):
        for sub in ("imagesTr", "labelsTr"):
            a, _ = load_nifti(dataset3.parent / sub / f"phantom_{k:03d}.nii.gz")
            b, _ = load_nifti(bigger.parent / sub / f"phantom_{k:03d}.nii.gz")
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, expected", [({"anisotropic": True}, ANISOTROPIC_SPACING),
                                              ({"spacing": (0.7, 0.7, 2.0)}, (0.7, 0.7, 2.0))])
def test_spacing_in_header(tmp_path, kwargs, expected):
    path = write_phantom_dataset(tmp_path, n=1, seed=0, shape=(32, 32, 8), **kwargs)
    assert json.loads(path.read_text())["spacing"] == list(expected)
    for sub in ("imagesTr", "labelsTr"):
        img = nib.load(tmp_path / sub / "phantom_000.nii.gz")
        np.testing.assert_allclose(img.header.get_zooms()[:3], expected, rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), expected, rtol=1e-6)
        assert img.shape == (32, 32, 8)
    with pytest.raises(ValueError, match="not both"):
        write_phantom_dataset(tmp_path / "x", n=1, spacing=(1, 1, 2), anisotropic=True)


def test_rerun_keeps_files_and_refuses_to_mix(tmp_path):
    out = tmp_path / "ph"
    write_phantom_dataset(out, n=2, seed=0, shape=(32, 32, 8))
    first = out / "imagesTr" / "phantom_000.nii.gz"
    stat = first.stat()
    write_phantom_dataset(out, n=3, seed=0, shape=(32, 32, 8))  # same parameters: keep, add one case
    assert first.stat().st_ino == stat.st_ino and first.stat().st_mtime_ns == stat.st_mtime_ns
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3

    with pytest.raises(VolsslInputError, match="seed=1"):
        write_phantom_dataset(out, n=3, seed=1, shape=(32, 32, 8))
    with pytest.raises(VolsslInputError, match="refusing to mix"):
        write_phantom_dataset(out, n=3, seed=0, shape=(32, 32, 10))
    with pytest.raises(VolsslInputError, match="refusing to mix"):
        write_phantom_dataset(out, n=3, seed=0, shape=(32, 32, 8), anisotropic=True)
    assert json.loads((out / "dataset.json").read_text())["phantom_parameters"]["seed"] == 0  # left as it was

    write_phantom_dataset(out, n=2, seed=0, shape=(32, 32, 8), overwrite=True)  # same parameters: rewrite
    assert first.stat().st_ino != stat.st_ino

    write_phantom_dataset(out, n=2, seed=1, shape=(32, 32, 8), overwrite=True)  # other parameters: replace
    raw = json.loads((out / "dataset.json").read_text())
    assert raw["phantom_parameters"]["seed"] == 1 and raw["numTraining"] == 2
    assert not (out / "imagesTr" / "phantom_002.nii.gz").exists()  # the old parameters' extra case is gone
    image, _ = load_nifti(first)
    np.testing.assert_array_equal(image, make_phantom(case_seed(1, 0), shape=(32, 32, 8))[0])


def test_refuses_folders_of_unknown_origin(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset.json").write_text(json.dumps({"name": "Task04", "training": []}))
    with pytest.raises(VolsslInputError, match="not written by the phantom generator"):
        write_phantom_dataset(foreign, n=1, shape=(32, 32, 8))

    orphan = tmp_path / "orphan"
    write_phantom_dataset(orphan, n=1, shape=(32, 32, 8))
    (orphan / "dataset.json").unlink()
    with pytest.raises(VolsslInputError, match="no dataset.json"):
        write_phantom_dataset(orphan, n=1, shape=(32, 32, 8))
    write_phantom_dataset(orphan, n=1, shape=(32, 32, 8), overwrite=True)
    assert load_datalist(orphan / "dataset.json")["training"]


def test_preview_png(tmp_path, subjects):
    image, label, _ = subjects[0]
    path = save_phantom_preview(image, label, tmp_path / "p" / "preview.png", spacing=(1, 1, 3), num_slices=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "make_phantoms.py"), "--output_dir", str(out), "--n", "2",
           "--seed", "3", "--anisotropic", "--preview"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 phantoms" in proc.stdout and str(out.resolve()) in proc.stdout
    assert (out / "preview.png").is_file()
    datalist = load_datalist(out / "dataset.json")
    assert len(datalist["training"]) == 2 and datalist["spacing"] == list(ANISOTROPIC_SPACING)
    image, _ = load_nifti(out / "imagesTr" / "phantom_001.nii.gz")
    np.testing.assert_array_equal(image, make_phantom(case_seed(3, 1), spacing=ANISOTROPIC_SPACING)[0])


def test_generation_speed_is_reported():
    """Not a timing assertion: prints how long 20 default phantoms take (run with -s to see it)."""
    start = time.perf_counter()
    volumes = [make_phantom(case_seed(0, k)) for k in range(20)]
    print(f"\n20 default phantoms {DEFAULT_SHAPE} generated in memory in {time.perf_counter() - start:.2f} s")
    assert len(volumes) == 20
