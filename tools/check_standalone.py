"""Run an exported bundle the way a partner does: a fresh virtual environment holding only what its metadata.json
declares, the zip unzipped, inference from an unrelated working directory; then check every label map lies on its
image's grid.

    python tools/check_standalone.py ZIP INPUT [--output_dir OUT] [--output_format nifti|dicom_seg]
                                     [--venv .venv-standalone] [--workdir DIR]

``INPUT`` is a NIfTI file, a DICOM series folder, a folder of NIfTI files and/or series folders, or a datalist (its
``test`` role). The environment gets exactly
``torch==<pytorch_version>``, ``monai==<monai_version>``, ``numpy==<numpy_version>`` and each
``required_packages_version`` entry, nothing from this repository (no volssl: the bundle's vendored copy is used).
An existing ``--venv`` is reused when it already holds those versions. On a CPU-only machine pip takes the local CPU
torch wheel; on a GPU machine it takes PyPI's CUDA build of the same version. Exit status 0 only when inference ran
and every output matches its input: a NIfTI label map its image's shape and affine (for a DICOM series, the grid its
slice headers give, read with the bundle's own ``volssl``), a DICOM SEG the source series (it references the series,
and every frame references one of its slices and lies at that slice's position).
"""

from __future__ import annotations

import json
import shlex
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


def _cases(source: Path) -> list[tuple[str, str]]:
    """``(case name, input path)`` of every input, named as the bundle names its outputs."""
    from volssl.data.datalist import case_id, inference_inputs

    return [(e.get("case") or case_id(e["image"]), e["image"]) for e in inference_inputs(source)]


CHECK = """
import sys, json
import numpy as np
pairs = json.loads(sys.argv[1])
for image, pred in pairs:
    if pred.endswith('.dcm'):
        import pydicom
        from volssl.io import read_series
        _, _, geometry, _ = read_series(image)
        seg = pydicom.dcmread(pred)
        slices = {uid: str(f) for uid, f in zip(geometry.sop_instance_uids, geometry.files)}
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(geometry.files[0]).SeriesInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence:
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            where = [float(v) for v in pydicom.dcmread(slices[uid], stop_before_pixels=True).ImagePositionPatient]
            assert np.allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient], where, atol=1e-3)
        names = [s.SegmentLabel for s in seg.SegmentSequence]
        print(f'[standalone] {pred}: DICOM SEG of {len(slices)} slices, {int(seg.NumberOfFrames)} frames on the source '
              f'slices of {image}, segments {names}')
        continue
    import nibabel as nib
    b = nib.load(pred)
    if image.endswith(('.nii', '.nii.gz')):
        a = nib.load(image)
        shape, affine = a.shape[:3], a.affine
    else:
        from volssl.io import read_series
        _, affine, geometry, _ = read_series(image)
        shape = geometry.shape
    assert tuple(shape) == b.shape and np.allclose(affine, b.affine, atol=1e-4), (image, pred)
    print(f'[standalone] {pred}: {b.shape} on the grid of {image}, labels {np.unique(np.asarray(b.dataobj)).tolist()}')
"""


def run(zip_path: str, input: str, output_dir: str | None = None, venv: str = ".venv-standalone",
        workdir: str | None = None, output_format: str = "nifti") -> None:
    """Install, unzip and segment (see the module docstring)."""
    zip_file, source = Path(zip_path).resolve(), Path(input).resolve()
    work = Path(workdir or tempfile.mkdtemp(prefix="volssl_standalone_")).resolve()
    from volssl.bundle.archive import safe_extract

    safe_extract(zip_file, work)  # a downloaded zip is untrusted: every member checked before anything is written
    with zipfile.ZipFile(zip_file) as zf:
        (name,) = {n.split("/")[0] for n in zf.namelist()}
    bundle = work / name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    python = _venv(Path(venv).resolve(), _pins(meta))
    out = Path(output_dir or work / "predictions").resolve()
    # from a working directory that has nothing to do with the bundle: MONAI finds the vendored volssl through the
    # config file's bundle folder (and the configs import volssl only once MONAI has put that folder on sys.path)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--input", str(source), "--output_dir", str(out),
           "--output_format", output_format]
    print(f"[standalone] cd {shlex.quote(str(elsewhere))} && {shlex.join(cmd)}")  # the venv's python: pasteable
    start = time.time()
    proc = subprocess.run(cmd, cwd=elsewhere, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"[standalone] inference failed (exit {proc.returncode})")
    suffix = ".dcm" if output_format == "dicom_seg" else ".nii.gz"
    pairs = [(image, str(out / f"{case}_seg{suffix}")) for case, image in _cases(source)]
    subprocess.run([str(python), "-c", CHECK, json.dumps(pairs)], cwd=bundle, check=True)
    print(f"[standalone] ok: {len(pairs)} label map(s) in {time.time() - start:.1f} s with only the metadata's "
          f"packages ({python.parent.parent})")


if __name__ == "__main__":
    cli.main(run, name="check_standalone.py")
