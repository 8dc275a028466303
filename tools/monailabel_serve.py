"""Lay out a MONAI Label app with exported volssl bundles and start the server (``tools/monailabel.sh serve``).

    python tools/monailabel_serve.py --studies DIR [--port 8000] [--app_dir runs/monailabel/app] [--replace]
                                     [--python PATH] BUNDLE [BUNDLE ...]

``--studies`` is a folder of images (NIfTI) or the URL of a DICOMweb service (a PACS, e.g. ``tools/pacs.sh``'s
``http://127.0.0.1:8042/dicom-web``): then MONAI Label reads the series from it and stores labels and segmentations
back as DICOM SEG (see ``tools/monailabel_app/lib/dicomweb.py``); the series it lists are those of ``--modality``
(default MR), its download cache is ``<app_dir>/dicomweb_cache`` and its series lists are not cached, so a label
saved a moment ago counts at once.

Each BUNDLE is an exported zip (``<name>_v<version>.zip`` with a top folder ``<name>/``) or a bundle folder. The app
folder gets our app code (``tools/monailabel_app``: ``main.py`` + ``lib/``) and a copy of each bundle in
``model/<name>/``. Training writes into that copy (``models/model.pt``, checkpoints, logs), never into BUNDLE; a later
``serve`` keeps the trained copy unless ``--replace``. The server listens on 127.0.0.1 only and needs no network.

Standard library only: the layout is checked by the default test suite without MONAI Label installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_SOURCE = REPO_ROOT / "tools" / "monailabel_app"
DEFAULT_APP_DIR = REPO_ROOT / "runs" / "monailabel" / "app"
PACKAGE = "volssl"


class BundleError(ValueError):
    """A BUNDLE argument that cannot be served; the message names it and the problem."""


def _bundle_problems(path: Path) -> list[str]:
    configs = ("metadata.json", "inference.json")
    problems = [f"configs/{c} is missing" for c in configs if not (path / "configs" / c).is_file()]
    if not ((path / "models" / "model.pt").is_file() or (path / "models" / "model.ts").is_file()):
        problems.append("models/model.pt (or model.ts) is missing: export a trained bundle")
    if not (path / PACKAGE / "__init__.py").is_file():
        problems.append(f"{PACKAGE}/ is not vendored at the bundle root (a MONAI Label environment has no {PACKAGE}): "
                        "serve an exported bundle, not the repository's bundles/ folder")
    return problems


def _zip_top_folder(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        tops = {Path(n).parts[0] for n in zf.namelist() if Path(n).parts}
        bad = [n for n in zf.namelist() if n.startswith("/") or ".." in Path(n).parts]
    if bad:
        raise BundleError(f"{archive}: unsafe paths in the archive: {bad[:3]}")
    if len(tops) != 1:
        raise BundleError(f"{archive}: an exported bundle zip has one top folder <name>/, found {sorted(tops)}")
    return tops.pop()


def install_bundle(source, model_dir, replace: bool = False) -> tuple[str, Path, str]:
    """Copy one bundle (zip or folder) to ``model_dir/<name>``; returns ``(name, path, what was done)``.

    An existing copy is kept (it holds the models trained by earlier ``/train`` requests) unless ``replace``.
    """
    source, model_dir = Path(source), Path(model_dir)
    if not source.exists():
        raise BundleError(f"{source}: file not found")
    if source.is_file() and zipfile.is_zipfile(source):
        name = _zip_top_folder(source)
    elif source.is_dir():
        name = source.resolve().name
    else:
        raise BundleError(f"{source}: neither a bundle folder nor a zip file")
    target = model_dir / name
    if target.exists() and not replace:
        problems = _bundle_problems(target)
        if problems:
            raise BundleError(f"{target} (kept from an earlier serve): {'; '.join(problems)}; use --replace")
        return name, target, "kept the served copy (it holds any retrained model; --replace starts over)"
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".incoming_") as tmp:
        staged = Path(tmp) / name
        if source.is_dir():
            shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            with zipfile.ZipFile(source) as zf:
                zf.extractall(tmp)
        problems = _bundle_problems(staged)
        if problems:
            raise BundleError(f"{source}: {'; '.join(problems)}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return name, target, f"copied from {source}"


def layout_app(app_dir, bundles, replace: bool = False, log=print) -> list[str]:
    """Write the app code into ``app_dir`` (always the current version) and the bundles into ``app_dir/model``;
    returns the bundle names in the order given."""
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(APP_SOURCE / "main.py", app_dir / "main.py")
    if (app_dir / "lib").exists():
        shutil.rmtree(app_dir / "lib")
    shutil.copytree(APP_SOURCE / "lib", app_dir / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    names = []
    for source in bundles:
        name, path, what = install_bundle(source, app_dir / "model", replace=replace)
        if name in names:
            raise BundleError(f"two BUNDLE arguments are both named {name}")
        names.append(name)
        log(f"[monailabel] {name}: {what} -> {path}")
    return names


def is_url(studies) -> bool:
    """Whether ``--studies`` names a DICOMweb service rather than a folder."""
    return str(studies).startswith(("http://", "https://"))


def dicomweb_environment(app_dir, modality: str = "MR", environ=None) -> dict[str, str]:
    """MONAI Label's settings for a DICOMweb datastore (environment variables; the user's own values are kept)."""
    environ = os.environ if environ is None else environ
    wanted = {
        "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": modality} if modality else {}),
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(Path(app_dir).resolve() / "dicomweb_cache"),
        "MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "0",  # QIDO lists not cached: a label just saved counts at once
    }
    return {k: v for k, v in wanted.items() if k not in environ}


def server_command(python: str, app_dir, studies, names: list[str], port: int) -> list[str]:
    """``monailabel start_server`` on 127.0.0.1 for these bundles, run with the environment's Python directly (the
    ``monailabel`` launcher script runs whichever ``python`` is first on PATH)."""
    return [
        python, "-m", "monailabel.main", "start_server",
        "--app", str(Path(app_dir).resolve()),
        "--studies", str(studies) if is_url(studies) else str(Path(studies).resolve()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--conf", "models", ",".join(names),
    ]  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", metavar="BUNDLE", help="exported bundle zip or bundle folder")
    parser.add_argument("--studies", required=True, help="folder of images (NIfTI; labels go to DIR/labels/final) or "
                                                         "a DICOMweb URL (a PACS; labels go back to it as DICOM SEG)")
    parser.add_argument("--modality", default="MR", help="with a DICOMweb URL: the modality of the series served")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--app_dir", default=str(DEFAULT_APP_DIR), help="where the app is laid out")
    parser.add_argument("--replace", action="store_true", help="replace served copies kept from an earlier serve")
    parser.add_argument("--python", default=sys.executable, help="the Python of the MONAI Label environment")
    parser.add_argument("--dry_run", action="store_true", help="lay out the app and print the command only")
    args = parser.parse_args(argv)
    if not is_url(args.studies) and not Path(args.studies).is_dir():
        raise SystemExit(f"--studies {args.studies}: no such folder (or give a DICOMweb URL, http://...)")
    try:
        names = layout_app(args.app_dir, args.bundles, replace=args.replace)
    except BundleError as error:
        raise SystemExit(f"[monailabel] {error}") from None
    cmd = server_command(args.python, args.app_dir, args.studies, names, args.port)
    print("[monailabel] $ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    if is_url(args.studies):
        extra = dicomweb_environment(args.app_dir, args.modality)
        env.update(extra)
        for key, value in extra.items():
            print(f"[monailabel] {key}={value}")
        # MONAI Label runs helper commands by name; the environment's own bin first
        env["PATH"] = f"{Path(args.python).parent}{os.pathsep}{env.get('PATH', '')}"
    if args.dry_run:
        return
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main(sys.argv[1:])
