"""What the hardware can do, and how much of it a step uses.

Speed is reported as a fraction of the device's peak: the step's FLOPs (counted by ``torch.utils.flop_counter`` on
the bundles' own networks, forward + backward) per second over the peak. Peaks:

- NVIDIA GPUs: the dense bf16 tensor-core peak of the data sheet (no sparsity), by device name;
- a CPU (or an unknown GPU): the rate of a large bf16 matmul (and an fp32 one) measured here, in the same run and
  with the same threads as the training it is compared with: the best this machine's BLAS reaches, a practical
  rather than a theoretical peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["DATASHEET_BF16_TFLOPS", "DevicePeak", "count_flops", "device_peak", "measure_matmul_tflops"]

# dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, without sparsity
DATASHEET_BF16_TFLOPS = {
    "H200": 989.4,  # H200 SXM and NVL data sheet: 1,979 with sparsity
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # H100 SXM5: 1,979 with sparsity
    "A100": 312.0,
}


@dataclass
class DevicePeak:
    """The reference rate of a device: ``bf16_tflops`` (and ``fp32_tflops`` where measured) and where it came from."""

    device: str
    name: str
    bf16_tflops: float
    fp32_tflops: float | None
    source: str

    def row(self) -> dict:
        return {
            "device": self.device,
            "device_name": self.name,
            "peak_bf16_tflops": self.bf16_tflops,
            "peak_fp32_tflops": self.fp32_tflops,
            "peak_source": self.source,
        }


def measure_matmul_tflops(
    device: torch.device | str, dtype: torch.dtype, size: int = 2048, min_seconds: float = 1.0
) -> float:
    """TFLOP/s of ``size x size`` matmuls of ``dtype`` on ``device`` (after a warm-up, for at least ``min_seconds``)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n >= 3:
            break
    return 2.0 * size**3 * n / elapsed / 1e12


def device_peak(device: torch.device | str, min_seconds: float = 1.0) -> DevicePeak:
    """The peak of ``device``: the data sheet's for a known NVIDIA GPU, else a measured large matmul."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in DATASHEET_BF16_TFLOPS.items():
            if key in name:
                return DevicePeak(str(device), name, tflops, None, "data sheet, dense bf16")
    else:
        import platform

        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    bf16 = measure_matmul_tflops(device, torch.bfloat16, min_seconds=min_seconds)
    fp32 = measure_matmul_tflops(device, torch.float32, min_seconds=min_seconds)
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    return DevicePeak(str(device), name, bf16, fp32, f"measured 2048^3 matmul{threads}")


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of one ``call()`` (forward and backward of whatever it runs), by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())
