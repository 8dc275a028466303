"""Time and memory of SAL's local alignment loss (forward + backward), full (r = 1) against windowed (r = 2, 4).

Each (feature-map size, r) pair is measured in a fresh Python subprocess, so that one measurement's peak memory,
allocator caches and warm-up cannot leak into the next. Inside the worker:

- inputs: two embedded feature maps (B, c, H, W) with ``requires_grad`` (B = 16 pairs and c = 128 channels by default,
  the SAL defaults; H = W = 44 is level 3 of a 352 x 352 ACDC patch, where SAL aligns by default, 22 the bottleneck);
- time: ``warmup`` untimed calls, then timed forward + backward calls (gradients reset each time): ``repeats`` of
  them, or more for fast calls so that the timed window lasts at least ``min_seconds``; the median (and the minimum)
  is reported (on CUDA, with ``torch.cuda.synchronize`` around each call);
- ``sim_mb``: the size of the similarity tensor ``A`` the loss builds, ``B * r^2 * (HW / r^2)^2`` float32 entries
  (read from the tensor returned by ``LocalAlignmentLoss.similarity``, not computed from the formula);
- ``sim_alloc_mb``: the memory allocated by the similarity computation (``aten::bmm``, the only op whose output
  grows as ``(HW)^2``) during one forward + backward call, measured with ``torch.profiler`` (``profile_memory``);
  it equals ``sim_mb`` when ``A`` is built once and its backward allocates nothing of its size;
- ``peak_mb``: the measured peak memory the loss added, forward and backward (the backward of the row/column maxima
  allocates a gradient of ``A``'s size, so expect about 2-3 x ``sim_mb`` plus the normalised maps). On CPU: the
  resident-set high-water mark above the idle process, reset through ``/proc/self/clear_refs`` before the first call
  (Linux >= 4.0; else the ``ru_maxrss`` delta, which can only under-report, flagged in ``memory_method``). On CUDA:
  ``torch.cuda.max_memory_allocated`` above the memory allocated before the first call.
- ``other_load``: cores kept busy by other processes during the timing (CPU timings inflate when it is not ~0).

The ratio columns compare each row with the ``r = 1`` row of the same size (``sim_vs_r1`` from ``sim_alloc_mb``);
sizes not divisible by ``r`` are skipped (the loss raises a ``ValueError`` for them rather than padding). Expect
``sim_vs_r1 = 1 / r^2`` while ``peak_vs_r1`` stays higher: once ``A`` has shrunk, the O(B * c * H * W) tensors
(normalised maps, gathered matches and their gradients) dominate the process peak.

Usage::

    python tools/benchmark_sal.py --threads 1
    python tools/benchmark_sal.py --sizes '[16,32,44]' --windows '[1,2,4]' --output /tmp/bench_sal.csv
    python tools/benchmark_sal.py --device cuda --batch 32 --output bench_sal.json
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import benchmark_common as common
except ImportError:  # imported from elsewhere rather than run as `python tools/benchmark_*.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchmark_common as common

COLUMNS = [
    "size",
    "window",
    "batch",
    "channels",
    "device",
    "threads",
    "other_load",
    "repeats",
    "median_ms",
    "min_ms",
    "sim_mb",
    "sim_alloc_mb",
    "peak_mb",
    "memory_method",
    "loss",
    "time_vs_r1",
    "sim_vs_r1",
    "peak_vs_r1",
]
FLOAT_FORMATS = {"loss": ".5f", **{c: ".3f" for c in COLUMNS if c.endswith("_vs_r1")}}  # others: .2f


def _similarity_allocation_mb(call, cuda: bool) -> float:
    """Memory allocated by ``aten::bmm`` (the similarity matrices) in one ``call()``, from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=True) as prof:
        call()
    field = "self_device_memory_usage" if cuda else "self_cpu_memory_usage"
    total = sum(getattr(e, field, 0) or 0 for e in prof.key_averages() if e.key == "aten::bmm")
    return total / 2**20


def _measure_one(
    size: int,
    window: int,
    batch: int,
    channels: int,
    device: str,
    repeats: int,
    warmup: int,
    min_seconds: float,
    seed: int,
    threads: int | None,
) -> dict:
    """Runs in the worker subprocess; returns one result row."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))

    from volssl.losses import LocalAlignmentLoss

    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x_i = torch.randn(batch, channels, size, size, generator=g).to(dev).requires_grad_(True)
    x_j = torch.randn(batch, channels, size, size, generator=g).to(dev).requires_grad_(True)
    loss_fn = LocalAlignmentLoss(window=window)
    with torch.no_grad():
        sim = loss_fn.similarity(x_i, x_j)
        sim_mb = sim.numel() * sim.element_size() / 2**20
        del sim

    cuda = dev.type == "cuda"
    memory = common.PeakMemory(dev)

    def reset() -> None:
        x_i.grad = None
        x_j.grad = None

    call = common.forward_backward_call(lambda: loss_fn(x_i, x_j), reset, dev)
    timing = common.time_calls(call, repeats, warmup, min_seconds)
    peak_mb = memory.peak_mb()  # before the profiled call below
    sim_alloc_mb = _similarity_allocation_mb(call, cuda)
    return {
        "size": size,
        "window": window,
        "batch": batch,
        "channels": channels,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        **timing.row(),
        "sim_mb": sim_mb,
        "sim_alloc_mb": sim_alloc_mb,
        "peak_mb": peak_mb,
        "memory_method": memory.method,
        "loss": timing.value,
    }


def benchmark(
    sizes: tuple[int, ...] | list[int] = (16, 22, 32, 44),
    windows: tuple[int, ...] | list[int] = (1, 2, 4),
    batch: int = 16,
    channels: int = 128,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    min_seconds: float = 1.0,
    seed: int = 0,
    threads: int | None = None,
    output: str | None = None,
) -> list[dict]:
    """Benchmark the local alignment loss forward + backward at several window counts ``r``.

    Args:
        sizes: side ``H = W`` of the square feature maps.
        windows: window counts ``r`` per side (1 = full LA); must include 1 for the ratio columns.
        batch: number of slice pairs B.
        channels: embedding channels c.
        device: ``cpu`` or ``cuda`` (``cuda:1``, ...).
        repeats: least number of timed calls per measurement (median reported).
        warmup: untimed calls before timing (at least one; their memory counts towards the peak).
        min_seconds: time fast calls for at least this long (more repeats).
        seed: seed of the inputs (identical for every ``r``).
        threads: ``torch.set_num_threads`` in the workers; ``None`` leaves torch's default (all cores).
        output: write the table here, JSON if the name ends in ``.json``, CSV otherwise.

    Returns:
        The rows of the table.
    """
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    windows = [windows] if isinstance(windows, int) else list(windows)
    if any(int(r) < 1 for r in windows):
        raise ValueError(f"windows must be positive integers, got {windows}")
    rows, skipped = [], []
    for size in sizes:
        results = {}
        for r in windows:
            if size % r:
                skipped.append(f"size {size} at r={r} (not divisible)")
                continue
            results[r] = common.spawn(
                __file__,
                size=size,
                window=int(r),
                batch=batch,
                channels=channels,
                device=device,
                repeats=repeats,
                warmup=warmup,
                min_seconds=min_seconds,
                seed=seed,
                threads=threads,
            )
        full = results.get(1)
        for row in results.values():
            if full is not None:
                row["time_vs_r1"] = row["median_ms"] / full["median_ms"]
                row["sim_vs_r1"] = row["sim_alloc_mb"] / max(full["sim_alloc_mb"], 1e-6)
                row["peak_vs_r1"] = row["peak_mb"] / max(full["peak_mb"], 1e-3)
            rows.append(row)

    common.print_table(rows, COLUMNS, FLOAT_FORMATS)
    if skipped:
        print("skipped: " + "; ".join(skipped))
    pairs = [
        (a, b) for a in rows for b in rows if a["size"] == b["size"] and a["window"] == 2 and b["window"] == 1
    ]
    for r2, r1 in pairs:
        print(
            f"size {r2['size']}: r=2 / r=1  similarity tensor {r2['sim_mb'] / r1['sim_mb']:.3f}, "
            f"similarity allocation (profiler) {r2['sim_alloc_mb'] / max(r1['sim_alloc_mb'], 1e-6):.3f}, "
            f"process peak {r2['peak_mb'] / max(r1['peak_mb'], 1e-3):.3f}, time {r2['median_ms'] / r1['median_ms']:.3f}"
        )
    common.write_table(rows, COLUMNS, output)
    return rows


if __name__ == "__main__":
    common.main(_measure_one, benchmark)
