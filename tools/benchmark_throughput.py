"""The training loops' throughput and epoch times (issue: the batched on-device data path and mixed precision).

    python tools/benchmark_throughput.py loops --threads 1 [--loops "['coral_pretrain']"] [--output runs/bench.csv]
    python tools/benchmark_throughput.py epochs --other_root ../base --threads 1

``loops``: every training loop, old data path against new, as a fraction of the device's peak, with the network-only
bound (:mod:`volssl.bench.throughput`). ``epochs``: the bundles' own commands on the phantoms, this checkout against
another one side by side (:mod:`volssl.bench.epochs`). The measurement code lives in ``volssl.bench``.
"""

import fire

from volssl.bench.epochs import compare_epochs
from volssl.bench.throughput import benchmark

if __name__ == "__main__":
    fire.Fire({"loops": benchmark, "epochs": compare_epochs}, serialize=lambda rows: None)
