"""DICOM studies -> a volssl datalist with NIfTI copies (``tools/prepare_data.py dicom``).

Every image series found under a studies folder (any layout: ``STUDIES/patient/study/series/`` or all files of a
study in one folder) becomes a case, checked as inference checks its inputs (:func:`volssl.io.dicom.check_series`:
missing or duplicate slices, uneven spacing, ...) and read through ITK; a DICOM SEG anywhere under the folder that
references the series becomes its label map (read onto the series' slices, segment number = class, the segment
labels = the datalist's ``labels``). Labelled cases are split into test, validation and labelled training cases with
:func:`~volssl.data.split.make_split`, as the ``msd`` converter splits; series without a SEG go to ``unlabeled``.
The datalist is then checked like every datalist (:func:`~volssl.data.converters.check_datalist`).

A series that fails its checks, an object that is neither an image series nor a SEG, and a SEG that references no
series found are reported as ``(path, problem)`` warnings and left out; nothing convertible at all is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io import VolsslInputError, read_series, save_nifti, spacing_from_affine
from ..io.dicom import dicom_case_folders, dicom_files, group_series, scan_instances
from ..io.dicom_seg import SEG_SOP_CLASS, read_segmentation
from .converters import DATALIST_NAME, IMAGES_DIR, LABELS_DIR, check_datalist
from .datalist import IMAGE_KEY, LABEL_KEY, dicom_case_name, save_datalist
from .split import make_split

__all__ = ["dicom_to_datalist"]


def _find(studies: Path):
    """Image series ``[(case, folder, series)]`` and SEG instances by referenced series UID, plus warnings."""
    images, segs, warnings = [], {}, []
    seen: dict[str, Path] = {}
    for folder in dicom_case_folders(studies):
        instances, bad = scan_instances(dicom_files(folder))
        warnings += bad
        series = group_series(instances)
        image_series = [s for s in series if s.is_image]
        base = dicom_case_name(studies, folder)
        for s in list(image_series):
            if s.uid in seen:  # a copy of a series is not a second case
                warnings.append((str(folder), f"series {s.uid} is also in {seen[s.uid]}: this copy left out"))
                image_series.remove(s)
            seen.setdefault(s.uid, folder)
        for s in image_series:
            number = s.first.series_number if s.first.series_number is not None else image_series.index(s) + 1
            case = base if len(image_series) == 1 else f"{base}_s{number}"
            images.append((case, folder, s))
        for s in series:
            if s.is_image:
                continue
            if s.first.sop_class_uid == SEG_SOP_CLASS:
                for inst in s.instances:
                    for ref in inst.referenced_series or [""]:
                        segs.setdefault(ref, []).append(inst.path)
            else:
                warnings.append((str(folder), f"not an image and not a SEG, left out: {s.describe()}"))
    return images, segs, warnings


def _merge_names(names: dict[int, str], found: Mapping[int, str], seg_path) -> None:
    for number, name in found.items():
        if names.setdefault(number, name) != name:
            raise VolsslInputError(
                seg_path,
                f"segment {number} is '{name}' here but '{names[number]}' in another SEG: "
                "every SEG of one data set must number its structures alike",
            )


def dicom_to_datalist(
    studies_dir,
    output_dir,
    n_labeled: int | None = None,
    n_val: int = 0,
    n_test: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, list[tuple[str, str]]]:
    """Convert the DICOM series (and their SEG labels) under ``studies_dir`` into ``output_dir/imagesTr``,
    ``output_dir/labelsTr`` (NIfTI on each series' grid) and ``output_dir/datalist.json``.

    Args:
        studies_dir: the folder of DICOM studies.
        output_dir: where the NIfTI copies and the datalist go.
        n_labeled: labelled training cases (default: every labelled case not in test or validation); labelled cases
            beyond these go to ``unlabeled``.
        n_val: validation cases (labelled).
        n_test: test cases (labelled).
        seed: split seed.
        progress: show a progress bar while the series are read.

    Returns:
        ``(datalist, warnings)``: the datalist as written and ``(path, problem)`` for everything left out.

    Raises:
        VolsslInputError: no DICOM file, no series that passes its checks, SEGs that name one segment differently,
            too few labelled cases for the split, or a datalist that fails its check.
    """
    from tqdm import tqdm

    studies, out = Path(studies_dir), Path(output_dir)
    if not studies.is_dir():
        raise VolsslInputError(studies, "studies folder not found")
    images, segs, warnings = _find(studies)
    if not images:
        raise VolsslInputError(studies, "no DICOM image series in this folder or below it")
    names: dict[int, str] = {}
    labelled, unlabelled, spacings = [], [], []
    used_segs: set[Path] = set()
    for case, folder, series in tqdm(images, desc="reading DICOM series", unit="series", disable=not progress):
        try:
            array, affine, geometry, _ = read_series(folder, series_uid=series.uid)
        except VolsslInputError as err:
            warnings.append((err.path, f"left out: {err.problem}"))
            continue
        label = None
        refs = segs.get(series.uid, [])
        used_segs.update(refs)
        if len(refs) > 1:
            problem = (
                f"{len(refs)} SEG objects reference series {series.uid} ({', '.join(str(p) for p in refs)}): "
                "kept as unlabelled; keep one SEG"
            )
            warnings.append((str(folder), problem))
        elif refs:
            try:
                label, found = read_segmentation(refs[0], geometry)
            except VolsslInputError as err:
                warnings.append((err.path, f"label left out, series {series.uid} kept as unlabelled: {err.problem}"))
            else:
                _merge_names(names, found, refs[0])
        save_nifti(np.asarray(array), affine, out / IMAGES_DIR / f"{case}.nii.gz")
        spacings.append(spacing_from_affine(affine))
        if label is not None:
            save_nifti(label.astype(np.uint8), affine, out / LABELS_DIR / f"{case}.nii.gz")
            labelled.append(case)
        else:
            unlabelled.append(case)
    for ref, paths in segs.items():
        for path in paths:
            if path not in used_segs:
                problem = f"SEG of series {ref or '(none named)'}, which is not among the converted series: left out"
                warnings.append((str(path), problem))
    if not labelled and not unlabelled:
        raise VolsslInputError(
            studies,
            f"no series passed its checks ({len(warnings)} problem(s), the first: "
            f"{warnings[0][0]}: {warnings[0][1]})",
        )
    n_train = len(labelled) - n_val - n_test if n_labeled is None else n_labeled
    if n_train < 0:
        raise VolsslInputError(
            studies, f"{len(labelled)} labelled series, fewer than validation {n_val} + test {n_test}"
        )
    try:
        split = make_split(labelled, n_train, n_val, n_test, seed)
    except VolsslInputError as err:
        raise VolsslInputError(studies, f"{err.problem} (labelled series: {len(labelled)})") from err
    datalist: dict = {"name": studies.name, "labels": {"0": "background"}}
    if names:
        top = max(names)
        datalist["labels"].update({str(i): names.get(i, f"segment {i}") for i in range(1, top + 1)})
    if spacings and all(np.allclose(s, spacings[0], atol=1e-3) for s in spacings):
        datalist["spacing"] = [round(s, 6) for s in spacings[0]]
    datalist["dataset_dir"] = "."

    def entry(case: str, with_label: bool) -> dict:
        item = {IMAGE_KEY: f"{IMAGES_DIR}/{case}.nii.gz"}
        if with_label:
            item[LABEL_KEY] = f"{LABELS_DIR}/{case}.nii.gz"
        return item

    for role in ("training", "validation", "test"):
        datalist[role] = [entry(c, True) for c in split[role]]
    datalist["unlabeled"] = [entry(c, False) for c in split["unlabeled"] + unlabelled]
    datalist["split"] = {"seed": seed, "source": f"DICOM studies {studies.resolve()}"}
    save_datalist(datalist, out / DATALIST_NAME)
    check_datalist(out / DATALIST_NAME, progress=False)
    return datalist, warnings
