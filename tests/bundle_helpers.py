"""Helpers for the bundle smoke tests: a tiny phantom data set and `python -m monai.bundle` runs in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"


def make_tiny_dataset(root: Path, n: int = 8, n_labeled: int = 2, n_val: int = 1, n_test: int = 2) -> Path:
    """Phantoms (64 x 64 x 24, 4 classes) + a datalist; returns the datalist path."""
    from volssl.data.converters import msd_to_datalist
    from volssl.data.phantom import write_phantom_dataset

    write_phantom_dataset(root, n=n, seed=0)
    datalist = root / "datalist.json"
    msd_to_datalist(root, datalist, n_labeled=n_labeled, n_val=n_val, n_test=n_test, seed=0)
    return datalist


def write_overlay(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values, indent=1))
    return path


def config_list(*files) -> str:
    """The ``--config_file`` argument for several files (MONAI merges them in order)."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def run_bundle(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in ``cwd``; raises with the output tail when it fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"monai.bundle {args[0]} failed (exit {proc.returncode}) in {cwd}:\n{tail}")
    return proc


def run_torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node <nproc> -m monai.bundle <args>`` (gloo on CPU); raises with the output tail."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"torchrun monai.bundle {args[0]} failed (exit {proc.returncode}) in {cwd}:\n{tail}")
    return proc
