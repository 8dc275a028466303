"""Converters from the papers' data layouts to volssl datalists, and a full check of a datalist's files.

Three sources are supported:

- **MSD-style folders** (``dataset.json`` + ``imagesTr``/``labelsTr``): :func:`msd_to_datalist` writes a datalist that
  points at the original files (nothing is copied) and splits the labelled cases into the four roles.
- **SSL4MIS ACDC h5** (``volumes/<name>.h5`` + ``train/val/test.list``): :func:`acdc_h5_to_nifti` writes NIfTI files
  and keeps the published split (the training list is divided into labelled and unlabelled *patients*).
- **UA-MT left atrium h5** (``2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` + ``train/test.list``):
  :func:`la_h5_to_nifti` writes NIfTI files, keeps the 20 test cases, and carves validation, labelled and
  unlabelled sets out of the 80 training cases.

Every bad input raises a :class:`~volssl.io.VolsslInputError` that names the file and the problem.

Axis orders. NIfTI arrays are in nibabel's (x, y, z) order. The ACDC h5 arrays are (slices, H, W): SSL4MIS made them
with SimpleITK's ``GetArrayFromImage``, which returns (z, y, x), so they are transposed with ``(2, 1, 0)`` to
(W, H, slices) = (x, y, z). The UA-MT LA arrays are already (x, y, z) and are written as they are.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..io import VolsslInputError, read_h5, save_nifti, spacing_from_affine
from .datalist import (
    IMAGE_KEY,
    LABEL_KEY,
    ROLES,
    case_id,
    check_case_files,
    check_label_values,
    load_datalist,
    num_classes_of,
    read_json,
    resolve_role,
    save_datalist,
)
from .split import group_by_regex, make_split

__all__ = [
    "ACDC_LABELS",
    "LA_LABELS",
    "ACDC_PATIENT_REGEX",
    "msd_to_datalist",
    "acdc_split",
    "acdc_h5_to_nifti",
    "la_split",
    "la_h5_to_nifti",
    "check_datalist",
    "check",
    "role_counts",
    "read_case_list",
]

ACDC_LABELS = {"0": "background", "1": "RV", "2": "myocardium", "3": "LV"}
LA_LABELS = {"0": "background", "1": "left atrium"}
ACDC_PATIENT_REGEX = r"patient\d+"
LA_IMAGES_DIR = "2018LA_Seg_Training Set"
LA_FILE = "mri_norm2.h5"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
DATALIST_NAME = "datalist.json"


# ----------------------------------------------------------------------------------------------------------------------
# small helpers


def role_counts(datalist: Mapping) -> dict[str, int]:
    """The number of cases of each role, e.g. ``{"training": 8, "unlabeled": 64, "validation": 8, "test": 20}``."""
    return {role: len(datalist.get(role, [])) for role in ROLES}


def _parse_spacing(spacing, source="spacing") -> tuple[float, float, float]:
    """Three positive finite numbers (x, y, z, mm) from a sequence or a string such as ``"1.5,1.5,10"``."""
    value = spacing
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [v for v in re.split(r"[\s,x]+", text.strip("[]()")) if v]
    try:
        out = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    except (TypeError, ValueError) as err:
        raise VolsslInputError(source, f"spacing must be three numbers (x, y, z) in mm, got {spacing!r}") from err
    if len(out) != 3 or not all(np.isfinite(out)) or min(out) <= 0:
        raise VolsslInputError(source, f"spacing must be three positive numbers (x, y, z) in mm, got {spacing!r}")
    return out  # type: ignore[return-value]


def _diag_affine(spacing: Sequence[float]) -> np.ndarray:
    return np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])


def read_case_list(path, parse: Callable[[str], str] = lambda s: s) -> list[str]:
    """Read a case list: one case per line, surrounding whitespace and blank lines ignored.

    Args:
        path: the ``.list`` file.
        parse: maps a stripped line to a case name (for example an id out of a path).

    Returns:
        The case names in file order.

    Raises:
        VolsslInputError: missing file, empty list, or a case listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(path, "case list file not found")
    with open(path) as f:
        names = [parse(line.strip()) for line in f if line.strip()]
    if not names:
        raise VolsslInputError(path, "case list is empty")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise VolsslInputError(path, f"case {name} is listed twice")
        seen.add(name)
    return names


def _read_lists(folder: Path, files: Mapping[str, str], parse: Callable[[str], str]) -> dict[str, list[str]]:
    """Read several case lists (role -> file name in ``folder``) and check that no case is in two of them."""
    lists = {role: read_case_list(folder / name, parse) for role, name in files.items()}
    owner: dict[str, str] = {}
    for role, names in lists.items():
        for name in names:
            if name in owner:
                raise VolsslInputError(
                    folder / files[role], f"case {name} is listed in both {files[owner[name]]} and {files[role]}"
                )
            owner[name] = role
    return lists


def _acdc_name(line: str) -> str:
    """``patient001_frame01``, also from ``volumes/patient001_frame01.h5`` or similar."""
    name = PurePosixPath(line.replace("\\", "/")).name
    return name[: -len(".h5")] if name.endswith(".h5") else name


def _la_id(line: str) -> str:
    """The LA case id of a list line: an id, or a path ending in ``<ID>/mri_norm2.h5`` (or ``<ID>/``)."""
    path = PurePosixPath(line.replace("\\", "/"))
    return path.parent.name if path.suffix == ".h5" else path.name


def _limit_roles(split: Mapping[str, list[str]], limit: int | None, group: Callable[[str], str]) -> dict:
    """Keep the cases of the first ``limit`` groups (sorted) of each role; ``None`` keeps everything."""
    if limit is None:
        return {role: list(cases) for role, cases in split.items()}
    if int(limit) < 0:
        raise VolsslInputError("limit", f"limit must be non-negative, got {limit}")
    out = {}
    for role, cases in split.items():
        keep = sorted({group(c) for c in cases})[: int(limit)]
        out[role] = [c for c in cases if group(c) in keep]
    return out


def _relabel_split_error(err: VolsslInputError, path) -> VolsslInputError:
    return VolsslInputError(path, err.problem)


# ----------------------------------------------------------------------------------------------------------------------
# MSD


def _msd_labels(labels, source) -> dict[str, str]:
    """MSD ``labels`` as ``{"0": name, ...}``; the nnU-Net v2 form ``{name: index}`` is inverted."""
    if not isinstance(labels, Mapping) or not labels:
        raise VolsslInputError(source, '\'labels\' is missing or empty; expected e.g. {"0": "background", ...}')
    if all(isinstance(v, int) for v in labels.values()) and not all(str(k).isdigit() for k in labels):
        return {str(v): str(k) for k, v in sorted(labels.items(), key=lambda kv: kv[1])}
    return {str(k): str(v) for k, v in labels.items()}


def _clean_rel(path: str) -> str:
    """``./imagesTr/x.nii.gz`` -> ``imagesTr/x.nii.gz`` (POSIX separators)."""
    return PurePosixPath(os.path.normpath(str(path)).replace("\\", "/")).as_posix()


def _read_msd_index(msd_dir: Path) -> tuple[dict, list[dict], list[str]]:
    """Read ``dataset.json``: returns (the index, the training pairs, the MSD test images)."""
    index_path = msd_dir / "dataset.json"
    index = read_json(index_path, missing="MSD index file not found (expected an MSD-style folder)")
    training = index.get("training")
    if not isinstance(training, list) or not training:
        raise VolsslInputError(index_path, "'training' is missing or empty")
    pairs = []
    for entry in training:
        if not isinstance(entry, Mapping) or not entry.get(IMAGE_KEY) or not entry.get(LABEL_KEY):
            raise VolsslInputError(index_path, f"each 'training' entry needs 'image' and 'label', got {entry!r}")
        pairs.append({IMAGE_KEY: _clean_rel(entry[IMAGE_KEY]), LABEL_KEY: _clean_rel(entry[LABEL_KEY])})
    tests = [_clean_rel(t if isinstance(t, str) else t[IMAGE_KEY]) for t in index.get("test", []) or []]
    return index, pairs, tests


def _check_listed_files(msd_dir: Path, rel_paths: Sequence[str], source) -> None:
    missing = [str(msd_dir / p) for p in rel_paths if not (msd_dir / p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise VolsslInputError(source, f"{len(missing)} listed file(s) not found:\n  {shown}")


def _common_spacing(paths: Sequence[Path], atol: float = 1e-3) -> list[float] | None:
    """The voxel spacing shared by all ``paths`` (headers only), or ``None`` when they differ."""
    first = None
    for path in paths:
        try:
            spacing = spacing_from_affine(nib.load(str(path)).affine)
        except Exception as err:  # nibabel raises several types for unreadable headers
            raise VolsslInputError(path, f"cannot read the NIfTI header: {err}") from err
        if first is None:
            first = spacing
        elif not np.allclose(spacing, first, atol=atol):
            return None
    return None if first is None else [round(s, 6) for s in first]


def msd_to_datalist(
    msd_dir,
    output,
    n_labeled: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    n_unlabeled: int | None = None,
    group_regex: str | None = None,
    include_msd_test: bool = False,
) -> dict:
    """Write a volssl datalist for an MSD-style folder, without copying any image.

    The labelled cases of ``dataset.json``'s ``training`` list are split with :func:`~volssl.data.split.make_split`:
    ``n_test`` test and ``n_val`` validation cases, ``n_labeled`` labelled training cases, and the rest (or
    ``n_unlabeled`` of them) unlabelled. Unlabelled entries carry only their image. Paths stay relative to the MSD
    folder and the datalist's ``"dataset_dir"`` is that folder relative to the datalist's own folder, so the datalist
    can be moved together with the data. ``labels``, ``name`` and ``modality`` are copied; ``spacing`` is set when
    all images share one (read from the headers only).

    Args:
        msd_dir: the folder holding ``dataset.json``.
        output: the datalist JSON file to write.
        n_labeled: labelled training cases (groups when ``group_regex`` is given).
        n_val: validation cases.
        n_test: test cases.
        seed: shuffling seed; the same seed gives the same split.
        n_unlabeled: unlabelled cases; ``None`` takes all the rest.
        group_regex: cases whose names share the first match of this pattern (e.g. ``patient\\d+``) share a role.
        include_msd_test: also add the (unlabelled) MSD ``test`` images to the unlabelled role.

    Returns:
        The datalist as written.

    Raises:
        VolsslInputError: missing or malformed ``dataset.json``, missing listed files, duplicate cases, or more
            cases asked for than there are.
    """
    msd_dir = Path(msd_dir)
    output = Path(output)
    index_path = msd_dir / "dataset.json"
    index, pairs, msd_tests = _read_msd_index(msd_dir)
    labels = _msd_labels(index.get("labels"), index_path)
    _check_listed_files(msd_dir, [p[k] for p in pairs for k in (IMAGE_KEY, LABEL_KEY)], index_path)
    if include_msd_test:
        _check_listed_files(msd_dir, msd_tests, index_path)

    by_case: dict[str, dict] = {}
    for pair in pairs:
        cid = case_id(pair[IMAGE_KEY])
        if cid in by_case:
            raise VolsslInputError(index_path, f"case {cid} is listed twice in 'training'")
        by_case[cid] = pair
    try:
        split = make_split(list(by_case), n_labeled, n_val, n_test, seed, group_by_regex(group_regex), n_unlabeled)
    except VolsslInputError as err:
        raise _relabel_split_error(err, index_path) from err

    datalist: dict = {"name": index.get("name", msd_dir.name)}
    if "modality" in index:
        datalist["modality"] = index["modality"]
    datalist["labels"] = labels
    spacing = _common_spacing([msd_dir / p[IMAGE_KEY] for p in pairs])
    if spacing is not None:
        datalist["spacing"] = spacing
    datalist["dataset_dir"] = _relpath(msd_dir, output.parent)
    for role in ("training", "validation", "test"):
        datalist[role] = [dict(by_case[c]) for c in split[role]]
    datalist["unlabeled"] = [{IMAGE_KEY: by_case[c][IMAGE_KEY]} for c in split["unlabeled"]]
    if include_msd_test:
        datalist["unlabeled"] += [{IMAGE_KEY: p} for p in msd_tests]
    datalist["split"] = {"seed": seed, "group_regex": group_regex, "source": "msd dataset.json 'training'"}
    save_datalist(datalist, output)
    return datalist


def _relpath(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return str(target.resolve())


# ----------------------------------------------------------------------------------------------------------------------
# h5 -> NIfTI (ACDC and LA)


def _h5_meta(path: Path) -> dict:
    """Shapes of ``image``/``label`` and the file attributes, without reading the arrays.

    Raises:
        VolsslInputError: missing or unreadable file, a missing dataset, non-3D arrays, or image/label shapes differ.
    """
    import h5py  # only the converters read h5: the bundles do not declare h5py

    if not path.is_file():
        raise VolsslInputError(path, "volume file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (IMAGE_KEY, LABEL_KEY) if k not in f]
            if missing:
                raise VolsslInputError(path, f"missing dataset(s) {missing}; the file has {sorted(f.keys())}")
            meta = {
                "image": tuple(f[IMAGE_KEY].shape),
                "label": tuple(f[LABEL_KEY].shape),
                "attrs": {k: np.asarray(v) for k, v in f.attrs.items()},
            }
    except VolsslInputError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError, ValueError... for damaged files
        raise VolsslInputError(path, f"cannot read h5 (corrupt or truncated file): {err}") from err
    if len(meta["image"]) != 3:
        raise VolsslInputError(path, f"'image' must be 3D, got shape {meta['image']}")
    if meta["image"] != meta["label"]:
        raise VolsslInputError(path, f"image shape {meta['image']} differs from label shape {meta['label']}")
    return meta


def _nifti_ok(path: Path, shape: tuple, spacing: Sequence[float], integer: bool) -> bool:
    """Whether ``path`` is an existing NIfTI with the expected shape, spacing and (for labels) an integer type."""
    if not path.is_file():
        return False
    try:
        img = nib.load(str(path))
        dtype_ok = np.issubdtype(img.get_data_dtype(), np.integer) == integer
        zooms_ok = np.allclose(img.header.get_zooms()[:3], spacing, atol=1e-4)
        return tuple(img.shape) == tuple(shape) and dtype_ok and zooms_ok
    except Exception:  # an unreadable file is rewritten
        return False


def _convert_one(
    h5_path: Path,
    out_dir: Path,
    name: str,
    spacing: Sequence[float],
    num_classes: int,
    transpose: tuple[int, int, int] | None,
    overwrite: bool,
    meta: Mapping,
) -> bool:
    """Convert one h5 case to ``imagesTr/<name>.nii.gz`` + ``labelsTr/<name>.nii.gz``; returns whether it wrote."""
    shape = meta["image"] if transpose is None else tuple(meta["image"][i] for i in transpose)
    image_path = out_dir / IMAGES_DIR / f"{name}.nii.gz"
    label_path = out_dir / LABELS_DIR / f"{name}.nii.gz"
    if not overwrite and _nifti_ok(image_path, shape, spacing, False) and _nifti_ok(label_path, shape, spacing, True):
        return False
    arrays = read_h5(h5_path)
    image, label = arrays[IMAGE_KEY], arrays[LABEL_KEY]
    if image.shape != label.shape:
        raise VolsslInputError(h5_path, f"image shape {image.shape} differs from label shape {label.shape}")
    check_label_values(label, h5_path, num_classes)
    if not np.all(np.isfinite(image)):
        raise VolsslInputError(h5_path, "image holds NaN or infinite values")
    if transpose is not None:
        image, label = image.transpose(transpose), label.transpose(transpose)
    affine = _diag_affine(spacing)
    save_nifti(np.ascontiguousarray(image, dtype=np.float32), affine, image_path)
    save_nifti(np.ascontiguousarray(label, dtype=np.uint8), affine, label_path)
    return True


def _case_entries(split: Mapping[str, list[str]]) -> dict[str, list[dict]]:
    """Datalist roles from case names; unlabelled entries carry only their image."""
    out = {}
    for role in ROLES:
        out[role] = []
        for name in split.get(role, []):
            entry = {IMAGE_KEY: f"{IMAGES_DIR}/{name}.nii.gz"}
            if role != "unlabeled":
                entry[LABEL_KEY] = f"{LABELS_DIR}/{name}.nii.gz"
            out[role].append(entry)
    return out


def _convert_split(
    split: Mapping[str, list[str]],
    h5_of: Callable[[str], Path],
    output_dir: Path,
    spacing_of: Callable[[Path, Mapping], tuple[float, float, float]],
    num_classes: int,
    transpose: tuple[int, int, int] | None,
    overwrite: bool,
    desc: str,
    progress: bool,
) -> list[tuple[float, float, float]]:
    """Check every case's h5 header, then convert the cases; returns the spacing of each converted case."""
    names = [n for role in ROLES for n in split.get(role, [])]
    metas = {n: _h5_meta(h5_of(n)) for n in names}  # fail early on a missing or damaged file
    spacings = []
    for name in tqdm(names, desc=desc, unit="case", disable=not progress):
        spacing = spacing_of(h5_of(name), metas[name])
        _convert_one(h5_of(name), output_dir, name, spacing, num_classes, transpose, overwrite, metas[name])
        spacings.append(spacing)
    return spacings


def acdc_split(acdc_dir, n_labeled_patients: int = 7, seed: int = 0) -> dict[str, list[str]]:
    """The roles of the SSL4MIS ACDC cases, by volume name (no file is read beyond the lists).

    ``val.list`` gives validation, ``test.list`` test; ``train.list`` is split into ``n_labeled_patients``
    labelled patients (both frames of a patient together, grouped by ``patient\\d+``) and the unlabelled rest, with
    :func:`~volssl.data.split.make_split` (so a smaller labelled set is a subset of a larger one with the same seed).

    Raises:
        VolsslInputError: a missing or empty list, a case listed twice or in two lists, or too many patients asked.
    """
    acdc_dir = Path(acdc_dir)
    files = {"training": "train.list", "validation": "val.list", "test": "test.list"}
    lists = _read_lists(acdc_dir, files, _acdc_name)
    try:
        pool = make_split(lists["training"], n_labeled_patients, 0, 0, seed, group_by_regex(ACDC_PATIENT_REGEX))
    except VolsslInputError as err:
        raise _relabel_split_error(err, acdc_dir / files["training"]) from err
    return {
        "training": pool["training"],
        "unlabeled": pool["unlabeled"],
        "validation": sorted(lists["validation"]),
        "test": sorted(lists["test"]),
    }


def acdc_h5_to_nifti(
    acdc_dir,
    output_dir,
    spacing,
    n_labeled_patients: int = 7,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Convert the SSL4MIS ACDC h5 volumes to NIfTI and write ``<output_dir>/datalist.json``.

    Each ``volumes/<name>.h5`` (``image`` float16 in [0, 1], ``label`` uint8, axes (slices, H, W), i.e. SimpleITK's
    (z, y, x)) becomes ``imagesTr/<name>.nii.gz`` (float32) and ``labelsTr/<name>.nii.gz`` (uint8) in nibabel's
    (x, y, z) = (W, H, slices) order, with a diagonal affine from ``spacing`` (the h5 files store none; ACDC is
    about 1.37-1.68 mm in-plane and 5-10 mm between slices, so a nominal value such as ``(1.5625, 1.5625, 10)`` is
    usual). Roles follow :func:`acdc_split`; labels are ``{0: background, 1: RV, 2: myocardium, 3: LV}``. Cases whose
    NIfTI files already exist with the right shape, spacing and type are not rewritten unless ``overwrite``.

    Args:
        acdc_dir: the folder with ``volumes/`` and ``train.list``/``val.list``/``test.list``.
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        spacing: voxel size (x, y, z) in mm: three numbers or a string such as ``"1.5625,1.5625,10"``.
        n_labeled_patients: labelled patients taken from ``train.list`` (2 volumes each).
        seed: split seed.
        limit: convert only the first ``limit`` patients of each role (for quick tests); ``None`` converts all.
        overwrite: rewrite files that already exist.
        progress: show a tqdm progress bar.

    Returns:
        The datalist as written.

    Raises:
        VolsslInputError: missing/empty/overlapping lists, missing or corrupt h5 files, image/label shape mismatch,
            label values outside 0..3, or a bad ``spacing``.
    """
    acdc_dir, output_dir = Path(acdc_dir), Path(output_dir)
    spacing = _parse_spacing(spacing)
    split = _limit_roles(acdc_split(acdc_dir, n_labeled_patients, seed), limit, group_by_regex(ACDC_PATIENT_REGEX))
    _convert_split(
        split,
        lambda name: acdc_dir / "volumes" / f"{name}.h5",
        output_dir,
        lambda path, meta: spacing,
        len(ACDC_LABELS),
        (2, 1, 0),
        overwrite,
        "ACDC h5 -> NIfTI",
        progress,
    )
    datalist = {
        "name": "ACDC",
        "modality": {"0": "MRI"},
        "labels": dict(ACDC_LABELS),
        "spacing": list(spacing),
        "dataset_dir": ".",
        **_case_entries(split),
        "split": {"seed": seed, "n_labeled_patients": n_labeled_patients, "limit": limit, "source": "SSL4MIS lists"},
        "note": "converted from SSL4MIS h5 (slices, H, W) = SimpleITK (z, y, x), transposed to (x, y, z); the h5 "
        "files store no spacing, so 'spacing' is the nominal value given to the converter",
    }
    save_datalist(datalist, output_dir / DATALIST_NAME)
    return datalist


def la_split(la_dir, n_labeled: int = 8, n_val: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """The roles of the UA-MT LA cases, by case id (no file is read beyond the lists).

    ``test.list`` (20 cases) gives test. Validation (``n_val``) and labelled training (``n_labeled``) cases are taken
    from ``train.list`` (80 cases) with :func:`~volssl.data.split.make_split`, the rest is unlabelled; validation
    never holds a test case. List lines may be ids or paths ending in ``<ID>/mri_norm2.h5``.

    Raises:
        VolsslInputError: a missing or empty list, a case listed twice or in both lists, or too many cases asked.
    """
    la_dir = Path(la_dir)
    files = {"training": "train.list", "test": "test.list"}
    lists = _read_lists(la_dir, files, _la_id)
    try:
        pool = make_split(lists["training"], n_labeled, n_val, 0, seed)
    except VolsslInputError as err:
        raise _relabel_split_error(err, la_dir / files["training"]) from err
    return {
        "training": pool["training"],
        "unlabeled": pool["unlabeled"],
        "validation": pool["validation"],
        "test": sorted(lists["test"]),
    }


def _la_spacing_getter(spacing) -> Callable[[Path, Mapping], tuple[float, float, float]]:
    """Spacing of an LA case: the file's ``spacing_mm`` attribute, else the ``spacing`` argument, else an error."""
    fallback = None if spacing is None else _parse_spacing(spacing)
    warned: list[bool] = []

    def get(path: Path, meta: Mapping) -> tuple[float, float, float]:
        if "spacing_mm" in meta["attrs"]:
            found = _parse_spacing(meta["attrs"]["spacing_mm"], source=f"{path} (attribute spacing_mm)")
            if fallback is not None and not np.allclose(found, fallback) and not warned:
                warnings.warn(f"{path}: attribute spacing_mm {found} overrides the spacing argument {fallback}")
                warned.append(True)
            return found
        if fallback is None:
            raise VolsslInputError(
                path,
                "no 'spacing_mm' attribute in the file; pass spacing=(x, y, z) in mm "
                "(the full-resolution UA-MT files are 0.625 mm isotropic)",
            )
        return fallback

    return get


def la_h5_to_nifti(
    la_dir,
    output_dir,
    n_labeled: int = 8,
    n_val: int = 8,
    seed: int = 0,
    spacing=None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Convert the UA-MT left-atrium h5 volumes to NIfTI and write ``<output_dir>/datalist.json``.

    Each ``2018LA_Seg_Training Set/<ID>/mri_norm2.h5`` (``image`` float16/32, ``label`` uint8, axes (x, y, z)) becomes
    ``imagesTr/<ID>.nii.gz`` (float32) and ``labelsTr/<ID>.nii.gz`` (uint8), axes unchanged, with a diagonal affine
    from the file's ``spacing_mm`` attribute (else ``spacing``). Roles follow :func:`la_split`; labels are
    ``{0: background, 1: left atrium}``. Existing good files are not rewritten unless ``overwrite``.

    Args:
        la_dir: the folder with ``2018LA_Seg_Training Set/``, ``train.list`` and ``test.list``.
        output_dir: where ``imagesTr/``, ``labelsTr/`` and ``datalist.json`` go.
        n_labeled: labelled training cases (8 = 10 % of the 80 training cases).
        n_val: validation cases, taken from ``train.list`` only.
        seed: split seed.
        spacing: (x, y, z) in mm for files without a ``spacing_mm`` attribute.
        limit: convert only the first ``limit`` cases of each role (for quick tests); ``None`` converts all.
        overwrite: rewrite files that already exist.
        progress: show a tqdm progress bar.

    Returns:
        The datalist as written (``spacing`` is set when all converted cases share one).

    Raises:
        VolsslInputError: missing/empty/overlapping lists, missing or corrupt h5 files, image/label shape mismatch,
            label values outside 0..1, or no spacing known for a file.
    """
    la_dir, output_dir = Path(la_dir), Path(output_dir)
    split = _limit_roles(la_split(la_dir, n_labeled, n_val, seed), limit, lambda c: c)
    spacings = _convert_split(
        split,
        lambda name: la_dir / LA_IMAGES_DIR / name / LA_FILE,
        output_dir,
        _la_spacing_getter(spacing),
        len(LA_LABELS),
        None,
        overwrite,
        "LA h5 -> NIfTI",
        progress,
    )
    datalist: dict = {"name": "LA", "modality": {"0": "LGE-MRI"}, "labels": dict(LA_LABELS)}
    if spacings and all(np.allclose(s, spacings[0], atol=1e-4) for s in spacings):
        datalist["spacing"] = [round(s, 6) for s in spacings[0]]
    datalist.update(dataset_dir=".", **_case_entries(split))
    datalist["split"] = {"seed": seed, "n_labeled": n_labeled, "n_val": n_val, "limit": limit, "source": "UA-MT lists"}
    save_datalist(datalist, output_dir / DATALIST_NAME)
    return datalist


# ----------------------------------------------------------------------------------------------------------------------
# check


def _check_entry(role: str, entry: Mapping, num_classes: int | None, spacing) -> None:
    """Check one resolved entry (unlabelled cases: the image only); raises on the first problem."""
    label = entry.get(LABEL_KEY) if role != "unlabeled" else None
    _, _, affine = check_case_files(entry[IMAGE_KEY], label, num_classes)
    if spacing is not None:
        found = spacing_from_affine(affine)
        if not np.allclose(found, spacing, atol=1e-3):
            raise VolsslInputError(
                entry[IMAGE_KEY], f"spacing {tuple(round(s, 4) for s in found)} differs from the datalist's {spacing}"
            )


def _nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of ``folder`` (hidden files such as macOS ``._*`` companions are not images)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))


def unlisted_files(
    listed_images: Sequence, listed_labels: Sequence, folders: Sequence[Path] = ()
) -> list[tuple[str, str]]:
    """``(file, problem)`` for every image next to the listed ones (or in ``folders``) that no entry lists, and for
    every label file whose case has no image at all (an orphan label).

    The folders searched are those holding a listed image or label, plus ``folders`` (a folder whose name starts
    with "label" holds labels). A file nobody lists is not an error, but silence would hide a forgotten case.
    """
    images = {Path(p).absolute() for p in listed_images}
    labels = {Path(p).absolute() for p in listed_labels}
    extra = [Path(f).absolute() for f in folders]
    label_folders = {p.parent for p in labels} | {f for f in extra if f.name.lower().startswith("label")}
    search = sorted({p.parent for p in images | labels} | set(extra))
    files = {folder: _nifti_files(folder) for folder in search}
    image_cases = {case_id(p) for p in images} | {
        case_id(p) for folder, paths in files.items() if folder not in label_folders for p in paths
    }
    found: list[tuple[str, str]] = []
    for folder, paths in files.items():
        for path in paths:
            if path in images or path in labels:
                continue
            if folder in label_folders:
                # the label of a listed case is fine unlisted (unlabelled cases keep their label out of the datalist)
                if case_id(path) not in image_cases:
                    found.append((str(path), "orphan label: there is no image of this case"))
            else:
                found.append((str(path), "not listed in any role"))
    return found


def msd_unlisted(msd_dir) -> list[tuple[str, str]]:
    """:func:`unlisted_files` for an MSD folder: files of ``imagesTr``/``labelsTr`` that ``dataset.json`` does not
    list (in ``training`` or ``test``), and labels without an image."""
    msd_dir = Path(msd_dir)
    _, pairs, tests = _read_msd_index(msd_dir)
    images = [msd_dir / p[IMAGE_KEY] for p in pairs] + [msd_dir / t for t in tests]
    labels = [msd_dir / p[LABEL_KEY] for p in pairs]
    return unlisted_files(images, labels, folders=[msd_dir / "imagesTr", msd_dir / "labelsTr"])


def datalist_unlisted(datalist, dataset_dir=None) -> list[tuple[str, str]]:
    """:func:`unlisted_files` for a datalist: files next to its cases that no role lists, and labels without images."""
    data = load_datalist(datalist, require=())
    images, labels = [], []
    for role in ROLES:
        for entry in resolve_role(data, role, dataset_dir, check_exists=False):
            images.append(entry[IMAGE_KEY])
            if entry.get(LABEL_KEY):
                labels.append(entry[LABEL_KEY])
    return unlisted_files(images, labels)


def check_datalist(datalist, dataset_dir=None, roles: Sequence[str] = ROLES, progress: bool = True) -> dict[str, int]:
    """Validate a datalist and load every case of ``roles``, collecting all problems before raising.

    Each case is checked with :func:`~volssl.data.datalist.check_case_files`: files exist and are readable, image and
    label share one grid, label values lie in ``0..C-1`` with ``C`` from ``labels``; images must also match the
    datalist's ``spacing`` when one is given. Labels of unlabelled cases are not read.

    Args:
        datalist: the datalist JSON file.
        dataset_dir: the folder the paths are relative to (default: from the datalist, see its format).
        roles: the roles to check.
        progress: show a tqdm progress bar.

    Returns:
        The number of cases of each role.

    Raises:
        VolsslInputError: one error naming the datalist and listing every problem (each naming its file).
    """
    data = load_datalist(datalist, require=())
    source = data.get("_path", str(datalist))
    counts = role_counts(data)
    if not sum(counts.values()):
        raise VolsslInputError(source, "the datalist has no cases in any role")
    num_classes = num_classes_of(data)
    spacing = data.get("spacing")
    problems: list[str] = []
    jobs = []
    for role in roles:
        for entry in resolve_role(data, role, dataset_dir, check_exists=False):
            jobs.append((role, entry))
    for role, entry in tqdm(jobs, desc="checking cases", unit="case", disable=not progress):
        try:
            _check_entry(role, entry, num_classes, spacing)
        except VolsslInputError as err:
            problems.append(f"[{role}] {err}")
    if problems:
        raise VolsslInputError(source, f"{len(problems)} problem(s) found:\n  " + "\n  ".join(problems))
    return counts


check = check_datalist
