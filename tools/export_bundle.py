"""Export a trained bundle as a self-contained MONAI bundle zip, verify one, and keep configs in the zoo's JSON style.

    python tools/export_bundle.py export --bundle bundles/coral_mri_segmentation --run_dir runs/coral/bundle \\
        --output_dir dist [--version 0.1.0] [--metrics runs/coral/metrics/metrics_summary.json] [--data_note "..."]
        [--key ~/.config/volssl/signing_key]
    python tools/export_bundle.py verify dist/coral_mri_segmentation_v0.1.0.zip [--public_key SHA256:...]  # or a folder
    python tools/export_bundle.py key [--key PATH]                                  # the signing key's fingerprint
    python tools/export_bundle.py export ... --weights_url URL_PREFIX [--without_weights]  # zoo pull-request layout
    python tools/export_bundle.py fetch BUNDLE_FOLDER        # download the weights large_files.yml lists, hash checked
    python tools/export_bundle.py requirements ZIP_OR_FOLDER  # the pip line metadata.json pins
    python tools/export_bundle.py format bundles [--check]                          # model-zoo JSON style

``export`` reads the training run's bundle root ``RUN`` (the ``--bundle_root`` of its ``train.json`` run):
``RUN/models/model.pt`` and ``RUN/models/training_record.json`` (written by ``train.json``: the values the weights
were trained with, the label names and the training data's statistics), plus ``pretrain.pt`` and
``pretraining_record.json`` for the slice-pretraining bundles. It writes ``DIST/<name>_v<version>.zip`` holding one
folder ``<name>/`` laid out as a model-zoo bundle:

- ``configs/``: the bundle's configs (``pretrain``, ``train``, ``inference``, ``evaluate``, ``multi_gpu_*``,
  ``metadata``, ``logging.conf``) with the recorded values folded in, so that ``configs/inference.json`` alone
  loads ``models/model.pt`` (overlays such as ``cpu_small.json`` are not shipped: their values are in the configs);
  ``inference.json`` gets ``expected_input`` (the training data's spacing, size and intensity range);
  ``metadata.json`` gets the label names, the versions of this environment and, with ``--metrics``, the measured
  ``eval_metrics``;
- ``volssl/``: the shared package, vendored (MONAI's ``run`` puts the config file's bundle folder on ``sys.path``,
  so the bundle runs from any working directory with ``--config_file <bundle>/configs/...``);
- ``models/``: ``model.pt``, ``model.ts`` (TorchScript, from ``ckpt_export`` run on the exported configs and code),
  the pretrained encoder where the method has one, and the training records;
- ``docs/``, ``LICENSE``, ``large_files.yml`` (the zoo's format, sha256 hashes) and ``checksums.sha256`` (a sha256 of
  every other file, ``sha256sum -c`` format).

``export`` signs ``checksums.sha256`` with the exporter's Ed25519 key (``volssl.bundle.signing``; ``--key``, else
``$VOLSSL_SIGNING_KEY``, else ``~/.config/volssl/signing_key``, created on first use) into
``checksums.sha256.sig`` and prints the key's fingerprint, to be published with the zip.

``verify`` checks a zip's members before extracting anything (``volssl.bundle.archive``: no absolute or ``..``
paths, no links, bounded member count and sizes). With ``--public_key`` it exits 0 only for a bundle signed by that
key whose files all have their signed hashes (else it names the first file that differs); without it, it says who
signed the bundle (unchecked) or that the bundle is unsigned. It exits 0 only when every file's hash matches the
manifest, no file is missing or unlisted, the ``large_files.yml`` hashes match and every config parses (and
``metadata.json`` passes MONAI's ``verify_metadata`` against the zoo schema kept in ``tools/schema/``); otherwise it
prints what is wrong, naming the file, and exits 2.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path


try:
    import cli
except ImportError:  # imported from elsewhere rather than run as `python tools/<tool>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cli
from volssl.bundle import archive, signing, zoo
from volssl.io import VolsslInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "common" / "volssl"
SCHEMA = Path(__file__).resolve().parent / "schema" / "meta_schema_20240725.json"
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"  # of the verbatim copy
MANIFEST = "checksums.sha256"
LARGE_FILES = "large_files.yml"
# the configs a bundle ships; anything else in configs/ is an overlay whose values a run folds in
SHIPPED_CONFIGS = (
    "metadata.json",
    "pretrain.json",
    "train.json",
    "inference.json",
    "evaluate.json",
    "multi_gpu_pretrain.json",
    "multi_gpu_train.json",
    "logging.conf",
)
# run-time packages the bundles declare in metadata.json (pip names); torch, monai and numpy have their own keys.
# fire: `python -m monai.bundle` itself needs it, and a plain `pip install monai` does not bring it.
# itk-io, pydicom, highdicom: DICOM series in (ITK through MONAI's ITKReader, headers by pydicom), DICOM SEG out.
REQUIRED_PACKAGES = ("fire", "nibabel", "pytorch-ignite", "tqdm", "scipy", "tensorboard", "matplotlib", "itk-io",
                     "pydicom", "highdicom")
# overlays are parsed on top of the config they extend
OVERLAY_BASES = {
    "multi_gpu_train.json": "train.json",
    "multi_gpu_pretrain.json": "pretrain.json",
    "evaluate.json": "inference.json",
}
IGNORED_NAMES = ("__pycache__", ".pytest_cache")


def zoo_json(obj) -> str:
    """The model-zoo's JSON style: 4-space indent, lists expanded, key order kept, final newline."""
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


sha256 = zoo.sha256


def _version(dist: str) -> str:
    return importlib_metadata.version(dist).split("+")[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VolsslInputError(path, "file not found") from None
    except ValueError as err:
        raise VolsslInputError(path, f"not valid JSON ({err})") from None


def _record(path: Path, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise VolsslInputError(
                path, "training record not found; train with this version's configs (train.json writes it when a "
                "run starts), or pass the bundle root of such a run as --run_dir")
        return None
    record = _read_json(path)
    if not isinstance(record.get("values"), dict):
        raise VolsslInputError(path, "not a training record (no 'values' object)")
    return record


def fold_values(config: dict, values: dict) -> dict:
    """``config`` with each top-level key that ``values`` also has set to the recorded value."""
    return {key: (values[key] if key in values else value) for key, value in config.items()}


def _check_consistent(train: dict, pretrain: dict | None) -> None:
    if pretrain is None:
        return
    clash = {k: (pretrain[k], train[k]) for k in ("in_channels", "features") if k in pretrain and k in train
             and pretrain[k] != train[k]}
    if clash:
        raise VolsslInputError("pretraining_record.json", f"the pretraining and fine-tuning runs differ in {clash}")


# where the repository's metadata.json says what its eval_metrics are (the released weights'); cut from exports
RELEASE_METRICS_NOTE = " eval_metrics: those of the released"


def _metadata(meta: dict, record: dict, metrics: dict | None, data_note: str | None) -> dict:
    meta = dict(meta)
    # the repository's eval_metrics (and the sentence on them) describe the released weights: another run's export
    # carries its own measurement or none
    meta["eval_metrics"] = {}
    meta["data_source"] = meta.get("data_source", "").split(RELEASE_METRICS_NOTE)[0].rstrip()
    meta["monai_version"] = _version("monai")
    meta["pytorch_version"] = _version("torch")
    meta["numpy_version"] = _version("numpy")
    meta["required_packages_version"] = {name: _version(name) for name in REQUIRED_PACKAGES}
    labels = record.get("labels")
    fmt = json.loads(json.dumps(meta["network_data_format"]))
    num_classes = record["values"].get("num_classes")
    if labels:
        if num_classes is not None and len(labels) != num_classes:
            raise VolsslInputError("training_record.json",
                                   f"the datalist names {len(labels)} classes, the run trained {num_classes}")
        fmt["outputs"]["pred"]["channel_def"] = {str(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}
        named = ", ".join(f"{k} {v}" for k, v in sorted(labels.items(), key=lambda kv: int(kv[0])))
        meta["label_classes"] = f"integer label map: {named}"
        meta["pred_classes"] = f"integer label map on the input grid: {named}"
    elif num_classes is not None:
        fmt["outputs"]["pred"]["channel_def"] = {"0": "background", **{str(i): f"class {i}" for i in range(1, num_classes)}}
    if num_classes is not None:
        fmt["outputs"]["pred"]["num_channels"] = int(num_classes)
    meta["network_data_format"] = fmt
    if metrics is not None:
        mean = metrics["mean_foreground"]
        scores = {"mean_dice": round(mean["dice"]["mean"], 4), "mean_jaccard": round(mean["jaccard"]["mean"], 4),
                  "mean_hd95_mm": round(mean["hd95_mm"]["mean"], 3), "mean_asd_mm": round(mean["asd_mm"]["mean"], 3)}
        for entry in metrics.get("classes", {}).values():
            scores[f"dice_{entry['name']}"] = round(entry["dice"]["mean"], 4)
        meta["eval_metrics"] = scores
    if data_note:
        meta["data_source"] = f"{meta.get('data_source', '').rstrip()} Released weights: {data_note}".strip()
    return meta


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*IGNORED_NAMES, "*.pyc"))


def _torchscript(stage: Path) -> None:
    """``ckpt_export`` with the exported configs and the vendored code (run from the bundle folder, as users do)."""
    configs = stage / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
           "--filepath", str(stage / "models" / "model.ts"), "--ckpt_file", str(stage / "models" / "model.pt"),
           "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
           "--bundle_root", str(stage)]
    env = dict(os.environ, PYTHONPATH="")  # the vendored volssl, found from the bundle folder, not an installed one
    proc = subprocess.run(cmd, cwd=stage, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not (stage / "models" / "model.ts").is_file():
        print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
        raise VolsslInputError(stage / "configs" / "inference.json", "ckpt_export (TorchScript) failed, see above")
    for cache in stage.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def _large_files(stage: Path, weights_url: str) -> str:
    return zoo.large_files_yaml(stage, weights_url)


def _copy_record(src: Path, dst: Path, run: Path) -> None:
    """A training record without the exporting machine's absolute paths (relative to the repository or the run), in
    the zoo's JSON style."""
    dst.write_text(zoo_json(zoo.portable_record(_read_json(src), [REPO_ROOT, run])))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(n in p.parts for n in IGNORED_NAMES)
                  and p.suffix != ".pyc")


def _write_manifest(stage: Path) -> None:
    lines = [f"{sha256(p)}  {p.relative_to(stage).as_posix()}" for p in _files(stage) if p.name != MANIFEST]
    (stage / MANIFEST).write_text("\n".join(lines) + "\n")


def _zip(stage: Path, zip_path: Path) -> None:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".tmp_{zip_path.name}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in _files(stage):
            info = zipfile.ZipInfo(f"{stage.name}/{path.relative_to(stage).as_posix()}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, zip_path)


def export(
    bundle: str,
    run_dir: str,
    output_dir: str = "dist",
    version: str | None = None,
    metrics: str | None = None,
    data_note: str | None = None,
    weights_url: str = "",
    key: str | None = None,
    without_weights: bool = False,
) -> str:
    """Write ``<output_dir>/<name>_v<version>.zip`` from the training run in ``run_dir``; returns its path.

    Args:
        bundle: the bundle folder in this repository, e.g. ``bundles/coral_mri_segmentation``.
        run_dir: the training run's bundle root (holds ``models/model.pt`` and ``models/training_record.json``).
        output_dir: where the zip goes.
        version: the bundle version (default: ``metadata.json``'s).
        metrics: a ``metrics_summary.json`` (tools/evaluate.py, evaluate.json) of exactly these weights, for
            ``eval_metrics`` (default: ``<run_dir>/eval/metrics_summary.json`` when it exists).
        data_note: one sentence on the training and evaluation data of these weights, appended to ``data_source``.
        weights_url: where the weights will be hosted (``large_files.yml`` urls); empty: shipped in the zip only.
        key: the exporter's Ed25519 signing key (default ``$VOLSSL_SIGNING_KEY``, else
            ``~/.config/volssl/signing_key``; created on first use): the manifest is signed with it.
        without_weights: the model zoo's pull-request layout: the zip leaves the weight files out (needs
            ``weights_url``; they go to ``<output_dir>/<name>_v<version>_weights/``, to be uploaded there), and
            ``fetch`` (or the zoo's CI) downloads them from the URLs, hash checked.
    """
    if without_weights and not weights_url:
        raise VolsslInputError("--without_weights", "needs --weights_url URL_PREFIX (where the weights will be hosted)")
    bundle_dir, run = Path(bundle).resolve(), Path(run_dir).resolve()
    configs = bundle_dir / "configs"
    if not (configs / "metadata.json").is_file():
        raise VolsslInputError(bundle_dir, "not a bundle folder (no configs/metadata.json)")
    has_pretraining = (configs / "pretrain.json").is_file()
    for needed in ["model.pt"] + (["pretrain.pt"] if has_pretraining else []):
        if not (run / "models" / needed).is_file():
            raise VolsslInputError(run / "models" / needed, f"not found; is {run} the bundle root of a finished run?")
    record = _record(run / "models" / "training_record.json", required=True)
    pre_record = _record(run / "models" / "pretraining_record.json", required=False) if has_pretraining else None
    _check_consistent(record["values"], pre_record["values"] if pre_record else None)
    meta = _read_json(configs / "metadata.json")
    version = str(version or meta["version"])
    meta["version"] = version
    metrics_path = Path(metrics) if metrics else run / "eval" / "metrics_summary.json"
    summary = _read_json(metrics_path) if (metrics or metrics_path.is_file()) else None

    name = bundle_dir.name
    with tempfile.TemporaryDirectory(prefix="volssl_export_") as tmp:
        stage = Path(tmp) / name
        (stage / "configs").mkdir(parents=True)
        for config in SHIPPED_CONFIGS:
            src = configs / config
            if not src.is_file():
                continue
            if config == "metadata.json":
                (stage / "configs" / config).write_text(zoo_json(_metadata(meta, record, summary, data_note)))
            elif src.suffix == ".json":
                content = _read_json(src)
                values = dict(pre_record["values"]) if pre_record and "pretrain" in config else {}
                values.update(record["values"] if "pretrain" not in config else {})
                content = fold_values(content, values)
                if config == "inference.json" and record.get("training_data"):
                    content = {**content, "expected_input": record["training_data"]}
                (stage / "configs" / config).write_text(zoo_json(content))
            else:
                shutil.copy2(src, stage / "configs" / config)
        _copy_tree(bundle_dir / "docs", stage / "docs")
        shutil.copy2(bundle_dir / "LICENSE", stage / "LICENSE")
        _copy_tree(PACKAGE_DIR, stage / "volssl")
        (stage / "models").mkdir()
        for item in ("model.pt", "pretrain.pt", "training_record.json", "pretraining_record.json"):
            if (run / "models" / item).is_file() and (has_pretraining or "pretrain" not in item):
                if item.endswith(".json"):
                    _copy_record(run / "models" / item, stage / "models" / item, run)
                else:
                    shutil.copy2(run / "models" / item, stage / "models" / item)
        _torchscript(stage)
        (stage / LARGE_FILES).write_text(_large_files(stage, weights_url))
        _write_manifest(stage)
        zip_path = Path(output_dir).resolve() / f"{name}_v{version}.zip"
        private_key, key_file = signing.load_or_create_key(key)
        if without_weights:
            verify(str(stage))  # the whole bundle, weights included, before they leave it
            # rewrites the manifest without the weights (large_files.yml, which is signed, holds their hashes), so
            # the signature comes after; the weights-less folder is checked for its signature only
            stage = _leave_weights_out(stage, zip_path.with_name(f"{name}_v{version}_weights"))
            signer = signing.sign_manifest(stage, MANIFEST, private_key)
            problems = signing.check_signature(stage, MANIFEST, signer, sha256, indexes=(LARGE_FILES,)).problems
            if problems:
                raise VolsslInputError(stage, f"{len(problems)} problem(s), the first: {problems[0]}")
        else:
            signer = signing.sign_manifest(stage, MANIFEST, private_key)
            verify(str(stage), public_key=signer)
        _zip(stage, zip_path)
    print(f"exported {zip_path}")
    print(f"signed with {key_file}: publish this fingerprint with the zip, partners check it with "
          f"`verify {zip_path.name} --public_key {signer}`\nfingerprint {signer}")
    return str(zip_path)


def _leave_weights_out(stage: Path, weights_dir: Path) -> Path:
    """Move the weight files of ``stage`` to ``weights_dir`` (for upload) and list the rest in the manifest; the
    weights stay covered by ``large_files.yml``'s hashes."""
    if weights_dir.exists():
        shutil.rmtree(weights_dir)
    weights_dir.mkdir(parents=True)
    for path in zoo.weight_files(stage):
        shutil.move(str(path), weights_dir / path.name)
    _write_manifest(stage)
    print(f"weights for {LARGE_FILES}'s urls: {weights_dir}")
    return stage


def requirements(path: str) -> None:
    """Print the ``pip install`` line that ``configs/metadata.json`` of the bundle zip or folder at ``path`` pins."""
    with tempfile.TemporaryDirectory(prefix="volssl_requirements_") as tmp:
        meta = _read_json(_bundle_root(Path(path).resolve(), Path(tmp)) / "configs" / "metadata.json")
    print("pip install " + " ".join(zoo.bundle_requirements(meta)))


def fetch(path: str) -> None:
    """Download the weights an exported bundle folder's ``large_files.yml`` lists (hash checked), as the zoo's CI."""
    for target in zoo.fetch_large_files(Path(path)):
        print(f"fetched {target}")


def _bundle_root(path: Path, workdir: Path) -> Path:
    """The bundle folder of a zip (extracted into ``workdir``) or a folder."""
    if not path.exists():
        raise VolsslInputError(path, "file not found")
    if path.is_dir():
        return path
    if not zipfile.is_zipfile(path):
        raise VolsslInputError(path, "neither a bundle folder nor a zip file")
    archive.safe_extract(path, workdir)  # every member checked before anything is written
    tops = [p for p in workdir.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise VolsslInputError(path, f"a bundle zip holds exactly one top folder, found {[p.name for p in tops]}")
    return tops[0]


_parse_large_files = zoo.read_large_files  # the entries of a large_files.yml (no YAML package needed)


def check(path: str, public_key: str | None = None, notes: list[str] | None = None) -> list[str]:
    """The problems of the bundle zip or folder at ``path`` (an empty list when it verifies); with ``public_key``
    (a fingerprint, a public key or a key file) the bundle must be signed by that key. What the signature check
    found (signed by whom, or unsigned) is appended to ``notes``."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="volssl_verify_") as tmp:
        root = _bundle_root(Path(path).resolve(), Path(tmp))
        manifest = root / MANIFEST
        if not manifest.is_file():
            return [f"{manifest}: manifest not found"]
        listed: dict[str, str] = {}
        for number, line in enumerate(manifest.read_text().splitlines(), 1):
            digest, _, rel = line.partition("  ")
            if len(digest) != 64 or not rel:
                problems.append(f"{manifest}: line {number} is not '<sha256>  <path>'")
                continue
            listed[rel] = digest
        present = {p.relative_to(root).as_posix() for p in _files(root)} - {MANIFEST, signing.SIGNATURE}
        for rel in sorted(set(listed) - present):
            problems.append(f"{rel}: listed in {MANIFEST} but missing")
        # each file hashed once, although the manifest, large_files.yml and the signature name the same weights
        file_sha256 = functools.cache(sha256)
        large = root / LARGE_FILES
        large_entries = _parse_large_files(large.read_text()) if large.is_file() else None
        large_paths = {e.get("path") for e in large_entries or []}
        for rel in sorted(present - set(listed) - large_paths):  # weights fetched for large_files.yml: its hashes
            problems.append(f"{rel}: not listed in {MANIFEST}")
        for rel in sorted(set(listed) & present):
            if file_sha256(root / rel) != listed[rel]:
                problems.append(f"{rel}: sha256 differs from {MANIFEST} (the file was changed or damaged)")
        if large_entries is not None:
            for entry in large_entries:
                target = root / entry.get("path", "")
                if not target.is_file():
                    problems.append(f"{entry.get('path')}: listed in {LARGE_FILES} but missing (not fetched: "
                                    "export_bundle.py fetch)")
                elif entry.get("hash_type") == "sha256" and file_sha256(target) != entry.get("hash_val"):
                    problems.append(f"{entry.get('path')}: sha256 differs from {LARGE_FILES}")
        else:
            problems.append(f"{LARGE_FILES}: not found")
        signature = signing.check_signature(root, MANIFEST, public_key, file_sha256, indexes=(LARGE_FILES,))
        problems = signature.problems + problems  # a file changed after signing is named first
        if notes is not None:
            notes.append(signature.note)
        problems += _check_configs(root)
    return problems


def _check_configs(root: Path) -> list[str]:
    from monai.bundle import ConfigParser

    problems = []
    configs = sorted((root / "configs").glob("*.json"))
    if not any(c.name == "inference.json" for c in configs) or not any(c.name == "metadata.json" for c in configs):
        problems.append(f"{root / 'configs'}: inference.json and metadata.json are required")
    for config in configs:
        if config.name == "metadata.json":
            continue
        base = OVERLAY_BASES.get(config.name)
        files = [str(config.parent / base), str(config)] if base else [str(config)]
        try:
            parser = ConfigParser()
            parser.read_config(files)
            parser.parse()
        except Exception as err:  # noqa: BLE001 - any parse failure is reported with the file
            problems.append(f"{config.relative_to(root)}: does not parse ({type(err).__name__}: {err})")
    meta = root / "configs" / "metadata.json"
    if meta.is_file() and SCHEMA.is_file():
        problems += metadata_problems(meta)
    return problems


def metadata_problems(meta: Path) -> list[str]:
    """MONAI's ``verify_metadata`` against the zoo schema kept in ``tools/schema`` (offline: no download)."""
    from monai.bundle import verify_metadata

    try:
        import jsonschema  # noqa: F401 - MONAI imports it optionally and fails with a TypeError when it is missing
    except ImportError:
        raise VolsslInputError(meta, "checking it against the model-zoo schema needs the jsonschema package: "
                               "pip install -r requirements.txt (or pip install jsonschema)") from None
    try:
        verify_metadata(meta_file=str(meta), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")
    except Exception as err:  # noqa: BLE001 - jsonschema's ValidationError and friends
        return [f"{meta.name}: fails the model-zoo metadata schema ({type(err).__name__}: {str(err)[:300]})"]
    return []


def verify(path: str, public_key: str | None = None) -> None:
    """Exit 0 when the bundle zip or folder at ``path`` verifies (and, with ``--public_key``, is signed by that key:
    a fingerprint ``SHA256:...``, a public key or a key file); otherwise print each problem and exit 2."""
    notes: list[str] = []
    problems = check(path, public_key=public_key, notes=notes)
    if problems:
        print("\n".join(f"FAIL {p}" for p in problems), file=sys.stderr)
        raise VolsslInputError(path, f"{len(problems)} problem(s), the first: {problems[0]}")
    print(f"ok {path}: every file matches {MANIFEST}, configs parse, metadata passes the zoo schema; {notes[0]}")


def key(key: str | None = None) -> None:
    """Print the fingerprint and public key of the signing key ``export`` uses (``--key``, else
    ``$VOLSSL_SIGNING_KEY``, else ``~/.config/volssl/signing_key``, created on first use)."""
    private_key, path = signing.load_or_create_key(key)
    print(f"signing key {path}\npublic key  {signing.public_key_text(private_key.public_key())}\n"
          f"fingerprint {signing.fingerprint(private_key.public_key())}")


def format(*paths: str, check: bool = False) -> None:  # noqa: A001 - the command's name on the command line
    """Rewrite the JSON configs under ``paths`` (files or folders) in the model-zoo style; with ``--check``, change
    nothing and exit 1 listing the files that are not in that style."""
    files = [p for path in paths for p in (sorted(Path(path).rglob("configs/*.json")) if Path(path).is_dir() else [Path(path)])]
    unstyled = []
    for path in files:
        text = path.read_text()
        styled = zoo_json(json.loads(text))
        if text != styled:
            unstyled.append(str(path))
            if not check:
                path.write_text(styled)
    if check and unstyled:
        raise VolsslInputError(unstyled[0], f"not in the model-zoo JSON style ({len(unstyled)} file(s): "
                               f"{', '.join(unstyled)}); run without --check to reformat")
    print(f"{len(files)} config(s) checked, {len(unstyled)} {'to reformat' if check else 'reformatted'}")


if __name__ == "__main__":
    cli.main({"export": export, "verify": verify, "fetch": fetch, "format": format, "requirements": requirements,
              "key": key}, name="export_bundle.py")
