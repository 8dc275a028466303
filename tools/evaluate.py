"""Evaluate a folder of predicted label maps against the labels of a datalist role.

Usage::

    python tools/evaluate.py --datalist datalist.json --pred_dir runs/infer --output_dir runs/eval
    python tools/evaluate.py --datalist datalist.json --pred_dir runs/infer --role validation \\
        --dataset_dir /data/Task04_Hippocampus --num_classes 3 --slice_axis 2

Predictions are found by case name (the image file name without ``.nii.gz``) as ``<case>.nii.gz``,
``<case>_seg.nii.gz`` or ``<case>/<case>_seg.nii.gz`` (MONAI ``SaveImage`` with ``separate_folder``); other suffixes
with ``--pred_suffix _pred``. Writes ``metrics_per_case.csv``, ``metrics_summary.csv`` and ``metrics_summary.json``
into ``--output_dir`` (default: ``--pred_dir``) and prints a ``mean +- std`` table. See
:mod:`volssl.metrics.evaluate` for the metrics, the empty-case rule and the checks. Exit status 1 with a one-line
message on bad input (missing prediction, grid mismatch, values outside the classes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

try:
    import cli
except ImportError:  # imported from elsewhere rather than run as `python tools/<tool>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cli
from volssl.metrics.evaluate import DEFAULT_PRED_SUFFIX, evaluate_folder, format_summary


def main(
    datalist: str,
    pred_dir: str,
    output_dir: str | None = None,
    role: str = "test",
    dataset_dir: str | None = None,
    num_classes: int | None = None,
    pred_suffix=DEFAULT_PRED_SUFFIX,
    slice_axis: int = -1,
    progress: bool = True,
    threads: int = 1,
) -> None:
    """Evaluate ``pred_dir`` against the labels of ``role`` in ``datalist`` and print the summary table.

    Args:
        datalist: the datalist JSON file.
        pred_dir: the folder of predicted label maps.
        output_dir: where to write the metric files (default: ``pred_dir``).
        role: the datalist role to evaluate.
        dataset_dir: the folder the datalist's paths are relative to (default: as the datalist says).
        num_classes: number of classes with background (default: from the datalist's ``labels``).
        pred_suffix: suffix, or list of suffixes, after the case name in prediction file names.
        slice_axis: the slice axis of the pooled 2D Dice.
        progress: show a progress bar over cases.
        threads: torch intra-op threads (the metrics run on small tensors, where more threads only add overhead).
    """
    torch.set_num_threads(max(1, int(threads)))
    output_dir = pred_dir if output_dir is None else output_dir
    summary = evaluate_folder(
        datalist,
        pred_dir,
        role=role,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        num_classes=num_classes,
        pred_suffix=pred_suffix,
        slice_axis=slice_axis,
        progress=progress,
    )
    print(f"{summary['n_cases']} cases of '{role}', {summary['num_classes']} classes")
    print(format_summary(summary))
    for path in summary["files"].values():
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.main(main)
