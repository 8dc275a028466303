"""One call for a bundle's ``evaluate`` step: score a prediction folder, print the summary, draw an overlay PNG."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.datalist import case_id, load_role
from ..io import load_nifti
from .evaluate import evaluate_folder, find_prediction, format_summary

__all__ = ["evaluate_and_report"]

logger = logging.getLogger("volssl.evaluate")


def evaluate_and_report(
    datalist,
    pred_dir,
    role: str = "test",
    output_dir=None,
    num_classes: int | None = None,
    slice_axis: int = -1,
    overlay: bool = True,
    title: str = "",
) -> dict:
    """:func:`evaluate_folder` + a readable summary in the log + ``overlay.png`` of the first case of ``role``.

    Args:
        datalist: the datalist file (its ``role`` cases must have labels).
        pred_dir: the folder of predicted label maps (``<case>_seg.nii.gz`` or ``<case>.nii.gz``).
        role: the datalist role evaluated (``"test"`` for reporting; never select a checkpoint on it).
        output_dir: where ``per_case.csv``, ``summary.csv``, ``summary.json`` and ``overlay.png`` go.
        num_classes: number of classes with background (default: from the datalist's ``labels``).
        slice_axis: the slice axis of the pooled 2D Dice and of the overlay figure.
        overlay: also write the slice-overlay PNG.
        title: figure title prefix (e.g. the method name).

    Returns:
        the summary dict of :func:`evaluate_folder` (``files`` includes the PNG when written).
    """
    summary = evaluate_folder(
        datalist,
        pred_dir,
        role=role,
        output_dir=output_dir,
        num_classes=num_classes,
        slice_axis=slice_axis,
        progress=False,
    )
    logger.info("evaluation of %s (%s):\n%s", pred_dir, role, format_summary(summary))
    if overlay and output_dir is not None:
        from ..viz import plot_overlay

        first = load_role(datalist, role)[0]
        case = case_id(first["image"])
        image, _ = load_nifti(first["image"])
        label, _ = load_nifti(first["label"])
        pred, _ = load_nifti(find_prediction(pred_dir, case))
        figure = plot_overlay(
            image,
            label,
            pred,
            Path(output_dir) / "overlay.png",
            slice_axis=slice_axis,
            title=f"{title + ': ' if title else ''}{case}",
            class_names={int(k): entry["name"] for k, entry in summary["classes"].items()},
        )
        summary.setdefault("files", {})["overlay"] = str(figure)
    return summary
