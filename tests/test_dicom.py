"""DICOM in and out: series found by SeriesInstanceUID and checked before reading (missing or duplicate slices,
uneven spacing, several series in one folder, objects that are not images), read through MONAI's ITKReader onto the
grid the slice headers say (checked against the headers with pydicom, independently of the reader), DICOM SEG written
with highdicom and read back onto the source slices; and an exported bundle segmenting hippocampus volumes written as
DICOM series in the partner environment (only its metadata's packages), as NIfTI and as DICOM SEG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import nifti_to_series, oblique_affine, write_series
from volssl.bundle import InferenceInputs
from volssl.io import VolsslInputError, read_series
from volssl.io.dicom import DicomSeriesReader, check_series, select_series
from volssl.io.dicom_seg import read_segmentation, write_segmentation

pytestmark = pytest.mark.usefixtures("one_thread")


def header_affine(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The RAS affine of a series from its headers alone (pydicom), slices sorted along the normal; and the SOP
    instance UIDs in that order. Written independently of volssl.io.dicom so the two can check each other."""
    slices = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    slices = [s for s in slices if s.Modality != "SEG"]
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(np.dot(np.asarray(s.ImagePositionPatient, dtype=float), normal)))
    first, second = (np.asarray(s.ImagePositionPatient, dtype=float) for s in slices[:2])
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * col_spacing, iop[3:] * row_spacing, second - first, first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, [str(s.SOPInstanceUID) for s in slices]


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 1000, size=(20, 24, 10)).astype(np.int16)


def test_series_is_read_on_the_grid_its_headers_say(volume, tmp_path):
    affine = oblique_affine()
    info = write_series(volume, affine, tmp_path / "s")
    array, read_affine, geometry, notes = read_series(tmp_path / "s")
    np.testing.assert_array_equal(array, volume)  # files named in reverse slice order: sorted by position
    expected, order = header_affine(tmp_path / "s")
    np.testing.assert_allclose(read_affine, expected, atol=1e-4)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)
    assert geometry.sop_instance_uids == order == info["sop_instance_uids"] and notes == []
    assert geometry.shape == (20, 24, 10)


def _copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def series(volume, tmp_path) -> Path:
    write_series(volume, np.diag([0.8, 0.8, 3.0, 1.0]), tmp_path / "good")
    return tmp_path / "good"


def test_missing_duplicate_and_uneven_slices_are_named(series, volume, tmp_path):
    missing = _copy_series(series, tmp_path / "missing")
    sorted(missing.glob("*.dcm"))[4].unlink()
    with pytest.raises(VolsslInputError, match=r"missing slice\(s\): a gap of 6.000 mm .* 3.000 mm apart") as err:
        read_series(missing)
    assert err.value.path == str(missing)

    duplicate = _copy_series(series, tmp_path / "duplicate")
    shutil.copy2(duplicate / "slice_0003.dcm", duplicate / "copy_of_0003.dcm")
    with pytest.raises(VolsslInputError, match="duplicate slices: .*are the same instance"):
        read_series(duplicate)
    same_place = tmp_path / "same_place"
    positions = [0, 3, 6, 6, 9, 12, 15, 18, 21, 24]
    write_series(volume, np.diag([0.8, 0.8, 3.0, 1.0]), same_place, slice_positions=positions)
    with pytest.raises(VolsslInputError, match="duplicate slices: .* lie at the same position"):
        read_series(same_place)

    uneven = tmp_path / "uneven"
    write_series(volume, np.diag([0.8, 0.8, 3.0, 1.0]), uneven, slice_positions=[0, 3, 6, 9, 12.6, 15, 18, 21, 24, 27])
    with pytest.raises(VolsslInputError, match="uneven slice spacing: gaps from 2.400 to 3.600 mm"):
        read_series(uneven)


def test_one_series_per_folder_or_pick_one(series, volume, tmp_path):
    two = _copy_series(series, tmp_path / "two")
    other = write_series(volume[::-1], np.diag([0.8, 0.8, 3.0, 1.0]), two, series_number=7, description="T2 axial",
                         file_prefix="t2_")
    with pytest.raises(VolsslInputError, match=r"2 image series in one folder \(.*series 7 'T2 axial'.*--series_uid"):
        select_series(two)
    picked, notes = select_series(two, series_uid=other["series_uid"])
    assert picked.uid == other["series_uid"] and "picked" in notes[0]
    array, *_ = read_series(two, series_uid=[other["series_uid"], "1.2.3"])
    np.testing.assert_array_equal(array, volume[::-1])
    single = tmp_path / "single"
    write_series(volume[:, :, :1], np.eye(4), single)
    with pytest.raises(VolsslInputError, match="single slice"):
        read_series(single)


@pytest.fixture
def seg_of(series):
    """A DICOM SEG of ``series`` with two segments, written with volssl.io.dicom_seg."""
    _, _, geometry, _ = read_series(series)
    label = np.zeros(geometry.shape, dtype=np.uint8)
    label[2:9, 3:12, 1:4], label[10:18, 5:20, 5:9] = 1, 2
    return geometry, label


def test_seg_reads_back_onto_the_source_slices(series, seg_of, tmp_path):
    geometry, label = seg_of
    path = write_segmentation(label, geometry, {0: "background", 1: "Anterior", 2: "Posterior"}, tmp_path / "a.dcm",
                              algorithm="test bundle", version="1.2")
    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == select_series(series)[0].uid
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Anterior", "Posterior"]
    positions = {str(pydicom.dcmread(str(f)).SOPInstanceUID): [float(v) for v in pydicom.dcmread(str(f))
                 .ImagePositionPatient] for f in geometry.files}
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    rebuilt = np.zeros_like(label)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[source], atol=1e-4)  # the frame lies on its source slice
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        rebuilt[:, :, geometry.sop_instance_uids.index(source)][frame.T > 0] = segment
    np.testing.assert_array_equal(rebuilt, label)
    back, names = read_segmentation(path, geometry)
    np.testing.assert_array_equal(back, label)
    assert names == {1: "Anterior", 2: "Posterior"}
    with pytest.raises(VolsslInputError, match="label values \\[2\\] have no name"):
        write_segmentation(label, geometry, {1: "Anterior"}, tmp_path / "b.dcm")


def test_inference_inputs_over_a_folder_of_series(series, seg_of, volume, tmp_path):
    root = tmp_path / "studies"
    for patient in ("p1", "p2"):  # the same series folder name in two studies: the case names stay apart
        _copy_series(series, root / patient / "SE000001")
    missing = _copy_series(series, root / "p3" / "missing")
    sorted(missing.glob("*.dcm"))[4].unlink()
    two = _copy_series(series, root / "p3" / "two")
    write_series(volume, np.diag([0.8, 0.8, 3.0, 1.0]), two, file_prefix="b_")
    geometry, label = seg_of
    write_segmentation(label, geometry, {1: "a", 2: "b"}, root / "p4" / "seg_only" / "seg.dcm")
    beside = _copy_series(series, root / "p5" / "with_seg")
    write_segmentation(label, geometry, {1: "a", 2: "b"}, beside / "seg.dcm")
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # an export's index: not a case
    inputs = InferenceInputs(root)
    assert [e["case"] for e in inputs.good] == ["p1_SE000001", "p2_SE000001", "p5_with_seg"]
    skipped = dict(inputs.skipped)
    assert sorted(skipped) == sorted(str(p) for p in (missing, two, root / "p4" / "seg_only"))
    assert "missing slice" in skipped[str(missing)] and "2 image series" in skipped[str(two)]
    assert "no image series to segment" in skipped[str(root / "p4" / "seg_only")]
    assert any(w.startswith(f"{beside}: not an image, ignored: SEG") for w in inputs.warnings)
    with pytest.raises(VolsslInputError, match="3 of 6 input"):
        inputs.report()


def test_two_inputs_with_one_output_name_are_not_both_written(series, tmp_path):
    for study in ("a", "b"):
        _copy_series(series, tmp_path / study / "SE1")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "a/SE1"}, {"image": "b/SE1"}]}))
    inputs = InferenceInputs(datalist)
    assert [e["case"] for e in inputs.good] == ["SE1"]
    assert "its case name 'SE1' is also that of" in inputs.skipped[0][1]
    assert [e["case"] for e in InferenceInputs(tmp_path).good] == ["a_SE1", "b_SE1", "good"], "a folder keeps them apart"


def test_dicom_seg_output_needs_a_dicom_input(series, tmp_path):
    nifti = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 24, 8)).astype(np.float32), np.eye(4)), nifti)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / nifti.name).symlink_to(nifti)
    _copy_series(series, folder / "series")
    inputs = InferenceInputs(folder, output_format="dicom_seg")
    assert [e["case"] for e in inputs.good] == ["series"]
    assert "DICOM SEG output is written onto a DICOM source series" in inputs.skipped[0][1]
    with pytest.raises(VolsslInputError, match="output_format: must be one of"):
        InferenceInputs(folder, output_format="png")


def test_reader_leaves_nifti_to_nibabel(series, tmp_path):
    from monai.transforms import LoadImage

    nifti = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), dtype=np.float32), np.eye(4)), nifti)
    loader = LoadImage(reader=DicomSeriesReader(), image_only=True)
    assert tuple(loader(str(nifti)).shape) == (4, 5, 6)
    image = loader(str(series))
    assert tuple(image.shape) == (20, 24, 10)
    np.testing.assert_allclose(np.asarray(image.affine), check_series(select_series(series)[0]).affine, atol=1e-4)


# ------------------------------------------------------------------------- an exported bundle, partner environment


HIPPOCAMPUS_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


@pytest.fixture(scope="module")
def exported_coral(tmp_path_factory):
    """A stand-in export of CORAL (initial weights, CPU-sized values, the hippocampus classes), unzipped."""
    from monailabel_helpers import phantom_values, standin_export

    out = tmp_path_factory.mktemp("dicom_export")
    values = {**phantom_values("coral_mri_segmentation"), "num_classes": 3}
    zip_path = standin_export("coral_mri_segmentation", out, values, HIPPOCAMPUS_LABELS)
    return zip_path.parent / "coral_mri_segmentation"


def test_exported_bundle_segments_dicom_series_as_nifti_and_seg(exported_coral, hippocampus_dir, tmp_path):
    """Acceptance: hippocampus volumes written as DICOM series, segmented by an exported bundle in the partner
    environment; a folder holding two series, a series with a missing slice and a SEG object each give one line
    naming the folder while the good series are segmented; the NIfTI output lies on the series' grid (checked
    against the headers); the DICOM SEG references the series and its frames lie on the source slices."""
    from bundle_helpers import run_standalone

    images = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:2]
    studies = tmp_path / "studies"
    good = [nifti_to_series(images[0], studies / "patient1" / "SE1"),
            nifti_to_series(images[1], studies / "patient2" / "SE1")]
    two = studies / "patient3" / "two_series"
    nifti_to_series(images[0], two)
    nifti_to_series(images[1], two, series_number=2, file_prefix="b_")
    missing = studies / "patient4" / "missing_slice"
    nifti_to_series(images[0], missing)["files"][7].unlink()
    _, _, geometry, _ = read_series(studies / "patient1" / "SE1")
    label = np.asarray(nib.load(hippocampus_dir / "labelsTr" / images[0].name).dataobj).astype(np.uint8)
    write_segmentation(label, geometry, {1: "Anterior", 2: "Posterior"}, studies / "patient5" / "seg" / "seg.dcm")

    out = tmp_path / "nifti"
    proc = run_standalone(exported_coral, ["run", "--config_file", "configs/inference.json", "--bundle_root", ".",
                                           "--input", str(studies), "--output_dir", str(out)], check=False)
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for folder, problem in ((two, "2 image series in one folder"), (missing, "missing slice(s)"),
                            (studies / "patient5" / "seg", "no image series to segment")):
        lines = [line for line in log.splitlines() if f"skipped {folder}: {problem}" in line]
        assert len(lines) == 1, (folder, log[-4000:])
    assert "3 of 5 input(s) skipped" in proc.stderr.strip().splitlines()[-1]
    for case, source, image in (("patient1_SE1", good[0], images[0]), ("patient2_SE1", good[1], images[1])):
        pred = nib.load(out / f"{case}_seg.nii.gz")
        folder = source["files"][0].parent
        expected, _ = header_affine(folder)
        assert pred.shape == nib.load(image).shape
        np.testing.assert_allclose(pred.affine, expected, atol=1e-4)  # the series' grid and orientation

    seg_out = tmp_path / "seg"
    run_standalone(exported_coral, ["run", "--config_file", "configs/inference.json", "--bundle_root", ".",
                                    "--input", str(studies / "patient1" / "SE1"), "--output_dir", str(seg_out),
                                    "--output_format", "dicom_seg"])
    ds = pydicom.dcmread(str(seg_out / "SE1_seg.dcm"))
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == good[0]["series_uid"]
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Anterior", "Posterior"]
    assert json.loads((exported_coral / "configs" / "metadata.json").read_text())["name"] in ds.SeriesDescription
    slices = {str(uid): k for k, uid in enumerate(good[0]["sop_instance_uids"])}
    positions = {uid: [float(v) for v in pydicom.dcmread(str(f)).ImagePositionPatient]
                 for uid, f in zip(good[0]["sop_instance_uids"], good[0]["files"])}
    nifti_pred = np.asarray(nib.load(out / "patient1_SE1_seg.nii.gz").dataobj)
    rebuilt = np.zeros_like(nifti_pred)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        source = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[source], atol=1e-4)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        rebuilt[:, :, slices[source]][frame.T > 0] = segment
    np.testing.assert_array_equal(rebuilt, nifti_pred)  # the SEG holds the same label map, slice for slice


# ------------------------------------------------------------------------------------------ prepare_data.py dicom


def test_prepare_data_dicom_converts_series_and_their_seg_labels(series, seg_of, volume, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import prepare_data

    studies = tmp_path / "studies"
    _, label = seg_of
    for i in range(4):  # four labelled series, each with its SEG in a folder of its own
        write_series(volume, np.diag([0.8, 0.8, 3.0, 1.0]), studies / f"patient{i}" / "MR")
        _, _, g, _ = read_series(studies / f"patient{i}" / "MR")
        write_segmentation(label, g, {1: "Anterior", 2: "Posterior"}, studies / f"patient{i}" / "SEG" / "seg.dcm")
    _copy_series(series, studies / "patient4" / "MR")  # no SEG: unlabelled
    copy = _copy_series(series, studies / "patient4" / "copy")  # the same series again: left out
    missing = write_series(volume, np.eye(4), studies / "patient5" / "MR")["files"][0].parent
    sorted(missing.glob("*.dcm"))[4].unlink()
    out = tmp_path / "converted"
    status = prepare_data.main(["dicom", str(studies), str(out), "--n_val", "1", "--n_test", "1"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"warning: {missing}: left out: missing slice(s)" in err
    assert f"warning: {copy}: series {select_series(series)[0].uid} is also in" in err
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert [len(datalist[r]) for r in ("training", "validation", "test", "unlabeled")] == [2, 1, 1, 1]
    assert datalist["unlabeled"] == [{"image": "imagesTr/patient4_MR.nii.gz"}]
    case = datalist["training"][0]
    image, converted = nib.load(out / case["image"]), nib.load(out / case["label"])
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume)
    np.testing.assert_array_equal(np.asarray(converted.dataobj), label)
    np.testing.assert_allclose(image.affine, header_affine(series)[0], atol=1e-4)
    assert prepare_data.main(["check", str(out / "datalist.json")]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_data.main(["dicom", str(empty), str(tmp_path / "x")]) == 2
    assert "no DICOM image series" in capsys.readouterr().err
