"""What the volssl MONAI Label app decides about a bundle, kept apart from MONAI Label so the tests can check it.

Nothing here imports monailabel. The task classes in ``lib/tasks.py`` call these functions. Whether a train request
resumes is the bundle's own decision (``volssl.engines.ResumeFromLatest``: only an interrupted run is resumed, a
finished one is set aside and a new run starts), so the app passes nothing for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "volssl"


def is_bundle(path) -> bool:
    """A folder that MONAI Label can serve: ``configs/metadata.json`` and ``configs/inference.json``."""
    path = Path(path)
    return (path / "configs" / "metadata.json").is_file() and (path / "configs" / "inference.json").is_file()


def find_bundles(model_dir, names=None) -> dict[str, Path]:
    """The bundles in the app's ``model/`` folder: ``{folder name: path}``, sorted by name.

    ``names`` (a list, or a comma-separated string as in ``--conf models a,b``) restricts and orders them; a name with
    no such bundle folder raises ``FileNotFoundError`` naming what is there (the sample app would try a zoo download).
    """
    model_dir = Path(model_dir)
    folders = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
    found = {p.name: p for p in folders if p.is_dir() and is_bundle(p)}
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise FileNotFoundError(f"no bundle {missing} in {model_dir} (bundles there: {sorted(found)})")
    return {n: found[n] for n in names}


def read_metadata(bundle_path) -> dict:
    with open(Path(bundle_path) / "configs" / "metadata.json") as f:
        return json.load(f)


def label_names(metadata: dict) -> dict[int, str]:
    """``{class index: name}`` of the bundle's output, from ``network_data_format.outputs.pred.channel_def`` (what
    MONAI Label shows: every name but ``background``, lower-cased)."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    pred = next(iter(outputs.values()), {}) if outputs else {}
    return {int(k): str(v) for k, v in pred.get("channel_def", {}).items()}


def dimension(metadata: dict) -> int:
    """2 or 3: the length of the input's ``spatial_shape`` (how MONAI Label decides the model's dimension)."""
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    image = next(iter(inputs.values()), {}) if inputs else {}
    shape = image.get("spatial_shape")
    return len(shape) if shape else 3


def package_digest(package_dir) -> str:
    """SHA-256 over the relative paths and bytes of a package's ``.py`` files (what makes two copies the same)."""
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


_digests: dict[str, str] = {}


def _cached_digest(package_dir: Path) -> str:
    key = str(package_dir.resolve())
    if key not in _digests:
        _digests[key] = package_digest(package_dir)
    return _digests[key]


def use_bundle_package(bundle_path, package: str = PACKAGE) -> bool:
    """Make the next import of ``package`` come from this bundle's vendored copy when the loaded copy differs.

    MONAI Label puts each bundle folder first on ``sys.path`` while it parses that bundle's config, but unloads only a
    package named ``scripts`` between bundles: the first bundle that imports ``volssl`` would otherwise serve its copy
    to all. Copies from one export are identical (nothing is unloaded, nothing re-imported); a bundle exported from
    another commit gets its own. Returns True when the loaded copy was unloaded. Call with the bundle folder on
    ``sys.path`` (MONAI Label's tasks insert it before parsing).
    """
    vendored = Path(bundle_path) / package
    loaded = sys.modules.get(package)
    if loaded is None or not vendored.is_dir() or getattr(loaded, "__file__", None) is None:
        return False
    loaded_dir = Path(loaded.__file__).parent
    if loaded_dir.resolve() == vendored.resolve() or _cached_digest(loaded_dir) == _cached_digest(vendored):
        return False
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
    logger.info(f"{bundle_path}: its {package} differs from the loaded copy in {loaded_dir}: using its own")
    return True


def semi_supervised_pool(labelled: list[dict], unlabelled_images: list[str]) -> tuple[list[dict], str]:
    """The unlabelled pool of a semi-supervised run: the datastore's images without a final label.

    When every image is labelled, the labelled images themselves (without their labels) are the pool, as in the
    usual semi-supervised protocols where the labelled set is part of the unlabelled one; returns the pool and where
    it came from (for the log).
    """
    if unlabelled_images:
        return [{"image": p} for p in unlabelled_images], "datastore images without a final label"
    return [{"image": d["image"]} for d in labelled], "no unlabelled image in the datastore: the labelled images"


def validation_split(train: list[dict], val: list[dict] | None) -> tuple[list[dict], list[dict] | None, str]:
    """Keep a validation set that can select ``model.pt``.

    MONAI Label's split (``val_split`` 0.2 by default) leaves no validation image below 3 labelled images; the
    bundles save ``models/model.pt`` when the validation Dice improves, so an empty validation set would leave the
    served model unchanged. Then the training images are validated on (said in the log).
    """
    if val is not None and not val and train:
        return train, list(train), "too few labelled images for a held-out split: validating on the training images"
    return train, val, ""


def config_id_exists(config: dict, dotted_id: str) -> bool:
    """Whether a ``#``-separated id (``unlabeled#data``) exists in a raw bundle config."""
    node = config
    for part in dotted_id.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True
