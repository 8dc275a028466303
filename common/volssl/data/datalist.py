"""The volssl datalist: one JSON file that says which case plays which role.

Format (a superset of the MSD ``dataset.json``)::

    {
      "name": "phantom",                       # optional, free text (MSD keys such as "modality" are kept)
      "labels": {"0": "background", "1": "...", ...},   # class index (as a string) -> name
      "spacing": [1.0, 1.0, 3.0],              # optional, mm, (x, y, z) of the NIfTI grid, where known
      "dataset_dir": ".",                      # optional; folder the paths are relative to (see below)
      "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],   # labelled
      "unlabeled":  [{"image": "imagesTr/b.nii.gz"}, ...],    # a label may be present; it is never read
      "validation": [{"image": ..., "label": ...}, ...],
      "test":       [{"image": ..., "label": ...}, ...]       # MSD's plain image strings are accepted too
    }

Paths are relative to ``dataset_dir``: the one given by the caller (the bundles' ``dataset_dir`` id) or else
the datalist's ``"dataset_dir"`` key (itself relative to the datalist's folder) or else the datalist's folder.
Absolute paths are used as they are. A case is identified by its image path: no image may appear in two roles,
nor twice in one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..io import VolsslInputError, check_same_grid, dicom_case_folders, load_nifti

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "ROLES",
    "LABELLED_ROLES",
    "load_datalist",
    "save_datalist",
    "validate_datalist",
    "resolve_role",
    "dataset_dir_of",
    "check_case_files",
    "case_id",
    "load_role",
    "load_images",
    "inference_inputs",
    "dicom_case_name",
]

IMAGE_KEY = "image"
LABEL_KEY = "label"
ROLES = ("training", "unlabeled", "validation", "test")
LABELLED_ROLES = ("training", "validation")


def case_id(path) -> str:
    """The case name of an image path: its file name without ``.nii.gz``/``.nii``/``.h5``."""
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".h5"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _normalise_entry(entry, where: str) -> dict:
    if isinstance(entry, str):
        return {IMAGE_KEY: entry}
    if not isinstance(entry, Mapping) or IMAGE_KEY not in entry:
        raise VolsslInputError(
            where, f"each entry must be an image path or a dict with an '{IMAGE_KEY}' key, got {entry!r}"
        )
    return dict(entry)


def validate_datalist(datalist: Mapping, source="datalist", require=("training",)) -> dict:
    """Check the datalist's structure and return a normalised copy.

    Checks: it is a JSON object; ``labels`` (if present) maps integer strings to names and includes 0; each role is
    a list; labelled roles (``training``, ``validation``) have a label for every case; each role in ``require`` is
    non-empty; no image appears twice (in one role or across roles).

    Raises:
        VolsslInputError: naming ``source`` and the problem.
    """
    if not isinstance(datalist, Mapping):
        raise VolsslInputError(source, f"a datalist must be a JSON object, got {type(datalist).__name__}")
    out = dict(datalist)
    labels = out.get("labels")
    if labels is not None:
        if not isinstance(labels, Mapping) or not labels:
            raise VolsslInputError(source, '\'labels\' must map class indices to names, e.g. {"0": "background"}')
        try:
            idx = sorted(int(k) for k in labels)
        except ValueError as err:
            raise VolsslInputError(source, f"'labels' keys must be integers, got {list(labels)}") from err
        if idx[0] != 0 or idx != list(range(len(idx))):
            raise VolsslInputError(source, f"'labels' must be 0..C-1 with 0 the background, got {idx}")
    spacing = out.get("spacing")
    if spacing is not None and (len(spacing) != 3 or any(float(s) <= 0 for s in spacing)):
        raise VolsslInputError(source, f"'spacing' must be three positive numbers (mm), got {spacing}")
    seen: dict[str, str] = {}
    for role in ROLES:
        entries = out.get(role, [])
        if not isinstance(entries, list):
            raise VolsslInputError(source, f"'{role}' must be a list, got {type(entries).__name__}")
        norm = [_normalise_entry(e, f"{source} [{role}]") for e in entries]
        for e in norm:
            if role in LABELLED_ROLES and not e.get(LABEL_KEY):
                raise VolsslInputError(source, f"'{role}' case {e[IMAGE_KEY]} has no label")
            key = os.path.normpath(str(e[IMAGE_KEY]))
            if key in seen:
                where = "twice in" if seen[key] == role else f"in both '{seen[key]}' and"
                raise VolsslInputError(source, f"case {e[IMAGE_KEY]} appears {where} '{role}'")
            seen[key] = role
        out[role] = norm
    for role in require:
        if not out.get(role):
            raise VolsslInputError(source, f"'{role}' is empty: the datalist has no {role} cases")
    return out


def read_json(path, missing: str = "file not found"):
    """Read a JSON file; a missing file raises ``missing`` and bad JSON a parse error, both naming the file.

    Raises:
        VolsslInputError: missing file or invalid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise VolsslInputError(path, missing)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise VolsslInputError(path, f"not valid JSON: {err}") from err


def load_datalist(path, require=("training",)) -> dict:
    """Read and validate a datalist JSON file (see the module docstring for the format)."""
    path = Path(path)
    raw = read_json(path, missing="datalist file not found")
    out = validate_datalist(raw, source=path, require=require)
    out["_path"] = str(path.resolve())
    return out


def save_datalist(datalist: Mapping, path) -> Path:
    """Validate and write a datalist as indented JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    clean = {k: v for k, v in validate_datalist(datalist, source=path, require=()).items() if not k.startswith("_")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    with open(tmp, "w") as f:
        json.dump(clean, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def dataset_dir_of(datalist: Mapping, dataset_dir=None) -> Path:
    """The folder that the datalist's relative paths are relative to (see the module docstring)."""
    if dataset_dir not in (None, ""):
        return Path(dataset_dir)
    base = Path(datalist.get("_path", ".")).parent if "_path" in datalist else Path(".")
    return base / datalist["dataset_dir"] if datalist.get("dataset_dir") else base


def resolve_role(datalist: Mapping, role: str, dataset_dir=None, check_exists: bool = True) -> list[dict]:
    """The entries of ``role`` with their paths made absolute, ready for MONAI's ``Dataset``.

    Raises:
        VolsslInputError: unknown role, or (with ``check_exists``) a file that does not exist.
    """
    if role not in ROLES:
        raise VolsslInputError(datalist.get("_path", "datalist"), f"unknown role '{role}', expected one of {ROLES}")
    base = dataset_dir_of(datalist, dataset_dir)
    out = []
    for entry in datalist.get(role, []):
        item = dict(entry) if isinstance(entry, Mapping) else {IMAGE_KEY: entry}
        for key in (IMAGE_KEY, LABEL_KEY):
            if item.get(key):
                p = Path(item[key])
                p = p if p.is_absolute() else base / p
                # an image may be a DICOM series folder (inference inputs); a label is always a file
                if check_exists and not (p.is_file() or (key == IMAGE_KEY and p.is_dir())):
                    where = datalist.get("_path", "the datalist")
                    raise VolsslInputError(p, f"file not found (listed as '{key}' in '{role}' of {where})")
                item[key] = str(p.resolve()) if p.exists() else str(p)
        out.append(item)
    return out


def check_case_files(
    image_path, label_path=None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Load one case and check it: readable files, finite image values, the same grid for image and label, integer
    label values in ``0..num_classes-1``. Returns ``(image, label, affine)``.

    Raises:
        VolsslInputError: naming the file and the problem.
    """
    image, affine = load_nifti(image_path)
    if np.issubdtype(image.dtype, np.floating):
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad:
            raise VolsslInputError(image_path, f"{bad:,} voxels are NaN or infinite ({100 * bad / image.size:.2f} %)")
    if label_path is None:
        return image, None, affine
    label, laffine = load_nifti(label_path)
    check_same_grid(image_path, image.shape, affine, label_path, label.shape, laffine)
    check_label_values(label, label_path, num_classes)
    return image, label.astype(np.int16), affine


def check_label_values(label: np.ndarray, path, num_classes: int | None = None) -> None:
    """Raise when a label map holds non-integer values or values outside ``0..num_classes-1``."""
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise VolsslInputError(path, "label holds non-integer values")
    values = np.unique(label)
    if values.size and values.min() < 0:
        raise VolsslInputError(path, f"label holds negative values {values[values < 0].tolist()}")
    if num_classes is not None:
        bad = values[values >= num_classes]
        if bad.size:
            raise VolsslInputError(
                path, f"label values {bad.astype(int).tolist()} are outside the declared classes 0..{num_classes - 1}"
            )


def num_classes_of(datalist: Mapping) -> int | None:
    """The number of classes (background included) declared by ``labels``, or ``None``."""
    labels = datalist.get("labels")
    return len(labels) if labels else None


def iter_cases(datalist: Mapping, roles: Iterable[str] = ROLES, dataset_dir=None):
    """Yield ``(role, entry)`` with absolute paths for every case of ``roles``."""
    for role in roles:
        for entry in resolve_role(datalist, role, dataset_dir):
            yield role, entry


def load_role(datalist_path, role: str, dataset_dir=None) -> list[dict]:
    """Read a datalist file and return the entries of ``role`` with absolute paths (for bundle configs).

    Raises:
        VolsslInputError: bad datalist, missing files, or an empty role.
    """
    datalist = load_datalist(datalist_path, require=(role,))
    return resolve_role(datalist, role, dataset_dir)


def load_images(datalist_path, roles: Iterable[str] = ("training", "unlabeled"), dataset_dir=None) -> list[dict]:
    """The images (no labels) of every case of ``roles``, as ``[{"image": path}, ...]``: the pretraining pool.

    Raises:
        VolsslInputError: bad datalist, missing files, or no case in any of ``roles``.
    """
    roles = tuple(roles)
    datalist = load_datalist(datalist_path, require=())
    images = [{IMAGE_KEY: e[IMAGE_KEY]} for role in roles for e in resolve_role(datalist, role, dataset_dir)]
    if not images:
        raise VolsslInputError(datalist_path, f"no case in {list(roles)}: nothing to pretrain on")
    return images


def dicom_case_name(root, folder) -> str:
    """The case name of a DICOM series folder found under ``root``: its path below ``root`` joined with ``_``
    (``patient1/T1`` -> ``patient1_T1``; series folders named ``SE000001`` in every study stay apart), or the
    folder's own name when it is ``root``."""
    parts = Path(folder).absolute().relative_to(Path(root).absolute()).parts
    return "_".join(parts) if parts else Path(folder).absolute().name


def inference_inputs(source, role: str = "test") -> list[dict]:
    """The images to segment, as ``[{"image": path}, ...]``, from a datalist JSON (its ``role``; an image may be a
    DICOM series folder), a folder (every ``.nii``/``.nii.gz`` in it, sorted, and every folder under it that holds
    DICOM files, each one case with a ``"case"`` name from :func:`dicom_case_name`), or a single NIfTI file.

    Raises:
        VolsslInputError: a missing source, or a folder with neither NIfTI files nor DICOM files.
    """
    path = Path(source)
    if path.suffix == ".json":
        return [{IMAGE_KEY: e[IMAGE_KEY]} for e in load_role(path, role)]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not p.name.startswith("."))
        entries = [{IMAGE_KEY: str(p.absolute())} for p in files]  # absolute, not resolved: names as the user sees them
        entries += [
            {IMAGE_KEY: str(folder.absolute()), "case": dicom_case_name(path, folder)}
            for folder in dicom_case_folders(path)
        ]
        if not entries:
            raise VolsslInputError(path, "no .nii or .nii.gz file and no DICOM file in this folder or below it")
        return entries
    if path.is_file():
        return [{IMAGE_KEY: str(path.absolute())}]
    expected = "a datalist .json, a folder of NIfTI files or DICOM series, or a NIfTI file"
    raise VolsslInputError(path, f"input not found (expected {expected})")
