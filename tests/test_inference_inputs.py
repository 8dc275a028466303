"""Bundle inference never fails silently: every input checked before the network runs, bad ones skipped with one
line naming the file, good ones segmented, a non-zero exit listing the skipped files, warnings for inputs unlike the
training data, and a clear last line for missing weights. Synthetic files made by the tests."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import BUNDLES, config_list, make_tiny_dataset, run_bundle, write_overlay
from volssl.bundle import InferenceInputs, check_image, distribution_warnings
from volssl.io import VolsslInputError

CONFIGS = BUNDLES / "coral_mri_segmentation" / "configs"
TINY = {"features": 4, "patch_size": [32, 32], "num_workers": 0, "batch_size": 8, "epochs": 1, "sw_batch_size": 8,
        "load_pretrain": False}


def _nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def _truncated(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    good = _nifti(tmp_path / "good.nii.gz", rng.normal(size=(20, 24, 8)).astype(np.float32))
    nan = rng.normal(size=(20, 24, 8)).astype(np.float32)
    nan[2:5, 3:6, 1] = np.nan
    return {
        "good": good,
        "nan": _nifti(tmp_path / "nan.nii.gz", nan),
        "truncated": _truncated(tmp_path / "truncated.nii.gz", good),
        "empty": (tmp_path / "empty.nii.gz"),
        "flat": _nifti(tmp_path / "flat.nii.gz", rng.normal(size=(20, 24)).astype(np.float32)),
        "channels": _nifti(tmp_path / "channels.nii.gz", rng.normal(size=(20, 24, 8, 3)).astype(np.float32)),
        "labels": _nifti(tmp_path / "labels.nii.gz", rng.integers(0, 2, size=(64, 64, 12)).astype(np.float32),
                         spacing=(0.73, 0.73, 5.0)),
        "text": tmp_path / "notes.nii.gz",
    }


@pytest.mark.parametrize("kind, problem", [
    ("nan", "NaN or infinite"),
    ("truncated", "truncated"),
    ("empty", "empty file"),
    ("flat", "2D image"),
    ("channels", "4D image"),
    ("text", "not a readable NIfTI"),
])
def test_check_image_names_the_file_and_the_problem(images, kind, problem):
    images["empty"].write_bytes(b"")
    images["text"].write_bytes(gzip.compress(b"hello, not an image"))
    with pytest.raises(VolsslInputError, match=problem) as err:
        check_image(images[kind])
    assert err.value.path == str(images[kind])


def test_check_image_accepts_a_single_frame_4d_image(tmp_path):
    volume = np.broadcast_to(np.arange(10, dtype=np.float32)[None, None, :, None], (8, 9, 10, 1)).copy()
    path = _nifti(tmp_path / "one_frame.nii.gz", volume)
    data, _ = check_image(path)
    assert data.shape == (8, 9, 10)


def test_distribution_warnings(images):
    expected = {"spacing_mm": {"min": [1.0, 1.0, 1.0], "max": [1.0, 1.0, 1.0]},
                "shape": {"min": [20, 20, 8], "max": [40, 40, 16]}}
    data, affine = check_image(images["labels"])
    lines = distribution_warnings(images["labels"], data, affine, expected)
    assert len(lines) == 2 and all(line.startswith(str(images["labels"])) for line in lines)
    assert "spacing (0.73, 0.73, 5.0) mm" in lines[0] and "label map" in lines[1]
    data, affine = check_image(images["good"])
    assert distribution_warnings(images["good"], data, affine, expected) == []


def test_inference_inputs_skip_and_report(images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("good", "truncated", "nan"):
        (folder / images[name].name).symlink_to(images[name])
    inputs = InferenceInputs(folder)
    assert [Path(e["image"]).name for e in inputs.good] == ["good.nii.gz"]
    assert sorted(Path(p).name for p, _ in inputs.skipped) == ["nan.nii.gz", "truncated.nii.gz"]
    with pytest.raises(VolsslInputError, match="2 of 3 input"):
        inputs.report()
    with pytest.raises(VolsslInputError, match="nan.nii.gz"):
        InferenceInputs(folder, stop_on_error=True)


def test_empty_or_broken_datalist_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"labels": {"0": "background"}, "test": []}))
    with pytest.raises(VolsslInputError, match="'test' is empty"):
        InferenceInputs(empty)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(VolsslInputError, match="not valid JSON"):
        InferenceInputs(broken)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"test": [{"image": "nowhere.nii.gz"}]}))
    with pytest.raises(VolsslInputError, match="nowhere.nii.gz: file not found"):
        InferenceInputs(missing)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_inputs")
    make_tiny_dataset(root / "data")
    tiny = write_overlay(root / "tiny.json", TINY)
    bundle_root = root / "bundle"
    run_bundle(["run", "--config_file", config_list(CONFIGS / "train.json", tiny), "--bundle_root", str(bundle_root),
                "--dataset_dir", str(root / "data"), "--logging_file", str(CONFIGS / "logging.conf")], cwd=root)
    return {"root": root, "tiny": tiny, "bundle_root": bundle_root}


def _infer(trained, source, out: Path, *extra) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            config_list(CONFIGS / "inference.json", trained["tiny"]), "--bundle_root", str(trained["bundle_root"]),
            "--logging_file", str(CONFIGS / "logging.conf"), "--input", str(source), "--output_dir", str(out), *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=trained["root"], timeout=300)


def test_folder_with_bad_files_segments_the_good_ones(trained, images, tmp_path):
    """good, truncated, good (+ NaN, zero-byte, 2D, 4D, label map): the good ones are segmented, each bad one is one
    line, the label map gets a warning, and the run exits non-zero with the list as its last line."""
    images["empty"].write_bytes(b"")
    folder = tmp_path / "inputs"
    folder.mkdir()
    good_a = _nifti(folder / "a_good.nii.gz", np.random.default_rng(1).normal(size=(30, 40, 6)).astype(np.float32))
    _truncated(folder / "b_truncated.nii.gz", good_a)
    good_c = _nifti(folder / "c_good.nii.gz", np.random.default_rng(2).normal(size=(17, 33, 5)).astype(np.float32))
    for name in ("nan", "empty", "flat", "channels", "labels"):
        (folder / f"d_{images[name].name}").symlink_to(images[name])
    out = tmp_path / "out"
    proc = _infer(trained, folder, out)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("VolsslInputError:") and "5 of 8 input(s) skipped" in last
    for name in ("b_truncated", "d_nan", "d_empty", "d_flat", "d_channels"):
        assert name in last
    for good in (good_a, good_c, folder / "d_labels.nii.gz"):
        pred = nib.load(out / good.name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred.shape == nib.load(good).shape
    logged = proc.stdout + proc.stderr
    assert "d_labels.nii.gz: only 2 distinct integer values" in logged
    assert f"wrote {out / 'a_good_seg.nii.gz'}" in logged
    assert not list(out.glob(".tmp_*"))


def test_missing_weights_last_line_says_what_to_do(trained, images, tmp_path):
    proc = _infer(trained, images["good"], tmp_path / "out", "--checkpoint", str(tmp_path / "nowhere.pt"))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "nowhere.pt: the trained weights not found" in last and "train the bundle first" in last


def test_missing_pretrained_encoder_last_line_says_what_to_do(trained, tmp_path):
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            config_list(CONFIGS / "train.json", trained["tiny"]), "--bundle_root", str(tmp_path / "fresh"),
            "--dataset_dir", str(trained["root"] / "data"), "--load_pretrain", "True",
            "--logging_file", str(CONFIGS / "logging.conf")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=trained["root"], timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "pretrain.pt" in last and "run configs/pretrain.json first, or pass --load_pretrain False" in last
