"""Test helper: NIfTI volumes written as DICOM series (MR Image Storage, one file per slice), and broken variants.

The series carry the NIfTI grid exactly: voxel (i, j, k) of the (x, y, z) array is column i, row j of slice k, with
ImagePositionPatient / ImageOrientationPatient / PixelSpacing taken from the affine (RAS -> LPS). Slice files are
named in reverse slice order on purpose, so a reader that trusts file names instead of positions fails the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _uid(prefix: str | None = None) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=prefix) if prefix else generate_uid()


def write_series(volume: np.ndarray, affine: np.ndarray, folder, patient_id: str = "volssl-test",
                 study_uid: str | None = None, series_uid: str | None = None, series_number: int = 1,
                 description: str = "test series", frame_of_reference: str | None = None,
                 slice_positions=None, file_prefix: str = "") -> dict:
    """Write ``volume`` (x, y, z) on ``affine`` (RAS) as one DICOM file per slice in ``folder``.

    ``slice_positions`` (mm along the slice axis, one per slice) overrides the positions of the affine (for uneven
    spacing tests); ``file_prefix`` starts the file names (several series in one folder). Returns ``{"study_uid", "series_uid", "files", "sop_instance_uids"}`` (files in slice order).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir, slice_dir = (lps[:3, i] / spacing[i] for i in range(3))
    study_uid = study_uid or _uid()
    series_uid = series_uid or _uid()
    frame_of_reference = frame_of_reference or _uid()
    integral = np.all(volume == np.round(volume)) and volume.min() >= -32768 and volume.max() <= 32767
    if integral:
        stored, slope, intercept = volume.astype(np.int16), 1.0, 0.0
    else:
        lo, hi = float(volume.min()), float(volume.max())
        slope = (hi - lo) / 60000.0 or 1.0
        intercept = lo + 30000.0 * slope
        stored = np.round((volume - intercept) / slope).astype(np.int16)
    files, sops = [], []
    n = volume.shape[2]
    for k in range(n):
        meta = FileMetaDataset()
        sop = _uid()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{file_prefix}slice_{n - 1 - k:04d}.dcm"  # reverse order: readers must sort by position
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Volssl", patient_id, "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.Manufacturer = "MR", "volssl tests"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = k + 1
        position = lps[:3, 3] + lps[:3, 2] * k
        if slice_positions is not None:
            position = lps[:3, 3] + slice_dir * float(slice_positions[k])
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]  # rows, then columns
        ds.SliceThickness = round(float(spacing[2]), 6)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, columns)
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
        sops.append(sop)
    return {"study_uid": study_uid, "series_uid": series_uid, "files": files, "sop_instance_uids": sops}


def nifti_to_series(nifti_path, folder, **kwargs) -> dict:
    """:func:`write_series` of a NIfTI file's voxels and affine."""
    import nibabel as nib

    img = nib.load(str(nifti_path))
    return write_series(np.asarray(img.dataobj), img.affine, folder, **kwargs)


def oblique_affine(spacing=(1.0, 1.2, 2.5), angle_deg: float = 20.0, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A RAS affine rotated about the x and z axes, with anisotropic spacing (not a diagonal grid)."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine
