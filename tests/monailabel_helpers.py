"""Support for the MONAI Label tests: stand-in exported bundles and a real server on 127.0.0.1.

``standin_export`` writes what ``tools/export_bundle.py`` (the standalone-bundles issue) produces, as far as MONAI
Label reads it: ``<name>/`` with the configs (trained values folded in, the real label names in metadata.json's
``channel_def``), the vendored ``volssl/``, ``models/model.pt`` and, for CORAL/SAL, ``models/pretrain.pt``
(``{"network", "loss"}`` state dicts), plus ``<name>_v<version>.zip``. Weights are the given files or, for the
plumbing tests, the networks' initial weights. Once the export tool is in main, the tests should call it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
PACKAGE_SOURCE = REPO_ROOT / "common" / "volssl"
MONAILABEL_VENV = Path(os.environ.get("VOLSSL_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
CONFIG_FILES = ("train.json", "inference.json", "evaluate.json", "pretrain.json")
# values the main job trains the phantoms with (tools/run_main.py: cpu_small.json overlays + CRLN_PHANTOM)
PHANTOM_VALUES = {
    "coral_mri_segmentation": "cpu_small.json",
    "sal_mri_segmentation": "cpu_small.json",
    "crln_mri_segmentation": ("cpu_small.json", "adam.json"),
}
CRLN_PHANTOM = {"num_classes": 4, "n_filters": 8, "patch_size": [48, 48, 16], "iterations_per_epoch": 20,
                "rectify_after_epoch": 2, "val_interval": 1, "dropout": 0.0}


def dump_config(obj) -> str:
    """The project's bundle JSON style."""
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def phantom_values(name: str) -> dict:
    """The trained values of the main job for one bundle (what an export of its run folds in)."""
    overlays = PHANTOM_VALUES[name]
    values: dict = {}
    for overlay in (overlays,) if isinstance(overlays, str) else overlays:
        values.update(json.loads((BUNDLES / name / "configs" / overlay).read_text()))
    if name == "crln_mri_segmentation":
        values.update(CRLN_PHANTOM)
    return values


def _fold(config: dict, values: dict, everything: bool) -> dict:
    for key, value in values.items():
        if everything or key in config:
            config[key] = value
    return config


def standin_export(
    name: str, out_dir, values: dict, labels: dict, model_pt=None, pretrain_pt=None, package_note: str | None = None
) -> Path:
    """Write ``out_dir/<name>/`` and ``out_dir/<name>_v<version>.zip`` as the export tool will; returns the zip.

    Args:
        name: a folder of ``bundles/``.
        values: trained values folded into every config that has the key (train.json takes them all).
        labels: ``{"0": "background", "1": ...}`` for metadata's ``channel_def``.
        model_pt: a trained ``model.pt``; None: the inference network's initial weights.
        pretrain_pt: a pretraining checkpoint (CORAL/SAL); None: the pretraining network's and loss's initial weights.
        package_note: a comment appended to the vendored ``volssl/__init__.py`` (a copy from another commit).
    """
    import torch
    from monai.bundle import ConfigParser

    out_dir = Path(out_dir)
    target = out_dir / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(BUNDLES / name, target, ignore=shutil.ignore_patterns("__pycache__", "models", "eval", "logs"))
    shutil.copytree(PACKAGE_SOURCE, target / "volssl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if package_note:
        with open(target / "volssl" / "__init__.py", "a") as f:
            f.write(f"# {package_note}\n")
    configs = target / "configs"
    for overlay in ("cpu_small.json", "adam.json"):
        (configs / overlay).unlink(missing_ok=True)
    for file in CONFIG_FILES:
        path = configs / file
        if path.is_file():
            config = _fold(json.loads(path.read_text()), values, everything=file == "train.json")
            path.write_text(dump_config(config))
    metadata = json.loads((configs / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = dict(labels)
    (configs / "metadata.json").write_text(dump_config(metadata))

    models = target / "models"
    models.mkdir(exist_ok=True)
    if model_pt is not None:
        shutil.copy2(model_pt, models / "model.pt")
    else:
        parser = ConfigParser()
        parser.read_config(configs / "inference.json")
        parser["bundle_root"] = str(target)
        torch.save(parser.get_parsed_content("network_def").state_dict(), models / "model.pt")
    if (configs / "pretrain.json").is_file():
        if pretrain_pt is not None:
            shutil.copy2(pretrain_pt, models / "pretrain.pt")
        else:
            parser = ConfigParser()
            parser.read_config(configs / "pretrain.json")
            parser["bundle_root"] = str(target)
            parser["device"] = "cpu"
            state = {"network": parser.get_parsed_content("network").state_dict(),
                     "loss": parser.get_parsed_content("loss_function").state_dict()}
            torch.save(state, models / "pretrain.pt")

    archive = out_dir / f"{name}_v{metadata['version']}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(target.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(out_dir).as_posix())
    return archive


def make_studies(studies, n: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """A MONAI Label studies folder of ``n`` phantom images (no labels) and the folder of their true labels."""
    from volssl.data.phantom import write_phantom_dataset

    studies = Path(studies)
    source = studies.parent / f"{studies.name}_source"
    write_phantom_dataset(source, n=n, seed=seed)
    studies.mkdir(parents=True, exist_ok=True)
    for image in sorted((source / "imagesTr").glob("*.nii.gz")):
        shutil.copy2(image, studies / image.name)
    return studies, source / "labelsTr"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bash tools/monailabel.sh serve`` in a process group of its own, with small HTTP helpers (stdlib only)."""

    def __init__(self, bundles, studies, app_dir, log_path, port=None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # like a user's shell: no volssl around
        env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
        cmd = ["bash", str(REPO_ROOT / "tools" / "monailabel.sh"), "serve", "--studies", str(studies),
               "--app_dir", str(app_dir), "--port", str(self.port), *[str(b) for b in bundles]]
        self.log = open(self.log_path, "w")  # noqa: SIM115 - open while the server runs; closed by stop()
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 300) -> float:
        start = time.time()
        while time.time() - start < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log_text()[-6000:]}")
            try:
                self.get("/info/")
                return time.time() - start
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log_text()[-6000:]}")

    def request(self, method: str, path: str, body: bytes | None = None, headers=None, timeout: float = 600):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()

    def get(self, path: str, timeout: float = 60):
        return json.loads(self.request("GET", path, timeout=timeout)[2])

    def post_json(self, path: str, payload: dict, timeout: float = 600):
        status, headers, body = self.request("POST", path, json.dumps(payload).encode(),
                                             {"Content-Type": "application/json"}, timeout=timeout)
        return status, headers, body

    def put_label(self, image_id: str, label_file, tag: str = "final"):
        """``PUT /datastore/label``: save an annotator's label for an image (multipart form, as the viewers do)."""
        boundary = uuid.uuid4().hex
        data = Path(label_file).read_bytes()
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"{Path(label_file).name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        path = f"/datastore/label?image={image_id}&tag={tag}"
        return self.request("PUT", path, b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def infer(self, model: str, image_id: str, timeout: float = 600) -> tuple[bytes, float]:
        """``POST /infer/<model>?image=<id>&output=image``: the label map file's bytes and the seconds it took."""
        start = time.time()
        status, _, body = self.request("POST", f"/infer/{model}?image={image_id}&output=image",
                                             b"", {"Content-Type": "application/json"}, timeout=timeout)
        assert status == 200, status
        return body, time.time() - start

    def train(self, model: str, params: dict, timeout: float = 900) -> tuple[dict, float]:
        """``POST /train/<model>`` then poll ``/train/`` until the task ends; returns the task and the seconds."""
        start = time.time()
        status, _, _ = self.post_json(f"/train/{model}?run_sync=false", params)
        assert status == 200, status
        while time.time() - start < timeout:
            time.sleep(2)
            task = self.get("/train/?check_if_running=false")
            if isinstance(task, dict) and task.get("status") not in ("SUBMITTED", "RUNNING"):
                return task, time.time() - start
        raise AssertionError(f"training of {model} not finished after {timeout} s:\n{self.log_text()[-6000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
