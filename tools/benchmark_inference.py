"""Inference cost of one volume: the training-patch inferers the bundles used before against the fitted ones now.

For each bundle network it segments one volume (the first hippocampus image of ``../shared/data`` when present, else
a 64 x 64 x 24 phantom) in a fresh subprocess with:

- ``patch``: MONAI's ``SliceInferer`` (CORAL/SAL) or ``SlidingWindowInferer`` (CRLN) with the training patch as the
  window (what ``inference.json`` did before: every small slice padded up to the 352 x 352 patch);
- ``fitted``: :class:`volssl.inferers.WholeSliceInferer` (whole slices padded to a multiple of 16) or
  :class:`volssl.inferers.FittedSlidingWindowInferer` (the window shrunk to the volume padded to 16).

Columns: ``median_s`` (median wall time of the network pass over the volume, after one untimed warm-up), ``peak_mb``
(peak memory above the idle process, see ``benchmark_common.PeakMemory``), ``other_load`` (cores other processes kept
busy: timings are only comparable when it is ~0), and ``speedup`` = patch / fitted time of the same network, measured
in the same run. The networks have the paper's widths by default (``features`` 48 for the 2D U-Net, ``n_filters``
16 for the V-Net) with random weights: the cost does not depend on the weights.

Usage::

    python tools/benchmark_inference.py --threads 2 [--image path.nii.gz] [--output runs/bench_inference.csv]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

try:
    import benchmark_common as common
except ImportError:  # imported from elsewhere rather than run as `python tools/benchmark_*.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark_common as common

REPO_ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO_ROOT.parent / "shared" / "data" / "hippocampus" / "imagesTr"
COLUMNS = ["network", "inferer", "image", "shape", "window", "threads", "other_load", "repeats", "median_s", "min_s",
           "peak_mb", "speedup"]
FORMATS = {"median_s": ".2f", "min_s": ".2f", "peak_mb": ".0f", "other_load": ".2f", "speedup": ".1f"}


def _default_image() -> str:
    if HIPPOCAMPUS.is_dir():
        images = sorted(p for p in HIPPOCAMPUS.glob("*.nii.gz") if not p.name.startswith("."))
        if images:
            return str(images[0])
    from volssl.data.phantom import write_phantom_dataset

    folder = Path("/tmp/volssl_bench_phantom")
    write_phantom_dataset(folder, n=1, seed=0)
    return str(sorted((folder / "imagesTr").glob("*.nii.gz"))[0])


def _measure_one(network: str, inferer: str, image: str, threads: int, repeats: int, features: int,
                 n_filters: int, slice_patch: int, volume_patch: list[int]) -> dict:
    import torch
    from monai.inferers import SliceInferer, SlidingWindowInferer

    from volssl.inferers import FittedSlidingWindowInferer, WholeSliceInferer
    from volssl.io import load_nifti
    from volssl.networks import CRLNNet, UNet2d, VNet

    torch.set_num_threads(threads)
    array, _ = load_nifti(image, dtype="float32")
    volume = torch.from_numpy((array - array.mean()) / max(float(array.std()), 1e-6))[None, None]
    if network == "unet2d":
        net = UNet2d(1, 4, features=features).eval()
        window = [slice_patch, slice_patch] if inferer == "patch" else ["whole slice / 16"]
        run = (SliceInferer(roi_size=[slice_patch, slice_patch], spatial_dim=2, sw_batch_size=16, overlap=0.25,
                            mode="gaussian") if inferer == "patch" else WholeSliceInferer(spatial_dim=2, sw_batch_size=16))
    else:
        net = CRLNNet(VNet(n_channels=1, n_classes=2, n_filters=n_filters, dropout=0.0), num_classes=2,
                      num_prototypes=16).eval()
        window = list(volume_patch)
        kwargs = {"sw_batch_size": 4, "overlap": [0.84, 0.84, 0.95], "mode": "constant"}
        run = (SlidingWindowInferer(roi_size=volume_patch, **kwargs) if inferer == "patch"
               else FittedSlidingWindowInferer(roi_size=volume_patch, divisor=16, **kwargs))
    times = []
    with torch.no_grad():
        run(volume, net)  # warm-up
        peak = common.PeakMemory(torch.device("cpu"))
        busy0, cpu0, wall0 = common.cpu_busy_seconds(), time.process_time(), time.perf_counter()
        for _ in range(repeats):
            start = time.perf_counter()
            run(volume, net)
            times.append(time.perf_counter() - start)
        wall = time.perf_counter() - wall0
        busy1, cpu1 = common.cpu_busy_seconds(), time.process_time()
    other = None if busy0 is None else max(0.0, ((busy1 - busy0) - (cpu1 - cpu0)) / wall)
    return {"network": network, "inferer": inferer, "image": Path(image).name, "shape": list(array.shape),
            "window": window, "threads": threads, "other_load": other, "repeats": repeats,
            "median_s": sorted(times)[len(times) // 2], "min_s": min(times), "peak_mb": peak.peak_mb()}


def benchmark(image: str | None = None, threads: int = 2, repeats: int = 3, features: int = 48, n_filters: int = 16,
              slice_patch: int = 352, volume_patch: tuple = (112, 112, 80), networks: tuple = ("unet2d", "crln"),
              output: str | None = None) -> list[dict]:
    """Measure ``patch`` and ``fitted`` inference for each network on ``image``; print and optionally save the table."""
    image = image or _default_image()
    rows = []
    for network in networks:
        pair = {}
        for inferer in ("patch", "fitted"):
            row = common.spawn(__file__, network=network, inferer=inferer, image=image, threads=threads,
                               repeats=repeats, features=features, n_filters=n_filters, slice_patch=slice_patch,
                               volume_patch=list(volume_patch))
            pair[inferer] = row
            rows.append(row)
        pair["fitted"]["speedup"] = pair["patch"]["median_s"] / pair["fitted"]["median_s"]
        pair["patch"]["speedup"] = 1.0
    common.print_table(rows, COLUMNS, FORMATS)
    common.write_table(rows, COLUMNS, output)
    return rows


if __name__ == "__main__":
    common.main(_measure_one, benchmark)
