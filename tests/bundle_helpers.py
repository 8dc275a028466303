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


# -- standalone (exported) bundles -------------------------------------------------------------------------------------
TOOLS = REPO_ROOT / "tools"
STANDALONE_SITE = Path(__file__).resolve().parent / "standalone"


def export_tool():
    """``tools/export_bundle.py`` as a module."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    import export_bundle

    return export_bundle


def unzip_bundle(zip_path: Path, dest: Path) -> Path:
    """Extract a bundle zip into ``dest`` and return the bundle folder (the zip's one top folder)."""
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
        top = {name.split("/")[0] for name in zf.namelist()}
    assert len(top) == 1, top
    return dest / top.pop()


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(line.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower())
    return names


def undeclared_modules(bundle_dir: Path) -> list[str]:
    """Top-level modules of the project's requirements that the bundle's metadata does not declare (nor torch, monai,
    numpy): a partner's environment would not have them."""
    from importlib.metadata import packages_distributions

    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    declared = {n.lower() for n in meta["required_packages_version"]} | {"torch", "monai", "numpy"}
    wanted = (_requirement_names(REPO_ROOT / "requirements.txt") | _requirement_names(REPO_ROOT / "requirements-dev.txt"))
    undeclared = wanted - declared

    def undeclared_dist(dist: str) -> bool:  # itk's modules come from itk-core, itk-io, ...
        dist = dist.lower()
        return dist in undeclared or any(dist.startswith(f"{name}-") for name in undeclared)

    # a module several distributions provide (itk: itk-core, itk-io, ...) is there when one declared package brings it
    return sorted(mod for mod, dists in packages_distributions().items()
                  if any(undeclared_dist(d) for d in dists) and not any(d.lower() in declared for d in dists)
                  and not mod.startswith("_"))


def standalone_env(bundle_dir: Path) -> dict:
    """Environment for a subprocess that may import only what ``bundle_dir``'s metadata declares, and ``volssl`` only
    from ``bundle_dir`` (see tests/standalone/sitecustomize.py)."""
    return dict(
        os.environ,
        PYTHONPATH=str(STANDALONE_SITE),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        VOLSSL_STANDALONE_BUNDLE=str(bundle_dir),
        VOLSSL_STANDALONE_BLOCK=",".join(undeclared_modules(bundle_dir)),
        VOLSSL_STANDALONE_HIDE=str(REPO_ROOT / "common"),
    )


def bundle_args(bundle_dir: Path, args: list[str]) -> list[str]:
    """``args`` with the paths given relative to the bundle folder (``configs/...``, ``--bundle_root .``) made
    absolute: what a partner types who runs the bundle from another working directory."""
    out = []
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] == "--bundle_root" and arg == ".":
            arg = str(bundle_dir)
        elif arg.startswith("configs/"):
            arg = str(bundle_dir / arg)
        elif arg.startswith("[") and "'configs/" in arg:  # a config_list of files in configs/
            arg = arg.replace("'configs/", f"'{bundle_dir}/configs/")
        out.append(arg)
    return out


def run_standalone(bundle_dir: Path, args: list[str], timeout: int = 600, check: bool = True,
                   cwd: Path | None = None):
    """``python -m monai.bundle <args>`` in the standalone environment, from an unrelated working directory (a fresh
    one next to the bundle folder unless ``cwd`` is given; the bundle-relative paths in ``args`` made absolute, see
    :func:`bundle_args`): MONAI finds the vendored ``volssl`` through the config file's bundle folder, not the working
    directory."""
    if cwd is None:
        cwd = bundle_dir.parent / f"elsewhere_{bundle_dir.name}"
        cwd.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *bundle_args(bundle_dir, args)], cwd=cwd,
                          env=standalone_env(bundle_dir), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"standalone monai.bundle {args[0]} failed (exit {proc.returncode}) for {bundle_dir} "
                             f"from {cwd}:\n{tail}")
    return proc


# inference-only values: a run's overlay may set them, they are not recorded with the weights
RUNTIME_VALUES = ("sw_batch_size", "overlap", "sw_mode")


def assert_standalone_bundle(bundle: Path, run_dir: Path, datalist: Path, tmp_path: Path, inputs=("file",),
                             trained: dict | None = None, check_missing_volssl: bool = False) -> Path:
    """Export the training run in ``run_dir``, check the zip verifies and that its inference.json holds the
    ``trained`` values (the run's overlay, folded in), then segment test images with the unzipped bundle in the
    standalone environment (only the metadata's packages, vendored volssl), from an unrelated working directory
    (``--config_file <bundle>/configs/inference.json --bundle_root <bundle>``), for each kind of
    input in ``inputs`` ("file", "folder", "datalist"); each label map must lie on its image's grid; with
    ``check_missing_volssl``, also :func:`assert_missing_volssl_is_one_line` (one standalone run more). Returns the
    zip."""
    import nibabel as nib
    import numpy as np

    tool = export_tool()
    zip_path = Path(tool.export(str(bundle), str(run_dir), str(tmp_path / "dist")))
    assert zip_path.name == f"{bundle.name}_v{json.loads((bundle / 'configs' / 'metadata.json').read_text())['version']}.zip"
    assert tool.check(str(zip_path)) == []
    bundle_dir = unzip_bundle(zip_path, tmp_path / "unzipped")
    # eval_metrics are this run's measurement or none: never the repository's (those of the released weights)
    exported_meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    summary = run_dir / "eval" / "metrics_summary.json"
    if summary.is_file():
        mean_dice = json.loads(summary.read_text())["mean_foreground"]["dice"]["mean"]
        assert exported_meta["eval_metrics"]["mean_dice"] == round(mean_dice, 4)
    else:
        assert exported_meta["eval_metrics"] == {}
    assert tool.RELEASE_METRICS_NOTE not in exported_meta["data_source"]
    inference = json.loads((bundle_dir / "configs" / "inference.json").read_text())
    for key, value in (trained or {}).items():
        if key in inference and key not in RUNTIME_VALUES:
            assert inference[key] == value, key
    from volssl.data import load_role

    test_images = [Path(entry["image"]) for entry in load_role(datalist, "test")]
    sources = {"file": test_images[0], "datalist": datalist}
    if "folder" in inputs:
        folder = tmp_path / "images"
        folder.mkdir()
        for image in test_images:
            (folder / image.name).symlink_to(image)
        sources["folder"] = folder
    for kind in inputs:
        out = tmp_path / f"out_{kind}"
        run_standalone(bundle_dir, ["run", "--config_file", "configs/inference.json", "--bundle_root", ".",
                                    "--input", str(sources[kind]), "--output_dir", str(out)])
        expected = [test_images[0]] if kind == "file" else test_images
        for image_path in expected:
            pred_path = out / image_path.name.replace(".nii.gz", "_seg.nii.gz")
            assert pred_path.is_file(), (kind, sorted(p.name for p in out.glob("*")))
            image, pred = nib.load(image_path), nib.load(pred_path)
            assert pred.shape == image.shape
            np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
    if check_missing_volssl:
        assert_missing_volssl_is_one_line(bundle_dir, sources["file"], tmp_path / "out_missing")
    return zip_path


def assert_missing_volssl_is_one_line(bundle_dir: Path, source: Path, out: Path) -> None:
    """With the vendored ``volssl/`` gone, inference ends with one line that says what to do, and no traceback."""
    hidden = bundle_dir.parent / "volssl_hidden"
    (bundle_dir / "volssl").rename(hidden)
    try:
        proc = run_standalone(bundle_dir, ["run", "--config_file", "configs/inference.json", "--bundle_root", ".",
                                           "--input", str(source), "--output_dir", str(out)], check=False)
    finally:
        hidden.rename(bundle_dir / "volssl")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bundle_dir}: volssl, the bundle code, cannot be loaded"), last
    assert "--config_file" in last, last
