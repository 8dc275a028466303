"""Helpers shared by the ``tools/benchmark_*.py`` scripts (one measurement per subprocess, /proc-based memory).

Each benchmark script measures one configuration per fresh Python subprocess: the parent calls :func:`spawn`, which
re-runs the script as ``python <script> _worker '<json kwargs>'``; the script's ``__main__`` block hands over to
:func:`main`, which in the worker calls the script's ``_measure_one(**kwargs)`` and prints its row as one JSON line,
and otherwise runs the script's ``benchmark`` function as a ``fire`` CLI. Because the worker is started by the
script's path, the script's folder (``tools/``) is ``sys.path[0]`` in the worker as in the parent, so
``import benchmark_common`` works in both (the scripts also add their folder to ``sys.path`` when that import fails,
e.g. when a script is imported from elsewhere or Python runs with ``-P``).

Inside a worker:

- :class:`PeakMemory` measures the peak memory a measurement adds above the idle process: on CUDA
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the kernel's resident-set high-water
  mark ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` (Linux >= 4.0), falling back to the
  ``ru_maxrss`` delta (which can only under-report) where that file is not writable. No psutil needed.
- :func:`time_calls` times a forward + backward ``call`` (from :func:`forward_backward_call`): warm-up, then at
  least ``repeats`` calls, more for fast ones; it also reports how many cores other processes kept busy meanwhile
  (``other_load``, from /proc/stat).

In the parent, :func:`print_table` and :func:`write_table` print and save the rows.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fire

WORKER_FLAG = "_worker"


# --- process memory and CPU load, from /proc ---------------------------------------------------------------------


def read_status_kb(field: str) -> int | None:
    """Value of ``field`` (e.g. ``VmRSS``, ``VmHWM``) in ``/proc/self/status``, in kB; ``None`` if unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current ``VmRSS`` (write ``5`` to ``/proc/self/clear_refs``).

    Returns:
        Whether the reset succeeded (it needs Linux >= 4.0 and a writable ``clear_refs``).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_busy_seconds() -> float | None:
    """Busy CPU time of the whole machine so far (all cores, from /proc/stat), in seconds."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Peak memory added above the process's state at construction time, in MiB.

    Construct it right before the first measured call (after the inputs and the loss are built), then read
    :meth:`peak_mb` after the last one. ``method`` names how it is measured: ``cuda_max_allocated`` (CUDA devices),
    ``vmhwm_reset`` (CPU, ``VmHWM`` reset through ``/proc/self/clear_refs``) or ``ru_maxrss_delta`` (CPU fallback,
    which can only under-report: ``ru_maxrss`` is never reset, so a peak below an earlier one is not seen).

    Args:
        device: the ``torch.device`` the measurement runs on.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            import torch

            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
            self.method = "cuda_max_allocated"
        elif reset_peak_rss() and read_status_kb("VmRSS") is not None:
            self.base = read_status_kb("VmRSS")
            self.method = "vmhwm_reset"
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss_delta"

    def peak_mb(self) -> float:
        """Peak memory since construction minus the baseline, in MiB."""
        if self.cuda:
            import torch

            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if self.method == "vmhwm_reset":
            return (read_status_kb("VmHWM") - self.base) / 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024


# --- timing ---------------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Result of :func:`time_calls`: the timed durations (seconds), the last call's value, and ``other_load``."""

    times: list[float]
    value: float
    other_load: float | None

    def row(self) -> dict:
        """The timing columns of a result row: ``other_load``, ``repeats``, ``median_ms``, ``min_ms``."""
        return {
            "other_load": self.other_load,
            "repeats": len(self.times),
            "median_ms": 1000 * statistics.median(self.times),
            "min_ms": 1000 * min(self.times),
        }


def forward_backward_call(
    forward: Callable[[], object], reset: Callable[[], None], device
) -> Callable[[], tuple[float, float]]:
    """A ``call()`` for :func:`time_calls`: ``reset()``, then time ``forward().backward()``.

    ``reset`` runs untimed before each call (typically setting the inputs' ``.grad`` to ``None``); ``forward``
    returns the scalar loss tensor. On CUDA the device is synchronised before starting and after the backward pass
    so that the time covers the kernels. ``call()`` returns ``(elapsed_seconds, float(loss))``.
    """
    import torch

    cuda = device.type == "cuda"

    def call() -> tuple[float, float]:
        reset()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = forward()
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, float(loss.detach())

    return call


def time_calls(call: Callable[[], tuple[float, float]], repeats: int, warmup: int, min_seconds: float) -> Timing:
    """Time ``call`` after ``warmup`` untimed calls (at least one).

    ``call()`` runs one measured step and returns ``(elapsed_seconds, value)``. It is called at least ``repeats``
    times, more for fast calls so that the timed window lasts about ``min_seconds`` (at most 1000 calls; the number
    is estimated from the last warm-up call). ``other_load`` is the number of cores other processes kept busy during
    the timed calls (machine busy time from /proc/stat minus this process's CPU time, over the wall time; ``None``
    without /proc/stat): contention makes CPU timings meaningless when it is not ~0.
    """
    elapsed = 0.0
    for _ in range(max(1, warmup)):
        elapsed, value = call()
    # At least `repeats` timed calls, more for fast calls so that the timed window lasts about `min_seconds`.
    count = max(repeats, min(1000, math.ceil(min_seconds / max(elapsed, 1e-6))))
    busy0, own0, wall0 = cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    times = []
    for _ in range(count):
        elapsed, value = call()
        times.append(elapsed)
    busy1, own1, wall1 = cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    # Cores kept busy by other processes during the measurement: contention makes CPU timings meaningless.
    other_load = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    return Timing(times=times, value=value, other_load=other_load)


# --- one measurement per subprocess ---------------------------------------------------------------------------------


def spawn(script: str, **kwargs) -> dict:
    """Run ``script``'s ``_measure_one(**kwargs)`` in a fresh Python subprocess and return its result row.

    The worker is ``sys.executable <script> _worker '<json kwargs>'`` (see :func:`main`); its result is the last
    stdout line that starts with ``{`` (a library may print its own lines around it).

    Raises:
        RuntimeError: the worker failed or printed no result (with the tail of its output).
    """
    cmd = [sys.executable, os.path.abspath(script), WORKER_FLAG, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kwargs} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {kwargs} printed no result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(measure_one: Callable[..., dict], benchmark: Callable[..., list[dict]]) -> None:
    """Entry point of a benchmark script: a worker run (from :func:`spawn`) or the ``fire`` CLI of ``benchmark``."""
    if len(sys.argv) == 3 and sys.argv[1] == WORKER_FLAG:
        print(json.dumps(measure_one(**json.loads(sys.argv[2]))))
    else:
        fire.Fire(benchmark, serialize=lambda rows: None)  # the table is printed already


# --- output ---------------------------------------------------------------------------------------------------------


def format_cell(value, column: str, float_formats: Mapping[str, str]) -> str:
    """Text of one table cell: empty for ``None`` and NaN; floats with ``float_formats[column]`` (default ``.2f``)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return format(value, float_formats.get(column, ".2f"))
    return str(value)


def print_table(rows: Sequence[dict], columns: Sequence[str], float_formats: Mapping[str, str]) -> None:
    """Print ``rows`` as a right-aligned table of ``columns`` (blank where missing; cells as in :func:`format_cell`)."""
    cells = [[format_cell(r.get(c), c, float_formats) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def write_table(rows: Sequence[dict], columns: Sequence[str], output: str | None) -> None:
    """Write ``rows`` to ``output``: JSON if its name ends in ``.json``, else CSV of ``columns``; nothing if empty."""
    if not output:
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    else:
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: r.get(c) for c in columns} for r in rows)
    print(f"written: {path}")
