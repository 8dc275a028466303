"""The main job on the default data: phantoms -> split -> checks -> a method end to end -> evaluation -> figures.

    python tools/run_main.py [--method coral] [--output_dir runs/<method>] [--data_dir data/phantom] [--n 20]
                             [--n_labeled 2] [--seed 0] [--pretrain_epochs 4] [--epochs E]

``--method coral`` (default) runs the CORAL bundle with its CPU-sized overlay through the same commands a user types
(``python -m monai.bundle run ...``, printed as they run): pretraining on the unlabelled pool, fine-tuning with the 2
labelled volumes (best checkpoint by validation Dice), inference on the test set, evaluation and an overlay PNG.
``--method sal`` runs the SAL bundle the same way; ``--method crln`` trains the CRLN bundle (semi-supervised, no
pretraining step, overlays ``cpu_small.json`` + ``adam.json``) on the labelled + unlabelled phantoms and segments the
test set. ``--method reference`` runs the nearest-mean intensity classifier instead (z-scored intensities, one mean
per class, fitted on the labelled volumes): no learning, the floor any method must beat, in seconds.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from volssl.data import load_datalist, load_role
from volssl.data.converters import check_datalist, msd_to_datalist
from volssl.data.datalist import case_id
from volssl.data.phantom import write_phantom_dataset
from volssl.io import load_nifti, save_nifti
from volssl.metrics import evaluate_folder, find_prediction, format_summary
from volssl.viz import plot_overlay

try:
    from bundle_cli import bundle_command
except ImportError:  # imported from elsewhere rather than run as `python tools/run_main.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bundle_cli import bundle_command
import cli  # noqa: E402 - found next to this file, as bundle_cli
import export_bundle  # noqa: E402


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


BUNDLES = {"coral": "coral_mri_segmentation", "sal": "sal_mri_segmentation", "crln": "crln_mri_segmentation"}
SLICE_PRETRAINING = ("coral", "sal")
# CRLN on the 64 x 64 x 24 phantoms within a few CPU minutes: a narrow V-Net, 16-slice patches, 20 epochs of 20
# iterations, Adam without dropout. Measured (seed 0, 2 labelled phantoms): after 6 epochs only the core class is
# learned (test Dice 0.22 with SGD + Dropout3d 0.5, 0.28 with Adam); after 20 epochs, SGD + Dropout3d 0.5 (the paper's
# setting for a 2-class V-Net) gives 0.45 with the shell at 0.42, while Adam without dropout (configs/adam.json, as for
# hippocampus in the CRLN docs) gives 0.58 with the shell at 0.81 (the student; since the bundle ships the EMA teacher,
# 0.56, the student of that run 0.61: see the docs). Rectification starts after 40 of the 400 iterations (10 %, as
# before the schedules counted iterations; the bundle's default fraction, 2 %, would be 8).
CRLN_PHANTOM = {"num_classes": 4, "n_filters": 8, "patch_size": [48, 48, 16], "iterations_per_epoch": 20,
                "rectify_after_iterations": 40, "val_interval": 1, "dropout": 0.0}
CRLN_EPOCHS = 20
REPO_ROOT = Path(__file__).resolve().parents[1]


# the log lines shown on the console as they come (everything goes to the log file): the per-epoch progress, the
# files inference writes, and problems with the inputs
CONSOLE_LOGGERS = (" - volssl.progress - ", " - volssl.outputs - ", " - volssl.inputs - WARNING", " - volssl.inputs - ERROR")


def pasteable_python() -> str:
    """This interpreter as a user can paste it: relative to the working folder when inside it (``.venv/bin/python``),
    else absolute. A bare ``python`` would be whatever the user's shell finds, often one without MONAI."""
    exe = Path(sys.executable)
    try:
        return exe.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(exe)


def bundle_run(configs: list[Path], bundle_root: Path, dataset_dir: Path, log: Path, **overrides) -> None:
    """``python -m monai.bundle run`` with the bundle's logging config; the full log goes to ``log``, the progress
    lines to the console as well."""
    args = bundle_command(configs, bundle_root, dataset_dir, overrides)
    print("      $ " + shlex.join([pasteable_python(), *args]), flush=True)  # quoted: paste it to rerun the step
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f, subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, cwd=REPO_ROOT) as proc:
        for line in proc.stdout:
            f.write(line)
            if any(tag in line for tag in CONSOLE_LOGGERS):
                print("      " + line.split(" - ", 3)[-1].rstrip(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}); the last lines of {log}:\n{log.read_text()[-3000:]}")
    print(f"      done in {time.time() - start:.0f} s, log {log}", flush=True)


def run_reference(datalist: Path, pred_dir: Path, num_classes: int) -> None:
    means = fit_nearest_mean(load_role(datalist, "training"), num_classes)
    for case in load_role(datalist, "test"):
        image, affine = load_nifti(case["image"])
        save_nifti(predict_nearest_mean(image, means), affine, pred_dir / f"{case_id(case['image'])}_seg.nii.gz")


def run_bundle_method(method: str, datalist: Path, out: Path, pretrain_epochs: int, epochs: int, seed: int,
                      values: dict) -> Path:
    """Pretrain + fine-tune + infer with a slice-pretraining bundle; returns the prediction folder."""
    configs = REPO_ROOT / "bundles" / BUNDLES[method] / "configs"
    root = out / "bundle"
    data = datalist.parent
    common = {"datalist": str(datalist), "seed": seed, **values}
    print(f"  [a] {method} pretraining on the unlabelled pool ({pretrain_epochs} epochs)")
    bundle_run([configs / "pretrain.json", configs / "cpu_small.json"], root, data, out / "logs" / "pretrain.log",
               pretrain_epochs=pretrain_epochs, resume=False, **common)
    print(f"  [b] fine-tuning with the labelled volumes ({epochs} epochs, best checkpoint by validation Dice)")
    bundle_run([configs / "train.json", configs / "cpu_small.json"], root, data, out / "logs" / "train.log",
               epochs=epochs, resume=False, **common)
    print("  [c] inference on the test set")
    bundle_run([configs / "inference.json", configs / "cpu_small.json"], root, data, out / "logs" / "infer.log",
               output_dir=str(out / "predictions"), datalist=str(datalist), **_inference_values(configs, values))
    return out / "predictions"


def _inference_values(configs: Path, values: dict) -> dict:
    """The values that inference.json also has (the run's training record holds the same)."""
    inference = json.loads((configs / "inference.json").read_text())
    return {k: v for k, v in values.items() if k in inference}


def run_semi_supervised(datalist: Path, out: Path, epochs: int, seed: int, values: dict) -> Path:
    """CRLN: semi-supervised training on labelled + unlabelled volumes, then inference; returns the prediction folder."""
    configs = REPO_ROOT / "bundles" / BUNDLES["crln"] / "configs"
    root, data = out / "bundle", datalist.parent
    common = {"datalist": str(datalist), **values}
    iterations = values.get("iterations_per_epoch", "the configured")
    print(f"  [a] CRLN training: mean teacher + prototype rectification ({epochs} epochs of {iterations} iterations, "
          "best checkpoint by validation Dice)")
    bundle_run([configs / "train.json", configs / "cpu_small.json", configs / "adam.json"], root, data,
               out / "logs" / "train.log", epochs=epochs, resume=False, seed=seed, **common)
    print("  [b] inference on the test set (sliding window, rectified logits)")
    bundle_run([configs / "inference.json", configs / "cpu_small.json"], root, data, out / "logs" / "infer.log",
               output_dir=str(out / "predictions"), datalist=str(datalist), **_inference_values(configs, values))
    return out / "predictions"


def main(
    method: str = "coral",
    output_dir: str | None = None,
    data_dir: str = "data/phantom",
    n: int = 20,
    n_labeled: int = 2,
    n_val: int = 3,
    n_test: int = 5,
    seed: int = 0,
    pretrain_epochs: int = 4,
    epochs: int | None = None,
    datalist: str | None = None,
    values: dict | None = None,
    data_note: str | None = None,
) -> None:
    """Run the main job and print where the predictions, metrics, figures and exported bundle are.

    With ``--datalist`` the job runs on that datalist (e.g. a converted real data set) instead of writing phantoms:
    ``--values`` are extra bundle values (e.g. ``"{'patch_size': [48, 48, 32]}"``; the number of classes comes from
    the datalist's ``labels``), and ``--data_note`` describes the data in the exported bundle's metadata.
    """
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also when piped
    if method not in ("reference", *BUNDLES):
        raise SystemExit(f"unknown method {method!r}: choose one of {['reference', *BUNDLES]}")
    start = time.time()
    out = Path(output_dir or f"runs/{method}").resolve()
    if datalist is None:
        data = Path(data_dir).resolve()
        print(f"[1/6] default data: {n} synthetic phantoms in {data}")
        write_phantom_dataset(data, n=n, seed=seed)
        datalist_path = data / "datalist.json"
        print(f"[2/6] split: {n_labeled} labelled, {n_val} validation, {n_test} test, the rest unlabelled -> "
              f"{datalist_path}")
        msd_to_datalist(data, datalist_path, n_labeled=n_labeled, n_val=n_val, n_test=n_test, seed=seed)
        values = {**(CRLN_PHANTOM if method == "crln" else {}), **(values or {})}
        data_note = data_note or (f"synthetic phantoms (tools/make_phantoms.py, seed {seed}): {n_labeled} labelled "
                                  f"volumes; eval_metrics on the {n_test} test phantoms (per-volume 3D metrics)")
    else:
        datalist_path = Path(datalist).resolve()
        print(f"[1/6] data: {datalist_path}")
        print("[2/6] split: as the datalist says")
    print("[3/6] checking every case (files, grids, label values)")
    counts = check_datalist(datalist_path, progress=False)
    n_labeled = counts["training"]
    num_classes = len(load_datalist(datalist_path, require=())["labels"])
    values = {"num_classes": num_classes, **(values or {})}
    pred_dir = out / "predictions"
    if method == "reference":
        print("[4/6] reference segmentation: nearest-mean intensity classifier fitted on the labelled volumes")
        run_reference(datalist_path, pred_dir, num_classes)
    elif method in SLICE_PRETRAINING:
        print(f"[4/6] {method.upper()} end to end with the bundle (CPU-sized overlay cpu_small.json)")
        pred_dir = run_bundle_method(method, datalist_path, out, pretrain_epochs, epochs or 40, seed, values)
    else:
        print("[4/6] CRLN end to end with the bundle (overlays cpu_small.json + adam.json)")
        pred_dir = run_semi_supervised(datalist_path, out, epochs or CRLN_EPOCHS, seed, values)
    datalist = datalist_path
    print("[5/6] evaluation of the test set (per-volume 3D metrics)")
    summary = evaluate_folder(datalist, pred_dir, role="test", output_dir=out / "metrics", progress=False)
    print(format_summary(summary))
    first = load_role(datalist, "test")[0]
    image, _ = load_nifti(first["image"])
    label, _ = load_nifti(first["label"])
    pred, _ = load_nifti(find_prediction(pred_dir, case_id(first["image"])))
    title = f"{case_id(first['image'])}: {method} ({n_labeled} labelled volumes)"
    figure = plot_overlay(image, label, pred, out / "figures" / "overlay.png", title=title,
                          class_names={int(k): entry["name"] for k, entry in summary["classes"].items()})
    zip_path = None
    if method != "reference":
        print("[6/6] exporting the trained bundle (configs with the trained values, vendored code, weights, checksums)")
        zip_path = export_bundle.export(str(REPO_ROOT / "bundles" / BUNDLES[method]), str(out / "bundle"),
                                        str(out / "dist"), metrics=str(out / "metrics" / "metrics_summary.json"),
                                        data_note=data_note)
    print(f"\ndone in {time.time() - start:.1f} s")
    print(f"  datalist:    {datalist}")
    print(f"  predictions: {pred_dir}")
    print(f"  metrics:     {out / 'metrics'}")
    print(f"  figure:      {figure.resolve()}")
    if method != "reference":
        print(f"  model:       {out / 'bundle' / 'models' / 'model.pt'}")
        print(f"  curves:      {out / 'bundle' / 'logs'} (train/train_curve.png, pretrain/pretrain_curve.png, TensorBoard)")
        print(f"  bundle: {zip_path}")
        print(f"  verify:      {shlex.join([pasteable_python(), _shown(REPO_ROOT / 'tools' / 'export_bundle.py'), 'verify', _shown(zip_path)])}")


def _shown(path) -> str:
    """``path`` relative to the working folder when inside it (what a user types), else absolute."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    cli.main(main, name="run_main.py")
