"""Time and memory of the CORAL loss (RAL + OAL, forward + backward) against the naive N^3 form.

Each (N, implementation) pair is measured in a fresh Python subprocess, so that one measurement's peak memory, allocator
caches and warm-up cannot leak into the next. Inside the worker:

- inputs: N = 2B projections z (D = 512 by default) with ``requires_grad``, B slice positions drawn from a 10-slice
  grid (many ties, as in a real batch) repeated for the second view; the loss module is built before measuring;
- time: ``warmup`` untimed calls, then timed forward + backward calls (``z.grad`` reset each time): ``repeats`` of
  them, or more for fast calls so that the timed window lasts at least ``min_seconds``; the median (and the minimum)
  is reported (on CUDA, with ``torch.cuda.synchronize`` around each call);
- memory on CPU: the peak resident set size above the idle process. After the setup, the kernel's high-water mark
  ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) and the current ``VmRSS`` is the
  idle baseline; after all calls, ``VmHWM - baseline`` is the peak the loss added (allocator memory kept by the
  process counts, as it should). Where ``clear_refs`` is not writable the worker falls back to the ``ru_maxrss``
  delta, which can only under-report (flagged in the ``memory_method`` column). No psutil needed.
- contention: ``other_load`` is the number of cores other processes kept busy during the measurement (from
  /proc/stat minus the worker's own CPU time). With torch's default thread count (one per core), a busy neighbour
  stalls every parallel region and CPU timings inflate many-fold; re-run, or pass ``--threads 1``, when it is not ~0.
- memory on CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
  allocated before the first call.

The naive baseline (written here, not imported) builds the N x N x N rank mask for RAL and the N x N x D difference
tensor for OAL; it runs for N up to ``naive_max_n``. The ratio columns compare the two within this run, and
``abs_diff`` is |loss_ours - loss_naive| on identical inputs.

Usage::

    python tools/benchmark_losses.py --output /tmp/bench_losses.csv
    python tools/benchmark_losses.py --device cuda --sizes '[256,1024,4096]' --naive_max_n 512 --output bench.json
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
    "n",
    "impl",
    "device",
    "dtype",
    "threads",
    "other_load",
    "repeats",
    "median_ms",
    "min_ms",
    "peak_mb",
    "memory_method",
    "loss",
    "speedup_vs_naive",
    "mem_ratio_vs_naive",
    "abs_diff",
]
FLOAT_FORMATS = {"abs_diff": ".1e", "loss": ".5f"}  # others: .2f


def _naive_coral(z, p, v, temperature: float = 0.1, kappa: float = 1.0, alpha: float = 1.0):
    """CORAL loss the direct way: an N x N x N mask for RAL and an N x N x D difference tensor for OAL."""
    import torch
    import torch.nn.functional as F

    n = z.shape[0]
    zn = F.normalize(z, dim=1)
    s = zn @ zn.T / temperature
    d = (p[:, None] - p[None, :]).abs()
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    in_denominator = (d[:, None, :] >= d[:, :, None]) & ~eye[:, None, :]  # [a, b, k]
    log_den = torch.logsumexp(s[:, None, :].masked_fill(~in_denominator, float("-inf")), dim=2)
    ral = (torch.sigmoid(kappa * d) * (log_den - s))[~eye].sum() / (n * (n - 1))
    u = F.normalize(z[None, :, :] - z[:, None, :], dim=2)  # [a, b] = normalise(z_b - z_a)
    cos = u @ F.normalize(v, dim=0)
    oal = -cos[p[:, None] < p[None, :]].mean()
    return ral + alpha * oal


def _measure_one(
    n: int,
    impl: str,
    dim: int,
    device: str,
    dtype: str,
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

    from volssl.losses import CoralLoss

    dev = torch.device(device)
    tdtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    b = n // 2
    pos = torch.randint(1, 11, (b,), generator=g).to(tdtype) / 10
    p = torch.cat([pos, pos]).to(dev)
    z = torch.randn(2 * b, dim, generator=g, dtype=tdtype).to(dev).requires_grad_(True)
    # exact float comparisons of the distances, as the naive form (abs_diff checks the algorithm, not the tie policy;
    # the default tolerance of 1e-6 costs the same)
    loss_fn = CoralLoss(dim, seed=seed, tie_tolerance=0.0).to(device=dev, dtype=tdtype)
    if impl == "ours":
        step = loss_fn
    elif impl == "naive":

        def step(zz, pp):
            return _naive_coral(zz, pp, loss_fn.ordinal.direction, alpha=loss_fn.alpha)

    else:
        raise ValueError(f"unknown implementation {impl!r}")

    memory = common.PeakMemory(dev)

    def reset() -> None:
        z.grad = None
        loss_fn.zero_grad(set_to_none=True)

    call = common.forward_backward_call(lambda: step(z, p), reset, dev)
    timing = common.time_calls(call, repeats, warmup, min_seconds)
    peak_mb = memory.peak_mb()
    return {
        "n": 2 * b,
        "impl": impl,
        "device": str(dev),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        **timing.row(),
        "peak_mb": peak_mb,
        "memory_method": memory.method,
        "loss": timing.value,
    }


def benchmark(
    sizes: tuple[int, ...] | list[int] = (64, 256, 512, 1024),
    dim: int = 512,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 7,
    warmup: int = 2,
    min_seconds: float = 1.0,
    naive_max_n: int = 256,
    seed: int = 0,
    threads: int | None = None,
    output: str | None = None,
) -> list[dict]:
    """Benchmark CORAL (RAL + OAL) forward + backward, ours against the naive N^3 form.

    Args:
        sizes: numbers of embeddings N (even: N = 2 views x N/2 slices).
        dim: projection size D.
        device: ``cpu`` or ``cuda`` (``cuda:1``, ...).
        dtype: ``float32`` or ``float64``.
        repeats: least number of timed calls per measurement (median reported).
        warmup: untimed calls before timing (at least one; their memory counts towards the peak).
        min_seconds: time fast calls for at least this long (more repeats).
        naive_max_n: largest N for the naive baseline (its memory grows as N^3).
        seed: seed of the inputs and of OAL's direction (identical for both implementations).
        threads: ``torch.set_num_threads`` in the workers; ``None`` leaves torch's default (all cores).
        output: write the table here, JSON if the name ends in ``.json``, CSV otherwise.

    Returns:
        The rows of the table.
    """
    if isinstance(sizes, int):
        sizes = [sizes]
    rows = []
    for n in sizes:
        if n < 2 or n % 2:
            raise ValueError(f"sizes must be even and >= 2, got {n}")
        impls = ["ours", "naive"] if n <= naive_max_n else ["ours"]
        results = {
            impl: common.spawn(
                __file__,
                n=n,
                impl=impl,
                dim=dim,
                device=device,
                dtype=dtype,
                repeats=repeats,
                warmup=warmup,
                min_seconds=min_seconds,
                seed=seed,
                threads=threads,
            )
            for impl in impls
        }
        ours = results["ours"]
        if "naive" in results:
            naive = results["naive"]
            ours["speedup_vs_naive"] = naive["median_ms"] / ours["median_ms"]
            ours["mem_ratio_vs_naive"] = naive["peak_mb"] / max(ours["peak_mb"], 1e-3)
            ours["abs_diff"] = abs(ours["loss"] - naive["loss"])
        rows.extend(results[i] for i in impls)

    common.print_table(rows, COLUMNS, FLOAT_FORMATS)
    common.write_table(rows, COLUMNS, output)
    return rows


if __name__ == "__main__":
    common.main(_measure_one, benchmark)
