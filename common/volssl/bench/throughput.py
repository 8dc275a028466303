"""The throughput benchmark: every training loop, old data path against new, as a fraction of the device's peak.

For each loop of :data:`volssl.bench.loops.LOOPS` and each variant of :data:`volssl.bench.loops.VARIANTS` (``old``:
per-sample MONAI transforms in a ``DataLoader``, fp32; ``new_fp32``: the batched on-device data path; ``new``: that
path with bf16 autocast and channels_last, the bundles' defaults), one fresh Python process builds the bundle's
trainer from its configs and measures it (:func:`volssl.bench.loops.measure_loop`). The device's peak is measured
in the same run (a large bf16 matmul on a CPU; the data sheet for a known GPU). Printed side by side:

``its_per_s``, ``items_per_s`` (slices or voxels), ``tflops`` (FLOPs of the step x its/s), ``of_peak`` (its fraction
of the bf16 peak), ``network_its_per_s`` (the same step on a batch already on the device: the network-only bound),
``overhead`` (loop time over network-only time, minus 1), ``speedup`` (its/s over the ``old`` row of the same loop),
``setup_s`` (building the trainer: parsing and caching) and ``eval_s`` (one validation run).

Usage::

    python -m volssl.bench.throughput --threads 1 --output runs/bench_throughput.csv
    python -m volssl.bench.throughput --scale paper --loops "['coral_pretrain','crln']"      # on a GPU

The data are 20 synthetic phantoms written to a temporary folder (or ``--datalist``).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .loops import LOOPS, VARIANTS

__all__ = ["benchmark", "COLUMNS"]

COLUMNS = [
    "loop",
    "variant",
    "scale",
    "device",
    "threads",
    "precision",
    "its_per_s",
    "items_per_s",
    "unit",
    "gflop_per_it",
    "tflops",
    "of_peak",
    "network_its_per_s",
    "overhead",
    "speedup",
    "setup_s",
    "eval_s",
]
_FORMATS = {
    "its_per_s": ".2f",
    "items_per_s": ".3g",
    "gflop_per_it": ".1f",
    "tflops": ".4f",
    "of_peak": ".4f",
    "network_its_per_s": ".2f",
    "overhead": "+.3f",
    "speedup": ".2f",
    "setup_s": ".1f",
    "eval_s": ".2f",
}
_WORKER = "_worker"


def _default_bundles() -> Path:
    return Path(__file__).resolve().parents[3] / "bundles"


def _phantom_datalist(root: Path) -> Path:
    from volssl.data.converters import msd_to_datalist
    from volssl.data.phantom import write_phantom_dataset

    write_phantom_dataset(root / "phantom", n=20, seed=0)
    path = root / "phantom" / "datalist.json"
    msd_to_datalist(root / "phantom", path, n_labeled=2, n_val=3, n_test=5, seed=0)
    return path


def _worker(kind: str, kwargs: dict) -> dict:
    import logging

    import torch

    logging.disable(logging.INFO)
    if kwargs.get("threads"):
        torch.set_num_threads(int(kwargs["threads"]))
    if kind == "peak":
        from .peak import device_peak

        device = kwargs["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu")
        return device_peak(device).row()
    from .loops import measure_loop

    return measure_loop(
        kwargs["loop"],
        kwargs["variant"],
        kwargs["datalist"],
        kwargs["bundles_dir"],
        kwargs["scale"],
        kwargs["warmup"],
        kwargs["timed"],
        overrides=kwargs.get("overrides"),
    )


def _spawn(kind: str, **kwargs) -> dict:
    cmd = [sys.executable, "-m", "volssl.bench.throughput", _WORKER, kind, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {kwargs} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _cell(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and column in _FORMATS:
        return format(value, _FORMATS[column])
    return str(value)


def benchmark(
    loops: list[str] | tuple[str, ...] = LOOPS,
    variants: list[str] | tuple[str, ...] = tuple(VARIANTS),
    scale: str = "cpu",
    threads: int | None = None,
    device: str | None = None,
    datalist: str | None = None,
    bundles_dir: str | None = None,
    warmup: int = 3,
    timed: int = 20,
    output: str | None = None,
) -> list[dict]:
    """Measure every loop in every variant (one process each) and print the table; returns the rows.

    Args:
        loops: which of :data:`~volssl.bench.loops.LOOPS`.
        variants: which of :data:`~volssl.bench.loops.VARIANTS` (``old`` first: the speed-up is over it).
        scale: ``"cpu"`` (the bundles' CPU recipes) or ``"paper"`` (the papers' sizes, for a GPU).
        threads: torch threads per measurement (``None``: torch's default).
        device: ``"cpu"`` or ``"cuda:0"`` (``None``: CUDA when present).
        datalist: the data (``None``: 20 phantoms in a temporary folder).
        bundles_dir: the folder of the bundles (default: the repository's).
        warmup, timed: untimed and timed iterations of each loop.
        output: a ``.csv`` or ``.json`` file for the rows.
    """
    unknown = [x for x in loops if x not in LOOPS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown loops/variants {unknown}: loops {LOOPS}, variants {tuple(VARIANTS)}")
    bundles = str(Path(bundles_dir) if bundles_dir else _default_bundles())
    overrides = {"device": f"$torch.device('{device}')"} if device else None
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        data = datalist or str(_phantom_datalist(Path(tmp)))
        peak = _spawn("peak", threads=threads, device=device)
        print(
            f"peak of {peak['device']} ({peak['device_name']}): bf16 {peak['peak_bf16_tflops']:.3f} TFLOP/s "
            f"({peak['peak_source']})" + (f", fp32 {peak['peak_fp32_tflops']:.3f}" if peak["peak_fp32_tflops"] else ""),
            flush=True,
        )
        rows = []
        for loop in loops:
            base = None
            for variant in variants:
                row = _spawn(
                    "loop",
                    loop=loop,
                    variant=variant,
                    datalist=data,
                    bundles_dir=bundles,
                    scale=scale,
                    threads=threads,
                    warmup=warmup,
                    timed=timed,
                    overrides=overrides,
                )
                row["of_peak"] = row["tflops"] / peak["peak_bf16_tflops"]
                base = row["its_per_s"] if variant == "old" else base
                row["speedup"] = row["its_per_s"] / base if base else None
                row.update({k: peak[k] for k in ("peak_bf16_tflops", "peak_fp32_tflops", "peak_source")})
                rows.append(row)
                print("  ".join(f"{c}={_cell(row.get(c), c)}" for c in COLUMNS if row.get(c) is not None), flush=True)
    widths = {c: max(len(c), *(len(_cell(r.get(c), c)) for r in rows)) for c in COLUMNS}
    print("\n" + " | ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print(" | ".join(_cell(r.get(c), c).ljust(widths[c]) for c in COLUMNS))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        if output.endswith(".json"):
            Path(output).write_text(json.dumps(rows, indent=2))
        else:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(output, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
        print(f"wrote {output}")
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == _WORKER:
        print(json.dumps(_worker(sys.argv[2], json.loads(sys.argv[3]))))
        return
    import fire

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    fire.Fire(benchmark, serialize=lambda rows: None)


if __name__ == "__main__":
    main()
