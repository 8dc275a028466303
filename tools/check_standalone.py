"""Run an exported bundle the way a partner does: a fresh virtual environment holding only what its metadata.json
declares, the zip unzipped, inference from the bundle folder; then check every label map lies on its image's grid.

    python tools/check_standalone.py ZIP INPUT [--output_dir OUT] [--venv .venv-standalone] [--workdir DIR]

``INPUT`` is a NIfTI file, a folder of them or a datalist (its ``test`` role). The environment gets exactly
``torch==<pytorch_version>``, ``monai==<monai_version>``, ``numpy==<numpy_version>`` and each
``required_packages_version`` entry, nothing from this repository (no volssl: the bundle's vendored copy is used).
An existing ``--venv`` is reused when it already holds those versions. On a CPU-only machine pip takes the local CPU
torch wheel; on a GPU machine it takes PyPI's CUDA build of the same version. Exit status 0 only when inference ran
and every output matches its input's shape and affine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cli  # tools/cli.py, next to this file


def _pins(meta: dict) -> list[str]:
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}"]
    return pins + [f"{name}=={version}" for name, version in meta["required_packages_version"].items()]


def _venv(path: Path, pins: list[str]) -> Path:
    python = path / "bin" / "python"
    stamp = path / "volssl-standalone-pins.json"
    if python.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == pins:
        print(f"[standalone] reusing {path} ({len(pins)} pinned packages)")
        return python
    print(f"[standalone] creating {path} with only: {' '.join(pins)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    stamp.write_text(json.dumps(pins))
    return python


def _images(source: Path) -> list[Path]:
    if source.suffix == ".json":
        datalist = json.loads(source.read_text())
        return [source.parent / (e if isinstance(e, str) else e["image"]) for e in datalist["test"]]
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    return [source]


def run(zip_path: str, input: str, output_dir: str | None = None, venv: str = ".venv-standalone",  # noqa: A002
        workdir: str | None = None) -> None:
    """Install, unzip and segment (see the module docstring)."""
    zip_file, source = Path(zip_path).resolve(), Path(input).resolve()
    work = Path(workdir or tempfile.mkdtemp(prefix="volssl_standalone_")).resolve()
    with zipfile.ZipFile(zip_file) as zf:
        zf.extractall(work)
        (name,) = {n.split("/")[0] for n in zf.namelist()}
    bundle = work / name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    python = _venv(Path(venv).resolve(), _pins(meta))
    out = Path(output_dir or work / "predictions").resolve()
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--bundle_root", ".",
           "--input", str(source), "--output_dir", str(out)]
    print(f"[standalone] cd {bundle} && python {' '.join(cmd[1:])}")
    start = time.time()
    proc = subprocess.run(cmd, cwd=bundle, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"[standalone] inference failed (exit {proc.returncode})")
    check = ("import sys, nibabel as nib, numpy as np\n"
             "for image, pred in zip(sys.argv[1::2], sys.argv[2::2]):\n"
             "    a, b = nib.load(image), nib.load(pred)\n"
             "    assert a.shape[:3] == b.shape and np.allclose(a.affine, b.affine, atol=1e-5), (image, pred)\n"
             "    print(f'[standalone] {pred}: {b.shape} on the grid of {image}, labels {np.unique(np.asarray(b.dataobj)).tolist()}')\n")
    pairs = []
    for image in _images(source):
        case = image.name[: -len(".nii.gz")] if image.name.endswith(".nii.gz") else image.stem
        pairs += [str(image), str(out / f"{case}_seg.nii.gz")]
    subprocess.run([str(python), "-c", check, *pairs], check=True)
    print(f"[standalone] ok: {len(pairs) // 2} label map(s) in {time.time() - start:.1f} s with only the metadata's "
          f"packages ({python.parent.parent})")


if __name__ == "__main__":
    cli.main(run, name="check_standalone.py")
