"""Evaluate a folder of predicted label maps against the labels of one datalist role.

Prediction lookup. For a case whose image is ``.../<case>.nii.gz`` (``<case>`` is
:func:`volssl.data.datalist.case_id` of the image path), each suffix ``sfx`` of ``pred_suffix`` (default
``("", "_seg")``) is tried, in order, at these places under ``pred_dir``::

    <case><sfx>.nii.gz   <case><sfx>.nii   <case>/<case><sfx>.nii.gz   <case>/<case><sfx>.nii

With the default this accepts ``<case>.nii.gz``, ``<case>_seg.nii.gz`` and ``<case>/<case>_seg.nii.gz`` (the layout
of MONAI's ``SaveImage`` with ``separate_folder=True`` and ``output_postfix="seg"``). Exactly one of the candidates
must exist: none is a missing prediction, more than one is ambiguous; both raise a :class:`VolsslInputError`.

Checks, each a :class:`VolsslInputError` naming the file: missing prediction; prediction not on the label's grid
(shape or affine); label values outside ``0..C-1``; prediction values outside ``0..C-1`` or not integers (a float
prediction holding integer values, MONAI ``SaveImage``'s default type, is accepted).

Outputs (written atomically: a temporary file in ``output_dir``, then ``os.replace``):

- ``metrics_per_case.csv``: one row per case and foreground class, the columns of :data:`PER_CASE_COLUMNS`
  (Dice, Jaccard, HD95 and ASD in mm and voxels, the empty-case rule applied, voxel counts, distance caps).
- ``metrics_summary.csv``: one row per foreground class plus a ``mean`` row (mean over foreground classes), with
  ``<metric>_mean``, ``<metric>_std`` and ``n`` for each metric, and the pooled-over-slices 2D Dice.
- ``metrics_summary.json``: the dict returned by :func:`evaluate_folder` (see :func:`summarize`).

The metric definitions and the empty-case rule are those of :mod:`volssl.metrics.segmentation`; the pooled 2D Dice
is that of :mod:`volssl.metrics.slice_dice`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.datalist import (
    IMAGE_KEY,
    LABEL_KEY,
    case_id,
    check_label_values,
    load_datalist,
    resolve_role,
    validate_datalist,
)
from ..io import VolsslInputError, atomic_path, check_same_grid, load_nifti, spacing_from_affine
from .segmentation import ASD_DEFINITION, EMPTY_RULES, HD95_DEFINITION, METRIC_KEYS, compute_case_metrics
from .slice_dice import PooledSliceDice

__all__ = [
    "PER_CASE_COLUMNS",
    "find_prediction",
    "evaluate_case",
    "summarize",
    "format_summary",
    "output_paths",
    "write_outputs",
    "evaluate_folder",
]

PER_CASE_COLUMNS = (
    "case",
    "class_index",
    "class_name",
    *METRIC_KEYS,
    "empty_rule",
    "pred_voxels",
    "label_voxels",
    "cap_mm",
    "cap_vox",
    "label_file",
    "pred_file",
)
DEFAULT_PRED_SUFFIX = ("", "_seg")
_METRIC_TITLES = {
    "dice": "Dice",
    "jaccard": "Jaccard",
    "hd95_mm": "HD95 mm",
    "asd_mm": "ASD mm",
    "hd95_vox": "HD95 vox",
    "asd_vox": "ASD vox",
}


def find_prediction(pred_dir, case: str, pred_suffix: str | Sequence[str] = DEFAULT_PRED_SUFFIX) -> Path:
    """The prediction file of ``case`` in ``pred_dir`` (the lookup is in the module docstring).

    Args:
        pred_dir: the folder of predictions.
        case: the case name (image file name without extension).
        pred_suffix: one suffix or a sequence of suffixes appended to the case name.

    Returns:
        The path of the single matching file.

    Raises:
        VolsslInputError: no candidate exists, or more than one does.
    """
    pred_dir = Path(pred_dir)
    suffixes = [pred_suffix] if isinstance(pred_suffix, str) else list(pred_suffix)
    tried = []
    for sfx in suffixes:
        for folder in (pred_dir, pred_dir / case):
            for ext in (".nii.gz", ".nii"):
                tried.append(folder / f"{case}{sfx}{ext}")
    found = [p for p in tried if p.is_file()]
    if not found:
        names = ", ".join(str(p.relative_to(pred_dir)) for p in tried)
        missing = pred_dir / f"{case}{suffixes[0]}.nii.gz"
        raise VolsslInputError(missing, f"prediction not found (tried {names} in {pred_dir})")
    if len(found) > 1:
        raise VolsslInputError(found[0], f"ambiguous prediction for case '{case}': {[str(p) for p in found]}")
    return found[0]


def _check_pred_values(pred: np.ndarray, path, num_classes: int) -> np.ndarray:
    if not np.issubdtype(pred.dtype, np.integer):
        if not np.all(np.isfinite(pred)) or not np.all(pred == np.round(pred)):
            raise VolsslInputError(path, "prediction holds non-integer values (expected a label map, not scores)")
    values = np.unique(pred)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise VolsslInputError(
            path, f"prediction values {bad.astype(int).tolist()} are outside the classes 0..{num_classes - 1}"
        )
    return pred.astype(np.int16)


def evaluate_case(
    pred_path,
    label_path,
    num_classes: int,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    case: str | None = None,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Load and check one prediction and its label, and compute the per-class metrics.

    Args:
        pred_path: the predicted label map (NIfTI).
        label_path: the reference label map (NIfTI).
        num_classes: number of classes, background included.
        class_names: names by class index.
        case: the case name written in the rows (default: the label's case name).

    Returns:
        ``(rows, pred, label)``: the rows of :func:`~volssl.metrics.segmentation.compute_case_metrics` with
        ``case``, ``label_file`` and ``pred_file`` added, and the two integer arrays.

    Raises:
        VolsslInputError: unreadable file, grid mismatch, values outside the classes.
    """
    label, laffine = load_nifti(label_path)
    check_label_values(label, label_path, num_classes)
    pred, paffine = load_nifti(pred_path)
    check_same_grid(label_path, label.shape, laffine, pred_path, pred.shape, paffine)
    pred = _check_pred_values(pred, pred_path, num_classes)
    label = label.astype(np.int16)
    rows = compute_case_metrics(pred, label, num_classes, spacing=spacing_from_affine(laffine), class_names=class_names)
    case = case_id(label_path) if case is None else case
    for row in rows:
        row.update(case=case, label_file=str(label_path), pred_file=str(pred_path))
    return [{k: row[k] for k in PER_CASE_COLUMNS} for row in rows], pred, label


def _stats(values) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, "std": 0.0, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(
    rows: Sequence[Mapping], class_names: Mapping[int, str], pooled_slice_dice: Sequence[float] | None = None
) -> dict:
    """Per-class and mean-over-foreground statistics of per-case rows.

    Args:
        rows: per-case rows (:data:`PER_CASE_COLUMNS`), one per case and foreground class.
        class_names: the foreground classes to report, ``{class_index: name}``.
        pooled_slice_dice: the pooled 2D Dice of each of those classes, in class order (optional).

    Returns:
        ``{"n_cases", "classes": {"<i>": {"name", "<metric>": {"mean", "std", "n"}, ..., "pooled_slice_dice",
        "empty_rules": {rule: count}}}, "mean_foreground": {...}, "definitions": {...}}``. For the
        ``mean_foreground`` entry each case's metric is first averaged over the foreground classes, then the
        mean and standard deviation are taken over cases; its ``pooled_slice_dice`` is the mean of the classes'
        values (the number the slice papers report). Standard deviations are population ones (``ddof=0``).
    """
    classes = sorted(int(c) for c in class_names)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    out: dict = {"n_cases": len(cases), "classes": {}, "mean_foreground": {"name": "mean"}}
    per_case_mean: dict[str, dict[str, list]] = {k: {c: [] for c in cases} for k in METRIC_KEYS}
    for i, c in enumerate(classes):
        crow = [r for r in rows if int(r["class_index"]) == c]
        entry: dict = {"name": str(class_names[c])}
        for k in METRIC_KEYS:
            entry[k] = _stats([r[k] for r in crow])
            for r in crow:
                per_case_mean[k][r["case"]].append(r[k])
        if pooled_slice_dice is not None:
            entry["pooled_slice_dice"] = float(pooled_slice_dice[i])
        entry["empty_rules"] = {rule: sum(r["empty_rule"] == rule for r in crow) for rule in EMPTY_RULES}
        out["classes"][str(c)] = entry
    for k in METRIC_KEYS:
        out["mean_foreground"][k] = _stats([np.mean(v) for v in per_case_mean[k].values() if v])
    if pooled_slice_dice is not None:
        pooled_mean = float(np.mean(pooled_slice_dice)) if len(pooled_slice_dice) else 0.0
        out["mean_foreground"]["pooled_slice_dice"] = pooled_mean
    out["definitions"] = {
        "hd95": HD95_DEFINITION,
        "asd": ASD_DEFINITION,
        "empty_rule": "both empty: Dice 1, Jaccard 1, HD95 0, ASD 0; exactly one empty: Dice 0, Jaccard 0, "
        "HD95 = ASD = image diagonal (mm or voxels)",
        "pooled_slice_dice": "per class 2*sum(I)/(sum(P)+sum(L)) over all 2D slices of all cases (positional_cl)",
        "std": "population standard deviation over cases (ddof=0)",
    }
    return out


def format_summary(summary: Mapping, digits: int = 4) -> str:
    """A text table of a summary (``mean +- std`` per metric, one line per class and one for the mean)."""
    metrics = [k for k in METRIC_KEYS if k in summary.get("mean_foreground", {})]
    has_pooled = "pooled_slice_dice" in summary.get("mean_foreground", {})
    header = ["class", "n"] + [_METRIC_TITLES[k] for k in metrics] + (["pooled 2D Dice"] if has_pooled else [])
    lines = []
    entries = [(f"{c} {e['name']}", e) for c, e in summary.get("classes", {}).items()]
    entries.append(("mean (foreground)", summary["mean_foreground"]))
    for title, e in entries:
        n = e[metrics[0]]["n"] if metrics else 0
        cells = [title, str(n)] + [f"{e[k]['mean']:.{digits}f} +- {e[k]['std']:.{digits}f}" for k in metrics]
        if has_pooled:
            cells.append(f"{e['pooled_slice_dice']:.{digits}f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(r) for r in lines[:-1]), rule, fmt(lines[-1])])


def _write_atomic(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return path


def _csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    return buf.getvalue()


def _summary_rows(summary: Mapping) -> tuple[list[dict], list[str]]:
    columns = ["class_index", "class_name", "n"]
    for k in METRIC_KEYS:
        columns += [f"{k}_mean", f"{k}_std"]
    columns.append("pooled_slice_dice")
    rows = []
    entries = [(c, e) for c, e in summary["classes"].items()] + [("mean", summary["mean_foreground"])]
    for c, e in entries:
        row = {"class_index": c, "class_name": e["name"], "n": e["dice"]["n"]}
        for k in METRIC_KEYS:
            row[f"{k}_mean"], row[f"{k}_std"] = e[k]["mean"], e[k]["std"]
        row["pooled_slice_dice"] = e.get("pooled_slice_dice", "")
        rows.append(row)
    return rows, columns


def output_paths(output_dir) -> dict[str, Path]:
    """The files :func:`write_outputs` writes: ``{"per_case", "summary_csv", "summary_json"}``."""
    output_dir = Path(output_dir)
    return {
        "per_case": output_dir / "metrics_per_case.csv",
        "summary_csv": output_dir / "metrics_summary.csv",
        "summary_json": output_dir / "metrics_summary.json",
    }


def write_outputs(output_dir, rows: Sequence[Mapping], summary: Mapping) -> dict[str, Path]:
    """Write ``metrics_per_case.csv``, ``metrics_summary.csv`` and ``metrics_summary.json`` atomically.

    Args:
        output_dir: the folder (created if needed).
        rows: the per-case rows (:data:`PER_CASE_COLUMNS`).
        summary: the summary dict of :func:`summarize`.

    Returns:
        The paths written, as :func:`output_paths`.
    """
    paths = output_paths(output_dir)
    srows, scols = _summary_rows(summary)
    _write_atomic(paths["per_case"], _csv_text(rows, PER_CASE_COLUMNS))
    _write_atomic(paths["summary_csv"], _csv_text(srows, scols))
    _write_atomic(paths["summary_json"], json.dumps(summary, indent=2) + "\n")
    return paths


def _load(datalist, role: str) -> dict:
    if isinstance(datalist, Mapping):
        return validate_datalist(datalist, source=datalist.get("_path", "datalist"), require=(role,))
    return load_datalist(datalist, require=(role,))


def evaluate_folder(
    datalist,
    pred_dir,
    role: str = "test",
    dataset_dir=None,
    output_dir=None,
    num_classes: int | None = None,
    pred_suffix: str | Sequence[str] = DEFAULT_PRED_SUFFIX,
    slice_axis: int = -1,
    progress: bool = True,
) -> dict:
    """Score every case of ``role`` against its prediction in ``pred_dir`` (see the module docstring).

    Args:
        datalist: a datalist file or an already loaded datalist dict (:mod:`volssl.data.datalist` format).
        pred_dir: the folder of predicted label maps.
        role: the datalist role to evaluate (its cases must have labels).
        dataset_dir: the folder the datalist paths are relative to (default: as the datalist says).
        output_dir: where to write the CSV and JSON files; ``None`` writes nothing.
        num_classes: number of classes, background included (default: the size of the datalist's ``labels``).
        pred_suffix: suffix(es) after the case name of the prediction files.
        slice_axis: the slice axis of the pooled 2D Dice (default the last, z).
        progress: show a tqdm progress bar over cases.

    Returns:
        The summary dict (:func:`summarize`) with ``role``, ``pred_dir``, ``num_classes``, ``slice_axis`` and,
        when ``output_dir`` is given, ``files`` (the written paths) added.

    Raises:
        VolsslInputError: a bad datalist, an unknown number of classes, a case without label, two cases with the
            same name, a missing or ambiguous prediction, a grid mismatch or out-of-range values.
    """
    dl = _load(datalist, role)
    source = dl.get("_path", "datalist")
    labels = dl.get("labels") or {}
    num_classes = int(num_classes) if num_classes is not None else (len(labels) or None)
    if num_classes is None or num_classes < 2:
        raise VolsslInputError(
            source, f"number of classes unknown or < 2 ({num_classes}): add 'labels' or pass num_classes"
        )
    class_names = {c: str(labels.get(str(c), f"class_{c}")) for c in range(1, num_classes)}
    entries = resolve_role(dl, role, dataset_dir)
    seen: dict[str, str] = {}
    for e in entries:
        if not e.get(LABEL_KEY):
            raise VolsslInputError(source, f"'{role}' case {e[IMAGE_KEY]} has no label: it cannot be evaluated")
        cid = case_id(e[IMAGE_KEY])
        if cid in seen:
            raise VolsslInputError(source, f"two '{role}' cases share the name '{cid}': {seen[cid]} and {e[IMAGE_KEY]}")
        seen[cid] = e[IMAGE_KEY]
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise VolsslInputError(pred_dir, "prediction folder not found")

    pooled = PooledSliceDice(num_classes, axis=slice_axis)
    rows: list[dict] = []
    for e in tqdm(entries, desc=f"evaluate {role}", unit="case", disable=not progress):
        cid = case_id(e[IMAGE_KEY])
        pred_path = find_prediction(pred_dir, cid, pred_suffix)
        case_rows, pred, label = evaluate_case(pred_path, e[LABEL_KEY], num_classes, class_names, case=cid)
        pooled.update(pred, label)
        rows.extend(case_rows)

    summary = summarize(rows, class_names, pooled.aggregate().tolist())
    summary.update(role=role, pred_dir=str(pred_dir), num_classes=num_classes, slice_axis=slice_axis)
    if output_dir is not None:
        summary["files"] = {k: str(v) for k, v in output_paths(output_dir).items()}
        write_outputs(output_dir, rows, summary)
    return summary
