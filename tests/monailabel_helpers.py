"""Support for the MONAI Label tests: stand-in exported bundles and a real server on 127.0.0.1.

``standin_export`` exports a bundle with ``tools/export_bundle.py`` from a run folder that holds the given weights or,
for the plumbing tests, the networks' initial weights (no training needed), and unzips it next to the zip.
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
MONAILABEL_VENV = Path(os.environ.get("VOLSSL_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
# values the main job trains the phantoms with (tools/run_main.py: cpu_small.json overlays + CRLN_PHANTOM)
PHANTOM_VALUES = {
    "coral_mri_segmentation": "cpu_small.json",
    "sal_mri_segmentation": "cpu_small.json",
    "crln_mri_segmentation": ("cpu_small.json", "adam.json"),
}
CRLN_PHANTOM = {"num_classes": 4, "n_filters": 8, "patch_size": [48, 48, 16], "iterations_per_epoch": 20,
                "rectify_after_epoch": 2, "val_interval": 1, "dropout": 0.0}


def phantom_values(name: str) -> dict:
    """The trained values of the main job for one bundle (what an export of its run folds in)."""
    overlays = PHANTOM_VALUES[name]
    values: dict = {}
    for overlay in (overlays,) if isinstance(overlays, str) else overlays:
        values.update(json.loads((BUNDLES / name / "configs" / overlay).read_text()))
    if name == "crln_mri_segmentation":
        values.update(CRLN_PHANTOM)
    return values


def _initial_run(name: str, run_dir: Path, values: dict, labels: dict, model_pt=None, pretrain_pt=None) -> Path:
    """A training run's bundle root as ``tools/export_bundle.py`` reads it (``models/model.pt``, ``pretrain.pt``,
    the training records), with the given weights or, for the plumbing tests, the networks' initial weights."""
    import torch
    from monai.bundle import ConfigParser

    configs = BUNDLES / name / "configs"
    models = run_dir / "models"
    models.mkdir(parents=True, exist_ok=True)

    def parsed(config: str) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(str(configs / config))
        for key, value in values.items():
            if key in parser:
                parser[key] = value
        parser["bundle_root"], parser["device"] = str(run_dir), "cpu"
        return parser

    train = json.loads((configs / "train.json").read_text())
    record = {"values": {k: v for k, v in values.items() if k in train.get("trained_values", {})}, "labels": labels}
    (models / "training_record.json").write_text(json.dumps(record))
    if model_pt is not None:
        shutil.copy2(model_pt, models / "model.pt")
    else:
        torch.save(parsed("inference.json").get_parsed_content("network_def").state_dict(), models / "model.pt")
    if (configs / "pretrain.json").is_file():
        pretrain = json.loads((configs / "pretrain.json").read_text())
        pre_values = {k: v for k, v in values.items() if k in pretrain.get("trained_values", {})}
        (models / "pretraining_record.json").write_text(json.dumps({"values": pre_values}))
        if pretrain_pt is not None:
            shutil.copy2(pretrain_pt, models / "pretrain.pt")
        else:
            parser = parsed("pretrain.json")
            state = {"network": parser.get_parsed_content("network").state_dict(),
                     "loss": parser.get_parsed_content("loss_function").state_dict()}
            torch.save(state, models / "pretrain.pt")
    return run_dir


def standin_export(
    name: str, out_dir, values: dict, labels: dict, model_pt=None, pretrain_pt=None, package_note: str | None = None
) -> Path:
    """Export ``name`` with ``tools/export_bundle.py`` from a run folder holding the given (or initial) weights and a
    training record of ``values`` and ``labels``; also unzip it to ``out_dir/<name>/``. Returns the zip.

    Args:
        name: a folder of ``bundles/``.
        values: the trained values (what a run with these overlays records).
        labels: ``{"0": "background", "1": ...}``, the training datalist's label names.
        model_pt: a trained ``model.pt``; None: the inference network's initial weights.
        pretrain_pt: a pretraining checkpoint (CORAL/SAL); None: the pretraining network's and loss's initial weights.
        package_note: a comment appended to the vendored ``volssl/__init__.py`` (a copy from another commit; the
            zip is rewritten with it, so it no longer verifies).
    """
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import export_bundle

    out_dir = Path(out_dir)
    run_dir = _initial_run(name, out_dir / "runs" / name, values, labels, model_pt, pretrain_pt)
    archive = Path(export_bundle.export(str(BUNDLES / name), str(run_dir), str(out_dir)))
    target = out_dir / name
    if target.exists():
        shutil.rmtree(target)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(out_dir)
    if package_note:
        with open(target / "volssl" / "__init__.py", "a") as f:
            f.write(f"# {package_note}\n")
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
