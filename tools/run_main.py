"""The main job on the default data: phantoms -> datalist split -> checks -> baseline segmentation -> evaluation.

    python tools/run_main.py [--output_dir runs/main] [--data_dir data/phantom] [--n 20] [--n_labeled 2] [--seed 0]

At this stage (foundation) the segmentation step is a deliberately simple reference, not a method: a nearest-mean
intensity classifier fitted on the labelled volumes (z-scored intensities, one mean per class). It exercises the data
pipeline and the evaluation end to end and gives the floor any learned method must beat. The method bundles
(CORAL, SAL, CRLN) replace it as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

import fire
import numpy as np

from volssl.data import load_role
from volssl.data.converters import check_datalist, msd_to_datalist
from volssl.data.datalist import case_id
from volssl.data.phantom import write_phantom_dataset
from volssl.io import load_nifti, save_nifti
from volssl.metrics import evaluate_folder, format_summary
from volssl.viz import plot_overlay


def _zscore(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def fit_nearest_mean(cases: list[dict], num_classes: int) -> np.ndarray:
    """Per-class mean of the z-scored intensity over the labelled cases; classes never seen get +inf."""
    sums, counts = np.zeros(num_classes), np.zeros(num_classes)
    for case in cases:
        image, _ = load_nifti(case["image"])
        label, _ = load_nifti(case["label"])
        image, label = _zscore(image), label.astype(int)
        sums += np.bincount(label.ravel(), weights=image.ravel(), minlength=num_classes)[:num_classes]
        counts += np.bincount(label.ravel(), minlength=num_classes)[:num_classes]
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def predict_nearest_mean(image: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Label of the class mean nearest to each voxel's z-scored intensity."""
    return np.argmin(np.abs(_zscore(image)[..., None] - means), axis=-1).astype(np.uint8)


def main(
    output_dir: str = "runs/main",
    data_dir: str = "data/phantom",
    n: int = 20,
    n_labeled: int = 2,
    n_val: int = 3,
    n_test: int = 5,
    seed: int = 0,
) -> None:
    """Run the main job and print where the predictions, metrics and figures are."""
    start = time.time()
    out, data = Path(output_dir), Path(data_dir)
    print(f"[1/5] default data: {n} synthetic phantoms in {data}")
    write_phantom_dataset(data, n=n, seed=seed)
    datalist = data / "datalist.json"
    print(f"[2/5] split: {n_labeled} labelled, {n_val} validation, {n_test} test, the rest unlabelled -> {datalist}")
    msd_to_datalist(data, datalist, n_labeled=n_labeled, n_val=n_val, n_test=n_test, seed=seed)
    print("[3/5] checking every case (files, grids, label values)")
    check_datalist(datalist, progress=False)
    print("[4/5] reference segmentation: nearest-mean intensity classifier fitted on the labelled volumes")
    train = load_role(datalist, "training")
    num_classes = 4
    means = fit_nearest_mean(train, num_classes)
    pred_dir = out / "predictions"
    test = load_role(datalist, "test")
    for case in test:
        image, affine = load_nifti(case["image"])
        save_nifti(predict_nearest_mean(image, means), affine, pred_dir / f"{case_id(case['image'])}_seg.nii.gz")
    print("[5/5] evaluation of the test set")
    summary = evaluate_folder(datalist, pred_dir, role="test", output_dir=out / "metrics", progress=False)
    print(format_summary(summary))
    first = test[0]
    image, _ = load_nifti(first["image"])
    label, _ = load_nifti(first["label"])
    pred, _ = load_nifti(pred_dir / f"{case_id(first['image'])}_seg.nii.gz")
    figure = plot_overlay(image, label, pred, out / "figures" / "overlay.png", title=f"{case_id(first['image'])}: "
                          "nearest-mean reference segmentation")
    print(f"\ndone in {time.time() - start:.1f} s")
    print(f"  datalist:    {datalist.resolve()}")
    print(f"  predictions: {pred_dir.resolve()}")
    print(f"  metrics:     {(out / 'metrics').resolve()}")
    print(f"  figure:      {figure.resolve()}")


if __name__ == "__main__":
    fire.Fire(main)
