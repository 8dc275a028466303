"""Time and memory of SAL's local alignment loss (forward + backward), full (r = 1) against windowed (r = 2, 4).

Each (feature-map size, r) pair is measured in a fresh Python subprocess, so that one measurement's peak memory,
allocator caches and warm-up cannot leak into the next. Inside the worker:

- inputs: two embedded feature maps (B, c, H, W) with ``requires_grad`` (B = 16 pairs and c = 128 channels by default,
  the SAL defaults; H = W = 22 is the bottleneck of a 352 x 352 ACDC patch, 44 the level above);
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

import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire

WORKER_FLAG = "_worker"
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


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _cpu_busy_seconds() -> float | None:
    """Busy CPU time of the whole machine so far (all cores, from /proc/stat), in seconds."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


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
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        method = "cuda_max_allocated"
    elif _reset_peak_rss() and _read_status_kb("VmRSS") is not None:
        base = _read_status_kb("VmRSS")
        method = "vmhwm_reset"
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss_delta"

    def call() -> tuple[float, float]:
        x_i.grad = None
        x_j.grad = None
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = loss_fn(x_i, x_j)
        loss.backward()
        if cuda:
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, float(loss.detach())

    elapsed = 0.0
    for _ in range(max(1, warmup)):
        elapsed, value = call()
    # At least `repeats` timed calls, more for fast calls so that the timed window lasts about `min_seconds`.
    count = max(repeats, min(1000, math.ceil(min_seconds / max(elapsed, 1e-6))))
    busy0, own0, wall0 = _cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    times = []
    for _ in range(count):
        elapsed, value = call()
        times.append(elapsed)
    busy1, own1, wall1 = _cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    other_load = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    elif method == "vmhwm_reset":
        peak_mb = (_read_status_kb("VmHWM") - base) / 1024
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    sim_alloc_mb = _similarity_allocation_mb(call, cuda)
    return {
        "size": size,
        "window": window,
        "batch": batch,
        "channels": channels,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "other_load": other_load,
        "repeats": count,
        "median_ms": 1000 * statistics.median(times),
        "min_ms": 1000 * min(times),
        "sim_mb": sim_mb,
        "sim_alloc_mb": sim_alloc_mb,
        "peak_mb": peak_mb,
        "memory_method": method,
        "loss": value,
    }


def _spawn(**kwargs) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), WORKER_FLAG, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kwargs} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    # the result is the last JSON line (the profiler may print its own lines around it)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {kwargs} printed no result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _fmt(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if column == "loss":
            return f"{value:.5f}"
        if column.endswith("_vs_r1"):
            return f"{value:.3f}"
        return f"{value:.2f}"
    return str(value)


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
            results[r] = _spawn(
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

    widths = {c: max(len(c), *(len(_fmt(r.get(c), c)) for r in rows)) for c in COLUMNS}
    print("  ".join(c.rjust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(_fmt(r.get(c), c).rjust(widths[c]) for c in COLUMNS))
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
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(rows, indent=2))
        else:
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows({c: r.get(c) for c in COLUMNS} for r in rows)
        print(f"written: {path}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        print(json.dumps(_measure_one(**json.loads(sys.argv[2]))))
    else:
        fire.Fire(benchmark, serialize=lambda rows: None)  # the table is printed already
