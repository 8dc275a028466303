"""The MONAI model zoo's pull-request layout and its CI checks, run offline on an exported bundle.

A model-zoo pull request adds ``models/<name>/`` without its weights: ``large_files.yml`` at the bundle root lists
each weight file's download URL and sha256, and the zoo's CI (``ci/run_premerge_cpu.sh`` ->
``ci/verify_bundle.py -m min``) downloads them before it checks the bundle. The same pull request must pass the zoo's
pre-commit hooks, and the code its isort, black and flake8 settings. This module holds those rules as the zoo states
them (snapshot :data:`ZOO_SNAPSHOT` of ``Project-MONAI/model-zoo``) so an export can be checked before it is
submitted:

- :func:`large_files_yaml` / :func:`read_large_files` / :func:`fetch_large_files`: the ``large_files.yml`` with real
  URLs and hashes, and the download the zoo's CI does (MONAI's ``download_url``, hash checked).
- :func:`pull_request_layout`: a copy of a bundle folder with the weights left out.
- :func:`verify_bundle`: the checks of the zoo's ``verify_bundle.py`` (directory, version and changelog, metadata
  schema; with ``mode="full"`` also ``verify_net_in_out`` and TorchScript), the schema read from a local file.
- :func:`pre_commit_problems` / :func:`code_style_problems`: the zoo's pre-commit hooks (the ``pre-commit-hooks``
  package's console scripts, each on the files pre-commit would give it) and isort / black / flake8 with the zoo's
  ``setup.cfg`` and ``pyproject.toml`` settings.
- :func:`portable_record` / :func:`machine_paths`: exported records without the exporting machine's absolute paths,
  and a scan for such paths.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LARGE_FILES",
    "WEIGHT_SUFFIXES",
    "ZOO_SNAPSHOT",
    "bundle_requirements",
    "code_style_problems",
    "fetch_large_files",
    "large_files_yaml",
    "machine_paths",
    "portable_record",
    "pre_commit_problems",
    "pull_request_layout",
    "read_large_files",
    "sha256",
    "verify_bundle",
]

ZOO_SNAPSHOT = "dfae206"  # Project-MONAI/model-zoo commit these rules were read from
LARGE_FILES = "large_files.yml"
WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx", ".pth")  # files a pull request leaves out and large_files.yml lists

# the zoo's setup.cfg [flake8] and [isort], and pyproject.toml [tool.black] (line length, target versions)
FLAKE8_CONFIG = """[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore = E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419
per_file_ignores = __init__.py: F401, __main__.py: F401
exclude = *.pyi,.git,.eggs,monai/_version.py,versioneer.py,venv,.venv,_version.py
"""
ISORT_ARGS = ("--profile", "black", "--line-length", "120", "--project", "models")  # known_first_party = models
BLACK_ARGS = (
    "--skip-magic-trailing-comma",
    "--line-length",
    "120",
    "--target-version",
    "py37",
    "--target-version",
    "py38",
    "--target-version",
    "py39",
)


@dataclass(frozen=True)
class Hook:
    """One hook of the zoo's ``.pre-commit-config.yaml``: its id, its arguments, the identify tags a file needs (the
    hook's ``types``), the hook's ``exclude`` pattern and the ``pre-commit-hooks`` console script (default: the id)."""

    id: str
    args: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    exclude: str | None = None
    script: str | None = None


# in the zoo's order; the global exclude is '.*\.ipynb$'. Not run: forbid-new-submodules (a git-index check; an
# exported folder has no submodules).
ZOO_HOOKS = (
    Hook("end-of-file-fixer", types=("text",)),
    Hook("trailing-whitespace", types=("text",), exclude=r".*\.(ts|pt)$", script="trailing-whitespace-fixer"),
    Hook("check-yaml", types=("yaml",)),
    Hook("check-docstring-first", types=("python",)),
    Hook("check-executables-have-shebangs", types=("text", "executable")),
    Hook("check-toml", types=("toml",)),
    Hook("check-case-conflict"),
    Hook("check-added-large-files", args=("--maxkb=1024",)),  # the files a commit adds (all, in a new bundle)
    Hook("detect-private-key", types=("text",)),
    Hook("pretty-format-json", args=("--autofix", "--no-sort-keys", "--indent=4"), types=("json",)),
    Hook("end-of-file-fixer", types=("text",)),
    Hook("mixed-line-ending", types=("text",)),
)
GLOBAL_EXCLUDE = r".*\.ipynb$"


# -- large_files.yml ----------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """The sha256 of a file, hex (the hash ``large_files.yml`` and the bundle manifest carry)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(bundle_dir: str | os.PathLike) -> list[Path]:
    """The weight files under ``<bundle_dir>/models`` (those a zoo pull request leaves out), sorted."""
    models = Path(bundle_dir) / "models"
    return sorted(p for p in models.glob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def large_files_yaml(bundle_dir: str | os.PathLike, weights_url: str = "") -> str:
    """``large_files.yml`` for the weights of ``bundle_dir``: path, URL (``<weights_url>/<file name>``), sha256.

    With an empty ``weights_url`` the URLs are empty: such a file describes weights shipped in a zip, and the zoo's
    download of it fails (``unknown url type: ''``).
    """
    lines = ["large_files:"]
    prefix = weights_url.rstrip("/")
    for path in weight_files(bundle_dir):
        url = f"{prefix}/{path.name}" if prefix else ""
        lines += [
            f'  - path: "models/{path.name}"',
            f'    url: "{url}"',
            f'    hash_val: "{sha256(path)}"',
            '    hash_type: "sha256"',
        ]
    return "\n".join(lines) + "\n"


def read_large_files(text: str) -> list[dict]:
    """The entries of a ``large_files.yml`` as :func:`large_files_yaml` writes it (no YAML package needed)."""
    entries: list[dict] = []
    current: dict | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            current = {}
            entries.append(current)
            stripped = stripped[2:]
        if ":" in stripped and current is not None:
            key, value = stripped.split(":", 1)
            current[key.strip()] = value.strip().strip('"')
    return entries


def fetch_large_files(bundle_dir: str | os.PathLike, large_files: str = LARGE_FILES) -> list[Path]:
    """Download every file ``large_files.yml`` lists into ``bundle_dir``, hash checked, as the zoo's CI does
    (``ci/utils.py: download_large_files``, MONAI's ``download_url``); returns the paths written.

    Raises:
        ValueError: an entry without a URL (the zoo's CI fails there too), or a download whose hash differs.
    """
    from monai.apps.utils import download_url

    bundle_dir = Path(bundle_dir)
    fetched = []
    for entry in read_large_files((bundle_dir / large_files).read_text()):
        if not entry.get("url"):
            raise ValueError(f"{bundle_dir / large_files}: {entry.get('path')} has no url; export with --weights_url")
        target = bundle_dir / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        download_url(
            url=entry["url"],
            filepath=str(target),
            hash_val=entry.get("hash_val") or None,
            hash_type=entry.get("hash_type") or "sha256",
            progress=False,
        )
        fetched.append(target)
    return fetched


def pull_request_layout(bundle_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy ``bundle_dir`` to ``dest/<name>`` without its weight files (the zoo's pull-request layout); returns it.

    The weights are then reachable only through ``large_files.yml``'s URLs.
    """
    bundle_dir = Path(bundle_dir)
    target = Path(dest) / bundle_dir.name
    shutil.copytree(
        bundle_dir,
        target,
        ignore=lambda folder, names: [
            n for n in names if Path(folder).name == "models" and Path(n).suffix in WEIGHT_SUFFIXES
        ],
    )
    return target


def bundle_requirements(meta: dict) -> list[str]:
    """The pinned pip requirements a bundle's ``metadata.json`` declares, in the order of the zoo's
    ``ci/get_bundle_requirements.py``: ``monai``, ``torch``, ``numpy``, then ``optional_packages_version`` and
    ``required_packages_version`` (``name==version`` each)."""
    libs = [
        f"{dist}=={meta[key]}"
        for dist, key in (("monai", "monai_version"), ("torch", "pytorch_version"), ("numpy", "numpy_version"))
        if key in meta
    ]
    for key in ("optional_packages_version", "required_packages_version"):
        libs += [f"{name}=={version}" for name, version in meta.get(key, {}).items()]
    return libs


# -- the zoo's verify_bundle.py -----------------------------------------------------------------------------------------


def verify_bundle(
    bundle_dir: str | os.PathLike, schema: str | os.PathLike, mode: str = "min", schema_sha256: str | None = None
) -> list[str]:
    """The checks of the zoo's ``ci/verify_bundle.py`` on ``bundle_dir``; returns what passed, raises on a failure.

    ``mode="min"`` (the zoo's CPU pre-merge): the weights are fetched from ``large_files.yml`` when it lists any that
    are absent, then the required files (``configs/metadata.json``, ``LICENSE``, ``models/model.pt``,
    ``configs/inference.json``), ``version`` in ``changelog``, and ``metadata.json`` against ``schema`` (a local copy
    of the zoo schema: no download). ``mode="full"`` adds ``verify_net_in_out`` and the TorchScript export of
    ``network_def`` (``ckpt_export``) plus loading the shipped ``models/model.ts``. Run it with the bundle folder
    first on ``sys.path`` (as the zoo does) so the bundle's own code is the one imported.

    Raises:
        ValueError: the first check that fails, naming it.
    """
    import torch
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    root = Path(bundle_dir)
    passed = []
    large = root / LARGE_FILES
    if large.is_file() and any(not (root / e["path"]).is_file() for e in read_large_files(large.read_text())):
        try:
            fetch_large_files(root)
        except Exception as err:  # noqa: BLE001 - the zoo wraps every download error the same way
            raise ValueError(f"Download large files in {root} error: {err}") from err
        passed.append("large files downloaded")
    for rel in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        if not (root / rel).is_file():
            raise ValueError(f"{root}: necessary file {rel} is missing")
    passed.append("directory")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    if "version" not in meta or meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"{root / 'configs' / 'metadata.json'}: version {meta.get('version')!r} missing in changelog")
    passed.append("version and changelog")
    verify_metadata(
        meta_file=str(root / "configs" / "metadata.json"),
        filepath=str(schema),
        hash_val=schema_sha256,
        hash_type="sha256",
    )
    passed.append("metadata format")
    if mode == "min":
        return passed
    common = {
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(root),
    }
    verify_net_in_out(net_id="network_def", **common)
    passed.append("data shape")
    with tempfile.TemporaryDirectory(prefix="volssl_zoo_ts_") as tmp:
        ckpt_export(
            net_id="network_def",
            filepath=str(Path(tmp) / "verify_model.ts"),
            ckpt_file=str(root / "models" / "model.pt"),
            **common,
        )
    if (root / "models" / "model.ts").is_file():
        torch.jit.load(str(root / "models" / "model.ts"))
    passed.append("torchscript")
    return passed


# -- pre-commit, isort, black, flake8 -----------------------------------------------------------------------------------


def _script(name: str) -> str:
    """A console script of this environment (next to its python), else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not installed (pip install -r requirements-dev.txt)")
    return found


def _tags(path: Path) -> set[str]:
    from identify import identify

    return set(identify.tags_from_path(str(path)))


def _is_binary(path: Path) -> bool:
    """By content (NUL bytes or undecodable as UTF-8), whatever the file's name says."""
    data = path.read_bytes()[:8192]
    if b"\0" in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _hook_files(root: Path, hook: Hook) -> list[Path]:
    """The files pre-commit would give ``hook`` (its types and excludes, the zoo's global exclude)."""
    selected = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts):
        rel = path.relative_to(root).as_posix()
        if re.fullmatch(GLOBAL_EXCLUDE, rel) or (hook.exclude and re.fullmatch(hook.exclude, rel)):
            continue
        if set(hook.types) <= _tags(path):
            selected.append(path)
    return selected


def pre_commit_problems(bundle_dir: str | os.PathLike, hooks: Sequence[Hook] = ZOO_HOOKS) -> list[str]:
    """Run the zoo's pre-commit hooks on a copy of ``bundle_dir``; returns one line per failing hook or file.

    A hook fails when it exits non-zero or rewrites a file (the zoo's pre-commit then fails the pull request). A
    binary file that a text hook would receive (``model.ts`` is tagged text by its name) is a problem by itself:
    the hook would rewrite it. The copy is a git repository with every file staged, as in the commit that adds the
    bundle (``check-added-large-files`` and ``check-case-conflict`` read the git index). ``bundle_dir`` itself is
    never changed.
    """
    problems = []
    with tempfile.TemporaryDirectory(prefix="volssl_zoo_hooks_") as tmp:
        copy = Path(tmp) / Path(bundle_dir).name
        shutil.copytree(bundle_dir, copy, symlinks=True)
        git = ["git", "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"]
        for args in (["init", "-q"], ["add", "-A"]):
            subprocess.run([*git, *args], cwd=copy, check=True, capture_output=True)
        for hook in hooks:
            files = _hook_files(copy, hook)
            if not files:
                continue
            rel = [f.relative_to(copy).as_posix() for f in files]
            if "text" in hook.types:
                problems += [
                    f"{r}: binary, but {hook.id} treats it as text and would rewrite it"
                    for f, r in zip(files, rel)
                    if _is_binary(f)
                ]
            proc = subprocess.run(
                [_script(hook.script or hook.id), *hook.args, *rel], cwd=copy, capture_output=True, text=True
            )
            changed = [r for f, r in zip(files, rel) if not filecmp.cmp(f, Path(bundle_dir) / r, shallow=False)]
            if proc.returncode != 0 or changed:
                detail = (proc.stdout + proc.stderr).strip().splitlines()
                problems.append(
                    f"{hook.id}: fails (exit {proc.returncode}; changed {changed or 'nothing'}): "
                    f"{' | '.join(detail[:5])}"
                )
            for f, r in zip(files, rel):  # the next hook sees the original files, as each problem is reported
                shutil.copy2(Path(bundle_dir) / r, f)
    return problems


def code_style_problems(bundle_dir: str | os.PathLike, paths: Sequence[str] = (".",)) -> list[str]:
    """isort, black and flake8 in check mode with the zoo's settings on ``paths`` (relative to ``bundle_dir``; default
    the whole bundle); one line per failing tool with its first complaints. Nothing is changed.

    The tools run from the folder holding the bundle, as the zoo runs them from its root with the bundle in
    ``models/<name>/``: isort then finds no first-party ``volssl`` and sorts the vendored package's absolute imports
    with the third-party ones.
    """
    bundle_dir = Path(bundle_dir).resolve()
    targets = [str(bundle_dir / p) for p in paths]
    problems = []
    with tempfile.TemporaryDirectory(prefix="volssl_zoo_style_") as tmp:
        flake8_cfg = Path(tmp) / "setup.cfg"
        flake8_cfg.write_text(FLAKE8_CONFIG)
        commands = {
            "isort": [sys.executable, "-m", "isort", "--check-only", *ISORT_ARGS, *targets],
            "black": [sys.executable, "-m", "black", "--check", *BLACK_ARGS, *targets],
            "flake8": [sys.executable, "-m", "flake8", "--config", str(flake8_cfg), *targets],
        }
        for tool, cmd in commands.items():
            proc = subprocess.run(cmd, cwd=bundle_dir.parent, capture_output=True, text=True)
            if proc.returncode != 0:
                lines = [
                    ln.replace(f"{bundle_dir}/", "")
                    for ln in (proc.stdout + proc.stderr).splitlines()
                    if ln.strip() and not ln.startswith(("Oh no", "All done"))
                ]
                problems.append(f"{tool}: fails ({len(lines)} line(s)): {' | '.join(lines[:8])}")
    return problems


# -- machine paths ------------------------------------------------------------------------------------------------------

_ABSOLUTE = re.compile(r"(?<![\w.:/])/(?:[\w.+@-]+/)+([\w.+@-]+)")


def _relative(text: str, bases: Sequence[Path], cut_others: bool) -> str:
    for base in bases:  # in the order given: the first base that holds a path wins
        text = text.replace(f"{base}/", "").replace(str(base), ".")
    return _ABSOLUTE.sub(lambda m: m.group(1), text) if cut_others else text  # outside every base: the file name


def portable_record(record: dict, bases: Sequence[str | os.PathLike]) -> dict:
    """A copy of a training record without the exporting machine's absolute paths: paths under one of ``bases``
    become relative to it (everywhere); in ``command`` (how the run was started) any other absolute path is cut to
    its file name. Values outside ``command`` keep other absolute paths (a config's ``/workspace/data``)."""
    bases = [Path(b).resolve() for b in bases]

    def walk(value, cut_others: bool):
        if isinstance(value, dict):
            return {k: walk(v, cut_others or k == "command") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, cut_others) for v in value]
        return _relative(value, bases, cut_others) if isinstance(value, str) else value

    return walk(record, False)


def machine_paths(bundle_dir: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> list[str]:
    """``file: root`` for each text file under ``bundle_dir`` that names one of ``roots`` (absolute folders of the
    exporting machine: the repository, the run, the data, the home folder). A root counts only as a whole path
    component: ``/work`` does not match ``/workspace``."""
    needles = {str(Path(r).resolve()): None for r in roots if str(r)}
    patterns = {root: re.compile(re.escape(root) + r"(?![\w.+@-])") for root in needles}
    found = []
    for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
        if _is_binary(path):
            continue
        text = path.read_text(encoding="utf-8")
        hit = next((root for root, pattern in patterns.items() if pattern.search(text)), None)
        if hit:
            found.append(f"{path.relative_to(bundle_dir).as_posix()}: {hit}")
    return found
