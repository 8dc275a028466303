"""Time of one CORAL pretraining iteration with the two views in separate forwards (the public code) or in one.

Each (setting, mode) pair is measured in a fresh Python subprocess (``benchmark_common``). Inside the worker, one
iteration is ``volssl.engines.TwoViewContrastiveStep`` itself, called on a stand-in for the Ignite engine: both views
through ``PretrainNet2d`` (one forward per view, or one forward of the concatenated views), ``CoralLoss`` (RAL + OAL)
on the 2B projections, backward, SGD step. Inputs are random slices (B per view, 1 channel, the patch size), built
before timing; the weights move (lr 0.1), as in training. ``warmup`` untimed iterations, then ``repeats`` timed ones
(more for fast ones, so that the timed window lasts ``min_seconds``); median and minimum are reported, and
``other_load`` (cores kept busy by other processes during the timing: CPU timings are only meaningful when it is ~0).

``time_vs_joint`` is the median of the separate-forward mode over the median of the one-forward mode of the same
setting, measured in the same run: a ratio, not an absolute time, is what carries over between machines.

Usage::

    python tools/benchmark_pretrain_step.py --threads 2
    python tools/benchmark_pretrain_step.py --settings "[(16, 64, 32), (48, 352, 32)]" --device cuda --output b.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import benchmark_common as common
except ImportError:  # imported from elsewhere rather than run as `python tools/benchmark_*.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark_common as common

COLUMNS = ["features", "patch", "batch", "mode", "device", "threads", "other_load", "repeats", "median_ms", "min_ms",
           "time_vs_joint"]
FLOAT_FORMATS = {"time_vs_joint": ".3f"}


def _measure_one(features: int, patch: int, batch: int, separate: bool, device: str, threads: int | None,
                 repeats: int, warmup: int, min_seconds: float, seed: int = 0) -> dict:
    import time
    from types import SimpleNamespace

    import torch
    from volssl.engines import TwoViewContrastiveStep
    from volssl.losses import CoralLoss
    from volssl.networks import PretrainNet2d

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    torch.manual_seed(seed)
    net = PretrainNet2d(in_channels=1, features=features, proj_dim=512).to(dev)
    loss = CoralLoss(feature_dim=512, seed=seed).to(dev)
    optimizer = torch.optim.SGD(list(net.parameters()) + list(loss.parameters()), lr=0.1, momentum=0.9)
    engine = SimpleNamespace(
        state=SimpleNamespace(device=dev), non_blocking=False, network=net, optimizer=optimizer, loss_function=loss,
        optim_set_to_none=True, amp=dev.type == "cuda", amp_kwargs={},
        scaler=torch.amp.GradScaler("cuda") if dev.type == "cuda" else None,
    )
    batchdata = {"image": torch.randn(batch, 1, patch, patch), "image_2": torch.randn(batch, 1, patch, patch),
                 "position": torch.rand(batch)}
    step = TwoViewContrastiveStep(separate_forwards=separate)

    def call() -> tuple[float, float]:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = step(engine, batchdata)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, float(out["loss"])

    timing = common.time_calls(call, repeats, warmup, min_seconds)
    row = {"features": features, "patch": patch, "batch": batch, "mode": "separate" if separate else "joint",
           "device": device, "threads": torch.get_num_threads()}
    row.update(timing.row())
    return row


def benchmark(settings=None, device: str = "cpu", threads: int | None = None, repeats: int = 10, warmup: int = 2,
              min_seconds: float = 5.0, output: str | None = None) -> list[dict]:
    """Measure every ``(features, patch, batch)`` setting in both modes and print the table.

    Args:
        settings: list of ``(features, patch side, slices per view)``; default ``[(16, 64, 32)]`` (``cpu_small``).
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch intra-op threads in the worker (``None``: torch's default).
        repeats, warmup, min_seconds: see the module docstring.
        output: CSV (or ``.json``) file for the rows.
    """
    settings = [tuple(s) for s in (settings or [(16, 64, 32)])]
    rows = []
    for features, patch, batch in settings:
        pair = {}
        for separate in (False, True):
            row = common.spawn(__file__, features=int(features), patch=int(patch), batch=int(batch), separate=separate,
                               device=device, threads=threads, repeats=repeats, warmup=warmup,
                               min_seconds=min_seconds)
            pair[separate] = row
            rows.append(row)
        pair[True]["time_vs_joint"] = pair[True]["median_ms"] / pair[False]["median_ms"]
        pair[False]["time_vs_joint"] = 1.0
    common.print_table(rows, COLUMNS, FLOAT_FORMATS)
    common.write_table(rows, COLUMNS, output)
    return rows


if __name__ == "__main__":
    common.main(_measure_one, benchmark)
